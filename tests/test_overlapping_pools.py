"""One address space per database: pools whose subnets overlap never hand out one address twice.

Each pool keeps its bucket, and a claim also looks in every other pool bucket of the same
family whose subnet contains the address.  The sequences below were run against the Go
original on one database; where it answered, the answers are the same (the Go plugin kept
every address in one bucket, so an id and an address were one for all its pools).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ecs_ipam import IPAM, kv
from ecs_ipam.errors import AddressInUseError, IdAlreadyAllocatedError, NotAvailableError, PoolExhaustedError
from plugin import check_records, finish_all, read_buckets, result_ips, run_plugin, start_together


def conf(owner, subnet, cni_version="0.3.0", **fields):
    key = "ipv6" if ":" in subnet else "ipv4"
    ipam = {"type": "ecs-ipam", f"{key}-subnet": subnet}
    if owner is not None:
        ipam["id"] = owner
    ipam.update({name.replace("_", "-"): value for name, value in fields.items()})
    return {"cniVersion": cni_version, "name": "n", "ipam": ipam}


def address_of(result):
    return result["ips"][0]["address"]


@pytest.fixture
def ipam(tmp_path):
    with IPAM(str(tmp_path / "eni-ipam.db")) as ipam:
        yield ipam


# --- sequences, as the Go original answered them ------------------------------------------------


def test_widened_pool_skips_the_narrow_pools_leases(ipam):
    # Go: a/25 -> .2; b/24 -> .3 (not .2 again).
    assert address_of(ipam.add(conf("a", "10.0.0.0/25"))) == "10.0.0.2/25"
    assert address_of(ipam.add(conf("b", "10.0.0.0/24"))) == "10.0.0.3/24"
    assert address_of(ipam.add(conf("c", "10.0.0.0/25"))) == "10.0.0.4/25"


def test_narrowed_pool_skips_the_wide_pools_leases(ipam):
    # Go: a/24 -> .2, b/24 -> .3, c/25 -> .4.
    assert address_of(ipam.add(conf("a", "10.0.0.0/24"))) == "10.0.0.2/24"
    assert address_of(ipam.add(conf("b", "10.0.0.0/24"))) == "10.0.0.3/24"
    assert address_of(ipam.add(conf("c", "10.0.0.0/25"))) == "10.0.0.4/25"
    assert address_of(ipam.add(conf("d", "10.0.0.0/24"))) == "10.0.0.5/24"


def test_ipv6_112_inside_64(ipam):
    # Go: a/112 -> ::2, b/64 -> ::3, fixed ::2/64 refused, d/112 -> ::4.
    assert address_of(ipam.add(conf("a", "fd00::/112"))) == "fd00::2/112"
    assert address_of(ipam.add(conf("b", "fd00::/64"))) == "fd00::3/64"
    with pytest.raises(AddressInUseError, match=r"address fd00::2 is already held by 'a'"):
        ipam.add(conf("c", "fd00::/64", ipv6_address="fd00::2/64"))
    assert address_of(ipam.add(conf("d", "fd00::/112"))) == "fd00::4/112"
    assert check_records(ipam.db_path) == {
        "fd00::/112": {"a": "fd00::2", "d": "fd00::4"},
        "fd00::/64": {"b": "fd00::3"},
    }


def test_fixed_addresses_across_overlapping_pools(ipam):
    ipam.add(conf("a", "10.0.0.0/24"))
    ipam.add(conf("b", "10.0.0.0/24"))
    # Go: a fixed .3/25 is refused, .200/24 is handed out.
    with pytest.raises(AddressInUseError, match=r"address 10.0.0.3 is already held by 'b'"):
        ipam.add(conf("d", "10.0.0.0/25", ipv4_address="10.0.0.3/25"))
    assert address_of(ipam.add(conf("e", "10.0.0.0/24", ipv4_address="10.0.0.200/24"))) == "10.0.0.200/24"
    # A fixed address of the narrow pool, then the wide pool's walk and fixed claims.
    assert address_of(ipam.add(conf("f", "10.0.0.0/25", ipv4_address="10.0.0.4/32"))) == "10.0.0.4/32"
    with pytest.raises(AddressInUseError, match=r"address 10.0.0.4 is already held by 'f'"):
        ipam.add(conf("g", "10.0.0.0/24", ipv4_address="10.0.0.4/24"))
    # The walk continues after the last claim (.200), as in the Go plugin.
    assert address_of(ipam.add(conf("g", "10.0.0.0/24"))) == "10.0.0.201/24"
    assert address_of(ipam.add(conf("h", "10.0.0.0/25"))) == "10.0.0.5/25"


def test_an_id_holding_an_address_through_one_pool_holds_it_for_the_other(ipam):
    # Go: "id already exists" for a/24 after a/25.
    ipam.add(conf("a", "10.0.0.0/25"))
    with pytest.raises(IdAlreadyAllocatedError, match=r"id already exists: 'a' holds 10.0.0.2 in 10.0.0.0/25"):
        ipam.add(conf("a", "10.0.0.0/24"))
    with pytest.raises(IdAlreadyAllocatedError, match=r"in 10.0.0.0/25"):
        ipam.add(conf("a", "10.0.0.0/16"))
    # A disjoint pool of the same family is another address space.
    assert address_of(ipam.add(conf("a", "10.0.1.0/24"))) == "10.0.1.2/24"


def test_gateways(ipam):
    ipam.add(conf("a", "10.0.0.0/25"))
    # The same address as the gateway of both pools: no conflict (Go: one GateWay record).
    assert ipam.add(conf("b", "10.0.0.0/24"))["ips"][0]["gateway"] == "10.0.0.1"
    # A gateway on an address another pool handed to a task is refused (Go: "ip of
    # gateway has already been used").
    with pytest.raises(AddressInUseError, match=r"gateway 10.0.0.2 of 10.0.0.0/23 is held by 'a' in 10.0.0.0/25"):
        ipam.add(conf("c", "10.0.0.0/23", ipv4_gateway="10.0.0.2"))
    # Another pool's gateway is never handed to a task, walking or fixed.
    ipam.add(conf("d", "10.0.0.0/26", ipv4_gateway="10.0.0.4"))
    assert address_of(ipam.add(conf("e", "10.0.0.0/25"))) == "10.0.0.6/25"  # .5 went to d
    with pytest.raises(AddressInUseError, match=r"address 10.0.0.4 is already held by 'GateWay'"):
        ipam.add(conf("f", "10.0.0.0/24", ipv4_address="10.0.0.4/24"))


def test_delete_by_id_with_the_widened_pool_releases_the_narrow_lease(ipam):
    # The agent releases with the configuration it has now: after a pool change, what the
    # id took with the old one must go too, or it leaks.  Go: DEL c/24 released c's /25 lease.
    ipam.add(conf("a", "10.0.0.0/25"))
    ipam.add(conf("b", "10.0.0.0/24"))
    assert ipam.delete(conf("a", "10.0.0.0/24")) == ["10.0.0.2"]
    assert ipam.delete(conf("b", "10.0.0.0/25")) == ["10.0.0.3"]
    assert ipam.delete(conf("a", "10.0.0.0/24")) == []
    assert check_records(ipam.db_path) == {"10.0.0.0/24": {}, "10.0.0.0/25": {}}
    # Released addresses are free for either pool again.  Each pool's walk continues
    # after the last address its own configuration released: the /24 after .2.
    assert address_of(ipam.add(conf("c", "10.0.0.0/24"))) == "10.0.0.3/24"
    assert address_of(ipam.add(conf("d", "10.0.0.0/25"))) == "10.0.0.4/25"
    assert address_of(ipam.add(conf("e", "10.0.0.0/25", ipv4_address="10.0.0.2/25"))) == "10.0.0.2/25"


def test_delete_by_fixed_address_releases_it_from_the_pool_that_holds_it(ipam):
    ipam.add(conf("a", "10.0.0.0/25", ipv4_address="10.0.0.9/25"))
    assert ipam.delete(conf("a", "10.0.0.0/24", ipv4_address="10.0.0.9/24")) == ["10.0.0.9"]
    assert check_records(ipam.db_path)["10.0.0.0/25"] == {}


def test_narrowed_pool_and_leases_outside_it(ipam):
    # Narrowing /23 to /24: a lease in the other half stays the id's until it is released.
    ipam.add(conf("gw", "10.0.0.0/23", ipv4_address="10.0.1.5/23"))
    assert address_of(ipam.add(conf("x", "10.0.0.0/24"))) == "10.0.0.2/24"
    with pytest.raises(IdAlreadyAllocatedError):
        ipam.add(conf("gw", "10.0.0.0/24"))
    assert ipam.delete(conf("gw", "10.0.0.0/24")) == ["10.0.1.5"]


def test_check_status_and_gc_see_leases_held_through_an_overlapping_pool(ipam):
    ipam.add(conf("a", "10.0.0.0/25", "1.1.0"), container_id="c-a", ifname="eth0")
    ipam.check(conf("a", "10.0.0.0/24", "1.1.0"))
    # STATUS: a /30 inside the /25 holds .1 (gateway) and .2 (a): nothing is free.
    with pytest.raises(NotAvailableError, match=r"no free address left in 10.0.0.0/30"):
        ipam.status(conf(None, "10.0.0.0/30", "1.1.0"))
    with pytest.raises(PoolExhaustedError):
        ipam.add(conf("b", "10.0.0.0/30"))
    # GC with the wider pool collects a's stale attachment recorded through the /25.
    assert ipam.gc(conf(None, "10.0.0.0/24", "1.1.0") | {"cni.dev/valid-attachments": []}) == ["10.0.0.2"]
    ipam.status(conf(None, "10.0.0.0/30", "1.1.0"))


def test_status_counts_the_union_of_the_overlapping_pools(ipam):
    # /29: .1 to .6 usable; gateway .1.  Leases spread over the /29 and a /30 inside it.
    ipam.add(conf("a", "10.0.0.0/30"))  # .2 (gateway .1 shared)
    for owner in "bcd":
        ipam.add(conf(owner, "10.0.0.0/29"))  # .3, .4, .5
    ipam.status(conf(None, "10.0.0.0/29", "1.1.0"))
    ipam.add(conf("e", "10.0.0.0/29"))  # .6
    with pytest.raises(NotAvailableError):
        ipam.status(conf(None, "10.0.0.0/29", "1.1.0"))
    ipam.delete(conf("a", "10.0.0.0/29"))
    ipam.status(conf(None, "10.0.0.0/29", "1.1.0"))


def test_buckets_that_are_not_pools_are_ignored(ipam):
    ipam.add(conf("a", "10.0.0.0/24"))
    with kv.open_store(ipam.db_path, bucket="10.0.0.2/24") as other:  # not a canonical CIDR
        other.put("10.0.0.3", b"not a lease")
    with kv.open_store(ipam.db_path, bucket="my-agent") as other:
        other.put("10.0.0.3", b"not a lease")
    assert address_of(ipam.add(conf("b", "10.0.0.0/24"))) == "10.0.0.3/24"


# --- real processes ---------------------------------------------------------------------------


def test_plugins_see_one_address_space(tmp_path):
    db = tmp_path / "eni-ipam.db"
    steps = [
        (conf("a", "10.0.0.0/25"), "10.0.0.2/25"),
        (conf("b", "10.0.0.0/24"), "10.0.0.3/24"),
        (conf("c", "10.0.0.0/24", ipv4_address="10.0.0.2/24"), 100),
        (conf("a", "10.0.0.0/24"), 101),
    ]
    for stdin, expected in steps:
        code, result, stderr = run_plugin("ADD", stdin, db_path=db)
        if isinstance(expected, int):
            assert (code, result["code"]) == (1, expected), result
        else:
            assert code == 0 and address_of(result) == expected, (result, stderr)
    code, result, _ = run_plugin(
        "DEL",
        conf("a", "10.0.0.0/24"),
        db_path=db,
        env_overrides={"CNI_CONTAINERID": "", "CNI_IFNAME": "ecs-eth0"},
    )
    assert code == 0
    assert check_records(db) == {"10.0.0.0/24": {"b": "10.0.0.3"}, "10.0.0.0/25": {}}


@pytest.mark.parametrize(
    "subnets",
    [("10.0.0.0/25", "10.0.0.0/24"), pytest.param(("fd00::/112", "fd00::/64"), marks=pytest.mark.slow)],
    ids=["v4-25-in-24", "v6-112-in-64"],
)
def test_a_storm_alternating_between_two_overlapping_pools_never_doubles(tmp_path, subnets):
    db = tmp_path / "eni-ipam.db"
    count = 64
    runs = [
        (
            "ADD",
            conf(f"task-{n:03d}", subnets[n % 2]),
            {"IPAM_DB_CONNECTION_TIMEOUT": "60s", "CNI_CONTAINERID": f"c-{n}"},
        )
        for n in range(count)
    ]
    # A few fixed claims race the walks for the same addresses.
    runs += [
        (
            "ADD",
            conf(
                f"fixed-{n}",
                subnets[n % 2],
                **{
                    ("ipv6-address" if ":" in subnets[0] else "ipv4-address"): (
                        f"fd00::{n + 2:x}/128" if ":" in subnets[0] else f"10.0.0.{n + 2}/32"
                    )
                },
            ),
            {"IPAM_DB_CONNECTION_TIMEOUT": "60s"},
        )
        for n in range(8)
    ]
    plugins = start_together(runs, db)
    outcomes = finish_all(plugins, timeout=240)
    handed: dict[str, str] = {}
    for (_, stdin, _), (code, result, stderr) in zip(runs, outcomes):
        owner = stdin["ipam"]["id"]
        if owner.startswith("fixed-") and code == 1:
            assert result["code"] == 100, result  # a walk got there first
            continue
        assert code == 0, (owner, result, stderr)
        handed[owner] = result_ips(result)[0]
    assert len(set(handed.values())) == len(handed)
    assert all(f"task-{n:03d}" in handed for n in range(count))
    recorded = {}
    for holders in check_records(db).values():
        for owner, address in holders.items():
            assert owner not in recorded
            recorded[owner] = address
    assert recorded == handed
    # Every address is recorded once, across both buckets (gateways included).
    buckets = read_buckets(db)
    addresses = [key for name in subnets for key in buckets[name] if key[0].isdigit() or key.startswith("fd")]
    assert len(addresses) == len(set(addresses)) + 1  # the one gateway, recorded by both pools


# --- leases migrated from the Go plugin --------------------------------------------------------


@pytest.mark.parametrize(
    "first, then", [("169.254.172.0/24", "169.254.172.0/22"), ("169.254.172.0/22", "169.254.172.0/24")]
)
def test_migrated_leases_are_skipped_by_every_overlapping_pool(tmp_path, first, then):
    fixtures = Path(__file__).resolve().parent / "fixtures" / "boltdb"
    db = tmp_path / "eni-ipam.db"
    shutil.copyfile(fixtures / "ecs-agent-classic-2019.db", db)
    entries = json.loads((fixtures / "ecs-agent-classic-2019.expected.json").read_text())["entries"]
    migrated = {key: owner for key, owner in entries.items() if key[0].isdigit() and owner != "GateWay"}

    handed = {}
    with IPAM(str(db)) as ipam:
        for n in range(40):
            subnet = (first, then)[n % 2]
            handed[f"new-{n}"] = ipam.add(conf(f"new-{n}", subnet))["ips"][0]["address"].split("/")[0]
        # A migrated owner still holds its lease, through whichever pool adopted it.
        owner = next(iter(migrated.values()))
        with pytest.raises(IdAlreadyAllocatedError):
            ipam.add(conf(owner, then))
    assert not set(handed.values()) & set(migrated)
    assert len(set(handed.values())) == len(handed)
    recorded = {}
    for holders in check_records(db).values():
        recorded.update({address: owner for owner, address in holders.items()})
    assert {address: recorded[address] for address in migrated} == migrated
