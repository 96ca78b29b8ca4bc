"""Broken storage: every case gets a clear error (code 5), or for a full map transparent growth.

Whatever lies at IPAM_DB_PATH and is not a sound database of ours is never modified, and
no ``-lock`` file is created beside it when it can be told apart before opening.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ecs_ipam import IPAM
from plugin import (
    ROOT,
    V4_SUBNET,
    V6_SUBNET,
    PluginProcess,
    add_ok,
    check_records,
    files_snapshot,
    netconf,
    run_plugin,
)

BOLT_FIXTURE = ROOT / "tests" / "fixtures" / "boltdb" / "ecs-agent-classic-2019.db"
LMDB_MAGIC, BOLT_MAGIC = 0xBEEFC0DE, 0xED0CDAED
DEFAULT_MAP_SIZE = 32 << 20


def assert_io_error(command: str, db_path, *fragments: str) -> dict:
    """Run *command*; it must fail with code 5 and a message naming the path and the cause."""
    code, error, stderr = run_plugin(command, netconf("task-new", cni_version="1.1.0"), db_path=db_path)
    assert (code, stderr) == (1, ""), error
    assert error["code"] == 5, error
    for fragment in (str(db_path), *fragments):
        assert fragment in error["msg"], error
    return error


def seeded_database(path: Path, tasks: int = 40) -> bytes:
    """A real database with *tasks* dual-stack tasks; return its bytes."""
    conf = netconf(None, ipv6_subnet=V6_SUBNET)
    with IPAM(str(path)) as ipam:
        for n in range(tasks):
            ipam.add({**conf, "ipam": {**conf["ipam"], "id": f"task-{n}"}}, f"c-{n}", "eth0")
    os.remove(f"{path}-lock")
    return path.read_bytes()


@contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A small filesystem of its own at *mount_point* (needs root; skips otherwise)."""
    mount_point.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)], capture_output=True
        ).returncode
    ):
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def remount(mount_point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True)


# --- where the file should be -------------------------------------------------------------------


def test_path_in_a_missing_directory(tmp_path):
    db_path = tmp_path / "missing" / "eni-ipam.db"
    assert_io_error("ADD", db_path, "No such file or directory")
    # Nothing to release and nothing to check: the commands that never create succeed.
    for command in ("DEL", "STATUS"):
        assert run_plugin(command, netconf("task-new", cni_version="1.1.0"), db_path=db_path) == (0, None, "")
    assert os.listdir(tmp_path) == []


def test_path_in_a_read_only_directory(tmp_path):
    with tmpfs(tmp_path / "data", "1m") as data:
        remount(data, "ro")
        assert_io_error("ADD", data / "eni-ipam.db", "Read-only file system")
        assert os.listdir(data) == []


def test_database_on_a_read_only_filesystem_is_reported_and_kept(tmp_path):
    with tmpfs(tmp_path / "data", "1m") as data:
        db_path = data / "eni-ipam.db"
        held = add_ok(db_path, "task-1")
        before = files_snapshot(data)
        remount(data, "ro")
        for command in ("ADD", "DEL", "CHECK", "STATUS"):
            assert_io_error(command, db_path, "Read-only file system")
        remount(data, "rw")
        assert files_snapshot(data) == before
        assert check_records(db_path) == {V4_SUBNET: {"task-1": held["ips"][0]["address"].split("/")[0]}}
        add_ok(db_path, "task-2")


def test_directory_at_the_path(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    db_path.mkdir()
    (db_path / "someone-elses-file").write_bytes(b"keep me")
    before = files_snapshot(tmp_path)
    for command in ("ADD", "DEL"):
        assert_io_error(command, db_path, "is a directory")
    assert files_snapshot(tmp_path) == before


def test_directory_at_the_lock_path(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    seeded_database(db_path, tasks=2)
    Path(f"{db_path}-lock").mkdir()
    before = files_snapshot(tmp_path)
    assert_io_error("ADD", db_path, "Is a directory")
    assert files_snapshot(tmp_path) == before


# --- what is in the file ------------------------------------------------------------------------


def assert_refused_untouched(db_path: Path) -> None:
    """ADD and DEL fail with code 5; the file is unchanged and no ``-lock`` appeared."""
    before = files_snapshot(db_path.parent)
    for command in ("ADD", "DEL"):
        assert_io_error(command, db_path)
    assert files_snapshot(db_path.parent) == before
    assert not os.path.exists(f"{db_path}-lock")


@pytest.mark.parametrize("keep", [3, 100, 4096, 8192, "half", "all but the last page"])
def test_truncated_database(tmp_path, keep):
    good = seeded_database(tmp_path / "good.db")
    length = {"half": len(good) // 2, "all but the last page": len(good) - 4096}.get(keep, keep)
    db_path = tmp_path / "data" / "eni-ipam.db"
    db_path.parent.mkdir()
    db_path.write_bytes(good[:length])
    assert_refused_untouched(db_path)


def random_file(seed: int, size: int, magic: int | None = None, version: int | None = None) -> bytes:
    data = bytearray(random.Random(seed).randbytes(size))
    if magic is not None:
        struct.pack_into("<I", data, 16, magic)
    if version is not None:
        struct.pack_into("<I", data, 20, version)
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        random_file(1, 1),
        random_file(2, 100),
        random_file(3, 4096),
        random_file(4, 65536),
        random_file(5, 8192, magic=LMDB_MAGIC),
        random_file(6, 8192, magic=LMDB_MAGIC, version=1),
        random_file(7, 65536, magic=BOLT_MAGIC),
        random_file(8, 65536, magic=BOLT_MAGIC, version=2),
        b"not a database, just some text that happens to sit at this path\n" * 100,
    ],
    ids=[
        "1 byte",
        "100 bytes",
        "one page",
        "16 pages",
        "LMDB magic",
        "LMDB magic and version",
        "bolt magic",
        "bolt magic and version",
        "text",
    ],
)
def test_random_bytes_at_the_path(tmp_path, data):
    db_path = tmp_path / "eni-ipam.db"
    db_path.write_bytes(data)
    assert_refused_untouched(db_path)
    assert not os.path.exists(f"{db_path}.bolt")


def test_damaged_data_pages(tmp_path):
    good = seeded_database(tmp_path / "good.db")
    db_path = tmp_path / "data" / "eni-ipam.db"
    db_path.parent.mkdir()
    # Sound meta pages: nothing tells this file apart before LMDB opens it, so a -lock
    # file may appear; the data file itself must not change.
    db_path.write_bytes(good[:8192] + random.Random(9).randbytes(len(good) - 8192))
    before = db_path.read_bytes()
    for command in ("ADD", "DEL", "STATUS"):
        assert_io_error(command, db_path, "damaged")
    assert db_path.read_bytes() == before
    assert sorted(os.listdir(db_path.parent)) in (["eni-ipam.db"], ["eni-ipam.db", "eni-ipam.db-lock"])


def test_bolt_file_of_the_go_plugin_is_never_lost(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    shutil.copyfile(BOLT_FIXTURE, db_path)
    original = BOLT_FIXTURE.read_bytes()
    code, result, stderr = run_plugin("ADD", netconf("task-new"), db_path=db_path)
    assert stderr == ""
    if code == 0:
        # Migrated: the database is LMDB now and the Go plugin's file is kept beside it.
        assert Path(f"{db_path}.bolt").read_bytes() == original
        assert "task-new" in check_records(db_path)[V4_SUBNET]
    else:
        assert result["code"] == 5, result
        assert db_path.read_bytes() == original


# --- space ----------------------------------------------------------------------------------------

_AGENT = """
import sys
from ecs_ipam import kv
with kv.open_store(sys.argv[1], bucket="agent") as store:
    print("open", flush=True)
    for line in sys.stdin:
        store.put("note", line.encode())
        print(store.get("note").value.decode(), end="", flush=True)
"""


# Another program filling its own bucket with large values (an id is at most 64 KiB).
_FILLER = """
import sys
from ecs_ipam import kv
with kv.open_store(sys.argv[1], bucket="filler") as store:
    for n, size in enumerate(map(int, sys.argv[2:])):
        store.put(f"big-{n}", bytes(size))
"""


def fill_map(db_path, *sizes: int) -> None:
    subprocess.run(
        [sys.executable, "-c", _FILLER, str(db_path), *map(str, sizes)],
        check=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_full_map_grows_transparently_for_the_plugin_and_other_openers(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    add_ok(db_path, "task-small-1")
    # An agent that opened the database while its map was the default size.
    agent = subprocess.Popen(
        [sys.executable, "-c", _AGENT, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    try:
        assert agent.stdout.readline() == "open\n"
        # One value larger than the whole default map: its transaction fills the map and
        # is replayed into a larger one; the next ones grow it before they start.
        fill_map(db_path, 40 << 20, 8 << 20)
        assert os.path.getsize(db_path) > DEFAULT_MAP_SIZE
        add_ok(db_path, "task-small-2")
        agent.stdin.write("written after the growth\n")
        agent.stdin.flush()
        assert agent.stdout.readline() == "written after the growth\n"
    finally:
        agent.stdin.close()
        agent.wait(timeout=30)
    assert agent.returncode == 0
    assert set(check_records(db_path)[V4_SUBNET]) == {"task-small-1", "task-small-2"}


def test_full_disk_is_reported_and_loses_nothing(tmp_path):
    with tmpfs(tmp_path / "data", "4m") as data:
        db_path = data / "eni-ipam.db"
        first = add_ok(db_path, "task-1")
        before = files_snapshot(data)
        # Leave less room than the next commit needs (a 60 KB id takes new pages).
        with open(data / "fill", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(bytes(4096))
        code, error, stderr = PluginProcess("ADD", netconf("big-" + "x" * 60000), db_path).finish(timeout=60)
        assert (code, error["code"], stderr) == (1, 5, ""), error
        assert "No space left on device" in error["msg"]
        os.remove(data / "fill")
        assert check_records(db_path) == {V4_SUBNET: {"task-1": first["ips"][0]["address"].split("/")[0]}}
        add_ok(db_path, "task-2")
        assert set(files_snapshot(data)) == set(before)
