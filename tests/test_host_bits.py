"""Subnets written with host bits (``10.0.0.5/29``), answered as the Go plugin answers them.

Every expected answer here was recorded from the Go plugin 2026.01 (the same answers, in
long random sequences, are in tests/fixtures/transcripts/go-2026.01-host-bits.json): the
default gateway is the written address + 1, the walk starts at the subnet's first host and
includes the written address, and the bucket is the subnet's canonical CIDR.  Where the
Go plugin answers a gateway no task can use, ecs-ipam refuses the configuration.
"""

from __future__ import annotations

import uuid

import pytest

from ecs_ipam import kv
from ecs_ipam.errors import INVALID_NETWORK_CONFIG, InvalidConfigError, PoolExhaustedError
from ecs_ipam.ipam import IPAM


@pytest.fixture(params=["lmdb", "etcd"])
def db(request, tmp_path):
    if request.param == "lmdb":
        return str(tmp_path / "ipam.db")
    return f"{request.getfixturevalue('etcd').url}/host-bits-{uuid.uuid4().hex}"


def netconf(owner_id: str | None = None, **ipam: str) -> dict:
    fields = {key.replace("_", "-"): value for key, value in ipam.items()}
    if owner_id is not None:
        fields["id"] = owner_id
    return {"cniVersion": "0.3.0", "name": "n", "ipam": {"type": "ecs-ipam", **fields}}


def answer(result: dict) -> list[tuple[str, str]]:
    return [(ip["address"], ip["gateway"]) for ip in result["ips"]]


def test_the_walk_starts_at_the_first_host_and_skips_the_written_address_plus_one(db):
    with IPAM(db) as ipam:
        got = [answer(ipam.add(netconf(owner, ipv4_subnet="10.0.0.5/29"))) for owner in "abcde"]
        assert got == [[(f"10.0.0.{i}/29", "10.0.0.6")] for i in range(1, 6)]
        with pytest.raises(PoolExhaustedError):
            ipam.add(netconf("f", ipv4_subnet="10.0.0.5/29"))
        assert ipam.delete(netconf("b", ipv4_subnet="10.0.0.5/29")) == ["10.0.0.2"]
        assert answer(ipam.add(netconf("h", ipv4_subnet="10.0.0.5/29"))) == [("10.0.0.2/29", "10.0.0.6")]
    assert sorted(kv.list_buckets(db)) == ["10.0.0.0/29"]


def test_ipv6(db):
    with IPAM(db) as ipam:
        assert answer(ipam.add(netconf("a", ipv6_subnet="fd00::5/120"))) == [("fd00::1/120", "fd00::6")]
        assert answer(ipam.add(netconf("b", ipv6_subnet="fd00::5/120"))) == [("fd00::2/120", "fd00::6")]
        # The last address of an IPv6 subnet is a host: the Go plugin's gateway there is usable.
        assert answer(ipam.add(netconf("c", ipv6_subnet="fd00:1::fe/120"))) == [("fd00:1::1/120", "fd00:1::ff")]
    assert sorted(kv.list_buckets(db)) == ["fd00:1::/120", "fd00::/120"]


def test_a_given_gateway_wins_over_the_written_address(db):
    with IPAM(db) as ipam:
        conf = netconf("a", ipv4_subnet="10.0.0.5/29", ipv4_gateway="10.0.0.3")
        assert answer(ipam.add(conf)) == [("10.0.0.1/29", "10.0.0.3")]
        conf = netconf("b", ipv4_subnet="10.0.0.5/29", ipv4_gateway="10.0.0.3")
        assert answer(ipam.add(conf)) == [("10.0.0.2/29", "10.0.0.3")]
        # Written at the broadcast address - 1: unusable only as the default.
        conf = netconf("c", ipv4_subnet="10.0.1.6/29", ipv4_gateway="10.0.1.1")
        assert answer(ipam.add(conf)) == [("10.0.1.2/29", "10.0.1.1")]


def test_fixed_addresses(db):
    with IPAM(db) as ipam:
        # The written address itself is a host like any other, and a fixed address keeps its prefix.
        conf = netconf("a", ipv4_subnet="10.0.0.5/29", ipv4_address="10.0.0.5/29")
        assert answer(ipam.add(conf)) == [("10.0.0.5/29", "10.0.0.6")]
        conf = netconf("b", ipv4_subnet="10.0.0.5/29", ipv4_address="10.0.0.2/24")
        assert answer(ipam.add(conf)) == [("10.0.0.2/24", "10.0.0.6")]
        # The default gateway is no task's (the Go plugin: "already in use"; see fixed-is-gateway).
        with pytest.raises(InvalidConfigError, match="is the gateway address"):
            ipam.add(netconf("c", ipv4_subnet="10.0.0.5/29", ipv4_address="10.0.0.6/29"))


@pytest.mark.parametrize(
    ("field", "subnet", "where"),
    [
        ("ipv4", "10.0.0.6/29", "is the broadcast address of 10.0.0.0/29"),  # Go: gateway 10.0.0.7
        ("ipv4", "10.0.0.7/29", "is outside 10.0.0.0/29"),  # Go: gateway 10.0.0.8
        ("ipv4", "10.0.0.2/30", "is the broadcast address of 10.0.0.0/30"),
        ("ipv6", "fd00::ff/120", "is outside fd00::/120"),  # Go: gateway fd00::100
        (
            "ipv6",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/120",
            "is outside ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120",
        ),
    ],
)
@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_an_unusable_default_gateway_is_refused(db, field, subnet, where, command):
    conf = netconf("a", **{f"{field}_subnet": subnet})
    with IPAM(db) as ipam:
        ipam.add(netconf("other", ipv4_subnet="192.168.0.0/24"))  # a database that exists
        before = snapshot(db)
        with pytest.raises(InvalidConfigError) as refused:
            (ipam.add if command == "ADD" else ipam.delete)(conf)
    assert refused.value.code == INVALID_NETWORK_CONFIG
    assert str(refused.value.msg) == (
        f"ipam.{field}-subnet {subnet}: the default gateway, the written address + 1, {where}; "
        f"write the subnet as {where.rsplit(' ', 1)[1]} or set ipam.{field}-gateway"
    )
    assert snapshot(db) == before


def snapshot(db: str) -> dict[str, list[tuple[str, bytes, int]]]:
    with kv.open_store(db, read_only=True) as store:
        return {name: [tuple(pair) for pair in store.bucket(name).list()] for name in store.buckets()}
