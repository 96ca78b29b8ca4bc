"""ecs-ipamctl as an operator runs it: a process, against databases the plugin itself wrote.

Leases come from real plugin processes (tests/plugin.py), netns paths are real files or
real network namespaces that disappear, and the same commands run against a real etcd.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgpack
import pytest

from ecs_ipam import kv
from ecs_ipam.ctl import cli
from ecs_ipam.pool_store import LEGACY_BUCKET, id_index_key
from plugin import (
    ROOT,
    V4_SUBNET,
    V6_SUBNET,
    PausedTransaction,
    check_records,
    files_snapshot,
    netconf,
    read_buckets,
    result_ips,
    run_plugin,
)

LEASE_KEYS = ["address", "subnet", "id", "container_id", "ifname", "allocated_at", "owner"]
USAGE_KEYS = ["subnet", "capacity", "allocated", "stale"]
GAUGES = (
    "ecs_ipam_pool_capacity_addresses",
    "ecs_ipam_pool_allocated_addresses",
    "ecs_ipam_pool_stale_addresses",
)
BOLT_FIXTURE = ROOT / "tests" / "fixtures" / "boltdb" / "ecs-agent-classic-2019.db"


def ctl(
    *args: str, db: str | os.PathLike | None = None, env: dict | None = None, stdin: str = ""
) -> tuple[int, str, str]:
    """Run ``python -m ecs_ipam.ctl`` once; return (exit status, stdout, stderr).

    :param db: passed as ``--db`` (before the command), when given.
    :raises AssertionError: a traceback was printed, whatever the exit status.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "IPAM_", "ECS_CNI_"))}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    environment["ECS_CNI_LOG_FILE"] = os.devnull
    environment.update(env or {})
    argv = [sys.executable, "-m", "ecs_ipam.ctl"]
    if db is not None:
        argv += ["--db", os.fspath(db)]
    proc = subprocess.run(
        argv + list(args), input=stdin, capture_output=True, text=True, env=environment, cwd=ROOT, timeout=60
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc.returncode, proc.stdout, proc.stderr


def ok(*args: str, **kwargs) -> str:
    code, out, err = ctl(*args, **kwargs)
    assert (code, err) == (0, ""), (code, err)
    return out


def leases_of(db, *args: str, **kwargs) -> list[dict]:
    document = json.loads(ok(*args, "--json", db=db, **kwargs))
    keys = [*LEASE_KEYS, "reason"] if args[0] == "stale" else LEASE_KEYS
    assert all(list(lease) == keys for lease in document), document
    return document


def add(db, owner: str, container: str = "container-1", **fields) -> list[str]:
    code, result, stderr = run_plugin("ADD", netconf(owner, **fields), {"CNI_CONTAINERID": container}, db)
    assert code == 0, (result, stderr)
    return result_ips(result)


def db_bytes(db: Path) -> bytes:
    return db.read_bytes()


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "eni-ipam.db"


@pytest.fixture(scope="module")
def plugin_db(tmp_path_factory) -> Path:
    """A database holding one lease of the plugin's, for tests that must not change it."""
    path = tmp_path_factory.mktemp("shared") / "eni-ipam.db"
    add(path, "task-1")
    return path


def ctl_in_process(*args: str, db: os.PathLike, env: dict | None = None) -> tuple[int, str, str]:
    """ecs-ipamctl's main() in this process: the quick way for the many bad-input cases."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = cli.main(
        ["--db", os.fspath(db), *args], {"ECS_CNI_LOG_FILE": os.devnull, **(env or {})}, io.StringIO(), stdout, stderr
    )
    assert "Traceback" not in stdout.getvalue() + stderr.getvalue()
    return code, stdout.getvalue(), stderr.getvalue()


# --- leases -----------------------------------------------------------------------------------


def test_leases_lists_what_the_plugin_recorded_and_nothing_else(db):
    a = add(db, "task-a", "c-a")
    b = add(db, "task-b", "c-b")
    dual = add(db, "task-c", "c-c", ipv6_subnet=V6_SUBNET)
    before = db_bytes(db)

    leases = leases_of(db, "leases")
    assert [(x["address"], x["subnet"], x["id"], x["container_id"], x["ifname"]) for x in leases] == [
        (a[0], V4_SUBNET, "task-a", "c-a", "eth0"),
        (b[0], V4_SUBNET, "task-b", "c-b", "eth0"),
        (dual[0], V4_SUBNET, "task-c", "c-c", "eth0"),
        (dual[1], V6_SUBNET, "task-c", "c-c", "eth0"),
    ]
    assert all(time.time() - 60 < x["allocated_at"] <= time.time() for x in leases)
    # The gateways and index entries are not leases.
    assert "169.254.172.1" not in {x["address"] for x in leases}
    assert {x["address"]: x["id"] for x in leases} == {
        address: owner for bucket in check_records(db).values() for owner, address in bucket.items()
    }

    table = ok("leases", db=db).splitlines()
    assert table[0].split() == ["ADDRESS", "SUBNET", "ID", "CONTAINER", "IFNAME", "AGE"]
    assert [line.split()[:5] for line in table[1:]] == [
        [x["address"], x["subnet"], x["id"], x["container_id"], x["ifname"]] for x in leases
    ]
    assert re.fullmatch(r"[0-9]+s|[0-9]+m[0-9]*s?", table[1].split()[5])

    assert [x["address"] for x in leases_of(db, "leases", "--subnet", V6_SUBNET)] == [dual[1]]
    assert [x["address"] for x in leases_of(db, "leases", "--subnet", f"{a[0]}/32")] == [a[0]]
    assert leases_of(db, "leases", "--subnet", "10.0.0.0/8") == []
    assert db_bytes(db) == before, "a read command wrote"
    # Without a lock file nobody is writing: a read creates none.
    os.unlink(f"{db}-lock")
    assert len(leases_of(db, "leases")) == 4
    assert sorted(os.listdir(db.parent)) == [db.name]


def test_migrated_and_anonymous_leases_are_listed(db):
    shutil.copyfile(BOLT_FIXTURE, db)
    expected = json.loads(BOLT_FIXTURE.with_suffix(".expected.json").read_text())["entries"]
    owners = {address: owner for address, owner in expected.items() if address[0].isdigit() and owner != "GateWay"}
    # A STATUS of another subnet migrates the file and adopts nothing: the pairs wait.
    status = netconf(None, cni_version="1.1.0", ipv4_subnet="10.9.0.0/24")
    assert run_plugin("STATUS", status, db_path=db)[0] == 0
    assert LEGACY_BUCKET in read_buckets(db)

    waiting = leases_of(db, "leases")
    assert {x["address"]: x["id"] for x in waiting} == owners
    assert {(x["subnet"], x["container_id"], x["ifname"], x["allocated_at"]) for x in waiting} == {
        (None, None, None, None)
    }
    assert "(migrated)" in ok("leases", db=db)

    # The first ADD of their subnet adopts them: now they count in the pool.  Then an
    # anonymous ADD (an empty id: no index entry).
    new = add(db, "task-new")[0]
    anonymous = add(db, "", "c-anon")[0]
    assert id_index_key("") not in read_buckets(db)[V4_SUBNET]
    # One more pair still waiting, whose subnet has a bucket by now, and a waiting pair
    # for an address the pool records already (the pool's record wins, as in adoption).
    with kv.open_store(str(db), V4_SUBNET) as store, store.transaction() as tx:
        tx.bucket(LEGACY_BUCKET).put("169.254.175.150", msgpack.packb("0a:00:00:00:00:ff"))
        tx.bucket(LEGACY_BUCKET).put(new, msgpack.packb("someone-else"))
    leases = leases_of(db, "leases")
    by_address = {x["address"]: x for x in leases}
    assert len(by_address) == len(leases) == len(owners) + 3
    assert {address: by_address[address]["id"] for address in owners} == owners
    assert {by_address[address]["subnet"] for address in owners} == {V4_SUBNET}
    assert by_address[new]["id"] == "task-new"
    assert (by_address[anonymous]["id"], by_address[anonymous]["container_id"]) == ("", "c-anon")
    assert by_address["169.254.175.150"] == {
        "address": "169.254.175.150",
        "subnet": V4_SUBNET,
        "id": "0a:00:00:00:00:ff",
        "container_id": None,
        "ifname": None,
        "allocated_at": None,
        "owner": "id",
    }
    assert by_address[anonymous]["owner"] == "anonymous"
    assert "(anonymous)" in ok("leases", db=db)
    usage = json.loads(ok("usage", "--json", db=db))
    assert usage == [{"subnet": V4_SUBNET, "capacity": 1021, "allocated": len(owners) + 3, "stale": 0}]

    # Both kinds can be released, and the waiting pair leaves the legacy bucket.
    released = ok("release", "--address", anonymous, db=db)
    assert released == f"released {anonymous} ({V4_SUBNET}) id='' container=c-anon\n"
    assert ok("release", "--id", "0a:00:00:00:00:ff", db=db).startswith("released 169.254.175.150 ")
    migrated = next(iter(owners))
    assert ok("release", "--id", owners[migrated], db=db).startswith(f"released {migrated} ")
    buckets = read_buckets(db)
    assert "169.254.175.150" not in buckets.get(LEGACY_BUCKET, {})
    assert anonymous not in buckets[V4_SUBNET] and migrated not in buckets[V4_SUBNET]
    assert id_index_key(owners[migrated]) not in buckets[V4_SUBNET]


def test_overlapping_pools_list_each_lease_once_under_the_bucket_that_holds_it(db):
    narrow, wide = "10.0.0.0/25", "10.0.0.0/24"
    add(db, "task-narrow", ipv4_subnet=narrow)
    add(db, "task-wide", ipv4_subnet=wide)
    with kv.open_store(str(db), LEGACY_BUCKET) as store:
        store.put("10.0.0.100", msgpack.packb("task-waiting"))  # in both: the smaller pool counts it
        store.put("10.0.0.200", msgpack.packb("task-waiting-2"))  # only in the /24
    recorded = {
        (address, bucket)
        for bucket, pairs in read_buckets(db).items()
        if "/" in bucket
        for address, record in pairs.items()
        if isinstance(record, dict) and record["id"] not in ("GateWay",)
    }
    leases = leases_of(db, "leases")
    listed = [(x["address"], x["subnet"]) for x in leases if not x["id"].startswith("task-waiting")]
    assert sorted(listed) == sorted(recorded)
    assert len(listed) == 2
    waiting = {x["address"]: x["subnet"] for x in leases if x["id"].startswith("task-waiting")}
    assert waiting == {"10.0.0.100": narrow, "10.0.0.200": wide}
    # One address space: a pool's allocated addresses are those of its range, whichever
    # bucket holds them (the /24 cannot hand out the /25's leases, nor the reverse).
    usage = {row["subnet"]: row for row in json.loads(ok("usage", "--json", db=db))}
    assert (usage[narrow]["allocated"], usage[wide]["allocated"]) == (3, 4)
    assert (usage[narrow]["capacity"], usage[wide]["capacity"]) == (125, 253)
    # A release takes the lease from the bucket that holds it.
    narrow_lease = next(address for address, bucket in recorded if bucket == narrow)
    assert ok("release", "--address", narrow_lease, db=db).startswith(f"released {narrow_lease} ({narrow}) ")
    assert narrow_lease not in read_buckets(db)[narrow]


# --- stale and release --------------------------------------------------------------------------


def test_a_netns_path_that_disappears_makes_its_lease_stale_and_release_frees_it(tmp_path, db):
    netns = tmp_path / "netns"
    netns.mkdir()
    for name in ("task-1", "task-2"):
        (netns / name).touch()
    kept = add(db, str(netns / "task-1"), "c-1")[0]
    gone = add(db, str(netns / "task-2"), "c-2", ipv6_subnet=V6_SUBNET)
    add(db, "0a:00:00:00:00:01", "c-3")  # a MAC owner: never stale by the path rule
    assert leases_of(db, "stale") == []
    assert ok("stale", db=db).splitlines()[0].split()[-1] == "WHY"

    (netns / "task-2").unlink()
    stale = leases_of(db, "stale")
    assert [(x["address"], x["id"]) for x in stale] == [(address, str(netns / "task-2")) for address in gone]
    assert {x["reason"] for x in stale} == {"netns path gone"}
    assert all(line.endswith("netns path gone") for line in ok("stale", db=db).splitlines()[1:])
    usage = {row["subnet"]: row for row in json.loads(ok("usage", "--json", db=db))}
    assert (usage[V4_SUBNET]["allocated"], usage[V4_SUBNET]["stale"]) == (3, 1)
    assert (usage[V6_SUBNET]["allocated"], usage[V6_SUBNET]["stale"]) == (1, 1)

    # A dry run says exactly what the real run then does, and writes nothing at all.
    log = tmp_path / "ecs-ipam.log"
    env = {"ECS_CNI_LOG_FILE": str(log)}
    before = files_snapshot(tmp_path)
    dry = ok("release", "--stale", "--dry-run", db=db, env=env)
    assert files_snapshot(tmp_path) == before
    real = ok("release", "--stale", db=db, env=env)
    assert dry.replace("would release ", "released ") == real
    assert real.splitlines() == [
        f"released {gone[0]} ({V4_SUBNET}) id={str(netns / 'task-2')!r} container=c-2",
        f"released {gone[1]} ({V6_SUBNET}) id={str(netns / 'task-2')!r} container=c-2",
    ]
    audit = log.read_text().splitlines()
    assert len(audit) == 2 and all("ecs-ipamctl released" in line and "task-2" in line for line in audit)

    holders = check_records(db)  # the index entries went with the leases
    assert set(holders[V4_SUBNET]) == {str(netns / "task-1"), "0a:00:00:00:00:01"}
    assert holders[V4_SUBNET][str(netns / "task-1")] == kept
    assert holders[V6_SUBNET] == {}
    # The owner can allocate again: its id index entry is gone.
    add(db, str(netns / "task-2"), "c-2")
    assert ok("release", "--id", "nobody", db=db) == "nothing released: no lease held by id 'nobody'\n"
    assert ok("release", "--address", "169.254.175.250", db=db) == "nothing released: no lease at 169.254.175.250\n"


NOBODY = 65534


def as_nobody(function):
    """Return what *function*() returns (JSON data) when run by the uid and gid 65534, in a
    forked child that has given up root: root reads every path, so only another user meets
    a path it may not read."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: reports through the pipe, never returns
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            os.write(write_end, json.dumps(function()).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        data = answer.read()
    assert os.waitpid(pid, 0)[1] == 0, data
    return json.loads(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="running a check as another user needs root")
def test_a_netns_path_another_user_cannot_read_is_not_stale(tmp_path):
    # The agent's netns path of a live task may be another user's (/proc/<pid>/ns/net): stat()
    # answers EACCES, not ENOENT, and the lease must not be called leaked. A path that is
    # really gone is, for that user too.
    shared = Path(tempfile.mkdtemp(prefix="ecs-ipamctl-uid-"))
    try:
        shared.chmod(0o755)
        private = shared / "private"
        private.mkdir(mode=0o700)
        (private / "task-1").touch()
        (shared / "task-2").touch()
        db = shared / "db" / "eni-ipam.db"
        db.parent.mkdir()
        hidden = add(db, str(private / "task-1"), "c-1")[0]
        gone = add(db, str(shared / "task-2"), "c-2")[0]
        (shared / "task-2").unlink()
        assert sorted(x["address"] for x in leases_of(db, "stale")) == [gone]  # as root: task-1 exists
        assert ctl_in_process("stale", "--json", db=db)[0] == 0  # every module the child needs, imported
        # The database is its user's: the tool refuses a database of another uid.
        for path in (db.parent, *db.parent.iterdir()):
            os.chown(path, NOBODY, NOBODY)

        def stale_as_nobody():
            try:
                os.stat(private / "task-1")
                premise = "readable"
            except PermissionError:
                premise = "EACCES"
            code, out, err = ctl_in_process("stale", "--json", db=db)
            return premise, code, err, [(x["address"], x["id"]) for x in json.loads(out or "[]")]

        premise, code, err, stale = as_nobody(stale_as_nobody)
        assert (premise, code, err) == ("EACCES", 0, "")
        assert stale == [[gone, str(shared / "task-2")]]
        assert hidden not in [address for address, _ in stale]
    finally:
        shutil.rmtree(shared)


@pytest.mark.skipif(os.geteuid() != 0, reason="ip netns add needs root")
@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 is not installed (Debian: apt-get install iproute2)")
def test_a_deleted_network_namespace_makes_its_lease_stale(db):
    name = f"ecs-ipamctl-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    path = f"/var/run/netns/{name}"
    try:
        address = add(db, path, "c-ns")[0]
        assert leases_of(db, "stale") == []
        assert json.loads(ok("usage", "--json", db=db))[0]["stale"] == 0
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
    assert [(x["address"], x["id"]) for x in leases_of(db, "stale")] == [(address, path)]
    assert json.loads(ok("usage", "--json", db=db))[0]["stale"] == 1
    assert ok("release", "--stale", db=db) == f"released {address} ({V4_SUBNET}) id={path!r} container=c-ns\n"
    assert leases_of(db, "leases") == []


def test_the_live_list_marks_leases_of_containers_not_running(tmp_path, db):
    one = add(db, "task-1", "c-1")[0]
    two = add(db, "task-2", "c-2")[0]
    with kv.open_store(str(db), V4_SUBNET) as store:  # as the Go plugin or the agent's DEL path leave it
        no_container = {"id": "task-3", "container_id": None, "ifname": None, "allocated_at": None}
        store.put("169.254.172.50", msgpack.packb(no_container))
    live = tmp_path / "live"
    live.write_text("c-1\n\n  c-9  \n")
    assert [(x["address"], x["reason"]) for x in leases_of(db, "stale", "--live", str(live))] == [
        (two, "container not live")
    ]
    assert [x["address"] for x in leases_of(db, "stale", "--live", "-", stdin="c-2\n")] == [one]
    assert leases_of(db, "stale") == []  # without the list the rule does not apply
    assert "container not live" in ok("stale", "--live", str(live), db=db)

    dry = ok("release", "--stale", "--live", str(live), "--dry-run", db=db)
    assert dry == f"would release {two} ({V4_SUBNET}) id='task-2' container=c-2\n"
    assert ok("release", "--stale", "--live", str(live), db=db) == dry.replace("would release", "released")
    assert [x["id"] for x in leases_of(db, "leases")] == ["task-1", "task-3"]
    assert id_index_key("task-2") not in read_buckets(db)[V4_SUBNET]


def test_the_gateway_is_never_released(db):
    add(db, "task-1", ipv4_gateway="169.254.172.9")
    before = db_bytes(db)
    for args in (["--address", "169.254.172.9"], ["--id", "GateWay"], ["--id", "GateWayV6"]):
        code, out, err = ctl("release", *args, db=db)
        assert (code, out) == (1, "")
        assert "gateway is never released" in err
    assert db_bytes(db) == before
    # The recorded gateway, not the default one, is left out of the pool and the leases.
    assert json.loads(ok("usage", "--json", db=db))[0]["capacity"] == 1021
    # The default gateway's address is an ordinary address in this pool.
    assert [x["address"] for x in leases_of(db, "leases")] == ["169.254.172.1"]
    assert ok("release", "--address", "169.254.172.1", "--dry-run", db=db).startswith("would release 169.254.172.1 ")


# --- usage -----------------------------------------------------------------------------------


def parse_prometheus(text: str) -> dict[str, dict[str, float]]:
    """The text exposition format, strictly: every metric has one HELP and one TYPE gauge
    line before its samples, each sample is ``name{subnet="..."} value``.

    :return: metric -> subnet -> value.
    """
    assert text.endswith("\n")
    metrics: dict[str, dict[str, float]] = {}
    helped, typed = set(), set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            assert name not in helped and help_text, line
            helped.add(name)
        elif line.startswith("# TYPE "):
            name, kind = line[len("# TYPE ") :].split(" ")
            assert kind == "gauge" and name in helped and name not in typed, line
            typed.add(name)
            metrics[name] = {}
        else:
            match = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)\{subnet="((?:[^"\\]|\\.)*)"\} (\S+)', line)
            assert match, f"not a sample line: {line!r}"
            name, subnet, value = match.groups()
            assert name in typed, f"sample before its TYPE line: {line!r}"
            assert subnet not in metrics[name], f"duplicate sample: {line!r}"
            metrics[name][subnet] = float(value)
    return metrics


def test_usage_prometheus_parses_back_to_the_json_numbers(tmp_path, db):
    (tmp_path / "ns").touch()
    add(db, str(tmp_path / "ns"), ipv6_subnet=V6_SUBNET)
    add(db, "task-2")
    add(db, "task-3", ipv4_subnet="10.0.0.0/30")
    (tmp_path / "ns").unlink()
    rows = json.loads(ok("usage", "--json", db=db))
    assert all(list(row) == USAGE_KEYS for row in rows)
    assert rows == [
        {"subnet": "10.0.0.0/30", "capacity": 1, "allocated": 1, "stale": 0},
        {"subnet": V4_SUBNET, "capacity": 1021, "allocated": 2, "stale": 1},
        {"subnet": V6_SUBNET, "capacity": 65534, "allocated": 1, "stale": 1},
    ]
    metrics = parse_prometheus(ok("usage", "--prometheus", db=db))
    assert list(metrics) == list(GAUGES)
    for gauge, key in zip(GAUGES, ("capacity", "allocated", "stale")):
        assert metrics[gauge] == {row["subnet"]: float(row[key]) for row in rows}
    table = ok("usage", db=db).splitlines()
    assert table[0].split() == ["SUBNET", "CAPACITY", "ALLOCATED", "STALE", "USED"]
    assert table[1].split() == ["10.0.0.0/30", "1", "1", "0", "100.0%"]


def test_the_prometheus_parser_catches_what_it_must():
    good = '# HELP m h\n# TYPE m gauge\nm{subnet="10.0.0.0/24"} 3\n'
    assert parse_prometheus(good) == {"m": {"10.0.0.0/24": 3.0}}
    for bad in (
        'm{subnet="x"} 3\n',  # no HELP/TYPE
        '# HELP m h\nm{subnet="x"} 3\n',  # no TYPE
        '# HELP m h\n# TYPE m counter\nm{subnet="x"} 3\n',  # not a gauge
        '# HELP m h\n# TYPE m gauge\nm{subnet="x"}\n',  # no value
        '# HELP m h\n# TYPE m gauge\nm{subnet="x"} 3',  # no final newline
    ):
        with pytest.raises((AssertionError, ValueError)):
            parse_prometheus(bad)


def test_an_empty_database_has_no_pools(db):
    with kv.open_store(str(db), "another-agent") as store:
        store.put("k", b"v")
    assert ok("usage", db=db) == "no pools in this database\n"
    assert json.loads(ok("usage", "--json", db=db)) == []
    assert parse_prometheus(ok("usage", "--prometheus", db=db)) == {name: {} for name in GAUGES}
    assert leases_of(db, "leases") == []


# --- the database: busy, missing, named by the environment ----------------------------------------


def test_reads_never_wait_for_a_writer_and_release_gives_up_in_time(db):
    address = add(db, "task-1")[0]
    with PausedTransaction(db, netconf("task-slow")) as writer:
        started = time.monotonic()
        assert [x["address"] for x in leases_of(db, "leases")] == [address]
        assert json.loads(ok("usage", "--json", db=db))[0]["allocated"] == 1
        assert leases_of(db, "stale") == []
        assert ok("release", "--id", "task-1", "--dry-run", db=db).startswith(f"would release {address} ")
        assert time.monotonic() - started < 20
        code, out, err = ctl("release", "--id", "task-1", db=db, env={"IPAM_DB_CONNECTION_TIMEOUT": "300ms"})
        assert (code, out) == (1, ""), err
        assert "is locked by another writer; gave up after 0.3s" in err
        writer.abort()
    assert check_records(db)[V4_SUBNET] == {"task-1": address}


def test_the_database_comes_from_ipam_db_path_or_the_default(tmp_path, db, monkeypatch):
    address = add(db, "task-1")[0]
    env = {"IPAM_DB_PATH": str(db)}
    assert [x["address"] for x in json.loads(ok("leases", "--json", env=env))] == [address]
    # Unset or blank: the default, the plugin's own, here moved into tmp_path (this machine
    # may hold a real database at /data/eni-ipam.db, which a test must not read).
    from ecs_ipam import config

    assert cli.DEFAULT_DB_PATH == config.DEFAULT_DB_PATH == "/data/eni-ipam.db"
    default = tmp_path / "default" / "eni-ipam.db"
    monkeypatch.setattr(config, "DEFAULT_DB_PATH", str(default))
    monkeypatch.setattr(config, "HOST_FOLDERS", ((str(tmp_path / "default"), str(tmp_path / "host")),))
    for environ in ({}, {"IPAM_DB_PATH": " "}):
        stdout, stderr = io.StringIO(), io.StringIO()
        assert cli.main(["leases", "--json"], {"ECS_CNI_LOG_FILE": os.devnull, **environ}, None, stdout, stderr) == 1
        assert str(default) in stderr.getvalue() and stdout.getvalue() == ""
    default.parent.mkdir()
    other = add(default, "task-2")[0]
    for environ in ({}, {"IPAM_DB_PATH": " "}):
        stdout = io.StringIO()
        assert cli.main(["leases", "--json"], {"ECS_CNI_LOG_FILE": os.devnull, **environ}, None, stdout) == 0
        assert [x["address"] for x in json.loads(stdout.getvalue())] == [other]


@pytest.mark.parametrize(
    "args",
    [
        ["leases"],
        ["stale"],
        ["usage", "--prometheus"],
        ["release", "--id", "task-1"],
        ["release", "--stale", "--dry-run"],
    ],
)
def test_a_missing_database_is_an_error_and_is_never_created(tmp_path, args):
    missing = tmp_path / "nothing" / "eni-ipam.db"
    (tmp_path / "nothing").mkdir()
    code, out, err = ctl(*args, db=missing)
    assert (code, out) == (1, "")
    assert err == f"ecs-ipamctl: error: no database at {missing}\n"
    assert os.listdir(tmp_path / "nothing") == []


def test_a_bolt_file_is_named_and_left_alone(tmp_path):
    bolt = tmp_path / "eni-ipam.db"
    shutil.copyfile(BOLT_FIXTURE, bolt)
    for args in (["leases"], ["release", "--id", "x"]):
        code, _out, err = ctl(*args, db=bolt)
        assert code == 1 and "bolt" in err
    assert sorted(os.listdir(tmp_path)) == ["eni-ipam.db"]
    assert bolt.read_bytes() == BOLT_FIXTURE.read_bytes()


@pytest.mark.parametrize(
    "args, message",
    [
        (["release", "--address", "169.254.172.300"], "--address '169.254.172.300' is not a valid IP address"),
        (["release", "--address", "10.1"], "--address '10.1' is not a valid IP address"),
        (["leases", "--subnet", "169.254.172.0"], "--subnet '169.254.172.0' is not in CIDR notation"),
        (["leases", "--subnet", "169.254.172.0/33"], "has an invalid prefix length"),
        (["release"], "one of the arguments --id --address --stale is required"),
        (["release", "--id"], "argument --id: expected one argument"),
        (["release", "--id", "a", "--address", "169.254.172.2"], "not allowed with argument"),
        (["release", "--id", ""], "--id is empty"),
        (["release", "--id", "task-1", "--live", "x"], "--live applies only with --stale"),
        (["stale", "--live", "/nonexistent/live"], "cannot read --live file /nonexistent/live: No such file"),
        (["release", "--stale", "--live", "/nonexistent/live"], "cannot read --live file"),
        (["usage", "--json", "--prometheus"], "not allowed with argument"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_input_is_a_clear_message_and_changes_nothing(plugin_db, args, message):
    before = files_snapshot(plugin_db.parent)
    code, out, err = ctl_in_process(*args, db=plugin_db)
    assert code != 0 and out == ""
    assert message in err and "ecs-ipamctl" in err
    assert files_snapshot(plugin_db.parent) == before


def test_bad_input_in_a_process_exits_2_with_the_usage(plugin_db):
    before = files_snapshot(plugin_db.parent)
    code, out, err = ctl("release", "--address", "not-an-address", db=plugin_db)
    assert (code, out, err) == (1, "", "ecs-ipamctl: error: --address 'not-an-address' is not a valid IP address\n")
    code, out, err = ctl("frobnicate", db=plugin_db)
    assert (code, out) == (2, "") and err.startswith("usage: ecs-ipamctl") and "invalid choice: 'frobnicate'" in err
    assert files_snapshot(plugin_db.parent) == before


def test_bad_environment_and_undecodable_arguments(db):
    add(db, "task-1")
    before = db_bytes(db)
    code, _, err = ctl("release", "--id", "task-1", db=db, env={"IPAM_DB_CONNECTION_TIMEOUT": "soon"})
    assert code == 1 and "IPAM_DB_CONNECTION_TIMEOUT 'soon'" in err
    proc = subprocess.run(
        [sys.executable, "-m", "ecs_ipam.ctl", "--db", os.fsencode(db), "release", "--id", b"task-\xff"],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1 and b"not valid unicode text" in proc.stderr and b"Traceback" not in proc.stderr
    assert db_bytes(db) == before


def test_the_database_option_goes_before_or_after_the_command(db, tmp_path):
    add(db, "task-1")
    before = ok("leases", "--json", db=db)
    assert json.loads(before)[0]["id"] == "task-1"
    for args in (["leases", "--db", str(db), "--json"], ["leases", "--json", "--db", str(db)]):
        assert ok(*args) == before
    # After the command wins over before it, as the later of two options does.
    assert ok("--db", str(tmp_path / "elsewhere.db"), "usage", "--json", "--db", str(db)) == ok(
        "usage", "--json", db=db
    )
    code, out, err = ctl("release", "--id", "task-1", "--dry-run", "--db", str(db))
    assert code == 0 and "task-1" in out, err
    assert "--db PATH_OR_URL" in ok("leases", "--help")


def test_help_and_the_console_script(db):
    assert "leases" in ok("--help") and "--dry-run" in ok("release", "--help")
    script = Path(sys.executable).parent / "ecs-ipamctl"
    if not script.exists():
        pytest.skip("the package is not installed in this interpreter's environment")
    add(db, "task-1")
    proc = subprocess.run([str(script), "--db", str(db), "usage", "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["allocated"] == 1


def test_output_to_a_closed_pipe_is_not_an_error(db):
    # "ecs-ipamctl leases | head" where head has exited: the reading end is closed before
    # the tool writes, so its first write meets the broken pipe whatever the scheduling.
    for n in range(3):
        add(db, f"task-{n}")
    argv = [sys.executable, "-m", "ecs_ipam.ctl", "--db", str(db), "leases"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ECS_CNI_LOG_FILE": os.devnull}
    assert "task-2" in subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60).stdout
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, timeout=60)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")


# --- the parts, in this process -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, gateway, expected",
    [
        ("169.254.172.0/22", None, ("169.254.172.0/22", "169.254.172.1", 1021)),
        ("169.254.172.0/22", "169.254.172.9", ("169.254.172.0/22", "169.254.172.9", 1021)),
        ("fd00:ec2::172:0/112", None, ("fd00:ec2::172:0/112", "fd00:ec2::172:1", 65534)),
        ("10.0.0.0/30", None, ("10.0.0.0/30", "10.0.0.1", 1)),
        ("169.254.172.0/22", "10.0.0.1", None),  # a gateway outside the pool
        ("169.254.172.1/22", None, None),  # not canonical: no configuration names it
        ("10.0.0.0/31", None, None),  # smaller than any pool may be
        ("IPAM", None, None),
        (LEGACY_BUCKET, None, None),
        ("10.0.0.0/8x", None, None),
    ],
)
def test_a_pool_from_its_bucket_name(name, gateway, expected):
    from ecs_ipam.allocator import PoolAllocator
    from ecs_ipam.pool_store import pool_of_bucket

    pool = pool_of_bucket(name, gateway)
    if expected is None:
        assert pool is None
        return
    assert (pool.bucket, str(pool.gateway), PoolAllocator(pool, None).capacity()) == expected
    assert (pool.fixed_address, pool.routes) == (None, ())


@pytest.mark.parametrize(
    "seconds, text", [(0, "0s"), (59, "59s"), (60, "1m"), (61, "1m1s"), (3600, "1h"), (3661, "1h1m"), (90061, "1d1h")]
)
def test_ages_for_people(seconds, text):
    from ecs_ipam.ctl.leases import Lease
    from ecs_ipam.ctl.output import leases_table

    lease = Lease("10.0.0.2", "10.0.0.0/24", "a\x01b", None, None, 1000.0, False, "10.0.0.0/24", "10.0.0.2")
    row = leases_table([lease], 1000.0 + seconds).splitlines()[1].split()
    assert row == ["10.0.0.2", "10.0.0.0/24", "a\\x01b", "-", "-", text]


# --- etcd --------------------------------------------------------------------------------------


def test_the_same_commands_against_etcd(tmp_path, etcd):
    url = f"{etcd.url}/ctl-{uuid.uuid4().hex}"
    (tmp_path / "ns").touch()
    kept = add(url, "task-kept", "c-1", ipv6_subnet=V6_SUBNET)
    gone = add(url, str(tmp_path / "ns"), "c-2")[0]
    (tmp_path / "ns").unlink()

    assert [(x["address"], x["id"]) for x in leases_of(url, "leases")] == [
        (kept[0], "task-kept"),
        (gone, str(tmp_path / "ns")),
        (kept[1], "task-kept"),
    ]
    assert [x["address"] for x in leases_of(url, "stale")] == [gone]
    metrics = parse_prometheus(ok("usage", "--prometheus", db=url))
    assert metrics["ecs_ipam_pool_allocated_addresses"] == {V4_SUBNET: 2.0, V6_SUBNET: 1.0}
    assert metrics["ecs_ipam_pool_stale_addresses"] == {V4_SUBNET: 1.0, V6_SUBNET: 0.0}

    dry = ok("release", "--stale", "--dry-run", db=url)
    assert [x["address"] for x in leases_of(url, "stale")] == [gone]
    assert ok("release", "--stale", db=url) == dry.replace("would release", "released")
    assert [x["address"] for x in leases_of(url, "leases")] == kept
    assert ok("release", "--id", "task-kept", db=url).count("released ") == 2
    assert leases_of(url, "leases") == []
    # Released through the index: the owners can allocate again.
    add(url, "task-kept")
    add(url, str(tmp_path / "ns"))

    # A fresh prefix is an empty pool: no lease, exit 0.
    code, out, err = ctl("leases", "--json", db=f"{etcd.url}/nothing-{uuid.uuid4().hex}")
    assert (code, json.loads(out), err) == (0, [], "")
    code, _, err = ctl("release", "--address", "169.254.172.1", db=url)
    assert code == 1 and "gateway is never released" in err


def test_a_migrated_lease_shows_the_same_placeholder_in_the_output_and_the_log(tmp_path, db):
    shutil.copyfile(BOLT_FIXTURE, db)
    ok("migrate", db=db)
    log = tmp_path / "ecs-ipam.log"
    owner = "0a:00:00:00:00:03"
    released = ok("release", "--id", owner, db=db, env={"ECS_CNI_LOG_FILE": str(log)})
    assert released == f"released 169.254.172.5 (not yet in a pool) id={owner!r} container=-\n"
    assert (
        log.read_text()
        .splitlines()[-1]
        .endswith(
            f"ecs-ipamctl released 169.254.172.5 (not yet in a pool) by id: id={owner!r} container=- uid={os.getuid()}"
        )
    )


def test_usage_output_replaces_the_file_atomically_and_a_failure_leaves_the_old_one(tmp_path, db):
    add(db, "task-1")
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    prom = textfile / "ecs_ipam.prom"

    assert ok("usage", "--prometheus", "--output", str(prom), db=db) == ""
    assert prom.read_text() == ok("usage", "--prometheus", db=db)
    assert oct(prom.stat().st_mode & 0o777) == "0o644"
    assert os.listdir(textfile) == ["ecs_ipam.prom"]

    before = prom.read_text()
    code, out, err = ctl("usage", "--prometheus", "--output", str(prom), db=tmp_path / "absent.db")
    assert (code, out) == (1, "") and "no database at" in err
    assert prom.read_text() == before
    assert os.listdir(textfile) == ["ecs_ipam.prom"], "a failed run left a file behind"

    code, _, err = ctl("usage", "--prometheus", "--output", str(tmp_path / "nowhere" / "x.prom"), db=db)
    assert code == 1
    assert (
        err
        == f"ecs-ipamctl: error: cannot write --output {tmp_path / 'nowhere' / 'x.prom'}: No such file or directory\n"
    )


def test_leases_migrated_ahead_of_time_are_counted_with_their_subnet_unknown(tmp_path, db):
    shutil.copyfile(BOLT_FIXTURE, db)
    ok("migrate", db=db)
    owners = json.loads(BOLT_FIXTURE.with_suffix(".expected.json").read_text())["entries"]
    leases = {address for address, owner in owners.items() if address[0].isdigit() and owner != "GateWay"}

    assert ok("usage", db=db).splitlines() == [
        "SUBNET     CAPACITY  ALLOCATED  STALE  USED",
        f"(unknown)         -  {len(leases):>9}      0     -",
    ]
    assert json.loads(ok("usage", "--json", db=db)) == [
        {"subnet": None, "capacity": None, "allocated": len(leases), "stale": 0}
    ]
    samples = [line for line in ok("usage", "--prometheus", db=db).splitlines() if not line.startswith("#")]
    assert samples == [
        f'ecs_ipam_pool_allocated_addresses{{subnet="unknown"}} {len(leases)}',
        'ecs_ipam_pool_stale_addresses{subnet="unknown"} 0',
    ]
    table = ok("leases", db=db).splitlines()[1:]
    assert len(table) == len(leases) and {line.split()[1] for line in table} == {"(unknown)"}

    # Once a command names their subnet, they count in its pool and the unknown line goes.
    add(db, "task-new")
    rows = json.loads(ok("usage", "--json", db=db))
    assert rows == [{"subnet": V4_SUBNET, "capacity": 1021, "allocated": len(leases) + 1, "stale": 0}]
