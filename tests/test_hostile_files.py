"""Hostile files and full disks: every failure on one host is a clean, bounded CNI error.

Each test reproduces one defect found by probing a real host (tmpfs mounts, FIFOs, files of
a second uid, LMDB's own locks) and checks the code, the time it took, and the database
afterwards.  Every process has a timeout, so a regression fails the test instead of
hanging the run.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from plugin import (
    ROOT,
    V4_SUBNET,
    PausedTransaction,
    PluginProcess,
    add_ok,
    check_records,
    files_snapshot,
    netconf,
    run_plugin,
)
from syscalls import wait_until_in_flock

OTHER_UID = 4242
# A plugin process takes well under a second to start; this is the slack a loaded 2-core
# machine needs on top of the timeout under test.
STARTUP_SLACK = 8.0


def timed_plugin(command: str, conf: object, db_path, timeout: str = "2s", **env: str):
    """Run the plugin; return (exit code, output, stderr, seconds)."""
    started = time.monotonic()
    code, output, stderr = run_plugin(
        command, conf, {"IPAM_DB_CONNECTION_TIMEOUT": timeout, **env}, db_path=db_path, timeout=60
    )
    return code, output, stderr, time.monotonic() - started


def tool(args: list[str], db_path, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python <args>`` (a tools/ script or ``-m ecs_ipam.ctl``) with the database."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "IPAM_DB_PATH": str(db_path), "ECS_CNI_LOG_FILE": os.devnull}
    environment.update(env)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=environment
    )


def dump_db(db_path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return tool([str(ROOT / "tools" / "dump_db.py"), "--db", str(db_path), *args], db_path, **env)


def ctl(db_path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return tool(["-m", "ecs_ipam.ctl", "--db", str(db_path), *args], db_path, **env)


@contextmanager
def tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A small file system of its own at *mount_point* (unique per test: under tmp_path)."""
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(directory: Path) -> Path:
    """Fill the file system of *directory* to the last block; return the filler file."""
    filler = directory / "fill"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


def is_sparse(path: Path) -> bool:
    info = path.stat()
    return info.st_blocks * 512 < info.st_size


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


# --- 1. a full disk and a lock file without blocks -------------------------------------------


def test_sigbus_on_a_full_disk_when_the_lock_file_is_missing(tmp_path):
    with tmpfs(tmp_path / f"data-{os.getpid()}", "1m") as data:
        db_path = data / "eni-ipam.db"
        held = add_ok(db_path, "task-1")["ips"][0]["address"].split("/")[0]
        os.remove(f"{db_path}-lock")  # gone after a reboot on tmpfs, or by the rollback
        filler = fill(data)
        before = db_path.read_bytes()
        for _ in range(2):  # a second run finds whatever the first one left behind
            code, error, stderr, _ = timed_plugin("DEL", netconf("task-1"), db_path)
            assert (code, error["code"], stderr) == (1, 5, ""), error
            assert "space" in error["msg"], error
        # The readers take no lock file when there is none: they still answer.
        listing = dump_db(db_path, "--bucket", V4_SUBNET)
        assert (listing.returncode, listing.stderr) == (0, ""), listing
        assert f"key={held} - value=task-1" in listing.stdout
        leases = ctl(db_path, "leases", "--json")
        assert leases.returncode == 0, leases
        assert [lease["id"] for lease in json.loads(leases.stdout)] == ["task-1"]
        assert db_path.read_bytes() == before
        filler.unlink()
        code, error, stderr, _ = timed_plugin("DEL", netconf("task-1"), db_path)
        assert (code, error, stderr) == (0, None, "")
        assert not is_sparse(Path(f"{db_path}-lock"))
        assert check_records(db_path) == {V4_SUBNET: {}}


def test_sparse_lock_file_left_behind_is_repaired_or_refused(tmp_path):
    with tmpfs(tmp_path / f"data-{os.getpid()}", "1m") as data:
        db_path = data / "eni-ipam.db"
        lock_path = Path(f"{db_path}-lock")
        add_ok(db_path, "task-1")
        # What LMDB itself (and every version before this one) leaves: a lock file with
        # blocks behind its first page only.
        lock_path.unlink()
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(fd, 16512)
        os.close(fd)
        assert is_sparse(lock_path)
        filler = fill(data)
        for command in ("ADD", "DEL", "STATUS"):
            code, error, stderr, _ = timed_plugin(command, netconf("task-2", cni_version="1.1.0"), db_path)
            assert (code, error["code"], stderr) == (1, 5, ""), (command, error)
            assert str(lock_path) in error["msg"], error
        for process in (dump_db(db_path), ctl(db_path, "leases")):
            assert process.returncode == 1, process
            assert "lock file" in process.stderr and process.returncode > 0, process
            no_traceback(process.stderr)
        assert is_sparse(lock_path)
        filler.unlink()
        add_ok(db_path, "task-2")
        assert not is_sparse(lock_path)
        assert set(check_records(db_path)[V4_SUBNET]) == {"task-1", "task-2"}


# --- 2. a FIFO (or another special file) at the database path -------------------------------


def test_fifo_at_the_database_path_never_blocks(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    os.mkfifo(db_path, 0o600)
    for command in ("ADD", "DEL", "CHECK", "STATUS"):
        code, error, stderr, took = timed_plugin(command, netconf("task-1", cni_version="1.1.0"), db_path)
        assert (code, error["code"], stderr) == (1, 5, ""), (command, error)
        assert f"{db_path} is a FIFO" in error["msg"], error
        assert took < 2 + STARTUP_SLACK
    for process in (dump_db(db_path), ctl(db_path, "leases"), ctl(db_path, "release", "--id", "task-1")):
        assert process.returncode == 1 and "is a FIFO" in process.stderr, process
        no_traceback(process.stderr)
    opener = tool(["-c", "import sys; from ecs_ipam import kv; kv.open_store(sys.argv[1])", str(db_path)], db_path)
    assert "NotADatabaseError" in opener.stderr and "is a FIFO" in opener.stderr, opener
    assert os.listdir(tmp_path) == ["eni-ipam.db"]


def test_fifo_at_the_lock_path_never_blocks(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    add_ok(db_path, "task-1")
    os.remove(f"{db_path}-lock")
    os.mkfifo(f"{db_path}-lock", 0o600)
    before = files_snapshot(tmp_path)
    for command in ("ADD", "DEL"):
        code, error, stderr, took = timed_plugin(command, netconf("task-2"), db_path)
        assert (code, error["code"], stderr) == (1, 5, ""), error
        assert f"{db_path}-lock is a FIFO" in error["msg"], error
        assert took < 2 + STARTUP_SLACK
    process = ctl(db_path, "leases")
    assert process.returncode == 1 and "is a FIFO" in process.stderr, process
    assert files_snapshot(tmp_path) == before


# --- 6. LMDB's own wait on its lock file ------------------------------------------------------

_HOLD_BYTE_0 = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 1, 0, os.SEEK_SET)
print("held", flush=True)
sys.stdin.read()
"""


def test_lmdb_lock_file_wait_is_bounded_by_the_timeout(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    add_ok(db_path, "task-1")
    # What a process inside LMDB's first open holds (or a hostile one, for ever).
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_BYTE_0, f"{db_path}-lock"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"held\n"
        for command in ("ADD", "DEL"):
            code, error, stderr, took = timed_plugin(command, netconf("task-2"), db_path)
            assert (code, error["code"], stderr) == (1, 11, ""), error
            assert "gave up after 2s" in error["msg"], error
            assert 2 <= took < 2 + STARTUP_SLACK
        started = time.monotonic()
        process = ctl(db_path, "leases", IPAM_DB_CONNECTION_TIMEOUT="1s")
        assert process.returncode == 1 and "gave up after 1s" in process.stderr, process
        assert time.monotonic() - started < 1 + STARTUP_SLACK
    finally:
        holder.communicate(b"", timeout=30)
    add_ok(db_path, "task-2")
    assert set(check_records(db_path)[V4_SUBNET]) == {"task-1", "task-2"}


# --- 7. files planted by another user ---------------------------------------------------------


def plant(path: Path, uid: int, mode: int, data: bytes = b"") -> None:
    path.write_bytes(data)
    os.chown(path, uid, -1)
    os.chmod(path, mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid needs root")
@pytest.mark.parametrize("planted", ["database", "lock file"])
def test_files_planted_by_another_user_are_refused(tmp_path, planted):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    os.chmod(shared, 0o1777)  # world-writable and sticky, as /tmp
    db_path = shared / "eni-ipam.db"
    if planted == "database":
        plant(db_path, OTHER_UID, 0o666)
        target = db_path
    else:
        add_ok(db_path, "task-1")
        target = Path(f"{db_path}-lock")
        target.unlink()
        plant(target, OTHER_UID, 0o666, b"\0" * 16512)
    before = files_snapshot(shared)
    for command in ("ADD", "DEL"):
        code, error, stderr, _ = timed_plugin(command, netconf("task-2"), db_path)
        assert (code, error["code"], stderr) == (1, 5, ""), error
        assert f"{target} belongs to uid {OTHER_UID}" in error["msg"], error
    assert files_snapshot(shared) == before
    assert (target.stat().st_uid, target.stat().st_mode & 0o777) == (OTHER_UID, 0o666)
    # The fix the message gives works.
    os.chown(target, os.geteuid(), -1)
    code, error, _, _ = timed_plugin("ADD", netconf("task-2"), db_path)
    assert error["code"] == 5 and "chmod 600" in error["msg"], error
    os.chmod(target, 0o600)
    add_ok(db_path, "task-2")
    assert "task-2" in check_records(db_path)[V4_SUBNET]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a symlink to another uid needs root")
def test_symlink_planted_by_another_user_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    target = tmp_path / "chosen-by-them.db"
    db_path = shared / "eni-ipam.db"
    db_path.symlink_to(target)
    os.lchown(db_path, OTHER_UID, -1)
    code, error, stderr, _ = timed_plugin("ADD", netconf("task-1"), db_path)
    assert (code, error["code"], stderr) == (1, 5, ""), error
    assert f"made by uid {OTHER_UID}" in error["msg"], error
    assert not target.exists()
    os.lchown(db_path, os.geteuid(), -1)  # a link of one's own is fine (README: symlinks work)
    add_ok(db_path, "task-1")
    assert target.exists()


def test_database_writable_by_others_is_refused(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    add_ok(db_path, "task-1")
    os.chmod(db_path, 0o646)
    before = files_snapshot(tmp_path)
    code, error, stderr, _ = timed_plugin("ADD", netconf("task-2"), db_path)
    assert (code, error["code"], stderr) == (1, 5, ""), error
    assert "may be written by others (mode 0646)" in error["msg"], error
    process = dump_db(db_path)
    assert process.returncode == 1 and "mode 0646" in process.stderr, process
    assert files_snapshot(tmp_path) == before


# --- 3. the log: a FIFO, /dev/stdout ------------------------------------------------------------


def test_fifo_as_the_log_file_never_hangs_the_plugin(tmp_path):
    db_path, log = tmp_path / "eni-ipam.db", tmp_path / "log"
    os.mkfifo(log, 0o600)
    for command, owner in (("ADD", "task-1"), ("DEL", "task-1"), ("ADD", "task-2")):
        code, output, stderr, took = timed_plugin(command, netconf(owner), db_path, ECS_CNI_LOG_FILE=str(log))
        assert (code, stderr) == (0, ""), output
        assert took < STARTUP_SLACK
    assert set(check_records(db_path)[V4_SUBNET]) == {"task-2"}


@pytest.mark.parametrize("log", ["/dev/stdout", "/dev/stderr", "/proc/self/fd/1", "/dev/null"])
def test_log_on_stdout_never_changes_the_output(tmp_path, log):
    db_path = tmp_path / "eni-ipam.db"
    code, output, stderr, _ = timed_plugin("ADD", netconf("task-1"), db_path, ECS_CNI_LOG_FILE=log)
    assert (code, stderr) == (0, "")  # run_plugin parses stdout as exactly one JSON line
    assert output["ips"][0]["address"] == "169.254.172.2/22"
    code, output, stderr, _ = timed_plugin("ADD", netconf("task-1"), db_path, ECS_CNI_LOG_FILE=log)
    assert (code, output["code"], stderr) == (1, 101, "")


def test_log_on_the_file_stdout_is_redirected_to_gets_no_line(tmp_path):
    # The plugin's stdout is a regular file here, and the log path names it too.
    db_path, out = tmp_path / "eni-ipam.db", tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c",
        "CNI_NETNS": "/x",
        "CNI_IFNAME": "eth0",
        "IPAM_DB_PATH": str(db_path),
        "ECS_CNI_LOG_FILE": str(out),
    }
    with open(out, "ab") as stdout:  # as a shell redirects with >>
        subprocess.run(
            [sys.executable, "-m", "ecs_ipam"],
            input=json.dumps(netconf("task-1")).encode(),
            stdout=stdout,
            check=True,
            timeout=60,
            cwd=ROOT,
            env=env,
        )
    assert json.loads(out.read_text())["ips"][0]["address"] == "169.254.172.2/22"


# --- 4. keys that are not UTF-8 ------------------------------------------------------------------

_WRITE_RAW_KEYS = """
import sys, lmdb, msgpack
env = lmdb.open(sys.argv[1], subdir=False, max_dbs=1024, max_readers=256)
record = msgpack.packb([1, msgpack.packb("planted")], use_bin_type=True)
with env.begin(write=True) as txn:
    if sys.argv[2] == "pool":
        txn.put(b"\\xff\\xfe not text", record, db=env.open_db(sys.argv[3].encode(), txn=txn))
    else:
        env.open_db(b"\\xffbucket", txn=txn)
env.close()
"""


@pytest.mark.parametrize("where", ["pool", "main database"])
def test_keys_that_are_not_utf8(tmp_path, where):
    db_path = tmp_path / "eni-ipam.db"
    add_ok(db_path, "task-1")
    subprocess.run([sys.executable, "-c", _WRITE_RAW_KEYS, str(db_path), where.split()[0], V4_SUBNET], check=True)
    new = netconf("task-2", cni_version="1.1.0")
    for command, conf in (
        ("STATUS", new),
        ("GC", {**new, "cni.dev/valid-attachments": [{"containerID": "container-1", "ifname": "eth0"}]}),
        ("ADD", new),
        ("CHECK", {**new, "prevResult": {"ips": []}}),
        ("DEL", netconf("task-1")),
    ):
        code, output, stderr, _ = timed_plugin(command, conf, db_path)
        assert (code, stderr) == (0, ""), (command, output)
    leases = ctl(db_path, "leases", "--json")
    assert leases.returncode == 0, leases
    assert [lease["id"] for lease in json.loads(leases.stdout) if lease["id"] != "planted"] == ["task-2"]
    assert ctl(db_path, "usage").returncode == 0
    listing = dump_db(db_path, *(["--bucket", V4_SUBNET] if where == "pool" else []))
    assert listing.returncode == 0 and "\\xff" in listing.stdout, listing
    no_traceback(listing.stderr, leases.stderr)
    from ecs_ipam import kv

    with kv.open_store(str(db_path), bucket=V4_SUBNET, read_only=True) as store:
        keys = {pair.key for pair in store.list()}
        names = store.buckets()
    assert "id/task-2" in keys and "id/task-1" not in keys
    planted = "\udcff\udcfe not text" in keys if where == "pool" else "\udcffbucket" in names
    assert planted, (keys, names)


# --- 5. a timeout too long for the platform ------------------------------------------------------


@pytest.mark.parametrize("timeout", ["2562048h", "9223372037s", "99999999999999999999h"])
def test_timeout_overflow_is_an_environment_error(tmp_path, timeout):
    db_path = tmp_path / "eni-ipam.db"
    code, error, stderr, _ = timed_plugin("ADD", netconf("task-1"), db_path, timeout=timeout)
    assert (code, error["code"], stderr) == (1, 4, ""), error
    assert "IPAM_DB_CONNECTION_TIMEOUT" in error["msg"], error
    assert not db_path.exists()
    code, _, _, _ = timed_plugin("ADD", netconf("task-1"), db_path, timeout="2562047h")
    assert code == 0


# --- input size bounds ---------------------------------------------------------------------------


def test_unbounded_input_is_refused(tmp_path):
    from ecs_ipam.cni import MAX_STDIN_BYTES
    from ecs_ipam.config import MAX_FIELD_BYTES

    db_path = tmp_path / "eni-ipam.db"
    padded = netconf("task-1")
    padded["padding"] = "x" * MAX_STDIN_BYTES
    huge_id = "x" * (MAX_FIELD_BYTES + 1)
    for conf, env, expected in (
        (padded, {}, 6),
        (b"{" + b" " * (200 << 20), {}, 6),  # 200 MB: refused after reading 4 MiB of it
        (netconf(huge_id), {}, 7),
        (netconf("é" * (MAX_FIELD_BYTES // 2 + 1)), {}, 7),  # the limit is in bytes
        (netconf("task-1"), {"CNI_CONTAINERID": huge_id}, 4),
        (netconf("task-1"), {"CNI_IFNAME": huge_id}, 4),
    ):
        code, error, stderr, took = timed_plugin("ADD", conf, db_path, **env)
        assert (code, error["code"], stderr) == (1, expected, ""), error
        assert "limit" in error["msg"] and len(error["msg"]) < 300, error
        assert took < STARTUP_SLACK
    assert not db_path.exists()
    # At the limits, accepted.
    code, _, stderr, _ = timed_plugin("ADD", netconf("x" * MAX_FIELD_BYTES), db_path, CNI_CONTAINERID=huge_id[1:])
    assert (code, stderr) == (0, "")


# --- SIGINT -------------------------------------------------------------------------------------------


def test_sigint_while_waiting_exits_quietly(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    add_ok(db_path, "task-1")
    with PausedTransaction(db_path, netconf("holder")) as holder:
        waiting = PluginProcess("ADD", netconf("task-2"), db_path, {"IPAM_DB_CONNECTION_TIMEOUT": "60s"})
        wait_until_in_flock(waiting.proc.pid)  # loaded, and waiting for the writer lock
        waiting.proc.send_signal(signal.SIGINT)
        code, error, stderr = waiting.finish(timeout=30)
        holder.abort()
    assert (code, error["code"], stderr) == (130, 11, ""), (error, stderr)
    assert error["msg"] == "interrupted by SIGINT"
    assert set(check_records(db_path)[V4_SUBNET]) == {"task-1"}


# --- damaged pages: no signal, ever ---------------------------------------------------------------

# Runs the trials in one interpreter that has imported the plugin, forking a child per
# trial: each trial is a process of its own (a signal ends the child, never the run), and
# costs a fork instead of an interpreter start.  Prints one JSON line per trial.
_FUZZ = r"""
import io, json, os, random, sys
from ecs_ipam.cni import main
from ecs_ipam.ctl.cli import main as ctl_main

directory, trials, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
good_path = os.path.join(directory, "good.db")

def in_child(run):
    pid = os.fork()
    if pid == 0:
        try:
            code = run()
        finally:
            os._exit(97)  # replaced below by os._exit(code) when run() returns
    return os.waitpid(pid, 0)[1]

def seed_database():
    from ecs_ipam import IPAM
    conf = {"cniVersion": "0.3.0", "ipam": {"ipv4-subnet": "169.254.172.0/22", "ipv6-subnet": "fd00:ec2::172:0/112"}}
    with IPAM(good_path) as ipam:
        for n in range(40):
            ipam.add({**conf, "ipam": {**conf["ipam"], "id": f"task-{n}"}}, f"c-{n}", "eth0")
    os._exit(0)

assert in_child(seed_database) == 0
os.remove(good_path + "-lock")
good = open(good_path, "rb").read()
pages = len(good) // 4096
rng = random.Random(seed)
for trial in range(trials):
    data = bytearray(good)
    page = rng.randrange(2, pages)
    damage = rng.choice(["page", "bytes", "header"])
    if damage == "page":
        data[page * 4096 : (page + 1) * 4096] = rng.randbytes(4096)
    elif damage == "header":
        data[page * 4096 + rng.randrange(16)] = rng.randrange(256)
    else:
        for _ in range(rng.randrange(1, 8)):
            data[page * 4096 + rng.randrange(4096)] = rng.randrange(256)
    path = os.path.join(directory, f"trial-{trial}.db")
    with open(path, "wb") as f:
        f.write(data)
    command = rng.choice(["ADD", "DEL", "STATUS", "GC", "CHECK", "leases"])
    conf = {"cniVersion": "1.1.0", "ipam": {"id": f"task-{rng.randrange(50)}", "ipv4-subnet": "169.254.172.0/22",
            "ipv6-subnet": "fd00:ec2::172:0/112"}, "cni.dev/valid-attachments": [], "prevResult": {"ips": []}}
    out = os.path.join(directory, f"trial-{trial}.out")
    def run():
        with open(out, "w") as stdout:
            os.dup2(stdout.fileno(), 2)
            if command == "leases":
                os._exit(ctl_main(["--db", path, "leases", "--json"], {}, io.StringIO(), stdout, stdout))
            env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
                   "IPAM_DB_PATH": path, "ECS_CNI_LOG_FILE": os.devnull, "IPAM_DB_CONNECTION_TIMEOUT": "2s"}
            os._exit(main([], env, io.BytesIO(json.dumps(conf).encode()), stdout))
    status = in_child(run)
    text = open(out).read()
    unchanged = open(path, "rb").read() == bytes(data)
    print(json.dumps({"trial": trial, "page": page, "damage": damage, "command": command, "status": status,
                      "output": text[-400:], "unchanged": unchanged}), flush=True)
    for name in (path, path + "-lock", out):
        if os.path.exists(name):
            os.remove(name)
"""


def test_damaged_pages_never_end_in_a_signal(tmp_path):
    process = subprocess.run(
        [sys.executable, "-c", _FUZZ, str(tmp_path), "200", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.returncode == 0, process.stderr[-3000:]
    trials = [json.loads(line) for line in process.stdout.splitlines()]
    assert len(trials) == 200
    signalled = [t for t in trials if os.WIFSIGNALED(t["status"])]
    assert not signalled, signalled
    outcomes = {}
    for t in trials:
        code = os.WEXITSTATUS(t["status"])
        assert code in (0, 1), t  # 0: the damage missed what the command reads
        no_traceback(t["output"])
        if code and t["command"] != "leases":
            error = json.loads(t["output"])
            outcomes[error["code"]] = outcomes.get(error["code"], 0) + 1
            if error["code"] == 5:
                assert t["unchanged"], t  # a refused database is left as it was
    # Damage is found, not only missed: most trials that fail are code 5.
    assert outcomes.get(5, 0) >= 30, outcomes  # (this seed ends a trial in SIGABRT without the page walk)


def test_a_page_damaged_after_our_last_commit_is_found(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    for n in range(3):
        add_ok(db_path, f"task-{n}")
    assert os.getxattr(db_path, "user.ecs-ipam.checked")  # the commit's stamp: no walk needed
    data = bytearray(db_path.read_bytes())
    # Point the main tree's root at a page past the end (LMDB would read the map beyond the file).
    struct_offset = 88 + 40
    newest = max((0, 4096), key=lambda base: int.from_bytes(data[base + 144 : base + 152], "little"))
    data[newest + struct_offset : newest + struct_offset + 8] = (10**6).to_bytes(8, "little")
    with open(db_path, "r+b") as f:
        f.write(data)
    before = db_path.read_bytes()
    for command in ("ADD", "DEL", "STATUS"):
        code, error, stderr, _ = timed_plugin(command, netconf("task-9", cni_version="1.1.0"), db_path)
        assert (code, error["code"], stderr) == (1, 5, ""), error
        assert "damaged" in error["msg"] and "page 1000000" in error["msg"], error
    leases = ctl(db_path, "leases")
    assert leases.returncode == 1 and "damaged" in leases.stderr, leases
    assert db_path.read_bytes() == before


def test_a_sound_database_with_a_long_free_list_passes_the_page_walk(tmp_path):
    """One transaction that frees a few thousand pages leaves a free list longer than
    8 KiB, in overflow pages: the walk reads it whole rather than failing on it."""
    from ecs_ipam import kv

    db_path = str(tmp_path / "eni-ipam.db")
    with kv.open_store(db_path, bucket="filler") as store:
        store.transact(lambda tx: [tx.put(f"k{n:05d}", b"x" * 1500) for n in range(3000)])
        store.transact(lambda tx: tx.delete_tree(""))
    os.removexattr(db_path, "user.ecs-ipam.checked")  # as another program's commit leaves it: walked
    with kv.open_store(db_path, bucket="filler", read_only=True) as store:
        assert store.list("") == []
    assert add_ok(Path(db_path), "task-1")["ips"]


# --- also seen: an id index entry that lies, a damaged record ------------------------------------


def test_id_index_pointing_at_the_wrong_address(tmp_path):
    from ecs_ipam import kv
    from ecs_ipam.pool_store import encode, id_index_key

    db_path = tmp_path / "eni-ipam.db"
    first = add_ok(db_path, "task-1")["ips"][0]["address"].split("/")[0]
    second = add_ok(db_path, "task-2")["ips"][0]["address"].split("/")[0]
    with kv.open_store(str(db_path), bucket=V4_SUBNET) as store:
        store.put(id_index_key("task-1"), encode(second))  # names task-2's address
    # The id still holds its address: a second ADD is refused, not given another one.
    code, error, _, _ = timed_plugin("ADD", netconf("task-1"), db_path)
    assert (code, error["code"]) == (1, 101), error
    code, output, stderr, _ = timed_plugin("DEL", netconf("task-1"), db_path)
    assert (code, output, stderr) == (0, None, "")
    assert check_records(db_path) == {V4_SUBNET: {"task-2": second}}
    again = add_ok(db_path, "task-1")["ips"][0]["address"].split("/")[0]
    assert again != second
    assert check_records(db_path) == {V4_SUBNET: {"task-1": again, "task-2": second}}
    assert first != second


def test_a_damaged_record_is_shown_and_releasable_and_stops_nothing(tmp_path):
    import lmdb

    db_path = tmp_path / "eni-ipam.db"
    add_ok(db_path, "task-1")
    damaged = add_ok(db_path, "task-2")["ips"][0]["address"].split("/")[0]
    add_ok(db_path, "task-3")
    env = lmdb.open(str(db_path), subdir=False, max_dbs=1024, max_readers=256)
    with env.begin(write=True) as txn:
        # The outer [last_index, value] of task-2's record, damaged.
        txn.put(damaged.encode(), b"\x92\xff\x00garbage", db=env.open_db(V4_SUBNET.encode(), txn=txn))
    env.close()
    gc_conf = {**netconf("x", cni_version="1.1.0"), "cni.dev/valid-attachments": []}
    for command, conf in (
        ("STATUS", netconf("task-4", cni_version="1.1.0")),
        ("ADD", netconf("task-4")),  # the walk skips the damaged address: it stays taken
        ("DEL", netconf("task-1")),
        ("GC", gc_conf),
    ):
        code, output, stderr, _ = timed_plugin(command, conf, db_path)
        assert (code, stderr) == (0, ""), (command, output)
        if command == "ADD":
            assert output["ips"][0]["address"].split("/")[0] != damaged
    listing = ctl(db_path, "leases")
    assert listing.returncode == 0 and f"{damaged}  {V4_SUBNET}  (damaged)" in listing.stdout, listing
    as_json = json.loads(ctl(db_path, "leases", "--json").stdout)
    assert [lease["address"] for lease in as_json if lease.get("damaged")] == [damaged]
    listing = dump_db(db_path, "--bucket", V4_SUBNET)
    assert listing.returncode == 0 and f"key={damaged} - value=" in listing.stdout, listing
    released = ctl(db_path, "release", "--address", damaged)
    assert released.returncode == 0 and f"released {damaged}" in released.stdout, released
    assert check_records(db_path) == {V4_SUBNET: {}}  # GC released task-3 and task-4 (no valid attachment)


# Another program writing through the lmdb module directly (it never stamps the file, so
# every open walks the pages), churning pages as fast as it can.
_CHURN = """
import os, sys, lmdb
env = lmdb.open(sys.argv[1], subdir=False, max_dbs=1024, max_readers=256, map_size=1 << 30, sync=False)
db = env.open_db(b"churn")
n = 0
while not os.path.exists(sys.argv[2]):
    with env.begin(write=True, db=db) as txn:
        for k in range(20):
            txn.put(b"%d" % ((n + k) % 300), os.urandom(50 + (n * 7 + k) % 3000))
    n += 1
"""

_OPEN_AGAIN_AND_AGAIN = """
import sys
from ecs_ipam import kv
from ecs_ipam.errors import CorruptDatabaseError
damaged = 0
for _ in range(int(sys.argv[2])):
    try:
        with kv.open_store(sys.argv[1], bucket="churn", read_only=True) as store:
            store.list()
    except CorruptDatabaseError as e:
        damaged += 1
        print(e, file=sys.stderr)
print(damaged)
"""


def test_page_walk_under_concurrent_commits_sees_one_snapshot(tmp_path):
    db_path = tmp_path / "eni-ipam.db"
    add_ok(db_path, "task-1")
    stop = tmp_path / "stop"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writer = subprocess.Popen(
        [sys.executable, "-c", _CHURN, str(db_path), str(stop)], cwd=ROOT, env=env, stderr=subprocess.PIPE
    )
    try:
        time.sleep(1)
        readers = subprocess.run(
            [sys.executable, "-c", _OPEN_AGAIN_AND_AGAIN, str(db_path), "300"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env=env,
        )
    finally:
        stop.touch()
        _, errors = writer.communicate(timeout=60)
    assert writer.returncode == 0, errors.decode()[-2000:]
    assert (readers.returncode, readers.stdout) == (0, "0\n"), readers.stderr[-2000:]
    assert check_records(db_path)[V4_SUBNET] == {"task-1": "169.254.172.2"}


def test_a_page_walk_that_cannot_read_the_file_is_an_io_failure(tmp_path):
    # A descriptor the file cannot be read through stands in for a disk's I/O error: the
    # walk's OSError is the database failing (code 5), never an internal error (199).
    from ecs_ipam.errors import StoreError
    from ecs_ipam.kv import dbfile

    path = tmp_path / "eni-ipam.db"
    path.write_bytes(bytes(8192))
    fd = os.open(path, os.O_WRONLY)
    try:
        with pytest.raises(StoreError) as caught:
            dbfile.check_lmdb_pages(fd, str(path), 1)
    finally:
        os.close(fd)
    assert caught.value.code == 5
    assert str(caught.value).startswith(f"database {path} could not be read: ")
