"""The IPAM core: the module functions on the in-memory and LMDB stores, and the
embedded ``IPAM`` class on real LMDB files."""

from __future__ import annotations

import hashlib
import json
import os

import msgpack
import pytest

from ecs_ipam import ipam as core
from ecs_ipam import kv
from ecs_ipam.allocator import Owner
from ecs_ipam.config import parse_netconf
from ecs_ipam.errors import (
    AddressInUseError,
    IdAlreadyAllocatedError,
    IncompatibleVersionError,
    InvalidConfigError,
    NotAvailableError,
    PoolExhaustedError,
    ReservationMismatchError,
)
from ecs_ipam.ipam import IPAM
from ecs_ipam.kv.memory import MemoryStore

V4 = "169.254.172.0/22"
V6 = "fd00:ec2::172:0/112"


def netconf(version: str = "0.3.0", **ipam: object) -> dict:
    return {
        "cniVersion": version,
        "name": "ecs",
        "ipam": {"type": "ecs-ipam", **{key.replace("_", "-"): value for key, value in ipam.items()}},
    }


def conf(version: str = "0.3.0", **ipam: object):
    return parse_netconf(netconf(version, **ipam))


@pytest.fixture(params=["memory", "lmdb"])
def store(request, tmp_path):
    fresh = MemoryStore() if request.param == "memory" else kv.open_store(str(tmp_path / "ipam.db"))
    yield fresh
    fresh.close()


def state(store) -> object:
    """Everything the store holds, to compare before and after a failed command."""
    return {
        name: [(pair.key, pair.value, pair.last_index) for pair in store.bucket(name).list()]
        for name in store.buckets()
    }


def record(store, bucket: str, key: str) -> object:
    found = store.bucket(bucket).transact(lambda tx: tx.find(key), write=False)
    return None if found is None else msgpack.unpackb(found.value, raw=False)


def addresses(allocations) -> list[str]:
    return [str(address) for _, address in allocations]


def add(store, owner_id: str, container_id: str | None = None, ifname: str | None = None, **ipam):
    return addresses(core.add(store, conf(id=owner_id, **ipam), Owner(owner_id, container_id, ifname), 1.0))


# --- module functions, on both stores -------------------------------------------------------


def test_dual_stack_claims_both(store):
    assert add(store, "task", ipv4_subnet=V4, ipv6_subnet=V6) == ["169.254.172.2/22", "fd00:ec2::172:2/112"]
    assert store.buckets() == [V4, V6]
    assert record(store, V4, "169.254.172.2")["id"] == "task"
    assert record(store, V6, "fd00:ec2::172:2")["id"] == "task"


def test_dual_stack_claims_neither_when_ipv6_is_exhausted(store):
    add(store, "a", ipv6_subnet="fd00::/126")
    add(store, "b", ipv6_subnet="fd00::/126")
    before = state(store)
    with pytest.raises(PoolExhaustedError) as caught:
        add(store, "c", ipv4_subnet="10.0.0.0/24", ipv6_subnet="fd00::/126")
    assert caught.value.msg == "failed to find available ip addresses in the subnet fd00::/126"
    # The IPv4 claim made before the IPv6 walk failed is gone, bucket and all.
    assert state(store) == before
    assert "10.0.0.0/24" not in store.buckets()


def test_dual_stack_claims_neither_when_the_ipv4_bucket_already_exists(store):
    add(store, "a", ipv4_subnet="10.0.0.0/24", ipv6_subnet="fd00::/126")
    add(store, "b", ipv4_subnet="10.0.0.0/24", ipv6_subnet="fd00::/126")
    before = state(store)
    with pytest.raises(PoolExhaustedError):
        add(store, "c", ipv4_subnet="10.0.0.0/24", ipv6_subnet="fd00::/126")
    assert state(store) == before
    assert add(store, "c", ipv4_subnet="10.0.0.0/24") == ["10.0.0.4/24"]


def test_dual_stack_claims_neither_when_the_ipv4_address_is_taken(store):
    add(store, "a", ipv4_subnet="10.0.0.0/24")
    before = state(store)
    with pytest.raises(AddressInUseError):
        add(store, "b", ipv4_subnet="10.0.0.0/24", ipv4_address="10.0.0.2/24", ipv6_subnet="fd00::/64")
    assert state(store) == before


def test_dual_stack_fixed_pair_under_one_id(store):
    daemon = {
        "ipv4_subnet": V4,
        "ipv4_address": "169.254.172.2/32",
        "ipv6_subnet": V6,
        "ipv6_address": "fd00:ec2::172:2/128",
    }
    assert add(store, "daemon", **daemon) == ["169.254.172.2/32", "fd00:ec2::172:2/128"]
    assert add(store, "task", ipv4_subnet=V4, ipv6_subnet=V6) == ["169.254.172.3/22", "fd00:ec2::172:3/112"]
    assert core.delete(store, conf(id="daemon", ipv4_subnet=V4, ipv6_subnet=V6)) == [
        "169.254.172.2",
        "fd00:ec2::172:2",
    ]
    assert record(store, V4, "169.254.172.3")["id"] == "task"


def test_two_subnets_in_one_database_with_the_same_id(store):
    # The original failed here ("id: GateWay: ipstore: id already exists"): one bucket for all.
    assert add(store, "x", ipv4_subnet="10.0.0.0/24") == ["10.0.0.2/24"]
    assert add(store, "x", ipv4_subnet="10.1.0.0/24") == ["10.1.0.2/24"]
    assert add(store, "x", ipv4_subnet=V4, ipv6_subnet=V6) == ["169.254.172.2/22", "fd00:ec2::172:2/112"]
    assert store.buckets() == ["10.0.0.0/24", "10.1.0.0/24", V4, V6]
    # As the Go plugin: a DEL by id releases the id in the whole database, the named
    # pool first, whatever pools the configuration names.
    released = core.delete(store, conf(id="x", ipv4_subnet="10.1.0.0/24"))
    assert released == ["10.1.0.2", "10.0.0.2", "169.254.172.2", "fd00:ec2::172:2"]
    assert record(store, "10.0.0.0/24", "10.0.0.2") is None
    assert record(store, "10.1.0.0/24", "10.1.0.2") is None
    assert record(store, "10.0.0.0/24", "lastKnownIP") == "10.0.0.2"


def test_del_by_id_releases_both_families(store):
    add(store, "a", ipv4_subnet=V4, ipv6_subnet=V6)
    add(store, "b", ipv4_subnet=V4, ipv6_subnet=V6)
    assert core.delete(store, conf(id="a", ipv4_subnet=V4, ipv6_subnet=V6)) == ["169.254.172.2", "fd00:ec2::172:2"]
    assert record(store, V4, "169.254.172.2") is None
    assert record(store, V6, "fd00:ec2::172:2") is None
    assert record(store, V4, "lastKnownIP") == "169.254.172.2"
    assert record(store, V6, "lastKnownIPv6") == "fd00:ec2::172:2"
    assert record(store, V4, "169.254.172.3")["id"] == "b"


def test_del_by_fixed_address(store):
    add(store, "a", ipv4_subnet="10.0.0.0/24")
    add(store, "b", ipv4_subnet="10.0.0.0/24")
    assert core.delete(store, conf(ipv4_subnet="10.0.0.0/24", ipv4_address="10.0.0.3/24")) == ["10.0.0.3"]
    assert record(store, "10.0.0.0/24", "10.0.0.3") is None
    assert record(store, "10.0.0.0/24", "id/b") is None
    assert record(store, "10.0.0.0/24", "10.0.0.2")["id"] == "a"


def test_del_with_id_does_not_release_another_ids_fixed_address(store):
    add(store, "a", ipv4_subnet="10.0.0.0/24")
    add(store, "b", ipv4_subnet="10.0.0.0/24")
    released = core.delete(store, conf(id="a", ipv4_subnet="10.0.0.0/24", ipv4_address="10.0.0.3/24"))
    assert released == ["10.0.0.2"]
    assert record(store, "10.0.0.0/24", "10.0.0.3")["id"] == "b"


def test_del_never_releases_the_gateway(store):
    add(store, "a", ipv4_subnet="10.0.0.0/24")
    assert (
        core.delete(store, conf(ipv4_subnet="10.0.0.0/24", ipv4_gateway="10.0.0.254", ipv4_address="10.0.0.1/24")) == []
    )
    assert record(store, "10.0.0.0/24", "10.0.0.1") == {"id": "GateWay"}


def test_del_is_idempotent(store):
    add(store, "a", ipv4_subnet=V4, ipv6_subnet=V6)
    delete = conf(id="a", ipv4_subnet=V4, ipv6_subnet=V6)
    assert core.delete(store, delete) == ["169.254.172.2", "fd00:ec2::172:2"]
    after_first = state(store)
    assert core.delete(store, delete) == []
    assert core.delete(store, conf(id="never-seen", ipv4_subnet="10.9.0.0/16")) == []
    assert state(store) == after_first


def test_check_status_and_gc_functions(store):
    add(store, "a", "c1", "eth0", ipv4_subnet="10.0.0.0/30")
    core.check(store, conf("0.4.0", id="a", ipv4_subnet="10.0.0.0/30"))
    with pytest.raises(NotAvailableError):
        core.status(store, conf("1.1.0", ipv4_subnet="10.0.0.0/30"))
    gc_conf = parse_netconf(netconf("1.1.0", ipv4_subnet="10.0.0.0/30") | {"cni.dev/valid-attachments": []})
    assert core.gc(store, gc_conf) == ["10.0.0.2"]
    core.status(store, conf("1.1.0", ipv4_subnet="10.0.0.0/30"))
    with pytest.raises(ReservationMismatchError):
        core.check(store, conf("0.4.0", id="a", ipv4_subnet="10.0.0.0/30"))


# --- the IPAM class, on LMDB files --------------------------------------------------------


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "ipam.db")


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_add_returns_the_cni_result(db_path):
    with IPAM(db_path, clock=lambda: 42.0) as ipam:
        result = ipam.add(netconf(id="a", ipv4_subnet=V4, ipv4_routes=[{"dst": "169.254.170.2/32"}]), "cid", "eth0")
    assert result == {
        "cniVersion": "0.3.0",
        "ips": [{"version": "4", "address": "169.254.172.2/22", "gateway": "169.254.172.1"}],
        "routes": [{"dst": "169.254.170.2/32"}],
        "dns": {},
    }
    with kv.open_store(db_path, V4, read_only=True) as store:
        assert record(store, V4, "169.254.172.2") == {
            "id": "a",
            "container_id": "cid",
            "ifname": "eth0",
            "allocated_at": 42.0,
        }


def test_state_survives_reopening(db_path):
    with IPAM(db_path) as ipam:
        ipam.add(netconf(id="a", ipv4_subnet="10.0.0.0/24"))
    with IPAM(db_path) as ipam:
        assert ipam.add(netconf(id="b", ipv4_subnet="10.0.0.0/24"))["ips"][0]["address"] == "10.0.0.3/24"
        with pytest.raises(IdAlreadyAllocatedError):
            ipam.add(netconf(id="a", ipv4_subnet="10.0.0.0/24"))
    assert os.stat(db_path).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "second, error",
    [
        ({"id": "a", "ipv4_subnet": "10.0.0.8/29"}, IdAlreadyAllocatedError),
        ({"id": "a", "ipv4_subnet": "10.0.0.0/30"}, PoolExhaustedError),
        ({"id": "b", "ipv4_subnet": "10.0.0.0/30"}, PoolExhaustedError),
        ({"id": "b", "ipv4_subnet": "10.0.0.0/30", "ipv4_address": "10.0.0.2/30"}, AddressInUseError),
        (
            {"id": "c", "ipv4_subnet": "10.0.0.0/24", "ipv6_subnet": "fd00::/126", "ipv6_gateway": "fd00::2"},
            AddressInUseError,
        ),
        ({"id": "c", "ipv4_subnet": "10.0.0.0/24", "ipv6_subnet": "fd00::/126"}, PoolExhaustedError),
    ],
)
def test_rejected_add_leaves_the_file_unchanged(db_path, second, error):
    with IPAM(db_path) as ipam:
        ipam.add(netconf(id="a", ipv4_subnet="10.0.0.0/30"))
        ipam.add(netconf(id="a", ipv4_subnet="10.0.0.8/29"))
        ipam.add(netconf(id="a", ipv6_subnet="fd00::/126"))
        ipam.add(netconf(id="b", ipv6_subnet="fd00::/126"))
    before = digest(db_path)
    with IPAM(db_path) as ipam, pytest.raises(error):
        ipam.add(netconf(**second))
    assert digest(db_path) == before


def test_del_needs_an_id_or_an_address(db_path):
    with IPAM(db_path) as ipam:
        ipam.add(netconf(id="a", ipv4_subnet="10.0.0.0/24"))
    before = digest(db_path)
    with pytest.raises(InvalidConfigError) as caught:
        IPAM(db_path).delete(netconf(ipv4_subnet="10.0.0.0/24", ipv6_subnet="fd00::/64"))
    assert caught.value.code == 7
    assert caught.value.msg == "ip address (ipv4 or ipv6) and id can not all be empty for deletion"
    assert digest(db_path) == before


def test_del_on_a_missing_database_succeeds_and_creates_nothing(tmp_path, db_path):
    with IPAM(db_path) as ipam:
        assert ipam.delete(netconf(id="a", ipv4_subnet=V4, ipv6_subnet=V6)) == []
        assert ipam.delete(netconf(ipv4_subnet=V4, ipv4_address="169.254.172.2/32")) == []
    assert os.listdir(tmp_path) == []


def test_del_by_a_long_id(db_path):
    long_id = "/host/proc/12345/ns/net/" + "x" * 2000
    with IPAM(db_path) as ipam:
        ipam.add(netconf(id=long_id, ipv4_subnet=V4, ipv6_subnet=V6))
        ipam.add(netconf(id="tâche-日本", ipv4_subnet=V4))
        assert ipam.delete(netconf(id=long_id, ipv4_subnet=V4, ipv6_subnet=V6)) == [
            "169.254.172.2",
            "fd00:ec2::172:2",
        ]
        assert ipam.delete(netconf(id="tâche-日本", ipv4_subnet=V4)) == ["169.254.172.3"]


# CHECK


@pytest.fixture
def checked(db_path):
    """A database where id "a" holds 10.0.0.2 and fd00::2."""
    with IPAM(db_path) as ipam:
        ipam.add(netconf(id="a", ipv4_subnet="10.0.0.0/24", ipv6_subnet="fd00::/64"))
    return db_path


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_check_passes_while_the_reservation_exists(checked, version):
    pools = {"ipv4_subnet": "10.0.0.0/24", "ipv6_subnet": "fd00::/64"}
    with IPAM(checked) as ipam:
        assert ipam.check(netconf(version, id="a", **pools)) is None
        # The same CHECK for an id that holds nothing fails: the pass above was a lookup.
        with pytest.raises(ReservationMismatchError, match=r"^id 'b' holds no address in 10\.0\.0\.0/24$"):
            ipam.check(netconf(version, id="b", **pools))
        # And once "a"'s IPv6 address is released (by address: a DEL by id releases the id in
        # every pool), its CHECK fails on that pool.
        assert ipam.delete(netconf(version, ipv6_subnet="fd00::/64", ipv6_address="fd00::2/64")) == ["fd00::2"]
        with pytest.raises(ReservationMismatchError, match=r"^id 'a' holds no address in fd00::/64$"):
            ipam.check(netconf(version, id="a", **pools))


@pytest.mark.parametrize(
    "prev_result",
    [
        {
            "cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.0.0.2/24"}, {"version": "6", "address": "fd00::2/64"}],
        },
        {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]},
        {"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}, "ip6": {"ip": "fd00::2/64"}},
    ],
)
def test_check_accepts_a_matching_prev_result(checked, prev_result):
    data = netconf("1.0.0", id="a", ipv4_subnet="10.0.0.0/24", ipv6_subnet="fd00::/64") | {"prevResult": prev_result}
    assert IPAM(checked).check(data) is None
    # The same shape naming another IPv4 address fails: prevResult was read, in this shape.
    other = json.loads(json.dumps(prev_result).replace("10.0.0.2/", "10.0.0.9/"))
    with pytest.raises(
        ReservationMismatchError, match=r"^id 'a' holds 10\.0\.0\.2 in 10\.0\.0\.0/24, prevResult says 10\.0\.0\.9$"
    ):
        IPAM(checked).check(data | {"prevResult": other})


def test_check_after_del_is_code_103(checked):
    with IPAM(checked) as ipam:
        ipam.delete(netconf(id="a", ipv4_subnet="10.0.0.0/24", ipv6_subnet="fd00::/64"))
        with pytest.raises(ReservationMismatchError) as caught:
            ipam.check(netconf("0.4.0", id="a", ipv4_subnet="10.0.0.0/24"))
    assert caught.value.code == 103
    assert caught.value.msg == "id 'a' holds no address in 10.0.0.0/24"


def test_check_with_a_different_prev_result_is_code_103(checked):
    data = netconf("0.4.0", id="a", ipv4_subnet="10.0.0.0/24") | {
        "prevResult": {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.7/24"}]}
    }
    with pytest.raises(ReservationMismatchError) as caught:
        IPAM(checked).check(data)
    assert caught.value.code == 103
    assert caught.value.msg == "id 'a' holds 10.0.0.2 in 10.0.0.0/24, prevResult says 10.0.0.7"


def test_check_of_a_subnet_the_id_never_used_is_code_103(checked):
    with pytest.raises(ReservationMismatchError):
        IPAM(checked).check(netconf("0.4.0", id="a", ipv4_subnet="10.7.0.0/24"))


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "0.3.0", "0.3.1"])
def test_check_before_0_4_0_is_code_1(checked, version):
    with pytest.raises(IncompatibleVersionError) as caught:
        IPAM(checked).check(netconf(version, id="a", ipv4_subnet="10.0.0.0/24"))
    assert caught.value.code == 1
    assert caught.value.msg == f"CHECK needs cniVersion 0.4.0 or later, got {version}"


def test_check_on_a_missing_database_is_code_103(tmp_path, db_path):
    with pytest.raises(ReservationMismatchError):
        IPAM(db_path).check(netconf("0.4.0", id="a", ipv4_subnet="10.0.0.0/24"))
    assert os.listdir(tmp_path) == []


# GC


def gc_conf(attachments, field: str = "cni.dev/valid-attachments", version: str = "1.1.0", **ipam) -> dict:
    data = netconf(version, **(ipam or {"ipv4_subnet": "10.0.0.0/24", "ipv6_subnet": "fd00::/64"}))
    if attachments is not None:
        data[field] = [{"containerID": c, "ifname": i} for c, i in attachments]
    return data


@pytest.fixture
def collected(db_path):
    """Reservations of attachments (c1, eth0), (c2, eth0), (c3, eth1), and one of the agent's."""
    with IPAM(db_path) as ipam:
        dual = {"ipv4_subnet": "10.0.0.0/24", "ipv6_subnet": "fd00::/64"}
        ipam.add(netconf("1.1.0", id="t1", **dual), "c1", "eth0")  # .2
        ipam.add(netconf("1.1.0", id="t2", **dual), "c2", "eth0")  # .3
        ipam.add(netconf("1.1.0", id="t3", **dual), "c3", "eth1")  # .4
        ipam.add(netconf("1.1.0", id="agent", **dual))  # .5, no attachment recorded
    return db_path


@pytest.mark.parametrize("field", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_releases_what_is_not_valid(collected, field):
    with IPAM(collected) as ipam:
        released = ipam.gc(gc_conf([("c1", "eth0"), ("c3", "eth0")], field))
    assert sorted(released) == ["10.0.0.3", "10.0.0.4", "fd00::3", "fd00::4"]
    with kv.open_store(collected, read_only=True) as store:
        held = {
            bucket: sorted(
                (p.key, msgpack.unpackb(p.value)["id"])
                for p in store.bucket(bucket).list()
                if not p.key.startswith(("id", "last"))
            )
            for bucket in store.buckets()
        }
    assert held == {
        "10.0.0.0/24": [("10.0.0.1", "GateWay"), ("10.0.0.2", "t1"), ("10.0.0.5", "agent")],
        "fd00::/64": [("fd00::1", "GateWayV6"), ("fd00::2", "t1"), ("fd00::5", "agent")],
    }


def test_gc_with_an_empty_list_keeps_the_gateway_and_the_agents_reservations(collected):
    with IPAM(collected) as ipam:
        assert len(ipam.gc(gc_conf([]))) == 6
        assert ipam.gc(gc_conf([])) == []
        ipam.check(netconf("1.1.0", id="agent", ipv4_subnet="10.0.0.0/24", ipv6_subnet="fd00::/64"))
        # The gateways are still reserved: the next task gets .6, not .1 or a freed one.
        result = ipam.add(netconf("1.1.0", id="next", ipv4_subnet="10.0.0.0/24"), "c9", "eth0")
    assert result["ips"][0] == {"address": "10.0.0.6/24", "gateway": "10.0.0.1"}


def test_gc_only_touches_the_configured_subnets(collected):
    with IPAM(collected) as ipam:
        assert sorted(ipam.gc(gc_conf([], ipv4_subnet="10.0.0.0/24"))) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
        ipam.check(netconf("1.1.0", id="t1", ipv6_subnet="fd00::/64"))


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_gc_before_1_1_0_is_code_1(collected, version):
    with pytest.raises(IncompatibleVersionError) as caught:
        IPAM(collected).gc(gc_conf([], version=version))
    assert caught.value.code == 1
    assert caught.value.msg == f"GC needs cniVersion 1.1.0 or later, got {version}"


def test_gc_without_the_list_is_code_7(collected):
    before = digest(collected)
    with pytest.raises(InvalidConfigError) as caught:
        IPAM(collected).gc(gc_conf(None))
    assert (caught.value.code, caught.value.msg) == (7, "cni.dev/valid-attachments is required for GC")
    assert digest(collected) == before


def test_gc_on_a_missing_database(tmp_path, db_path):
    assert IPAM(db_path).gc(gc_conf([])) == []
    assert os.listdir(tmp_path) == []


# STATUS


def test_status(db_path):
    with IPAM(db_path) as ipam:
        ipam.status(netconf("1.1.0", ipv4_subnet="10.0.0.0/30"))
        ipam.add(netconf("1.1.0", id="a", ipv4_subnet="10.0.0.0/30"))
        with pytest.raises(NotAvailableError) as caught:
            ipam.status(netconf("1.1.0", ipv4_subnet="10.0.0.0/30"))
        assert caught.value.code == 50
        assert caught.value.msg == "no free address left in 10.0.0.0/30"
        # Another pool in the same file is not affected.
        ipam.status(netconf("1.1.0", ipv4_subnet="10.0.0.0/29"))
        ipam.delete(netconf("1.1.0", id="a", ipv4_subnet="10.0.0.0/30"))
        ipam.status(netconf("1.1.0", ipv4_subnet="10.0.0.0/30"))


def test_status_counts_fixed_addresses(db_path):
    with IPAM(db_path) as ipam:
        ipam.add(netconf("1.1.0", id="a", ipv6_subnet="fd00::/126", ipv6_address="fd00::3/128"))
        ipam.status(netconf("1.1.0", ipv6_subnet="fd00::/126"))
        ipam.add(netconf("1.1.0", id="b", ipv6_subnet="fd00::/126"))
        with pytest.raises(NotAvailableError):
            ipam.status(netconf("1.1.0", ipv6_subnet="fd00::/126"))


def test_status_on_a_missing_database(tmp_path, db_path):
    # No database: nothing is held, so even a pool of one address can serve an ADD; and
    # STATUS, a read, creates nothing.
    one_address = netconf("1.1.0", ipv4_subnet="10.0.0.0/30")
    assert IPAM(db_path).status(one_address) is None
    assert os.listdir(tmp_path) == []
    with IPAM(db_path) as ipam:
        ipam.add(netconf("1.1.0", id="a", ipv4_subnet="10.0.0.0/30"))
        with pytest.raises(NotAvailableError):
            ipam.status(one_address)
    for name in os.listdir(tmp_path):
        os.unlink(tmp_path / name)
    assert IPAM(db_path).status(one_address) is None
    assert os.listdir(tmp_path) == []


def test_status_before_1_1_0_is_code_1(db_path):
    with pytest.raises(IncompatibleVersionError, match=r"^STATUS needs cniVersion 1\.1\.0 or later, got 1\.0\.0$"):
        IPAM(db_path).status(netconf("1.0.0", ipv4_subnet="10.0.0.0/30"))
