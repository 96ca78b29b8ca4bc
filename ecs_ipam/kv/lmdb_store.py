"""The LMDB backend: one database file shared by every process on the host.

Layout: ``<path>`` and LMDB's ``<path>-lock``, both mode 0600.  Each bucket is an LMDB
named database; the main database holds nothing but their names.  A value is stored with
its last_index by :mod:`ecs_ipam.kv.codec`.

Why the extra machinery around LMDB:

* LMDB's writer mutex has no timeout.  Writers first take an ``flock`` on the data file
  itself, as the Go plugin's bolt does (LMDB locks only ``<path>-lock``, with fcntl),
  polling until a deadline, so a stuck writer elsewhere turns into ``StoreTimeoutError``
  instead of a hang.  flock belongs to the file, not the name: a Go plugin still running
  on the path, or a migration of it, excludes writers and is excluded by them.
* The path is resolved before LMDB sees it, and a file reachable under a second lock
  file is refused; what lies at the path, who owns it, and the lock file (made with real
  blocks, and its byte-0 lock waited for within the timeout) are checked before LMDB
  opens anything (:mod:`ecs_ipam.kv.dbfile`).
* ``last_index`` is LMDB's transaction id, but never less than the key's previous index
  plus one: transaction ids are persistent and monotonic, except after a compacting copy,
  which restarts them.
* A full map aborts the whole LMDB transaction.  Each write transaction keeps a log of
  its mutations; on ``MapFullError`` the map is doubled and the log replayed.  Nobody else
  can have written meanwhile: we still hold the flock.
"""

from __future__ import annotations

# _thread, not threading: the plugin needs only plain locks, and importing threading
# would cost every container start half a millisecond.
import _thread
import errno
import fcntl
import os
import time

import lmdb

from ..errors import (
    CorruptDatabaseError,
    DatabaseNotFoundError,
    InvalidArgumentError,
    KeyModifiedError,
    NotADatabaseError,
    StoreError,
    StoreTimeoutError,
)
from ..filelock import flock_before
from . import dbfile
from .base import DAMAGED_INDEX, KVPair, Store, Tx, check_bucket_name
from .codec import decode_record, encode_record
from .dbfile import check_single_name, resolve
from .lmdb_handles import HandleTable, StaleHandles

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    # A named database's handle.  Every transaction is begun without buffers=True, so
    # LMDB hands out bytes, never memoryviews: lmdb.Transaction[bytes].
    from collections.abc import Callable

    from lmdb import _Database as Handle

    from .lmdb_handles import TxnHandles

DEFAULT_MAP_SIZE = 32 << 20
MAX_BUCKETS = 1024
MAX_READERS = 256
# LMDB's lock file for MAX_READERS readers: a 192-byte header, then 64 bytes per reader
# slot beyond the first (what LMDB itself would size it to; see dbfile.prepare_lock_file).
LOCK_FILE_SIZE = 192 + 64 * (MAX_READERS - 1)
# Grow before a write transaction when the data file fills this share of the map, so
# that most transactions never hit MapFullError and need no replay.
GROW_THRESHOLD = 0.75
# How long a growing map waits for other threads' transactions to end.
RESIZE_WAIT = 10.0


class _Environment:
    """The one LMDB environment of this process for one file, shared by its stores."""

    def __init__(self, path: str, real: str, read_only: bool, create: bool, map_size: int, timeout: float) -> None:
        dbfile.require_own_link(path)
        # One descriptor serves every check below, the page walk, and a writer's flock.
        opened = _open_database_file(real, path, read_only, create)
        data_fd: int | None = opened
        try:
            kind, info = dbfile.kind_of_open_file(opened, path)
            if kind in dbfile.UNSETTLED:
                # Perhaps a new file another process's LMDB is still writing its meta pages into.
                kind, info = dbfile.settled_kind_of_open_file(opened, real + "-lock", path, timeout)
            if kind not in (dbfile.EMPTY, dbfile.LMDB):
                raise dbfile.not_ours(path, kind)
            if kind == dbfile.EMPTY and read_only:
                raise DatabaseNotFoundError(f"database {path} is an empty file")
            # Checked before LMDB opens the file, so that a refused name gets no -lock file.
            check_single_name(opened, real, path, info)
            # Every page is walked before LMDB reads one through its map, unless the file is
            # as a commit of ours left it (dbfile.check_lmdb_pages).
            walk_pages = kind == dbfile.LMDB and not dbfile.pages_checked(opened, info)
            # A read-only opener must not create the lock file; without one nobody is
            # writing under LMDB's locking, so reading without it is safe.
            use_lock = dbfile.prepare_lock_file(real + "-lock", LOCK_FILE_SIZE, read_only, timeout)
        except BaseException:
            _close(data_fd)
            raise
        self.path = path
        self.real_path = real
        self.read_only = read_only
        self.use_lock = use_lock
        try:
            self.env = self._open_lmdb(map_size)
        except lmdb.InvalidError:
            _close(data_fd)
            raise dbfile.not_ours(path, dbfile.OTHER) from None
        except lmdb.VersionMismatchError:
            _close(data_fd)
            raise NotADatabaseError(f"{path} was written by an incompatible LMDB version") from None
        except lmdb.Error as e:
            _close(data_fd)
            raise StoreError(f"cannot open database {path}: {_describe(e)}") from None
        except BaseException:
            _close(data_fd)
            raise
        try:
            if use_lock:
                # Slots left by readers that were killed would otherwise pin old pages
                # (and the file's size) forever.
                self.env.reader_check()
            if walk_pages:
                self._walk_pages(opened)
            if read_only:
                _close(data_fd)
                data_fd = None
            # Writers take their flock on the data file: every name of it shares that
            # (and stamp the file through it after each commit: see lmdb_pages).
            self.lock_fd = data_fd
        except BaseException:
            _close(data_fd)
            self.env.close()
            raise
        self.pid = os.getpid()
        self.refs = 0
        self.table = HandleTable()
        # flock is per open file description, so threads of this process would all
        # "hold" it at once; they queue on this lock first.
        self.thread_lock = _thread.allocate_lock()
        # LMDB allows set_mapsize only while this process has no transaction open, so
        # transactions are counted per thread: a resize waits for other threads' to end,
        # and new ones wait while it resizes (or drops a bucket: see wait_alone).
        # Reentrant: the thread that holds it begins its own transactions.
        self._resizing = _thread.RLock()
        self._counts_lock = _thread.allocate_lock()
        self._open_txns: dict[int, int] = {}

    def _open_lmdb(self, map_size: int) -> lmdb.Environment:
        return lmdb.open(
            self.real_path,
            subdir=False,
            readonly=self.read_only,
            lock=self.use_lock,
            create=False,  # made by _open_database_file
            map_size=map_size,
            max_dbs=MAX_BUCKETS,
            max_readers=MAX_READERS,
            mode=0o600,
        )

    def _walk_pages(self, fd: int) -> None:
        """Walk the pages of the current snapshot, pinned by a read transaction that reads
        nothing but the meta page (so no writer reuses its pages during the walk)."""
        for _ in range(10):
            txn = self.env.begin(write=False)
            try:
                if dbfile.check_lmdb_pages(fd, self.path, txn.id()):
                    return
            finally:
                txn.abort()
        raise StoreTimeoutError(f"database {self.path} kept changing while its pages were checked; try again")

    # -- opening transactions -------------------------------------------------------------

    def begin(self, write: bool) -> lmdb.Transaction[bytes]:
        """Begin a transaction; every one must be followed by :meth:`finished`."""
        for _ in range(3):
            with self._resizing:
                self._count(+1)
            try:
                return self.env.begin(write=write)
            except lmdb.MapResizedError:
                self._count(-1)
                # Another process grew the map: adopt its size.
                self.resize(0)
            except lmdb.Error as e:
                self._count(-1)
                raise StoreError(f"database {self.path}: {_describe(e)}") from None
        raise StoreError(f"database {self.path}: map size keeps changing")

    def finished(self) -> None:
        """A transaction of this thread ended (committed or aborted)."""
        self._count(-1)

    def _count(self, delta: int) -> None:
        me = _thread.get_ident()
        with self._counts_lock:
            count = self._open_txns.get(me, 0) + delta
            if count:
                self._open_txns[me] = count
            else:
                self._open_txns.pop(me, None)

    def resize(self, size: int, required: bool = True) -> bool:
        """Set the map size (0: adopt the file's) once no other thread has a transaction open.

        :param required: when false, give up at once rather than wait (a growth ahead
            of need can wait for the next transaction).
        :return: whether the map was resized.
        :raises StoreError: this thread has a transaction open, or others kept theirs
            open for longer than RESIZE_WAIT seconds.
        """
        if not self._alone(required):
            return False
        try:
            self.env.set_mapsize(size)
        finally:
            self._resizing.release()
        return True

    def reopen(self) -> None:
        """Close and reopen the LMDB environment once no other thread has a transaction
        open, forgetting every bucket handle.

        LMDB binds a handle to its bucket's name for the life of the environment: after
        another process dropped the bucket, a write through the handle fails with
        MDB_NOTFOUND, and opening the name again hands back the same handle.  py-lmdb
        cannot close one handle, so the environment goes.
        """
        self._alone(True, "must forget the handle of a bucket another process dropped")
        try:
            map_size = self.env.info()["map_size"]
            self.table.clear()
            self.env.close()
            self.env = self._open_lmdb(map_size)
        finally:
            self._resizing.release()

    def wait_alone(self, purpose: str) -> None:
        """Wait until no other thread of this process has a transaction open, and keep
        them from beginning one until :meth:`stop_waiting`."""
        self._alone(True, purpose)

    def stop_waiting(self) -> None:
        self._resizing.release()

    def _alone(self, required: bool, purpose: str = "must grow") -> bool:
        """Take ``_resizing`` once no thread of this process has a transaction open (the
        caller releases it), or return False at once if not *required*."""
        me = _thread.get_ident()
        self._resizing.acquire()
        try:
            deadline = time.monotonic() + RESIZE_WAIT
            while True:
                with self._counts_lock:
                    mine = self._open_txns.get(me, 0)
                    others = len(self._open_txns) - (1 if mine else 0)
                if not mine and not others:
                    return True
                if not required:
                    self._resizing.release()
                    return False
                if mine:
                    raise StoreError(
                        f"database {self.path} {purpose}, which this thread's open "
                        "transaction prevents; do not nest transactions"
                    )
                if time.monotonic() > deadline:
                    raise StoreTimeoutError(
                        f"database {self.path} {purpose}, but other threads kept transactions open for {RESIZE_WAIT:g}s"
                    )
                time.sleep(0.0005)
        except BaseException:
            self._resizing.release()
            raise

    # The writer lock and the transaction below are plain methods and classes, not
    # contextlib.contextmanager generators: importing contextlib costs a CNI call more
    # than the transaction itself.

    def lock_writer(self, timeout: float) -> None:
        """Take this file's writer lock, waiting at most *timeout* seconds for it; the
        caller must :meth:`unlock_writer` after."""
        if self.read_only or self.lock_fd is None:  # a read-only store has no lock file descriptor
            raise StoreError(f"database {self.path} is open read-only")
        deadline = time.monotonic() + timeout
        if not self.thread_lock.acquire(timeout=max(timeout, 0)):
            raise self._busy(timeout)
        try:
            flock_before(self.lock_fd, fcntl.LOCK_EX, deadline, lambda: self._busy(timeout))
        except BaseException:
            self.thread_lock.release()
            raise
        try:
            self._grow_if_nearly_full()
        except BaseException:
            self.unlock_writer()
            raise

    def unlock_writer(self) -> None:
        try:
            assert self.lock_fd is not None  # lock_writer refused to lock without one
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
        finally:
            self.thread_lock.release()

    def _busy(self, timeout: float) -> StoreTimeoutError:
        return StoreTimeoutError(f"database {self.path} is locked by another writer; gave up after {timeout:g}s")

    def _grow_if_nearly_full(self) -> None:
        info = self.env.info()
        used = (info["last_pgno"] + 1) * self.env.stat()["psize"]
        if used > info["map_size"] * GROW_THRESHOLD:
            self.resize(info["map_size"] * 2, required=False)

    def grow(self) -> None:
        self.resize(self.env.info()["map_size"] * 2)

    # -- named databases ------------------------------------------------------------------

    def handle(self, txn: lmdb.Transaction[bytes], name: str, create: bool, handles: TxnHandles) -> Handle | None:
        """The handle of bucket *name* in *txn*, or None if it does not exist and
        *create* is false (see :mod:`.lmdb_handles`).

        :raises StaleHandles: *txn* must begin again to open it.
        """
        handle = self.table.usable(name, handles)
        if handle is not None:
            return handle
        self.table.enter(handles)
        try:
            handle = self.env.open_db(name.encode("utf-8"), txn=txn, create=create)
        except lmdb.NotFoundError:
            return None
        except lmdb.DbsFullError:
            raise StoreError(f"database {self.path} holds {MAX_BUCKETS} buckets, the limit") from None
        except lmdb.IncompatibleError:
            raise InvalidArgumentError(f"{name!r} is not a bucket") from None
        handles.opened[name] = handle
        return handle

    def bucket_names(self) -> list[str]:
        txn = self.begin(write=False)
        try:
            return [_text(key) for key in txn.cursor().iternext(values=False)]
        finally:
            txn.abort()
            self.finished()

    def close(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
        self.env.close()


def _open_database_file(real: str, given: str, read_only: bool, create: bool) -> int:
    """A descriptor of the database file at *real*, made empty first if it is missing and
    this opener may create it.

    :raises DatabaseNotFoundError: it is missing and may not be created.
    """
    fd = dbfile.open_for_reading(real, given)
    if fd is not None:
        return fd
    if read_only or not create:
        raise DatabaseNotFoundError(f"no database at {given}")
    # Made here, not by LMDB, which would open whatever appeared at the path since (False:
    # another process made it meanwhile, which the caller's checks then judge).
    dbfile.create_database_file(real, given)
    fd = dbfile.open_for_reading(real, given)
    if fd is None:
        raise StoreError(f"cannot open database {given}: {os.strerror(errno.ENOENT)}")
    return fd


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


_environments: dict[str, _Environment] = {}
_environments_lock = _thread.allocate_lock()


def _acquire(path: str, read_only: bool, create: bool, map_size: int, timeout: float) -> _Environment:
    key = resolve(path)
    with _environments_lock:
        env = _environments.get(key)
        if env is not None and env.pid != os.getpid():
            # Inherited across fork: LMDB forbids using it here, closing it would release
            # the parent's reader slots, and py-lmdb refuses a second environment on the
            # same file in what it still counts as the same process.
            raise StoreError(
                f"database {path} was open when this process was forked and cannot be "
                "used in the child; open it after the fork, or start the child with spawn"
            )
        if env is not None and env.read_only and not read_only:
            if env.refs:
                raise StoreError(f"database {path} is already open read-only in this process")
            env.close()
            env = None
        if env is None:
            env = _Environment(path, key, read_only, create, map_size, timeout)
            _environments[key] = env
        env.refs += 1
        return env


def _release(env: _Environment) -> None:
    with _environments_lock:
        env.refs -= 1
        if env.refs == 0:
            _environments.pop(env.real_path, None)
            env.close()


def _pair(key: str, raw: bytes) -> KVPair:
    """The pair stored as *raw*; a damaged record is a pair of its own (see KVPair), so that
    one damaged record stops no listing and no command that does not need it."""
    try:
        value, last_index = decode_record(raw, key)
    except CorruptDatabaseError:
        return KVPair(key, raw, DAMAGED_INDEX)
    return KVPair(key, value, last_index)


def _text(raw: bytes) -> str:
    """A key or bucket name as read from LMDB.  Ours are UTF-8; one that another program
    wrote with other bytes is listed with them as surrogate escapes, so that a listing, and
    every command that lists, still works (no key of ours can look like it)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


def _describe(e: lmdb.Error) -> str:
    text = str(e)
    for code in (errno.EACCES, errno.EROFS, errno.ENOENT, errno.ENOSPC):
        if os.strerror(code) in text:
            return os.strerror(code)
    return text


def _failure(path: str, e: lmdb.Error) -> StoreError:
    """The store error for an LMDB error met inside a transaction (which was aborted)."""
    if isinstance(e, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError)):
        # The meta pages were sound (they are checked before opening), a data page is not.
        return CorruptDatabaseError(f"{path} is a damaged LMDB database ({_describe(e)}); it was left unchanged")
    return StoreError(f"database {path}: {_describe(e)}")


class _WriteTxn:
    """An LMDB write transaction that can be replayed into a larger map."""

    def __init__(self, env: _Environment) -> None:
        self.env = env
        self.log: list[tuple[str, str, bytes, bytes | None]] = []
        # Whether it keeps the other threads of this process waiting (see _apply).
        self.alone = False
        self.handles = env.table.begin()
        self.txn = env.begin(write=True)
        self.live = True

    def handle(self, name: str, create: bool) -> Handle | None:
        while True:
            try:
                return self.env.handle(self.txn, name, create, self.handles)
            except StaleHandles:
                self._replay(_nothing)

    def get(self, name: str, key: bytes) -> bytes | None:
        handle = self.handle(name, create=False)
        return None if handle is None else self.txn.get(key, db=handle)

    def put(self, name: str, key: bytes, raw: bytes) -> None:
        self._apply(("put", name, key, raw))

    def delete(self, name: str, key: bytes) -> bool:
        if self.handle(name, create=False) is None:
            return False
        return self._apply(("delete", name, key, None))

    def drop(self, name: str) -> bool:
        return self._apply(("drop", name, b"", None))

    def _apply(self, op: tuple[str, str, bytes, bytes | None]) -> bool:
        while True:
            try:
                if op[0] == "drop" and not self.alone:
                    # Dropping closes the bucket's handle at once, under any other
                    # thread's transaction that holds it: the drop waits until there is
                    # none, and keeps new ones from beginning until it ends.
                    self._replay(self._wait_alone)
                result = self._run(op)
                self.log.append(op)
                return result
            except lmdb.MapFullError:
                self._replay_in_larger_map()
            except StaleHandles:
                self._replay(_nothing)
            except lmdb.NotFoundError:
                if not self.env.table.is_shared(op[1]):
                    raise
                # A handle shared before another process dropped its bucket.
                self._replay(self.env.reopen)

    def names(self) -> list[bytes]:
        return list(self.txn.cursor().iternext(values=False))

    def _wait_alone(self) -> None:
        self.env.wait_alone("must drop a bucket")
        self.alone = True

    def _run(self, op: tuple[str, str, bytes, bytes | None]) -> bool:
        kind, name, key, raw = op
        if kind == "drop":
            return self._drop(name)
        handle = self.env.handle(self.txn, name, kind == "put", self.handles)
        try:
            if raw is not None:  # a put; a delete carries no value
                return self.txn.put(key, raw, db=handle)
            return self.txn.delete(key, db=handle)
        except lmdb.BadValsizeError:
            raise InvalidArgumentError(f"key or value too large for bucket {name!r}") from None

    def _drop(self, name: str) -> bool:
        # Asked of the main database, not through a shared handle: after another process
        # dropped the bucket, LMDB fails the whole transaction on a drop through that one.
        if self.txn.get(name.encode("utf-8")) is None:
            return False
        handle = self.env.handle(self.txn, name, False, self.handles)
        if handle is None:
            return False
        # LMDB closes the handle at once, whether this transaction commits or aborts.
        self.env.table.enter(self.handles)
        self.env.table.closed(name, self.handles)
        self.txn.drop(handle, delete=True)
        return True

    def _replay_in_larger_map(self) -> None:
        self._replay(self.env.grow)

    def _replay(self, prepare: Callable[[], object]) -> None:
        """Abort, ``prepare()`` the environment, and redo this transaction's log."""
        self._end(committed=False)
        prepare()
        self.handles = self.env.table.begin()
        self.txn = self.env.begin(write=True)
        self.live = True
        for op in self.log:
            try:
                self._run(op)
            except lmdb.MapFullError:
                return self._replay_in_larger_map()
            except StaleHandles:
                return self._replay(_nothing)
            except lmdb.NotFoundError:
                if not self.env.table.is_shared(op[1]):
                    raise
                return self._replay(self.env.reopen)

    def commit(self) -> None:
        while True:
            try:
                self.txn.commit()
                if self.env.lock_fd is not None:
                    dbfile.stamp_checked(self.env.lock_fd)
                break
            except lmdb.MapFullError:
                self._replay_in_larger_map()
            except lmdb.Error as e:
                self.abort()
                raise StoreError(f"commit to {self.env.path} failed: {_describe(e)}") from None
        self.live = False
        self.env.finished()
        self.env.table.leave(self.handles, ended_well=True)
        self._stop_waiting()

    def abort(self) -> None:
        self._end(committed=False)
        self._stop_waiting()

    def _end(self, committed: bool) -> None:
        # Idempotent: a failed replay or commit has already ended the transaction.
        if self.live:
            self.live = False
            self.txn.abort()
            self.env.finished()
        self.env.table.leave(self.handles, ended_well=committed)

    def _stop_waiting(self) -> None:
        if self.alone:
            self.alone = False
            self.env.stop_waiting()


class _ReadTxn:
    def __init__(self, env: _Environment) -> None:
        self.env = env
        self.handles = env.table.begin()
        self.txn = env.begin(write=False)
        # Whether it has answered anything yet: until then it may begin again.
        self.answered = False

    def handle(self, name: str, create: bool = False) -> Handle | None:
        while True:
            try:
                handle = self.env.handle(self.txn, name, False, self.handles)
                break
            except StaleHandles:
                if self.txn.get(name.encode("utf-8")) is None:
                    handle = None  # no such bucket in this snapshot: nothing to open
                    break
                self._begin_again(name)
        self.answered = True
        return handle

    def _begin_again(self, name: str) -> None:
        """Other threads opened buckets since this transaction began, after which LMDB
        cannot open bucket *name* in it: begin it again, if it has not answered yet."""
        if self.answered:
            raise KeyModifiedError(
                f"database {self.env.path}: another thread of this process opened buckets while this read "
                f"transaction ran, and it cannot open bucket {name!r} after them; run the transaction again"
            )
        self.abort()
        self.handles = self.env.table.begin()
        self.txn = self.env.begin(write=False)

    def names(self) -> list[bytes]:
        self.answered = True
        return list(self.txn.cursor().iternext(values=False))

    def get(self, name: str, key: bytes) -> bytes | None:
        handle = self.handle(name)
        return None if handle is None else self.txn.get(key, db=handle)

    def put(self, name: str, key: bytes, raw: bytes) -> None:
        raise StoreError("write in a read-only transaction")

    def drop(self, name: str) -> bool:
        raise StoreError("write in a read-only transaction")

    def delete(self, name: str, key: bytes) -> bool:
        raise StoreError("write in a read-only transaction")

    def commit(self) -> None:
        # py-lmdb ends a read transaction without keeping the handles it opened, so
        # there is nothing to share.
        self.abort()

    def abort(self) -> None:
        self.txn.abort()
        self.env.finished()
        self.env.table.leave(self.handles, ended_well=False)


def _nothing() -> None:
    """Nothing to prepare: the transaction is only begun again."""


class _LMDBTx(Tx):
    def __init__(self, txn: _WriteTxn | _ReadTxn, bucket_name: str) -> None:
        self._txn = txn
        self.bucket_name = bucket_name

    def _read(self, key: str) -> KVPair | None:
        raw = self._txn.get(self.bucket_name, key.encode("utf-8"))
        return None if raw is None else _pair(key, raw)

    def _contains(self, key: str) -> bool:
        return self._txn.get(self.bucket_name, key.encode("utf-8")) is not None

    def _write(self, key: str, value: bytes) -> KVPair:
        encoded_key = key.encode("utf-8")
        previous = self._txn.get(self.bucket_name, encoded_key)
        last_index = self._txn.txn.id()
        if previous is not None:
            last_index = max(last_index, _pair(key, previous).last_index + 1)
        self._txn.put(self.bucket_name, encoded_key, encode_record(value, last_index))
        return KVPair(key, value, last_index)

    def _remove(self, key: str) -> bool:
        return self._txn.delete(self.bucket_name, key.encode("utf-8"))

    def _scan(self, prefix: str) -> list[KVPair]:
        handle = self._txn.handle(self.bucket_name, create=False)
        if handle is None:
            return []
        start = prefix.encode("utf-8")
        pairs = []
        cursor = self._txn.txn.cursor(db=handle)
        if cursor.set_range(start):
            for raw_key, raw in cursor:
                if not raw_key.startswith(start):
                    break
                pairs.append(_pair(_text(raw_key), raw))
        return pairs

    def bucket(self, name: str) -> Tx:
        return _LMDBTx(self._txn, check_bucket_name(name))

    def drop_bucket(self, name: str) -> bool:
        return self._txn.drop(check_bucket_name(name))

    def buckets(self) -> list[str]:
        # The main database holds nothing but the buckets' names (see the module docstring).
        return sorted(_text(key) for key in self._txn.names())


class _Transaction:
    """``LMDBStore.transaction()``: one LMDB transaction (a write one under the writer
    lock), committed if the block ends normally, else aborted."""

    __slots__ = ("env", "store", "txn", "write")
    txn: _ReadTxn | _WriteTxn

    def __init__(self, store: LMDBStore, write: bool) -> None:
        self.store = store
        self.write = write

    def __enter__(self) -> Tx:
        store = self.store
        env = self.env = store._environment()
        if not self.write:
            self.txn = _ReadTxn(env)
            return _LMDBTx(self.txn, store.bucket_name)
        if store.read_only:
            raise StoreError(f"database {store.path} is open read-only")
        env.lock_writer(store.timeout)
        try:
            self.txn = _WriteTxn(env)
        except BaseException:
            env.unlock_writer()
            raise
        return _LMDBTx(self.txn, store.bucket_name)

    def __exit__(self, exc_type: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        try:
            if exc_type is None:
                self.txn.commit()
                return
            self.txn.abort()
            if isinstance(error, lmdb.Error):
                raise _failure(self.store.path, error) from None
        finally:
            if self.write:
                self.env.unlock_writer()


class LMDBStore(Store):
    """A bucket of an LMDB database file.

    :param path: the database file (created, mode 0600, unless it exists or *create* is false).
    :param bucket: the bucket (LMDB named database) this store reads and writes.
    :param timeout: seconds a write waits for another process's write to finish.
    :param read_only: open without write access; never creates a file.
    :param create: create the database if *path* does not exist.
    :raises DatabaseNotFoundError: nothing at *path* and it may not be created.
    :raises NotADatabaseError: *path* holds something else (left untouched).
    :raises StoreError: the file cannot be opened.
    """

    def __init__(
        self,
        path: str,
        bucket: str = "IPAM",
        timeout: float = 5.0,
        read_only: bool = False,
        create: bool = True,
        map_size: int = DEFAULT_MAP_SIZE,
        _env: _Environment | None = None,
    ) -> None:
        self.bucket_name = check_bucket_name(bucket)
        self.path = path
        self.timeout = timeout
        # Kept here, not only in the environment: a read-only store may share the
        # read-write environment this process already has open on the same file.
        self.read_only = read_only
        if _env is None:
            _env = _acquire(path, read_only, create, map_size, timeout)
        else:
            with _environments_lock:
                _env.refs += 1
        self._env: _Environment | None = _env

    def _environment(self) -> _Environment:
        if self._env is None:
            raise StoreError(f"store for {self.path} is closed")
        return self._env

    def transaction(self, write: bool = True) -> _Transaction:
        return _Transaction(self, write)

    def bucket(self, name: str) -> LMDBStore:
        env = self._environment()
        return LMDBStore(self.path, name, self.timeout, read_only=self.read_only, _env=env)

    def buckets(self) -> list[str]:
        return self._environment().bucket_names()

    def close(self) -> None:
        if self._env is not None:
            env, self._env = self._env, None
            _release(env)
