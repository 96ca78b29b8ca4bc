"""The migration as real processes see it: concurrent first invocations, crashes, a Go plugin's lock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from ecs_ipam import kv
from ecs_ipam.kv.dbfile import file_kind
from ecs_ipam.migrate import migrate_in_place
from ecs_ipam.pool_store import LEGACY_BUCKET, decode

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "boltdb"
TOOL = ROOT / "tools" / "migrate_boltdb.py"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))

# Runs migrate_in_place and freezes at the named checkpoint, so the test can kill it there.
FREEZE_AT = """
import sys, time
from ecs_ipam.migrate import migrate_in_place

def checkpoint(name):
    if name == sys.argv[2]:
        print("frozen", flush=True)
        time.sleep(60)

migrate_in_place(sys.argv[1], 5, checkpoint=checkpoint)
print("finished", flush=True)
"""

# Holds an exclusive flock on a file, as the Go plugin does on its bolt file for its whole run.
HOLD_FLOCK = """
import fcntl, sys, time
fd = open(sys.argv[1], "rb")
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def expected(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.expected.json").read_text())


def bolt_copy(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "eni-ipam.db"
    shutil.copyfile(FIXTURES / f"{name}.db", path)
    return path


def migrated_addresses(name: str) -> set[str]:
    return {
        key[1:] if key.startswith("6") and ":" in key else key
        for key, value in expected(name)["entries"].items()
        if not key.startswith("lastKnown")
    }


def plugin_env(path: Path, timeout: str = "30s", **extra: str) -> dict:
    return dict(
        ENV,
        CNI_COMMAND="ADD",
        CNI_CONTAINERID="container-id",
        CNI_NETNS="/host/proc//ns/net",
        CNI_IFNAME="eth0",
        CNI_PATH="/usr/lib/cni",
        IPAM_DB_PATH=str(path),
        IPAM_DB_CONNECTION_TIMEOUT=timeout,
        ECS_CNI_LOG_FILE=str(path.parent / "plugin.log"),
        **extra,
    )


def netconf(subnets: list[str], owner: str) -> bytes:
    ipam = {"type": "ecs-ipam", "id": owner}
    for subnet in subnets:
        ipam["ipv6-subnet" if ":" in subnet else "ipv4-subnet"] = subnet
    return json.dumps({"cniVersion": "0.3.0", "name": "ecs", "ipam": ipam}).encode()


def start_plugin(path: Path, subnets: list[str], owner: str, **env: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "ecs_ipam"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=plugin_env(path, **env),
        cwd=path.parent,
    )
    process.stdin.write(netconf(subnets, owner))
    process.stdin.close()
    return process


def finish(process: subprocess.Popen) -> tuple[int, dict]:
    out = process.stdout.read()
    process.wait(timeout=60)
    process.stdout.close()
    process.stderr.close()
    return process.returncode, json.loads(out)


def wait_for_line(process: subprocess.Popen, line: str) -> None:
    got = process.stdout.readline().decode().strip()
    assert got == line, f"helper said {got!r}: {process.stderr.read().decode()}"


def legacy_pairs(path: Path) -> dict[str, str]:
    with kv.open_store(str(path), LEGACY_BUCKET, read_only=True) as store:
        return {pair.key: decode(pair.value) for pair in store.list()}


def listing(directory: Path) -> dict[str, bytes | None]:
    """Every file of *directory* with its bytes.

    An LMDB lock file is listed without its bytes: it is the readers' shared memory,
    which every reader of the database writes to, dump_db included.
    """
    return {
        entry.name: None if entry.name.endswith("-lock") else entry.read_bytes()
        for entry in sorted(directory.iterdir())
    }


@pytest.mark.parametrize(
    "name, processes",
    [
        ("ecs-agent-classic-2019", 16),
        ("ecs-agent-dualstack-2026", 16),
        pytest.param("full-slash20-2026", 48, marks=pytest.mark.slow),
    ],
)
def test_parallel_first_invocations_all_get_distinct_fresh_addresses(tmp_path, name, processes):
    path = bolt_copy(tmp_path, name)
    subnets = expected(name)["subnets"]

    started = [start_plugin(path, subnets, f"task-{n}") for n in range(processes)]
    results = [finish(process) for process in started]

    assert [code for code, _ in results] == [0] * processes, results
    addresses = [ip["address"].split("/")[0] for _, result in results for ip in result["ips"]]
    assert len(addresses) == len(set(addresses)) == processes * len(subnets)
    assert not set(addresses) & migrated_addresses(name)
    assert file_kind(str(path)) == "lmdb"
    assert Path(f"{path}.bolt").read_bytes() == (FIXTURES / f"{name}.db").read_bytes()
    assert legacy_pairs(path) == {}
    assert not [entry for entry in os.listdir(tmp_path) if "migrating" in entry]


@pytest.mark.parametrize("stage", ["locked", "written", "backed-up", "switched"])
def test_a_migration_killed_part_way_is_completed_by_the_next_run(tmp_path, stage):
    name = "ecs-agent-dualstack-2026"
    path = bolt_copy(tmp_path, name)
    original = path.read_bytes()
    migrator = subprocess.Popen(
        [sys.executable, "-c", FREEZE_AT, str(path), stage],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        wait_for_line(migrator, "frozen")
    finally:
        migrator.send_signal(signal.SIGKILL)
        migrator.wait()
        migrator.stdout.close()
        migrator.stderr.close()

    # Killed anywhere, the path holds one whole database: the bolt file, or the result.
    if stage == "switched":
        assert file_kind(str(path)) == "lmdb"
        assert legacy_pairs(path) == expected(name)["entries"]
    else:
        assert path.read_bytes() == original

    moved = migrate_in_place(str(path), timeout=5)

    assert moved == (None if stage == "switched" else expected(name)["entries"])
    assert legacy_pairs(path) == expected(name)["entries"]
    assert Path(f"{path}.bolt").read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["eni-ipam.db", "eni-ipam.db.bolt"]


def test_a_go_plugin_holding_the_file_makes_the_plugin_try_later(tmp_path):
    path = bolt_copy(tmp_path, "ecs-agent-classic-2019")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FLOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        wait_for_line(holder, "locked")
        before = listing(tmp_path)
        began = time.monotonic()
        code, error = finish(start_plugin(path, ["169.254.172.0/22"], "task", timeout="400ms"))
        waited = time.monotonic() - began
        after = {name: data for name, data in listing(tmp_path).items() if name != "plugin.log"}
    finally:
        holder.stdin.close()
        holder.wait()
        holder.stdout.close()
        holder.stderr.close()

    assert code == 1
    assert error["code"] == 11
    assert "locked by another process" in error["msg"]
    assert waited >= 0.4
    assert after == before

    # Once the Go plugin is gone, the next invocation migrates and succeeds.
    code, result = finish(start_plugin(path, ["169.254.172.0/22"], "task"))
    assert code == 0
    assert result["ips"][0]["address"] == "169.254.175.201/22"


def test_dry_run_writes_nothing(tmp_path):
    path = bolt_copy(tmp_path, "full-slash20-2026")
    before = listing(tmp_path)
    stat_before = os.stat(path)

    run = subprocess.run(
        [sys.executable, str(TOOL), str(path), "--dry-run"], capture_output=True, env=ENV, cwd=tmp_path, timeout=60
    )

    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().splitlines()[-1].startswith("would migrate 3524 pairs")
    assert listing(tmp_path) == before
    assert os.stat(path).st_mtime_ns == stat_before.st_mtime_ns


def test_dry_run_into_another_database_writes_nothing_there_either(tmp_path):
    path = bolt_copy(tmp_path, "ecs-agent-classic-2019")
    dest = tmp_path / "other.db"
    with kv.open_store(str(dest), "169.254.172.0/22") as store:
        store.put("169.254.172.99", msgpack.packb({"id": "someone"}))
    before = listing(tmp_path)

    run = subprocess.run(
        [sys.executable, str(TOOL), str(path), "--db", str(dest), "--dry-run"],
        capture_output=True,
        env=ENV,
        cwd=tmp_path,
        timeout=60,
    )

    assert run.returncode == 0, run.stderr
    assert listing(tmp_path) == before
