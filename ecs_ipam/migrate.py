"""Migration of the Go plugin's bolt database to LMDB, in place or into another file.

The pairs of the bolt bucket ``IPAM`` are copied verbatim (value = msgpack string of the
Go value) into the LMDB bucket ``go-plugin-IPAM`` (:data:`ecs_ipam.pool_store.LEGACY_BUCKET`,
not ``IPAM``: that name is other agents' default bucket), from where :mod:`ecs_ipam.legacy`
moves them into their subnet's bucket once a configuration names the subnet.

In place, the switch must be safe against everything that may run at the same time:

* The Go plugin holds an exclusive ``flock`` on the bolt file for its whole run; the
  migration takes the same lock, so it never reads a half-written file and no Go plugin
  writes while it runs.  Concurrent ecs-ipam invocations queue on that lock too, and
  find the migrated database once they get it.
* Every crash leaves either the untouched bolt file at the path (the next invocation
  migrates again, clearing the leftovers) or the complete LMDB database: the new
  database and the backup are written and synced under temporary names, and the path
  only changes by one ``rename``.
* LMDB writers flock the data file too (:mod:`ecs_ipam.kv.lmdb_store`), so the lock is
  one per file whatever its format.  No deadlock: the migration takes the bolt file's
  lock, then the temporary LMDB file's (a file nobody else can name yet), and a writer of
  an LMDB file never waits for a bolt file's lock (a bolt file is refused before).
* Everything happens beside the real file, whatever symlink names it: the path is
  resolved first, so the symlink still names the database afterwards.  A bolt file with
  a second hard link or mounted on its own is not migrated (the other name would keep
  the bolt file, and a Go plugin or another migration would use it as a second database).
* The backup ``<path>.bolt`` is a copy, not a second name of the bolt file.  A Go
  plugin that opened the file before the switch still waits for its lock; once the
  migration releases it, the plugin would record its lease in a file nobody reads any
  more.  So the old file, reachable by no name after the switch, is made unreadable to
  bolt before the lock is released, and that late Go plugin fails instead of
  handing out an address twice.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .boltdb import BucketNotFoundError, has_bolt_magic, meta_page_starts, read_libkv_bucket
from .errors import ECSIPAMError, KeyExistsError, NotADatabaseError, StoreError, StoreTimeoutError
from .filelock import flock_before
from .kv.dbfile import MAGIC_OFFSET, check_single_name, resolve
from .legacy import LEGACY_GATEWAY_OWNERS, legacy_key_address
from .pool_store import LEGACY_BUCKET, decode, encode, owner_of, pool_subnet, read_record

if TYPE_CHECKING:
    from .kv.base import Tx

BOLT_BUCKET = "IPAM"
BACKUP_SUFFIX = ".bolt"
TEMP_SUFFIX = ".migrating"

Checkpoint = Callable[[str], None]
Report = Callable[[str], None]


def backup_path(path: str) -> str:
    """Where an in-place migration would keep the bolt file it replaces: beside the real file.

    ``<path>.bolt``, or, when an older migration's backup is there already (a bolt file
    put back for a rollback, then migrated again), ``<path>.bolt.1``, ``.bolt.2``...: a
    backup is never overwritten.
    """
    base = resolve(path) + BACKUP_SUFFIX
    candidate, number = base, 0
    while os.path.lexists(candidate):
        number += 1
        candidate = f"{base}.{number}"
    return candidate


def migrate_in_place(
    path: str, timeout: float, *, checkpoint: Checkpoint | None = None, report: Report | None = None
) -> dict[str, str] | None:
    """Replace the bolt database at *path* by an LMDB database holding the same pairs.

    Does nothing when *path* holds no bolt file, for instance because another process
    migrated it while this one waited for the lock.

    :param path: the database path (``IPAM_DB_PATH``).
    :param timeout: seconds to wait for the bolt file's lock (held by a running Go
        plugin, or by another process migrating it).
    :param checkpoint: called with ``"locked"``, ``"written"``, ``"backed-up"`` and
        ``"switched"`` as the migration passes those points; tests use it to crash it.
    :param report: called with one line saying what was migrated and where the bolt
        file is kept, once the switch is done (the plugin logs it).
    :return: the migrated pairs (key -> value, in key order), or None if there was
        nothing to migrate.
    :raises StoreTimeoutError: the lock stayed held for *timeout* seconds; nothing changed.
    :raises CorruptDatabaseError: the bolt file is damaged; nothing changed.
    :raises StoreError: the new database or the backup could not be written; the bolt
        file is still in place.
    :raises DatabaseAliasError: the bolt file has another hard link or is mounted on its
        own; nothing changed.
    """
    given, path = path, resolve(path)
    fd = _open_bolt(path)
    if fd is None:
        return None
    try:
        check_single_name(fd, path, given)
        _lock(fd, path, fcntl.LOCK_EX, timeout)
        if not _still_at(fd, path):
            return None
        _step(checkpoint, "locked")
        pairs = read_bolt_pairs(path)
        temp, partial_backup = path + TEMP_SUFFIX, path + BACKUP_SUFFIX + TEMP_SUFFIX
        try:
            _write_lmdb(temp, pairs, timeout)
            _step(checkpoint, "written")
            _copy_file(fd, partial_backup)
            backup = _place_backup(partial_backup, path)
            _step(checkpoint, "backed-up")
            os.replace(temp, path)
        except BaseException:
            _remove(temp, temp + "-lock", partial_backup)
            raise
        _fsync_directory(path)
        _step(checkpoint, "switched")
        _disable_orphan(fd)
        if report is not None:
            report(
                f"migrated {plural(len(pairs))} into {path} (bucket {LEGACY_BUCKET}); the bolt file is kept as {backup}"
            )
        return pairs
    except ECSIPAMError:
        raise
    except OSError as e:
        raise StoreError(f"cannot migrate {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)  # releases the lock


def plural(count: int) -> str:
    return f"{count} pair{'' if count == 1 else 's'}"


def read_bolt_pairs(path: str) -> dict[str, str]:
    """The Go plugin's pairs in the bolt file at *path* (empty if it has no IPAM bucket)."""
    try:
        return read_libkv_bucket(path, BOLT_BUCKET)
    except BucketNotFoundError:
        return {}


def read_locked(path: str, timeout: float) -> dict[str, str]:
    """Read the pairs of the bolt file at *path* under a shared lock (no Go plugin writing).

    :raises NotADatabaseError: *path* holds no bolt file.
    :raises StoreTimeoutError: a Go plugin held the file for *timeout* seconds.
    """
    fd = _open_bolt(resolve(path), writable=False)
    if fd is None:
        raise NotADatabaseError(f"{path} is not a bolt database of the Go plugin")
    try:
        _lock(fd, path, fcntl.LOCK_SH, timeout)
        if not _still_at(fd, path):
            raise NotADatabaseError(f"{path} was migrated by another process meanwhile")
        return read_bolt_pairs(path)
    finally:
        os.close(fd)


def copy_into(pairs: dict[str, str], dest: str, timeout: float) -> None:
    """Add the legacy *pairs* to the LMDB database *dest* (created if missing), in one transaction.

    Pairs already there with the same value are skipped, so copying twice is harmless.

    :raises KeyExistsError: *dest* already records one of the keys differently (in the
        legacy bucket, or as an address of a subnet bucket); nothing was copied.
    :raises NotADatabaseError: *dest* is not an LMDB database.
    """
    from . import kv

    with kv.open_store(dest, bucket=LEGACY_BUCKET, timeout=timeout) as store:
        bucket_names = store.buckets()
        with store.transaction() as tx:
            clashes = conflicts(tx, bucket_names, pairs)
            if clashes:
                raise KeyExistsError(f"{dest} already records differently: {'; '.join(clashes)}; nothing was copied")
            for key, value in pairs.items():
                if tx.find(key) is None:
                    tx.put(key, encode(value))


def conflicts(tx: Tx, bucket_names: list[str], pairs: dict[str, str]) -> list[str]:
    """Where an existing ecs-ipam database disagrees with legacy *pairs*.

    :param tx: a transaction of the database, on its legacy bucket.
    :param bucket_names: the database's buckets (the subnet buckets are among them).
    :return: one description per disagreement; empty when the pairs can be added.
    """
    subnets = [(subnet, name) for name in bucket_names if (subnet := pool_subnet(name)) is not None]
    clashes = []
    for key, value in pairs.items():
        existing = tx.find(key)
        if existing is not None and decode(existing.value) != value:
            clashes.append(f"{key}={decode(existing.value)!r} in bucket {LEGACY_BUCKET}, not {value!r}")
            continue
        for version in (4, 6):
            address = legacy_key_address(key, version)
            if address is None:
                continue
            for subnet, name in subnets:
                if subnet.version == version and subnet.first <= address.value <= subnet.last:
                    record = read_record(tx.bucket(name), str(address))
                    holder = None if record is None else owner_of(record)
                    if record is not None and holder != value and not _both_gateways(holder, value):
                        clashes.append(f"{address} is held by {holder!r} in bucket {name}, not {value!r}")
    return clashes


def _both_gateways(holder: str | None, value: str) -> bool:
    return holder in LEGACY_GATEWAY_OWNERS and value in LEGACY_GATEWAY_OWNERS


# -- the steps --------------------------------------------------------------------------


def _open_bolt(path: str, writable: bool = True) -> int | None:
    """A descriptor of the bolt file at *path*, or None if there is none there.

    Writable when possible, so that the file can be disabled after the switch.
    """
    fd = None
    for mode in (os.O_RDWR, os.O_RDONLY) if writable else (os.O_RDONLY,):
        try:
            fd = os.open(path, mode | os.O_NONBLOCK | os.O_CLOEXEC)
            break
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR):
                return None
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS) or mode == os.O_RDONLY:
                raise StoreError(f"cannot open {path}: {e.strerror or e}") from None
    assert fd is not None  # the last mode's failure raised above
    if not stat.S_ISREG(os.fstat(fd).st_mode) or not has_bolt_magic(fd):
        os.close(fd)
        return None
    return fd


def _lock(fd: int, path: str, operation: int, timeout: float) -> None:
    flock_before(
        fd,
        operation,
        time.monotonic() + timeout,
        lambda: StoreTimeoutError(
            f"bolt database {path} is locked by another process (a running Go plugin, "
            f"or a migration in progress); gave up after {timeout:g}s"
        ),
    )


def _still_at(fd: int, path: str) -> bool:
    """Whether *path* still names the (still bolt) file *fd* was opened on."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino) and has_bolt_magic(fd)


def _write_lmdb(temp: str, pairs: dict[str, str], timeout: float) -> None:
    from . import kv

    # Leftovers of a migration that crashed: never build on a half-written file.
    _remove(temp, temp + "-lock")
    with kv.open_store(temp, bucket=LEGACY_BUCKET, timeout=timeout) as store, store.transaction() as tx:
        for key, value in pairs.items():
            tx.put(key, encode(value))
    _fsync_path(temp)
    # The lock file belongs to the temporary name; the database gets its own at the path.
    _remove(temp + "-lock")


def _copy_file(source_fd: int, target: str) -> None:
    mode = stat.S_IMODE(os.fstat(source_fd).st_mode)
    _remove(target)
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        offset = 0
        while True:
            chunk = os.pread(source_fd, 1 << 20, offset)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
            offset += len(chunk)
        os.fchmod(out, mode)
        os.fsync(out)
    finally:
        os.close(out)


def _place_backup(partial: str, path: str) -> str:
    """Give the complete backup *partial* its name, never replacing an older backup.

    A backup with the same bytes is the one a migration killed before its switch made:
    it is kept, and no second copy is made.
    """
    import filecmp

    base = resolve(path) + BACKUP_SUFFIX
    candidate, number = base, 0
    while os.path.lexists(candidate):
        if os.path.isfile(candidate) and filecmp.cmp(candidate, partial, shallow=False):
            os.unlink(partial)
            return candidate
        number += 1
        candidate = f"{base}.{number}"
    while True:
        backup = backup_path(path)
        try:
            # link, unlike rename, fails rather than replace a name that appeared meanwhile.
            os.link(partial, backup)
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            os.rename(partial, backup)  # a file system without hard links: checked just above
            return backup
        os.unlink(partial)
        return backup


def _disable_orphan(fd: int) -> None:
    """Make the replaced bolt file unopenable by bolt, if no name reaches it any more."""
    if os.fstat(fd).st_nlink > 0:
        return  # another name still reaches it (a link made by someone else): keep it intact
    try:
        for page_start in meta_page_starts(fd):
            os.pwrite(fd, b"\0\0\0\0", page_start + MAGIC_OFFSET)
    except OSError:
        pass  # opened read-only: a late Go plugin is not stopped; nothing else is lost


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _step(checkpoint: Checkpoint | None, name: str) -> None:
    if checkpoint is not None:
        checkpoint(name)
