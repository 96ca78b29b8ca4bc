"""Security: the database is private to its owner, and a configuration names no file or bucket.

Ids and subnets come from whoever writes the network configuration; they are data.  An
id is a value (and, hashed when it must be, part of a key) inside the subnet's bucket;
a subnet names its bucket only through its canonical CIDR.
"""

from __future__ import annotations

import os
import stat

import pytest

from ecs_ipam import kv
from plugin import V4_SUBNET, V6_SUBNET, add_ok, check_records, netconf, read_buckets, result_ips, run_plugin


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_database_and_lock_file_are_private_whatever_the_umask(tmp_path, umask):
    db_path = tmp_path / "eni-ipam.db"
    previous = os.umask(umask)  # inherited by the plugin process
    try:
        add_ok(db_path, "task-1")
    finally:
        os.umask(previous)
    for path in (db_path, tmp_path / "eni-ipam.db-lock"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert sorted(os.listdir(tmp_path)) == ["eni-ipam.db", "eni-ipam.db-lock"]


def hostile_ids(tmp_path) -> list[str]:
    return [
        "../outside",
        "../../../../../../outside",
        str(tmp_path / "outside"),
        str(tmp_path / "data" / "eni-ipam.db-lock"),
        "IPAM",
        "go-plugin-IPAM",
        V4_SUBNET,
        V6_SUBNET,
        "lastKnownIP",
        "lastKnownIPv6",
        "169.254.172.1",
        "id/task-1",
        "id#" + "0" * 64,
        "task-1",
        "nul\x00inside",
        "newline\ninside",
        "\u202eexe.txt",
        "タスク-１",
        "🙂",
        " ",
        "x" * 65_536,  # the longest id accepted (64 KiB): hashed into its index key
    ]


def test_ids_are_data_never_paths_or_keys_of_their_own(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "eni-ipam.db"
    ids = hostile_ids(tmp_path)
    held = {}
    for owner in ids:
        v4, v6 = result_ips(add_ok(db_path, owner, ipv6_subnet=V6_SUBNET))
        held[owner] = (v4, v6)
    assert len({v4 for v4, _ in held.values()}) == len(ids)
    assert check_records(db_path) == {
        V4_SUBNET: {owner: v4 for owner, (v4, _) in held.items()},
        V6_SUBNET: {owner: v6 for owner, (_, v6) in held.items()},
    }
    assert sorted(read_buckets(db_path)) == sorted([V4_SUBNET, V6_SUBNET])
    assert sorted(os.listdir(tmp_path)) == ["data"]
    assert sorted(os.listdir(data)) == ["eni-ipam.db", "eni-ipam.db-lock"]

    for owner in ids:
        conf = netconf(owner, ipv6_subnet=V6_SUBNET)
        assert run_plugin("DEL", conf, {"CNI_CONTAINERID": ""}, db_path) == (0, None, "")
    assert check_records(db_path) == {V4_SUBNET: {}, V6_SUBNET: {}}
    assert sorted(os.listdir(tmp_path)) == ["data"]


@pytest.mark.parametrize("owner", ["GateWay", "GateWayV6"])
def test_an_id_cannot_pose_as_the_gateway(tmp_path, owner):
    db_path = tmp_path / "eni-ipam.db"
    add_ok(db_path, "task-1", ipv6_subnet=V6_SUBNET)
    gateways = {
        bucket: pairs[address]
        for bucket, pairs in read_buckets(db_path).items()
        for address in pairs
        if address in ("169.254.172.1", "fd00:ec2::172:1")
    }
    code, error, _ = run_plugin("ADD", netconf(owner, ipv6_subnet=V6_SUBNET), db_path=db_path)
    assert (code, error["code"]) == (1, 101), error
    # A DEL by that id releases no gateway.
    assert run_plugin("DEL", netconf(owner, ipv6_subnet=V6_SUBNET), db_path=db_path) == (0, None, "")
    after = read_buckets(db_path)
    assert {
        bucket: after[bucket][address]
        for bucket in gateways
        for address in after[bucket]
        if address in ("169.254.172.1", "fd00:ec2::172:1")
    } == gateways
    add_ok(db_path, "task-2", ipv6_subnet=V6_SUBNET)


def test_a_subnet_names_its_bucket_only_through_its_canonical_cidr(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    spellings = [
        ("169.254.172.0/22", "fd00:ec2::172:0/112"),
        ("169.254.173.77/22", "fd00:ec2:0:0:0:0:172:0/112"),
        ("169.254.175.255/22", "FD00:EC2::172:FFFF/112"),
        ("169.254.172.1/22", "fd00:0ec2::172:9/112"),
    ]
    # The gateways are given: a spelling with host bits moves the default gateway (the written
    # address + 1, as the Go plugin does), and this test is about the bucket's name alone.
    gateways = {"ipv4_gateway": "169.254.172.1", "ipv6_gateway": "fd00:ec2::172:1"}
    for n, (v4, v6) in enumerate(spellings):
        add_ok(db_path, f"task-{n}", ipv4_subnet=v4, ipv6_subnet=v6, **gateways)
    assert sorted(read_buckets(db_path)) == sorted([V4_SUBNET, V6_SUBNET])
    assert all(len(holders) == len(spellings) for holders in check_records(db_path).values())


@pytest.mark.parametrize(
    "subnet",
    [
        "IPAM",
        "go-plugin-IPAM",
        "agent",
        "../../outside/22",
        "169.254.172.0/22/../../outside",
        "outside/22",
        "169.254.172.0/22\x00",
        "169.254.172.0%2F22",
    ],
)
def test_a_subnet_that_is_not_a_cidr_names_nothing(tmp_path, subnet):
    data = tmp_path / "data"
    data.mkdir()
    db_path = data / "eni-ipam.db"
    with kv.open_store(str(db_path), bucket="agent") as store:
        store.put("note", b"another program's data")
    before = read_buckets(db_path)
    for command in ("ADD", "DEL"):
        code, error, _ = run_plugin(command, netconf("task-1", ipv4_subnet=subnet), db_path=db_path)
        assert (code, error["code"]) == (1, 7), error
    assert read_buckets(db_path) == before
    assert sorted(os.listdir(tmp_path)) == ["data"]
    assert sorted(os.listdir(data)) == ["eni-ipam.db", "eni-ipam.db-lock"]


def test_the_plugin_leaves_other_programs_buckets_alone(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    with kv.open_store(str(db_path), bucket="agent") as store, store.transaction() as tx:
        for key in ("169.254.172.2", "lastKnownIP", "id/task-1", "task-1"):
            tx.put(key, b"agent's own " + key.encode())
    before = read_buckets(db_path)["agent"]
    for owner in ("task-1", "task-2", "agent"):
        add_ok(db_path, owner)
    assert run_plugin("DEL", netconf("task-1"), db_path=db_path) == (0, None, "")
    assert read_buckets(db_path)["agent"] == before
    assert set(check_records(db_path)[V4_SUBNET]) == {"task-2", "agent"}
