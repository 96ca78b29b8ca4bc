"""Anonymous allocations: an ADD without an id (or with ``"id": ""``), as the Go plugin allows.

Such a lease is recorded with an empty owner and no id-index entry; any number coexist;
only a DEL naming the address releases it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ecs_ipam.errors import (
    AddressInUseError,
    IdAlreadyAllocatedError,
    InvalidConfigError,
    PoolExhaustedError,
    ReservationMismatchError,
)
from ecs_ipam.ipam import IPAM
from tests.plugin import ROOT, check_records, read_buckets, run_plugin

SUBNET = "10.0.0.0/29"  # .2 to .6 for tasks
V6 = "fd00::/125"


def netconf(version: str = "0.3.0", **ipam: object) -> dict:
    fields = {"ipv4_subnet": SUBNET, **ipam}
    return {
        "cniVersion": version,
        "name": "n",
        "ipam": {"type": "ecs-ipam", **{k.replace("_", "-"): v for k, v in fields.items() if v is not None}},
    }


def address_of(result: dict, index: int = 0) -> str:
    return result["ips"][index]["address"]


@pytest.fixture
def db_path(tmp_path):
    return str(tmp_path / "ipam.db")


def pool_pairs(db_path: str, bucket: str = SUBNET) -> dict:
    return read_buckets(db_path).get(bucket, {})


@pytest.mark.parametrize("no_id", [{}, {"id": ""}], ids=["absent", "empty"])
def test_anonymous_adds_walk_and_coexist(db_path, no_id):
    with IPAM(db_path) as ipam:
        got = [address_of(ipam.add(netconf(**no_id), "c1", "eth0")) for _ in range(5)]
        assert got == ["10.0.0.2/29", "10.0.0.3/29", "10.0.0.4/29", "10.0.0.5/29", "10.0.0.6/29"]
        with pytest.raises(PoolExhaustedError):
            ipam.add(netconf(**no_id))
    pairs = pool_pairs(db_path)
    assert {key for key in pairs if key.startswith("id")} == set()
    assert pairs["10.0.0.2"] == {
        "id": "",
        "container_id": "c1",
        "ifname": "eth0",
        "allocated_at": pairs["10.0.0.2"]["allocated_at"],
    }
    assert check_records(db_path) == {SUBNET: {}}
    assert sorted(k for k, v in pairs.items() if isinstance(v, dict) and v["id"] == "") == [
        "10.0.0.2",
        "10.0.0.3",
        "10.0.0.4",
        "10.0.0.5",
        "10.0.0.6",
    ]


def test_anonymous_and_named_share_the_walk_and_the_fixed_address_rule(db_path):
    with IPAM(db_path) as ipam:
        assert address_of(ipam.add(netconf(id="a"))) == "10.0.0.2/29"
        assert address_of(ipam.add(netconf())) == "10.0.0.3/29"
        assert address_of(ipam.add(netconf(ipv4_address="10.0.0.6/29"))) == "10.0.0.6/29"
        with pytest.raises(AddressInUseError):
            ipam.add(netconf(ipv4_address="10.0.0.6/29"))
        with pytest.raises(IdAlreadyAllocatedError):
            ipam.add(netconf(id="a"))
        # A DEL by a named id never touches an anonymous lease.
        assert ipam.delete(netconf(id="a")) == ["10.0.0.2"]
        assert ipam.delete(netconf(id="a")) == []
        # The walk continues after the released address: .3 is held, so .4.
        assert address_of(ipam.add(netconf(id=""))) == "10.0.0.4/29"
        # A DEL by address releases an anonymous lease; a second one finds nothing.
        assert ipam.delete(netconf(ipv4_address="10.0.0.3/29")) == ["10.0.0.3"]
        assert ipam.delete(netconf(ipv4_address="10.0.0.3/29", id="")) == []
    assert {k: v["id"] for k, v in pool_pairs(db_path).items() if isinstance(v, dict)} == {
        "10.0.0.1": "GateWay",
        "10.0.0.4": "",
        "10.0.0.6": "",
    }


def test_del_by_id_with_an_anonymous_fixed_address_keeps_it(db_path):
    with IPAM(db_path) as ipam:
        ipam.add(netconf(ipv4_address="10.0.0.5/29"))
        # The lease is nobody's by name: a DEL naming an id and the address leaves it.
        assert ipam.delete(netconf(id="b", ipv4_address="10.0.0.5/29")) == []
        assert ipam.delete(netconf(ipv4_address="10.0.0.5/29")) == ["10.0.0.5"]


def test_dual_stack_anonymous_is_all_or_nothing(db_path):
    dual = {"ipv6_subnet": V6}
    with IPAM(db_path) as ipam:
        ipam.add(netconf(ipv6_address="fd00::3/125", id="x", **dual))  # .2 and ::3
        before = read_buckets(db_path)
        with pytest.raises(AddressInUseError):
            ipam.add(netconf(ipv6_address="fd00::3/125", **dual))
        assert read_buckets(db_path) == before
        result = ipam.add(netconf(**dual))
        assert [ip["address"] for ip in result["ips"]] == ["10.0.0.3/29", "fd00::4/125"]
        assert ipam.delete(netconf(ipv4_address="10.0.0.3/29", ipv6_address="fd00::4/125", **dual)) == [
            "10.0.0.3",
            "fd00::4",
        ]


def test_del_with_neither_id_nor_address_is_code_7(db_path):
    with IPAM(db_path) as ipam:
        ipam.add(netconf())
        before = read_buckets(db_path)
        for no_id in ({}, {"id": ""}):
            with pytest.raises(InvalidConfigError) as caught:
                ipam.delete(netconf(**no_id))
            assert (caught.value.code, caught.value.msg) == (
                7,
                "ip address (ipv4 or ipv6) and id can not all be empty for deletion",
            )
    assert read_buckets(db_path) == before


def test_dual_stack_del_without_an_id_releases_the_one_fixed_address_given(db_path):
    # Neither id nor address is code 7, but one fixed address of two pools is enough: the
    # DEL releases it and leaves the other family's lease alone.
    dual = {"ipv6_subnet": V6}
    with IPAM(db_path) as ipam:
        result = ipam.add(netconf(**dual))
        assert [ip["address"] for ip in result["ips"]] == ["10.0.0.2/29", "fd00::2/125"]
        assert ipam.delete(netconf(ipv4_address="10.0.0.2/29", **dual)) == ["10.0.0.2"]
        assert "fd00::2" in pool_pairs(db_path, V6)
        assert ipam.delete(netconf(ipv6_address="fd00::2/125", **dual)) == ["fd00::2"]
    assert "10.0.0.2" not in pool_pairs(db_path) and "fd00::2" not in pool_pairs(db_path, V6)


def prev_result(*addresses: str) -> dict:
    return {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": a} for a in addresses]}


def test_check_without_an_id_verifies_anonymous_leases(db_path):
    with IPAM(db_path) as ipam:
        anonymous = address_of(ipam.add(netconf("0.4.0")))
        named = address_of(ipam.add(netconf("0.4.0", id="a")))
        checked = netconf("0.4.0")
        checked["prevResult"] = prev_result(anonymous)
        ipam.check(checked)
        for prev in (prev_result(named), prev_result(anonymous, "10.0.0.6/29"), None):
            checked["prevResult"] = prev
            with pytest.raises(ReservationMismatchError):
                ipam.check(checked)
        ipam.delete(netconf(ipv4_address=anonymous))
        checked["prevResult"] = prev_result(anonymous)
        with pytest.raises(ReservationMismatchError, match="not held anonymously"):
            ipam.check(checked)


def test_check_reads_prev_result_addresses_the_fast_parser_leaves_to_netaddr(db_path):
    # An address without its prefix length: the fast parser reads "a.b.c.d/n" only, so
    # netaddr reads this one (as a /32); CHECK must still see it.
    with IPAM(db_path) as ipam:
        anonymous = address_of(ipam.add(netconf("0.4.0"))).split("/")[0]
        named = address_of(ipam.add(netconf("0.4.0", id="a"))).split("/")[0]
        checked = netconf("0.4.0")
        checked["prevResult"] = prev_result(anonymous)
        ipam.check(checked)
        checked["prevResult"] = prev_result(named)
        with pytest.raises(ReservationMismatchError, match=f"{named} in {SUBNET} is not held anonymously"):
            ipam.check(checked)
        by_id = netconf("0.4.0", id="a")
        by_id["prevResult"] = prev_result(anonymous)
        with pytest.raises(ReservationMismatchError, match=f"holds {named} in {SUBNET}, prevResult says {anonymous}$"):
            ipam.check(by_id)


def test_gc_collects_anonymous_leases_of_stale_attachments(db_path):
    with IPAM(db_path) as ipam:
        ipam.add(netconf("1.1.0"), "c1", "eth0")  # .2
        ipam.add(netconf("1.1.0"), "c2", "eth0")  # .3
        ipam.add(netconf("1.1.0"))  # .4: no attachment recorded, never collected
        gc = netconf("1.1.0")
        gc["cni.dev/valid-attachments"] = [{"containerID": "c1", "ifname": "eth0"}]
        assert ipam.gc(gc) == ["10.0.0.3"]
        gc["cni.dev/valid-attachments"] = []
        assert ipam.gc(gc) == ["10.0.0.2"]
    assert {k for k, v in pool_pairs(db_path).items() if isinstance(v, dict)} == {"10.0.0.1", "10.0.0.4"}


def test_plugin_process_and_dump_db_show_an_empty_owner(db_path):
    code, result, stderr = run_plugin("ADD", netconf(), db_path=db_path)
    assert (code, stderr) == (0, "")
    assert result == {
        "cniVersion": "0.3.0",
        "ips": [{"version": "4", "address": "10.0.0.2/29", "gateway": "10.0.0.1"}],
        "routes": [],
        "dns": {},
    }
    dump = [sys.executable, str(ROOT / "tools" / "dump_db.py"), "--db", db_path, "--bucket", SUBNET]
    lines = subprocess.run(dump, capture_output=True, text=True, check=True).stdout.splitlines()
    assert "key=10.0.0.2 - value=" in lines
    document = json.loads(subprocess.run(dump + ["--json"], capture_output=True, text=True, check=True).stdout)
    (entry,) = [e for e in document["entries"] if e["key"] == "10.0.0.2"]
    assert entry["value"]["id"] == "" and entry["value"]["container_id"] == "container-1"
    code, result, _ = run_plugin("DEL", netconf(ipv4_address="10.0.0.2/29"), db_path=db_path)
    assert (code, result) == (0, None)
    assert "10.0.0.2" not in pool_pairs(db_path)
