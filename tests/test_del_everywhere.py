"""A DEL by id releases what the id holds in every pool bucket of the database.

The ECS agent's newer path adds a task dual-stack (id = the task's netns path) but builds
the DEL from what exists at DEL time: after a reboot it names the IPv4 pool only.  The Go
plugin releases by id in its whole database, so the agent never sees a leak there.  Each
sequence runs on LMDB and on a real etcd, through the embedded API, and once as processes.
"""

from __future__ import annotations

import pytest

from ecs_ipam import IPAM, kv
from ecs_ipam.pool_store import decode, encode
from plugin import run_plugin

V4 = "169.254.172.0/22"
V6 = "fd00:ec2::172:0/112"
TASK = "/var/run/netns/task-1"


def conf(owner_id: str | None = TASK, **ipam: str) -> dict:
    fields = {"type": "ecs-ipam", **({} if owner_id is None else {"id": owner_id})}
    fields.update({key.replace("_", "-"): value for key, value in ipam.items()})
    return {"cniVersion": "0.3.0", "name": "task", "ipam": fields}


def dual(owner_id: str = TASK) -> dict:
    return conf(owner_id, ipv4_subnet=V4, ipv6_subnet=V6)


def v4_only(owner_id: str = TASK) -> dict:
    return conf(owner_id, ipv4_subnet=V4)


def addresses(result: dict) -> list[str]:
    return [ip["address"] for ip in result["ips"]]


@pytest.fixture
def db(lmdb_or_etcd):
    return lmdb_or_etcd


def held(db: str) -> dict[str, dict[str, str]]:
    """bucket -> {key: owner id or address} of every pool bucket, pointers left out."""
    found = {}
    for name in kv.list_buckets(db):
        with kv.open_store(db, name, read_only=True) as store:
            pairs = store.list()
        values = {pair.key: decode(pair.value) for pair in pairs if not pair.key.startswith("lastKnown")}
        found[name] = {key: value["id"] if isinstance(value, dict) else value for key, value in values.items()}
    return found


def test_the_netlib_sequence_releases_both_families(db):
    with IPAM(db) as ipam:
        first = ipam.add(dual(), "container-id", "eth0")
        assert addresses(first) == ["169.254.172.2/22", "fd00:ec2::172:2/112"]
        # After a reboot: /var/run/netns/host-daemon is gone, the DEL names IPv4 only.
        assert ipam.delete(v4_only()) == ["169.254.172.2", "fd00:ec2::172:2"]
        assert held(db) == {V4: {"169.254.172.1": "GateWay"}, V6: {"fd00:ec2::172:1": "GateWayV6"}}
        # The Go plugin's answer: the walk continues after the released addresses.
        again = ipam.add(dual(), "container-id", "eth0")
        assert addresses(again) == ["169.254.172.3/22", "fd00:ec2::172:3/112"]


def test_a_del_naming_another_subnet_releases_the_id(db):
    with IPAM(db) as ipam:
        ipam.add(dual("task-a"), "c", "eth0")
        ipam.add(dual("task-b"), "c", "eth0")
        assert ipam.delete(conf("task-a", ipv4_subnet="10.9.0.0/24")) == ["169.254.172.2", "fd00:ec2::172:2"]
        assert ipam.delete(conf("task-a", ipv6_subnet="fd00:99::/64")) == []  # idempotent
        # The named pool's bucket is not created by a DEL; task-b keeps its addresses.
        assert held(db) == {
            V4: {"169.254.172.1": "GateWay", "169.254.172.3": "task-b", "id/task-b": "169.254.172.3"},
            V6: {"fd00:ec2::172:1": "GateWayV6", "fd00:ec2::172:3": "task-b", "id/task-b": "fd00:ec2::172:3"},
        }
        # The id can allocate again in both families, where it left off.
        assert addresses(ipam.add(dual("task-a"), "c", "eth0")) == ["169.254.172.4/22", "fd00:ec2::172:4/112"]


def test_an_id_in_many_pools_is_released_in_all_of_them(db):
    with IPAM(db) as ipam:
        for n in range(5):
            ipam.add(conf("task", ipv4_subnet=f"10.{n}.0.0/24"), "c", "eth0")
        ipam.add(conf("other", ipv4_subnet="10.0.0.0/24"), "c", "eth0")
        released = ipam.delete(conf("task", ipv4_subnet="10.3.0.0/24"))
        assert sorted(released) == [f"10.{n}.0.2" for n in range(5)]
        assert held(db)["10.0.0.0/24"] == {"10.0.0.1": "GateWay", "10.0.0.3": "other", "id/other": "10.0.0.3"}


def test_a_del_by_address_stays_in_the_named_pools(db):
    with IPAM(db) as ipam:
        ipam.add(conf(None, ipv4_subnet="10.0.0.0/24", ipv4_address="10.0.0.9/24"), "c", "eth0")
        ipam.add(conf(None, ipv4_subnet="10.1.0.0/24", ipv4_address="10.1.0.9/24"), "c", "eth0")
        # A fixed address of another subnet is not this configuration's: nothing released.
        assert ipam.delete(conf(None, ipv4_subnet="10.2.0.0/16", ipv4_address="10.2.0.9/16")) == []
        assert ipam.delete(conf(None, ipv4_subnet="10.0.0.0/24", ipv4_address="10.0.0.9/24")) == ["10.0.0.9"]
        assert held(db)["10.1.0.0/24"] == {"10.1.0.1": "GateWay", "10.1.0.9": ""}


def test_another_programs_bucket_is_never_touched(tmp_path):
    db = str(tmp_path / "ipam.db")
    with kv.open_store(db, "agent/state") as store:
        store.put("id/task", b"\xa810.0.0.2")  # looks like an index entry, is not ours
        store.put("10.0.0.2", b"\x81\xa2id\xa4task")
    with IPAM(db) as ipam:
        ipam.add(conf("task", ipv4_subnet="10.0.0.0/24"), "c", "eth0")
        assert ipam.delete(conf("task", ipv6_subnet="fd00::/64")) == ["10.0.0.2"]
    with kv.open_store(db, "agent/state", read_only=True) as store:
        assert [pair.key for pair in store.list()] == ["10.0.0.2", "id/task"]


def test_the_netlib_sequence_as_processes(tmp_path):
    db = tmp_path / "ipam.db"
    add_env = {"CNI_CONTAINERID": "container-id", "CNI_NETNS": TASK, "CNI_IFNAME": "eth0"}
    release_env = {"CNI_CONTAINERID": "", "CNI_NETNS": "/host/proc//ns/net", "CNI_IFNAME": "ecs-eth0"}
    code, result, _ = run_plugin("ADD", dual(), add_env, db_path=db)
    assert code == 0 and addresses(result) == ["169.254.172.2/22", "fd00:ec2::172:2/112"]
    assert run_plugin("DEL", v4_only(), release_env, db_path=db) == (0, None, "")
    code, result, _ = run_plugin("ADD", dual(), add_env, db_path=db)
    assert code == 0 and addresses(result) == ["169.254.172.3/22", "fd00:ec2::172:3/112"]
    assert run_plugin("DEL", conf(TASK, ipv4_subnet="10.0.0.0/24"), release_env, db_path=db) == (0, None, "")
    assert held(str(db)) == {V4: {"169.254.172.1": "GateWay"}, V6: {"fd00:ec2::172:1": "GateWayV6"}}


def test_migrated_pairs_waiting_for_their_subnet_are_released_too(db):
    """The Go plugin's leases of a subnet no configuration named yet wait in their own
    bucket: a DEL by id releases them as the Go plugin would have."""
    with kv.open_store(db, "go-plugin-IPAM") as store:
        for key, owner in [
            ("10.9.0.5", "task"),
            ("6fd00:9::5", "task"),
            ("10.9.0.6", "other"),
            ("10.9.0.1", "GateWay"),
        ]:
            store.put(key, encode(owner))
    with IPAM(db) as ipam:
        ipam.add(conf("task", ipv4_subnet="10.0.0.0/24"), "c", "eth0")
        assert ipam.delete(conf("task", ipv4_subnet="10.0.0.0/24")) == ["10.0.0.2", "10.9.0.5", "fd00:9::5"]
        assert ipam.delete(conf("GateWay", ipv4_subnet="10.0.0.0/24")) == []
    with kv.open_store(db, "go-plugin-IPAM", read_only=True) as store:
        assert [pair.key for pair in store.list()] == ["10.9.0.1", "10.9.0.6"]
