"""The store contract, run against the LMDB backend, and what only LMDB does: files on
disk, other processes, crashes, and a map that has to grow."""

from __future__ import annotations

import os
import random
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lmdb
import pytest

from ecs_ipam import kv
from ecs_ipam.errors import (
    CorruptDatabaseError,
    DatabaseNotFoundError,
    NotADatabaseError,
    StoreError,
    StoreTimeoutError,
)
from ecs_ipam.kv.lmdb_store import LMDBStore

from .contract import StoreContract

REPO = Path(__file__).resolve().parents[2]
BOLT_FIXTURE = REPO / "tests" / "fixtures" / "boltdb" / "ecs-agent-classic-2019.db"


@pytest.fixture
def store(tmp_path):
    with LMDBStore(str(tmp_path / "kv.db"), "test") as fresh:
        yield fresh


class TestLMDBStore(StoreContract):
    pass


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "kv.db")


# -- helpers: other processes ----------------------------------------------------------------


class Child:
    """A Python process running *script* against the project, spoken to line by line."""

    def __init__(self, script: str, *args: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, line: str, timeout: float = 10.0) -> str:
        """Wait for the child's next line of output and check it starts with *line*."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        got = self.proc.stdout.readline() if ready else ""
        if not got.startswith(line):
            self.proc.kill()
            _, err = self.proc.communicate()
            pytest.fail(f"child said {got!r}, expected {line!r}; stderr:\n{err}")
        return got.rstrip("\n")

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 10.0) -> str:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        return out

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.communicate()


@pytest.fixture
def children():
    started: list[Child] = []

    def start(script: str, *args: str) -> Child:
        child = Child(script, *args)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.proc.returncode is None:
            child.proc.kill()
            child.proc.communicate()


def reader_pids(env: lmdb.Environment) -> set[int]:
    """The pids holding slots in LMDB's reader table (first line is a header)."""
    return {int(line.split()[0]) for line in env.readers().splitlines()[1:] if line.split()}


# -- the files ---------------------------------------------------------------------------------


def test_reopen_keeps_data_and_last_index_keeps_growing(path):
    with LMDBStore(path, "test") as store:
        store.put("k", b"before")
        store.bucket("other").put("o", b"x")
        before = store.get("k")

    with LMDBStore(path, "test") as store:
        assert store.get("k") == before
        assert store.bucket("other").get("o").value == b"x"
        store.put("k", b"after")
        store.put("new", b"after")
        assert store.get("k").last_index > before.last_index
        assert store.get("new").last_index > before.last_index
        assert store.buckets() == ["other", "test"]


def test_files_are_created_mode_0600(path):
    previous_umask = os.umask(0)
    try:
        with LMDBStore(path, "test") as store:
            store.put("k", b"v")
    finally:
        os.umask(previous_umask)

    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path + "-lock").st_mode) == 0o600


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"read_only": True}, id="read_only"),
        pytest.param({"create": False}, id="create=False"),
    ],
)
def test_missing_database_is_not_created_when_asked_not_to(tmp_path, path, options):
    with pytest.raises(DatabaseNotFoundError) as caught:
        LMDBStore(path, "test", **options)

    assert isinstance(caught.value, StoreError)
    assert isinstance(caught.value, FileNotFoundError)
    assert str(caught.value) == f"no database at {path}"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda store: store.put("new", b"v"), id="put"),
        pytest.param(lambda store: store.delete("k"), id="delete"),
        pytest.param(lambda store: store.bucket("other").put("new", b"v"), id="other-bucket"),
    ],
)
def test_read_only_store_reads_and_creates_nothing(tmp_path, path, write):
    with LMDBStore(path, "test") as store:
        store.put("k", b"v")
    os.remove(path + "-lock")
    content = Path(path).read_bytes()

    with LMDBStore(path, "test", read_only=True) as store:
        assert store.get("k").value == b"v"
        assert store.buckets() == ["test"]
        with pytest.raises(StoreError) as caught:
            write(store)

    assert str(caught.value) == f"database {path} is open read-only"
    assert os.listdir(tmp_path) == ["kv.db"]
    assert Path(path).read_bytes() == content


def test_read_only_store_never_writes_through_a_read_write_opener(path):
    with LMDBStore(path, "test") as writer, LMDBStore(path, "test", read_only=True) as reader:
        writer.put("k", b"v")
        assert reader.get("k").value == b"v"

        for write in (lambda: reader.put("k", b"w"), lambda: reader.bucket("other").put("k", b"w")):
            with pytest.raises(StoreError) as caught:
                write()
            assert str(caught.value) == f"database {path} is open read-only"

        assert writer.get("k").value == b"v"
        assert writer.buckets() == ["test"]


def test_list_buckets_of_missing_database_creates_nothing(tmp_path, path):
    with pytest.raises(DatabaseNotFoundError):
        kv.list_buckets(path)

    assert os.listdir(tmp_path) == []


def write_random_bytes(path: str) -> None:
    Path(path).write_bytes(random.Random(7).randbytes(3 * 4096))


def write_truncated_lmdb(path: str) -> None:
    with LMDBStore(path, "test") as store:
        for n in range(200):
            store.put(f"key{n:04d}", bytes(300))
    os.remove(path + "-lock")
    # The two meta pages survive and still describe every page that is now gone.
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def write_lmdb_cut_inside_its_header(path: str) -> None:
    with LMDBStore(path, "test") as store:
        store.put("k", b"v")
    os.remove(path + "-lock")
    with open(path, "r+b") as f:
        f.truncate(100)


def write_other_lmdb_version(path: str) -> None:
    with LMDBStore(path, "test") as store:
        store.put("k", b"v")
    os.remove(path + "-lock")
    data = bytearray(Path(path).read_bytes())
    # The data version follows the magic in both meta pages (pages 0 and 1).
    page_size = 4096
    for meta in (0, page_size):
        assert struct.unpack_from("<II", data, meta + 16) == (0xBEEFC0DE, 1)
        struct.pack_into("<I", data, meta + 20, 2)
    Path(path).write_bytes(data)


def write_bolt(path: str) -> None:
    shutil.copyfile(BOLT_FIXTURE, path)


@pytest.mark.parametrize("read_only", [False, True], ids=["read-write", "read-only"])
@pytest.mark.parametrize(
    "make, error, words",
    [
        pytest.param(write_random_bytes, NotADatabaseError, "is not an LMDB database", id="random-bytes"),
        pytest.param(write_truncated_lmdb, CorruptDatabaseError, "truncated", id="truncated-lmdb"),
        pytest.param(write_lmdb_cut_inside_its_header, CorruptDatabaseError, "truncated", id="cut-header"),
        pytest.param(write_other_lmdb_version, NotADatabaseError, "incompatible LMDB version", id="other-version"),
        pytest.param(write_bolt, NotADatabaseError, "bolt database", id="bolt"),
    ],
)
def test_file_that_is_not_a_database_is_left_untouched(tmp_path, path, make, error, words, read_only):
    make(path)
    content = Path(path).read_bytes()
    others = sorted(os.listdir(tmp_path))

    with pytest.raises(error) as caught:
        LMDBStore(path, "test", read_only=read_only)

    assert isinstance(caught.value, StoreError)
    assert path in str(caught.value)
    assert words in str(caught.value)
    assert Path(path).read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == others
    assert not os.path.exists(path + "-lock")


def test_directory_is_not_a_database(tmp_path, path):
    os.mkdir(path)

    with pytest.raises(NotADatabaseError) as caught:
        LMDBStore(path, "test")

    assert str(caught.value) == f"database path {path} is a directory"
    assert os.listdir(path) == []
    assert os.listdir(tmp_path) == ["kv.db"]


def test_list_buckets_names_buckets_and_never_keys(path):
    names = ["169.254.172.0/22", "fd00:ec2::172:0/112", "my-agent"]
    with LMDBStore(path, "test") as store:
        for name in names:
            with store.bucket(name) as bucket:
                bucket.put("lastKnownIP", b"x")
                bucket.put("id/owner", b"y")
        assert kv.list_buckets(path) == names  # while the writer has it open

    assert kv.list_buckets(path) == names


@pytest.mark.parametrize("read_only", [False, True])
def test_values_and_keys_come_back_as_bytes_and_str_never_memoryviews(path, read_only):
    # The store's types say bytes (lmdb.Transaction[bytes]): no transaction is begun with
    # buffers=True, whose memoryviews die with their transaction.
    with LMDBStore(path, "test") as store:
        store.put("k1", b"one")
        store.put("k2", b"two")
    with LMDBStore(path, "test", read_only=read_only) as store:
        pairs = [store.get("k1"), *store.list("k"), *store.transact(lambda tx: [tx.get("k2"), *tx.list("")], False)]
    assert [(type(p.key), type(p.value), p.value) for p in pairs] == [
        (str, bytes, b"one"),
        (str, bytes, b"one"),
        (str, bytes, b"two"),
        (str, bytes, b"two"),
        (str, bytes, b"one"),
        (str, bytes, b"two"),
    ]
    assert all(type(name) is str for name in kv.list_buckets(path))


def test_application_keys_never_land_in_the_main_database(path):
    with LMDBStore(path, "test") as store:
        store.put("in-test", b"1")
        with store.transaction() as tx:
            tx.bucket("other").put("in-other", b"2")
            tx.put("also-in-test", b"3")

    env = lmdb.open(path, subdir=False, readonly=True, max_dbs=8)
    try:
        with env.begin() as txn:
            main_keys = [key for key, _ in txn.cursor()]
            assert main_keys == [b"other", b"test"]
            inside = {
                name.decode(): [key for key, _ in txn.cursor(db=env.open_db(name, txn=txn, create=False))]
                for name in main_keys
            }
    finally:
        env.close()
    assert inside == {"other": [b"in-other"], "test": [b"also-in-test", b"in-test"]}


def in_forked_child(path: str) -> str:
    """Fork; the child opens *path* and writes a key; return what it reports."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            try:
                with LMDBStore(path, "test") as store:
                    store.put("from-child", b"1")
                report = "wrote"
            except BaseException as e:  # noqa: BLE001 - whatever the child hit is its report to the parent
                report = f"{type(e).__name__}: {e}"
            os.write(write_end, report.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reports:
        report = reports.read().decode()
    os.waitpid(pid, 0)
    return report


def test_forked_child_must_open_the_database_itself(path):
    with LMDBStore(path, "test") as store:
        store.put("k", b"v")

        report = in_forked_child(path)

        assert report == (
            f"StoreError: database {path} was open when this process was forked and cannot be "
            "used in the child; open it after the fork, or start the child with spawn"
        )
        store.put("k", b"w")
        assert store.get("k").value == b"w"

    assert in_forked_child(path) == "wrote"
    with LMDBStore(path, "test") as store:
        assert store.get("from-child").value == b"1"


# -- a map that must grow -------------------------------------------------------------------------

SMALL_MAP = 64 * 1024
FIVE_MB = 5 * 1024 * 1024


def payloads(count: int, size: int) -> dict[str, bytes]:
    rng = random.Random(count)
    return {f"key{n:06d}": rng.randbytes(size) for n in range(count)}


def test_map_grows_inside_one_transaction(path):
    data = payloads(FIVE_MB // 2048, 2048)

    with LMDBStore(path, "test", map_size=SMALL_MAP) as store:
        with store.transaction() as tx:
            for key, value in data.items():
                tx.put(key, value)
            tx.bucket("other").put("marker", b"m")

        assert {pair.key: pair.value for pair in store.list()} == data
        assert store.bucket("other").get("marker").value == b"m"
        assert store._env.env.info()["map_size"] >= FIVE_MB

    with LMDBStore(path, "test") as store:
        assert len(store.list()) == len(data)


def test_map_grows_across_many_small_transactions(path):
    data = payloads(FIVE_MB // (50 * 1024), 50 * 1024)

    with LMDBStore(path, "test", map_size=SMALL_MAP) as store:
        for key, value in data.items():
            store.put(key, value)

        assert {pair.key: pair.value for pair in store.list()} == data
        assert store._env.env.info()["map_size"] >= FIVE_MB


GROW_IN_CHILD = """
    import random, sys
    from ecs_ipam.kv.lmdb_store import LMDBStore
    rng = random.Random(1)
    with LMDBStore(sys.argv[1], "test", map_size=64 * 1024) as store:
        with store.transaction() as tx:
            for n in range(1024):
                tx.put(f"child{n:04d}", rng.randbytes(5 * 1024))
    print("grown", flush=True)
"""


@pytest.mark.parametrize("first", ["read", "write"])
def test_map_grown_by_another_process_is_adopted(path, children, first):
    with LMDBStore(path, "test", map_size=SMALL_MAP) as store:
        store.put("mine", b"1")
        assert store.list() != []

        child = children(GROW_IN_CHILD, path)
        child.expect("grown", timeout=60)
        child.finish()

        if first == "write":
            store.put("mine", b"2")
        assert len(store.list("child")) == 1024
        store.put("mine", b"3")
        assert store.get("mine").value == b"3"
        assert store._env.env.info()["map_size"] >= FIVE_MB  # the child's size, adopted


# -- other writers, crashes ------------------------------------------------------------------------

# Holds the write transaction until told to go, or for 3 s at most: a reader that waited
# for it would then show up as slow instead of hanging the test.
HOLD_WRITE_LOCK = """
    import select, sys
    from ecs_ipam.kv.lmdb_store import LMDBStore
    with LMDBStore(sys.argv[1], "test") as store:
        with store.transaction() as tx:
            tx.put("held", b"uncommitted")
            print("locked", flush=True)
            select.select([sys.stdin], [], [], 3.0)
    print("released", flush=True)
"""


def test_busy_writer_times_out_while_readers_go_on(path, children):
    with LMDBStore(path, "test", timeout=0.3) as store:
        store.put("before", b"1")
        holder = children(HOLD_WRITE_LOCK, path)
        holder.expect("locked")

        started = time.monotonic()
        with pytest.raises(StoreTimeoutError) as caught:
            store.put("k", b"v")
        waited = time.monotonic() - started

        assert 0.3 <= waited < 1.0
        assert caught.value.code == 11
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, StoreError)
        assert str(caught.value) == f"database {path} is locked by another writer; gave up after 0.3s"

        started = time.monotonic()
        assert store.get("before").value == b"1"
        assert not store.exists("held")
        assert store.list() == [store.get("before")]
        assert time.monotonic() - started < 1.0

        holder.send("go")
        holder.expect("released")
        holder.finish()
        store.put("k", b"v")
        assert store.get("held").value == b"uncommitted"


READ_AND_HANG = """
    import sys, time
    from ecs_ipam.kv.lmdb_store import LMDBStore
    store = LMDBStore(sys.argv[1], "test")
    with store.transaction(write=False) as tx:
        tx.get("k")
        print("reading", flush=True)
        time.sleep(60)
"""

# Keeps the environment open so that LMDB does not reset its reader table, as the first
# process to open a database does; then reports the table on request.
WATCH_READERS = """
    import sys
    from ecs_ipam.kv.lmdb_store import LMDBStore
    store = LMDBStore(sys.argv[1], "test")
    print("open", flush=True)
    for line in sys.stdin:
        table = store._env.env.readers().splitlines()[1:]
        print("readers", *sorted(int(row.split()[0]) for row in table if row.split()), flush=True)
"""


def test_stale_reader_slot_of_a_killed_process_is_cleared_on_open(path, children):
    with LMDBStore(path, "test") as store:
        store.put("k", b"v")
    watcher = children(WATCH_READERS, path)
    watcher.expect("open")
    reader = children(READ_AND_HANG, path)
    reader.expect("reading")

    reader.kill()
    watcher.send("readers?")
    stale = watcher.expect("readers")
    assert str(reader.pid) in stale.split()

    with LMDBStore(path, "test") as store:
        assert reader.pid not in reader_pids(store._env.env)
        store.put("k", b"w")
        watcher.send("readers?")
        assert str(reader.pid) not in watcher.expect("readers").split()


DIE_WHILE_WRITING = """
    import sys, time
    from ecs_ipam.kv.lmdb_store import LMDBStore
    store = LMDBStore(sys.argv[1], "test")
    with store.transaction() as tx:
        tx.put("base", b"overwritten")
        for n in range(100):
            tx.put(f"lost{n:03d}", bytes(1000))
        tx.bucket("lost-bucket").put("k", b"v")
        print("writing", flush=True)
        time.sleep(60)
"""


@pytest.mark.parametrize("kept_open", [True, False], ids=["open-during-crash", "reopened"])
def test_writer_killed_mid_transaction_leaves_nothing_and_no_lock(path, children, kept_open):
    store = LMDBStore(path, "test", timeout=5)
    store.put("base", b"original")
    if not kept_open:
        store.close()

    writer = children(DIE_WHILE_WRITING, path)
    writer.expect("writing")
    writer.kill()

    if not kept_open:
        store = LMDBStore(path, "test", timeout=5)
    try:
        started = time.monotonic()
        store.put("after", b"1")
        assert time.monotonic() - started < 1.0
        assert store.list("lost") == []
        assert [(p.key, p.value) for p in store.list()] == [("after", b"1"), ("base", b"original")]
        assert store.buckets() == ["test"]
    finally:
        store.close()


# -- a bucket dropped by another process ---------------------------------------------------------


HOLDER = """
    import sys
    from ecs_ipam.kv.lmdb_store import LMDBStore

    # Holds the store, and its bucket handle, open across another process's drop.
    with LMDBStore(sys.argv[1], "b") as store:
        store.put("k", b"1")
        print("written", flush=True)
        for command in sys.stdin:
            if command.strip() == "read":
                print("read", [pair.key for pair in store.list()], store.buckets(), flush=True)
            elif command.strip() == "write":
                store.put("again", b"2")
                print("wrote", [pair.key for pair in store.list()], store.buckets(), flush=True)
            elif command.strip() == "drop":
                print("dropped", store.drop_bucket("b"), store.buckets(), flush=True)
"""


def test_a_process_holding_a_bucket_open_sees_another_process_drop_it(path, children):
    holder = children(HOLDER, path)
    holder.expect("written")
    holder.send("read")
    holder.expect("read ['k'] ['b']")

    with LMDBStore(path, "other") as store:
        assert store.drop_bucket("b") is True
        assert store.buckets() == []

    holder.send("read")
    holder.expect("read [] []")
    holder.send("drop")
    holder.expect("dropped False []")
    # Its cached handle names a bucket that no longer exists: the write creates it again.
    holder.send("write")
    holder.expect("wrote ['again'] ['b']")
    with LMDBStore(path, "b") as store:
        assert [pair.key for pair in store.list()] == ["again"]
        assert store.drop_bucket("b") is True
    holder.send("write")
    holder.expect("wrote ['again'] ['b']")
    holder.send("drop")
    holder.expect("dropped True []")
    holder.finish()
    with LMDBStore(path, "b") as store:
        assert store.buckets() == []


def test_a_drop_replayed_into_a_larger_map_still_drops(tmp_path):
    path = str(tmp_path / "kv.db")
    with LMDBStore(path, "b", map_size=1 << 20) as store:
        store.put("k", b"v")
        with store.transaction() as tx:
            tx.drop_bucket("b")
            # Far more than the map holds: the transaction is replayed into a larger one.
            for i in range(64):
                tx.bucket("big").put(f"k{i}", bytes(64 << 10))
        assert store.buckets() == ["big"]
        assert store.list() == []
