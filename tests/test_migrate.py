"""Migration of the Go plugin's bolt files and adoption of their leases, on the real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import msgpack
import netaddr
import pytest

from ecs_ipam import IPAM, boltdb, kv
from ecs_ipam.config import parse_netconf
from ecs_ipam.errors import (
    AddressInUseError,
    CorruptDatabaseError,
    DatabaseAliasError,
    NotADatabaseError,
    NotAvailableError,
    PoolExhaustedError,
    ReservationMismatchError,
)
from ecs_ipam.ipam import status
from ecs_ipam.kv.dbfile import file_kind
from ecs_ipam.legacy import adopt
from ecs_ipam.migrate import migrate_in_place
from ecs_ipam.pool_store import LEGACY_BUCKET, decode, encode, id_index_key

FIXTURES = Path(__file__).parent / "fixtures" / "boltdb"
NAMES = [
    "ecs-agent-classic-2019",
    "ecs-agent-classic-2026",
    "ecs-agent-dualstack-2026",
    "full-slash20-2026",
]
# What the Go plugin would hand out next after each file's last-known addresses.
NEXT_ADDRESS = {
    "ecs-agent-classic-2019": ["169.254.175.201/22"],
    "ecs-agent-classic-2026": ["169.254.175.201/22"],
    "ecs-agent-dualstack-2026": ["169.254.172.17/22", "fd00:ec2::172:11/112"],
    # 10.1.15.253 and .254 are held; the walk wraps and meets id100's released address.
    "full-slash20-2026": ["10.1.0.102/20"],
}
GATEWAYS = {"GateWay", "GateWayV6"}


def fixture(name: str) -> Path:
    return FIXTURES / f"{name}.db"


def expected_document(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.expected.json").read_text())


def expected(name: str) -> dict[str, str]:
    return expected_document(name)["entries"]


def bolt_copy(tmp_path: Path, name: str) -> str:
    path = tmp_path / "eni-ipam.db"
    shutil.copyfile(fixture(name), path)
    return str(path)


def netconf(subnets: list[str], owner: str, version: str = "0.3.0", **extra) -> dict:
    ipam = {"id": owner, **extra}
    for subnet in subnets:
        family = "ipv6" if ":" in subnet else "ipv4"
        ipam[f"{family}-subnet"] = subnet
    return {"cniVersion": version, "name": "ecs", "ipam": ipam}


def result_addresses(result: dict) -> list[str]:
    return [ip["address"] for ip in result["ips"]]


def bucket_pairs(path: str, bucket: str) -> dict[str, object]:
    with kv.open_store(path, bucket, read_only=True) as store:
        if bucket not in store.buckets():
            return {}
        return {pair.key: decode(pair.value) for pair in store.list()}


def migrated_leases(name: str) -> dict[str, str]:
    """Address text (as ecs-ipam writes it) -> owner, for every task lease of a fixture."""
    leases = {}
    for key, value in expected(name).items():
        if key.startswith("lastKnown") or value in GATEWAYS:
            continue
        address = key[1:] if key.startswith("6") and ":" in key else key
        leases[str(netaddr.IPAddress(address))] = value
    return leases


# --- the migration itself ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_migration_keeps_every_pair_verbatim(tmp_path, name):
    path = bolt_copy(tmp_path, name)

    moved = migrate_in_place(path, timeout=5)

    assert moved == expected(name)
    assert file_kind(path) == "lmdb"
    assert kv.list_buckets(path) == [LEGACY_BUCKET]
    assert bucket_pairs(path, LEGACY_BUCKET) == expected(name)
    with kv.open_store(path, LEGACY_BUCKET, read_only=True) as store:
        raw = {pair.key: pair.value for pair in store.list()}
    assert raw == {key: msgpack.packb(value) for key, value in expected(name).items()}
    assert Path(path + ".bolt").read_bytes() == fixture(name).read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["eni-ipam.db", "eni-ipam.db.bolt"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_a_second_migration_finds_nothing_to_do(tmp_path):
    path = bolt_copy(tmp_path, "ecs-agent-classic-2019")
    migrate_in_place(path, timeout=5)
    database = Path(path).read_bytes()

    assert migrate_in_place(path, timeout=5) is None
    assert Path(path).read_bytes() == database


def test_nothing_happens_to_what_is_no_bolt_file(tmp_path):
    path = tmp_path / "eni-ipam.db"
    path.write_bytes(b"not a database, and not ours to convert" * 100)

    assert migrate_in_place(str(path), timeout=5) is None
    with pytest.raises(NotADatabaseError, match="is not an LMDB database"):
        IPAM(str(path)).add(netconf(["10.0.0.0/24"], "a"))
    assert os.listdir(tmp_path) == ["eni-ipam.db"]


def test_bolt_file_without_the_ipam_bucket_migrates_as_empty(tmp_path):
    path = tmp_path / "eni-ipam.db"
    path.write_bytes(fixture("ecs-agent-classic-2019").read_bytes().replace(b"IPAM", b"IPAX"))
    with boltdb.BoltFile(path) as db:
        assert db.buckets() == ["IPAX"]

    assert migrate_in_place(str(path), timeout=5) == {}
    with IPAM(str(path)) as ipam:
        assert result_addresses(ipam.add(netconf(["169.254.172.0/22"], "a"))) == ["169.254.172.2/22"]


def test_damaged_bolt_file_is_left_untouched(tmp_path):
    path = tmp_path / "eni-ipam.db"
    damaged = fixture("ecs-agent-classic-2019").read_bytes()[: 3 * 4096]
    path.write_bytes(damaged)

    with pytest.raises(CorruptDatabaseError, match="truncated"):
        IPAM(str(path)).add(netconf(["169.254.172.0/22"], "a"))
    assert path.read_bytes() == damaged
    assert os.listdir(tmp_path) == ["eni-ipam.db"]


def test_a_go_plugin_waiting_on_the_replaced_file_cannot_use_it(tmp_path):
    # A Go plugin that opened the file before the switch gets its lock afterwards: the
    # file it holds must not be one bolt accepts, or its lease would go unseen.
    path = bolt_copy(tmp_path, "ecs-agent-classic-2019")
    late_plugin = os.open(path, os.O_RDWR)
    try:
        migrate_in_place(path, timeout=5)
        with pytest.raises(CorruptDatabaseError, match="no valid meta page"):
            boltdb.BoltFile(f"/proc/self/fd/{late_plugin}")
    finally:
        os.close(late_plugin)
    assert Path(path + ".bolt").read_bytes() == fixture("ecs-agent-classic-2019").read_bytes()


def test_a_bolt_file_with_another_name_is_not_migrated(tmp_path):
    # The other name would keep the bolt file: a Go plugin, or a migration through that
    # name, would use it as a second database (tests/test_one_database_file.py).
    path = bolt_copy(tmp_path, "ecs-agent-classic-2019")
    os.link(path, tmp_path / "operator-copy.db")

    with pytest.raises(DatabaseAliasError, match=r"operator-copy\.db"):
        migrate_in_place(path, timeout=5)

    assert Path(path).read_bytes() == fixture("ecs-agent-classic-2019").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["eni-ipam.db", "operator-copy.db"]


# --- adoption by the plugin ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_first_add_adopts_every_lease_and_continues_after_the_last_known(tmp_path, name):
    path = bolt_copy(tmp_path, name)
    subnets = expected_document(name)["subnets"]
    leases = migrated_leases(name)

    with IPAM(path) as ipam:
        result = ipam.add(netconf(subnets, "new-task"))

    assert result_addresses(result) == NEXT_ADDRESS[name]
    assert LEGACY_BUCKET not in kv.list_buckets(path)
    held = {}
    for subnet in subnets:
        pairs = bucket_pairs(path, subnet)
        family = 6 if ":" in subnet else 4
        gateway = str(netaddr.IPNetwork(subnet).network + 1)
        assert pairs[gateway] == {"id": "GateWay" if family == 4 else "GateWayV6"}
        for key, record in pairs.items():
            if isinstance(record, dict) and record.get("migrated"):
                assert record == {
                    "id": record["id"],
                    "container_id": None,
                    "ifname": None,
                    "allocated_at": None,
                    "migrated": True,
                }
                held[key] = record["id"]
                assert pairs[id_index_key(record["id"])] == key
    assert held == leases


def first_free_after(subnet: str, start: str, held: set[str]) -> str:
    """The Go plugin's walk: the first address after *start* not in *held*, wrapping."""
    network = netaddr.IPNetwork(subnet)
    last = network.last - (1 if network.version == 4 else 0)
    candidate = netaddr.IPAddress(start).value
    for _ in range(network.size):
        candidate = network.first + 1 if candidate >= last else candidate + 1
        text = str(netaddr.IPAddress(candidate, network.version))
        if text not in held:
            return f"{text}/{network.prefixlen}"
    raise AssertionError("full")


@pytest.mark.parametrize("name", NAMES)
def test_del_by_a_migrated_id_releases_its_addresses(tmp_path, name):
    path = bolt_copy(tmp_path, name)
    subnets = expected_document(name)["subnets"]
    leases = migrated_leases(name)
    owners = sorted(set(leases.values()))
    owner = owners[len(owners) // 3]
    owned = sorted(address for address, who in leases.items() if who == owner)
    assert len(owned) == len(subnets)

    with IPAM(path) as ipam:
        # The first command after the upgrade may well be a DEL.
        assert sorted(ipam.delete(netconf(subnets, owner))) == owned
        assert ipam.delete(netconf(subnets, owner)) == []
        again = ipam.add(netconf(subnets, "new-task"))

    still_held = set(leases) - set(owned) | {str(netaddr.IPNetwork(s).network + 1) for s in subnets}
    # As in the Go plugin, a release moves the last-known pointer to the released address.
    expected_next = [
        first_free_after(subnet, next(a for a in owned if a in netaddr.IPNetwork(subnet)), still_held)
        for subnet in subnets
    ]
    assert result_addresses(again) == expected_next
    for subnet in subnets:
        pairs = bucket_pairs(path, subnet)
        assert not set(owned) & set(pairs)
        assert id_index_key(owner) not in pairs


def test_next_add_after_a_migrated_release_continues_after_it(tmp_path):
    path = bolt_copy(tmp_path, "ecs-agent-classic-2019")
    subnet = "169.254.172.0/22"
    with IPAM(path) as ipam:
        assert ipam.delete(netconf([subnet], "0a:00:00:00:00:03")) == ["169.254.172.5"]
        # .6 is still held by 0a:00:00:00:00:04: the walk goes on after it.
        assert result_addresses(ipam.add(netconf([subnet], "x"))) == ["169.254.172.7/22"]


def test_a_migrated_address_cannot_be_claimed_as_a_fixed_address(tmp_path):
    path = bolt_copy(tmp_path, "ecs-agent-classic-2019")
    with IPAM(path) as ipam, pytest.raises(AddressInUseError, match="0a:00:00:00:00:03"):
        ipam.add(netconf(["169.254.172.0/22"], "thief", **{"ipv4-address": "169.254.172.5/22"}))
    # The failed ADD wrote nothing, the adoption included.
    assert bucket_pairs(path, LEGACY_BUCKET) == expected("ecs-agent-classic-2019")


def test_a_migrated_id_cannot_allocate_twice(tmp_path):
    path = bolt_copy(tmp_path, "ecs-agent-classic-2019")
    with IPAM(path) as ipam, pytest.raises(Exception, match="id already exists"):
        ipam.add(netconf(["169.254.172.0/22"], "0a:00:00:00:00:03"))


def test_check_sees_migrated_leases_without_writing(tmp_path):
    path = bolt_copy(tmp_path, "ecs-agent-dualstack-2026")
    subnets = expected_document("ecs-agent-dualstack-2026")["subnets"]
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "169.254.172.10/22"}, {"address": "fd00:ec2::172:a/112"}]}
    with IPAM(path) as ipam:
        ipam.check(dict(netconf(subnets, "/var/run/netns/task8", "1.0.0"), prevResult=prev))
        with pytest.raises(ReservationMismatchError, match=r"holds 169\.254\.172\.10"):
            ipam.check(
                dict(
                    netconf(subnets, "/var/run/netns/task8", "1.0.0"),
                    prevResult={"cniVersion": "1.0.0", "ips": [{"address": "169.254.172.11/22"}]},
                )
            )
        with pytest.raises(ReservationMismatchError, match="holds no address"):
            ipam.check(netconf(subnets, "/var/run/netns/task7", "1.0.0"))
    # CHECK reads: the legacy bucket still waits for a write.
    assert bucket_pairs(path, LEGACY_BUCKET) == expected("ecs-agent-dualstack-2026")


def test_status_counts_leases_not_yet_adopted(tmp_path):
    store = kv.open_store(str(tmp_path / "db"))
    try:
        with store.transaction() as tx:
            legacy = tx.bucket(LEGACY_BUCKET)
            for host, owner in [
                ("10.9.0.1", "GateWay"),
                ("10.9.0.2", "a"),
                ("10.9.0.3", "b"),
                ("10.9.0.4", "c"),
                ("10.9.0.5", "d"),
                ("10.9.0.6", "e"),
            ]:
                legacy.put(host, msgpack.packb(owner))
        conf = parse_netconf(netconf(["10.9.0.0/29"], "z", "1.1.0"))
        with pytest.raises(NotAvailableError, match=r"10\.9\.0\.0/29"):
            status(store, conf)
        # STATUS only reads: the leases wait for the first write to be adopted.
        assert len(store.bucket(LEGACY_BUCKET).list()) == 6
    finally:
        store.close()


def test_each_family_is_adopted_when_its_subnet_first_appears(tmp_path):
    name = "ecs-agent-dualstack-2026"
    path = bolt_copy(tmp_path, name)
    leases = migrated_leases(name)

    with IPAM(path) as ipam:
        ipam.add(netconf(["169.254.172.0/22"], "v4-only"))
        waiting = bucket_pairs(path, LEGACY_BUCKET)
        assert waiting == {k: v for k, v in expected(name).items() if k.startswith(("6", "lastKnownIPv6"))}
        result = ipam.add(netconf(["fd00:ec2::172:0/112"], "v6-only"))

    assert result_addresses(result) == ["fd00:ec2::172:11/112"]
    assert LEGACY_BUCKET not in kv.list_buckets(path)
    v6 = bucket_pairs(path, "fd00:ec2::172:0/112")
    assert {k: v["id"] for k, v in v6.items() if isinstance(v, dict) and v.get("migrated")} == {
        a: o for a, o in leases.items() if ":" in a
    }


def test_whichever_subnet_comes_first_takes_only_its_own_addresses(tmp_path):
    name = "ecs-agent-classic-2019"
    path = bolt_copy(tmp_path, name)
    leases = migrated_leases(name)

    with IPAM(path) as ipam:
        ipam.add(netconf(["169.254.172.0/27"], "narrow"))
        ipam.add(netconf(["169.254.175.192/26"], "elsewhere"))

    narrow = bucket_pairs(path, "169.254.172.0/27")
    elsewhere = bucket_pairs(path, "169.254.175.192/26")
    waiting = bucket_pairs(path, LEGACY_BUCKET)
    owners = {}
    for pairs in (narrow, elsewhere):
        owners.update({k: v["id"] for k, v in pairs.items() if isinstance(v, dict) and v.get("migrated")})
    assert owners == {
        a: o
        for a, o in leases.items()
        if netaddr.IPAddress(a) in netaddr.IPNetwork("169.254.172.0/27")
        or netaddr.IPAddress(a) in netaddr.IPNetwork("169.254.175.192/26")
    }
    # The /22's gateway (.1) lies in the /27 too; the /27's own one is the same address.
    assert narrow["169.254.172.1"] == {"id": "GateWay"}
    # lastKnownIP (169.254.175.200) went to the subnet holding it; the walk continued after it.
    assert elsewhere["lastKnownIP"] == "169.254.175.201"
    assert set(waiting) == {
        "169.254.172.32",
        "169.254.172.33",
        "169.254.172.34",
        "169.254.172.35",
        "169.254.172.36",
        "169.254.172.37",
    }


def test_adoption_keeps_what_the_pool_bucket_already_records(tmp_path):
    store = kv.open_store(str(tmp_path / "db"))
    conf = parse_netconf(netconf(["10.9.0.0/24"], "z"))
    pool = conf.pools[0]
    try:
        with store.transaction() as tx:
            tx.bucket(pool.bucket).put(
                "10.9.0.2", encode({"id": "newer", "container_id": "c", "ifname": "eth0", "allocated_at": 1.0})
            )
            tx.bucket(pool.bucket).put(id_index_key("newer"), encode("10.9.0.2"))
            legacy = tx.bucket(LEGACY_BUCKET)
            legacy.put("10.9.0.2", msgpack.packb("older"))
            legacy.put("10.9.0.3", msgpack.packb("newer"))
            legacy.put("somebody-elses-key", msgpack.packb("kept"))
        with store.transaction() as tx:
            adopt(tx, pool)
            adopt(tx, pool)  # nothing left to take: a re-run changes nothing
        pairs = {p.key: decode(p.value) for p in store.bucket(pool.bucket).list()}
        assert pairs["10.9.0.2"]["id"] == "newer"
        assert pairs["10.9.0.3"]["id"] == "newer"
        assert pairs[id_index_key("newer")] == "10.9.0.2"  # its live index is kept
        assert id_index_key("older") not in pairs
        assert [p.key for p in store.bucket(LEGACY_BUCKET).list()] == ["somebody-elses-key"]
    finally:
        store.close()


def test_filling_the_slash20_never_hands_out_a_migrated_address(tmp_path):
    name = "full-slash20-2026"
    path = bolt_copy(tmp_path, name)
    subnet = netaddr.IPNetwork("10.1.0.0/20")
    leases = migrated_leases(name)
    free = subnet.size - 2 - 1 - len(leases)  # network, broadcast, gateway
    assert free == 571

    handed_out = []
    with IPAM(path) as ipam:
        for n in range(free):
            handed_out.append(result_addresses(ipam.add(netconf([str(subnet)], f"filler{n}")))[0])
        with pytest.raises(PoolExhaustedError, match=r"10\.1\.0\.0/20"):
            ipam.add(netconf([str(subnet)], "one-too-many"))

    addresses = [a.split("/")[0] for a in handed_out]
    assert len(set(addresses)) == free
    assert not set(addresses) & set(leases)
    # The walk went round once from the migrated last-known address: ascending after the wrap.
    assert addresses[0] == "10.1.0.102"
    assert [netaddr.IPAddress(a) for a in addresses] == sorted(netaddr.IPAddress(a) for a in addresses)


def test_a_host_that_never_ran_the_go_plugin_never_loads_the_migration_code(tmp_path):
    probe = (
        "import sys\n"
        "from ecs_ipam import IPAM, ipam\n"
        "with IPAM(sys.argv[1]) as plugin:\n"
        "    plugin.add({'cniVersion': '0.3.0', 'ipam': {'id': 'a', 'ipv4-subnet': '10.0.0.0/24'}})\n"
        "    plugin.delete({'cniVersion': '0.3.0', 'ipam': {'id': 'a', 'ipv4-subnet': '10.0.0.0/24'}})\n"
        "print(sorted(m for m in sys.modules if m.endswith(('.legacy', '.migrate', '.boltdb'))))\n"
        "from ecs_ipam import legacy\n"
        "assert ipam.LEGACY_BUCKET == legacy.LEGACY_BUCKET\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    run = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "db")], capture_output=True, text=True, env=env, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "[]\n"
