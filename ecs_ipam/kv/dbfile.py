"""Database files: what kind of file lies at a path, whether it may be used, and one lock
file per database file.

What lies at a path (:func:`file_kind`) is told from the magic numbers both formats put
right after a 16-byte page header: LMDB's, whose meta pages are then checked as LMDB
would (and against the file's size: LMDB maps the whole file and dies of SIGBUS on a
page past its end), and the Go plugin's bolt format, whose magic lives here and nowhere
else.  Anything but a regular file (a FIFO, a device, a socket) is refused without being
read: the file is opened with ``O_NONBLOCK``, so a FIFO never blocks the caller.

Who may have written it (:func:`require_private`): a database or lock file must belong
to the user that opens it (or to root) and be writable by nobody else.  In a shared
directory another user could otherwise plant an empty database or lock file, read the
leases and truncate them, after which a held address would be handed out again.

The lock file (:func:`prepare_lock_file`) is made by us, with real blocks behind every
byte, before LMDB maps it: LMDB would make it sparse, and on a full disk its first write
into the mapping would kill the process with SIGBUS.  And the wait LMDB makes on the lock
file's byte 0 while another process is in its first open (``F_SETLKW``, no timeout, and
retried after a signal) is done first here, polling, within the caller's timeout.

LMDB keeps its writer mutex, its reader table and the last committed transaction id in
``<name>-lock``, beside the name the file was opened by.  Two names that lead to two lock
files let a writer through one name miss the other name's commits and recycle pages its
readers still read: addresses would be handed out twice.  So:

* every opener resolves symlinks and ``..`` first (:func:`resolve`): one lock file sits
  beside the real file, whatever name reached it;
* names that resolve to a different place yet reach the same file, a hard link or a
  single file mounted on its own, are refused (:func:`check_single_name`); a directory
  mounted elsewhere keeps the lock file next to the database and is fine.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import time

from ..errors import (
    BoltDatabaseError,
    CorruptDatabaseError,
    DatabaseAliasError,
    NotADatabaseError,
    StoreError,
    StoreTimeoutError,
    UnsafeFileError,
)

# Both formats put their magic right after a 16-byte page header, in both meta pages.
MAGIC_OFFSET = 16
LMDB_MAGIC = 0xBEEFC0DE
BOLT_MAGIC = 0xED0CDAED
# bolt takes the OS page size when it creates a file; meta page 1 is looked for there
# when meta page 0 is damaged (bolt itself does the same).
BOLT_FALLBACK_PAGE_SIZE = 4096
# The rest of an LMDB meta page (64-bit build) that is checked before LMDB sees the file.
LMDB_DATA_VERSION = 1
LMDB_VERSION_OFFSET = 20
LMDB_PAGE_SIZE_OFFSET = 40  # the free-page database's md_pad holds the page size
LMDB_LAST_PAGE_OFFSET = 136
LMDB_TXNID_OFFSET = 144
LMDB_META_SIZE = 152

# What file_kind() finds.
MISSING = "missing"
EMPTY = "empty"
LMDB = "lmdb"
BOLT = "bolt"
OTHER = "unknown"
INCOMPATIBLE = "incompatible"  # LMDB, another data version
DAMAGED = "damaged"  # LMDB meta pages unreadable, or describing pages past the end

_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def file_kind(path: str, given: str | None = None) -> str:
    """What lies at *path*: :data:`MISSING`, :data:`EMPTY`, :data:`LMDB`, :data:`BOLT`,
    :data:`OTHER`, :data:`INCOMPATIBLE` or :data:`DAMAGED`.

    :param given: the path as the caller named it, for messages (default: *path*).
    :raises NotADatabaseError: a directory, a FIFO or any other file that is not regular.
    :raises UnsafeFileError: the file belongs to another user or others may write it.
    :raises StoreError: the file cannot be read.
    """
    given = given or path
    fd = open_for_reading(path, given)
    if fd is None:
        return MISSING
    try:
        return kind_of_open_file(fd, given)[0]
    finally:
        os.close(fd)


def open_for_reading(path: str, given: str) -> int | None:
    """A read-only descriptor of *path* (a FIFO never blocks the open), or None if nothing is there.

    :raises StoreError: the file cannot be opened.
    """
    try:
        return os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read database {given}: {e.strerror or e}") from None


def kind_of_open_file(fd: int, given: str) -> tuple[str, os.stat_result]:
    """What the file *fd* is (as :func:`file_kind`, never :data:`MISSING`), and its status.

    :raises: as :func:`file_kind`.
    """
    try:
        info = os.fstat(fd)
        require_regular(info, given, "database")
        require_private(info, given, "database")
        head = os.pread(fd, LMDB_META_SIZE, 0)
        kind = _kind_of(head)
        if kind == LMDB:
            kind = _check_lmdb_metas(fd, head, info.st_size)
        elif kind == OTHER and has_bolt_magic(fd):
            kind = BOLT  # meta page 0 damaged, page 1 sound: bolt (and the migration) cope
        return kind, info
    except OSError as e:
        raise StoreError(f"cannot read database {given}: {e.strerror or e}") from None


# What a new file shows while LMDB's first opener initialises it: LMDB writes both meta
# pages with one pwrite, which the kernel publishes a page at a time, so a look in between
# finds one meta page, as in a truncated file (a file system that published the size
# before the bytes would show zeros: no magic).  That opener holds a write lock on byte 0
# of the lock file from before its write until the file is whole.
UNSETTLED = (DAMAGED, OTHER)


def settled_kind_of_open_file(fd: int, lock_path: str, given: str, timeout: float) -> tuple[str, os.stat_result]:
    """:func:`kind_of_open_file` of *fd*, told again once no process is inside LMDB's first
    open of it: for a verdict of :data:`UNSETTLED` (an open that finds :data:`EMPTY` waits
    there anyway).  A later first open rewrites nothing of a file that is not empty.

    Without a lock file beside it (or one that is no private regular file, refused later)
    nobody can be initialising the file, and the first look stands.

    :raises StoreTimeoutError: the first open held byte 0 for *timeout* seconds.
    :raises: as :func:`file_kind`.
    """
    deadline = time.monotonic() + timeout
    try:
        lock_fd = os.open(lock_path, _READ_FLAGS | os.O_NOFOLLOW)
    except OSError:
        return kind_of_open_file(fd, given)
    try:
        info = os.fstat(lock_fd)
        if stat.S_ISREG(info.st_mode) and info.st_uid in (os.geteuid(), 0) and not info.st_mode & 0o022:
            _wait_for_first_opener(lock_fd, lock_path, deadline, timeout)
    except StoreError:
        raise
    except OSError as e:
        raise StoreError(f"cannot use lock file {lock_path}: {e.strerror or e}") from None
    finally:
        os.close(lock_fd)
    return kind_of_open_file(fd, given)


def has_bolt_magic(fd: int) -> bool:
    """Whether the file *fd* carries the bolt magic in meta page 0 or, failing that, in
    page 1 at bolt's usual page size.  A cheap sniff, not a validation (never raises)."""
    try:
        for base in (0, BOLT_FALLBACK_PAGE_SIZE):
            head = os.pread(fd, 4, base + MAGIC_OFFSET)
            if len(head) == 4 and struct.unpack("<I", head)[0] == BOLT_MAGIC:
                return True
    except OSError:
        return False
    return False


def _kind_of(head: bytes) -> str:
    if not head:
        return EMPTY
    if len(head) < MAGIC_OFFSET + 4:
        return OTHER
    magic = struct.unpack_from("<I", head, MAGIC_OFFSET)[0]
    return {LMDB_MAGIC: LMDB, BOLT_MAGIC: BOLT}.get(magic, OTHER)


def _check_lmdb_metas(fd: int, first: bytes, size: int) -> str:
    """:data:`LMDB` if both meta pages are sound and the file holds every page the newer
    one uses, else :data:`DAMAGED` or :data:`INCOMPATIBLE` (LMDB's checks, plus the size)."""
    if len(first) < LMDB_META_SIZE:
        return DAMAGED
    page_size = struct.unpack_from("<I", first, LMDB_PAGE_SIZE_OFFSET)[0]
    if page_size < 512 or page_size & (page_size - 1):
        return DAMAGED
    second = os.pread(fd, LMDB_META_SIZE, page_size)
    metas = (first, second)
    if len(second) < LMDB_META_SIZE or _kind_of(second) != LMDB:
        return DAMAGED
    if any(struct.unpack_from("<I", meta, LMDB_VERSION_OFFSET)[0] != LMDB_DATA_VERSION for meta in metas):
        return INCOMPATIBLE
    newest = max(metas, key=lambda meta: struct.unpack_from("<Q", meta, LMDB_TXNID_OFFSET)[0])
    last_page = struct.unpack_from("<Q", newest, LMDB_LAST_PAGE_OFFSET)[0]
    if size < (last_page + 1) * page_size:
        return DAMAGED
    return LMDB


# The page walk (:mod:`.lmdb_pages`) costs about 9 ms for a full /22 pool, too much for
# every plugin start.  So it is skipped for a file that has not changed since a commit of
# ours: after each commit the writer stamps the file (an extended attribute) with its
# inode, size and mtime, which any other change of the file moves.  A file that cannot
# carry the stamp (no user extended attributes on its file system) is walked at each open.
PAGES_CHECKED = "user.ecs-ipam.checked"


def pages_checked(fd: int, info: os.stat_result) -> bool:
    """Whether the LMDB file *fd*, whose status is *info*, is as a commit of ours left it
    (its pages need no walk)."""
    try:
        return os.getxattr(fd, PAGES_CHECKED) == _identity(info)
    except OSError:
        return False  # no stamp, or no extended attributes here


def check_lmdb_pages(fd: int, given: str, txnid: int) -> bool:
    """Walk the pages of snapshot *txnid* of the LMDB file *fd*, which the caller pins with
    a read transaction of that id (so that no writer reuses its pages meanwhile), before
    anything reads them through LMDB's map.

    :return: False when neither meta page describes that snapshot any more (two commits
        went by since it began), or the one that does was being rewritten as it was read:
        begin a new read transaction and look again.
    :raises CorruptDatabaseError: a page LMDB would not survive.
    :raises StoreError: the file could not be read (an I/O error of the disk, say).
    """
    from .lmdb_pages import check_pages

    try:
        page_size = struct.unpack_from("<I", os.pread(fd, LMDB_META_SIZE, 0), LMDB_PAGE_SIZE_OFFSET)[0]
        for base in (0, page_size):
            meta = os.pread(fd, LMDB_META_SIZE, base)
            if len(meta) == LMDB_META_SIZE and struct.unpack_from("<Q", meta, LMDB_TXNID_OFFSET)[0] == txnid:
                if os.pread(fd, LMDB_META_SIZE, base) != meta:
                    return False  # torn: a commit was rewriting it
                # The snapshot's pages stay as they are while the caller's read transaction
                # lives, however many commits go by (its meta page may be reused meanwhile).
                check_pages(fd, page_size, meta, given)
                return True
    except OSError as error:
        # An unreadable page is the database failing (code 5), not a bug of ours (199).
        raise StoreError(f"database {given} could not be read: {error.strerror or error}") from None
    return False


def stamp_checked(fd: int) -> None:
    """Record that the database file *fd* is as a commit of ours just left it (best effort)."""
    try:
        os.setxattr(fd, PAGES_CHECKED, _identity(os.fstat(fd)))
    except OSError:
        return  # no extended attributes here: the next opener walks the pages


def _identity(info: os.stat_result) -> bytes:
    return f"{info.st_ino}:{info.st_size}:{info.st_mtime_ns}".encode()


def not_ours(given: str, kind: str) -> StoreError:
    """The error for a file of *kind* that is not a database the LMDB backend can open."""
    if kind == BOLT:
        return BoltDatabaseError(
            f"{given} is a bolt database written by the Go ecs-ipam plugin, not LMDB; "
            "migrate it with ecs-ipamctl migrate (see README, 'Upgrading from the Go plugin')"
        )
    if kind == INCOMPATIBLE:
        return NotADatabaseError(f"{given} was written by an incompatible LMDB version; it was left untouched")
    if kind == DAMAGED:
        return CorruptDatabaseError(f"{given} is a damaged or truncated LMDB database; it was left untouched")
    return NotADatabaseError(f"{given} is not an LMDB database; it was left untouched")


_TYPE_NAMES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symbolic link",
}


def require_regular(info: os.stat_result, given: str, what: str) -> None:
    """:raises NotADatabaseError: *info* is not a regular file (*what* names it in the message)."""
    if stat.S_ISDIR(info.st_mode):
        raise NotADatabaseError(f"{what} path {given} is a directory")
    if not stat.S_ISREG(info.st_mode):
        kind = _TYPE_NAMES.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise NotADatabaseError(f"{what} path {given} is {kind}, not a regular file; it was left untouched")


def require_private(info: os.stat_result, given: str, what: str) -> None:
    """Refuse a file that another user could change: it must belong to this user (or to
    root, who may change anything anyway) and be writable by neither group nor others.

    :raises UnsafeFileError: naming why and the fix.
    """
    me = os.geteuid()
    if info.st_uid not in (me, 0):
        raise UnsafeFileError(
            f"{what} {given} belongs to uid {info.st_uid}, not to this user (uid {me}) or root: its owner "
            f"could read and change the leases; it was left untouched. Remove it if nobody should have "
            f"made it, or give it to uid {me} (chown) if its contents are trusted"
        )
    if info.st_mode & 0o022:
        writers = {0o022: "group and others", 0o020: "its group"}.get(info.st_mode & 0o022, "others")
        raise UnsafeFileError(
            f"{what} {given} may be written by {writers} "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): anyone could change the leases; it was left untouched. "
            "Make it private (chmod 600) if its contents are trusted"
        )


def require_own_link(given: str) -> None:
    """Refuse a symlink at *given* that another user made: it would choose where this
    user's database is read and created.  (The kernel's protected_symlinks guards opens in
    sticky directories, not the resolving done here.)

    :raises UnsafeFileError: naming the owner and the fix.
    """
    try:
        info = os.lstat(given)
    except OSError:
        return  # nothing there (or nothing to see): the open reports it
    if stat.S_ISLNK(info.st_mode) and info.st_uid not in (os.geteuid(), 0):
        raise UnsafeFileError(
            f"database path {given} is a symbolic link made by uid {info.st_uid}, not by this user "
            f"(uid {os.geteuid()}) or root: it would choose where the database lies; it was left "
            "untouched. Remove it, or replace it by a link of your own"
        )


def create_database_file(path: str, given: str) -> bool:
    """Create *path* empty, mode 0600 whatever the umask, for LMDB to fill in; return False
    if a file appeared there meanwhile (look again).  Made here rather than by LMDB, which
    would open whatever another user put at the path after :func:`file_kind` looked.

    :raises StoreError: it cannot be created.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    except OSError as e:
        raise StoreError(f"cannot create database {given}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return True


def prepare_lock_file(path: str, size: int, read_only: bool, timeout: float) -> bool:
    """Make LMDB's lock file *path* safe to map, before LMDB opens it.

    * Missing: a reader goes without (nobody writes under LMDB's locking then); a writer
      creates it, mode 0600, with *size* bytes of real blocks (``posix_fallocate``).
    * Present: it must be a private regular file (:func:`require_regular`,
      :func:`require_private`); one that has fewer blocks than bytes (made sparse by
      LMDB itself, e.g. by an older version, or cut short by a full disk) gets its blocks
      now, which changes no byte of it.
    * Then wait, at most *timeout* seconds, for a process inside LMDB's first open (it
      holds a write lock on byte 0; LMDB would wait for it without a bound).

    :return: whether the lock file exists (a reader opens without one otherwise).
    :raises StoreError: no space for its blocks, or it cannot be opened; also
        NotADatabaseError and UnsafeFileError (as :func:`file_kind`).
    :raises StoreTimeoutError: the byte-0 lock stayed held for *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    fd = _open_lock_file(path, read_only)
    if fd is None and read_only:
        return False
    if fd is None:
        fd = _create_lock_file(path, size)
    try:
        info = os.fstat(fd)
        require_regular(info, path, "lock file")
        require_private(info, path, "lock file")
        if info.st_size < size or info.st_blocks * 512 < info.st_size:
            _allocate(fd, path, max(size, info.st_size))
        _wait_for_first_opener(fd, path, deadline, timeout)
    except StoreError:
        raise  # StoreTimeoutError is a TimeoutError, hence an OSError too
    except OSError as e:
        raise StoreError(f"cannot use lock file {path}: {e.strerror or e}") from None
    finally:
        # This process holds no other lock on the file yet (it opens LMDB after this), so
        # closing, which drops every fcntl lock of the process on the file, costs nothing.
        os.close(fd)
    return True


def _open_lock_file(path: str, read_only: bool) -> int | None:
    """A descriptor of the lock file (writable where allowed, to give it its blocks), or None."""
    modes = (os.O_RDWR, os.O_RDONLY) if read_only else (os.O_RDWR,)
    for mode in modes:
        try:
            return os.open(path, mode | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise NotADatabaseError(f"lock file path {path} is a symbolic link, not a regular file") from None
            if mode == modes[-1] or e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise StoreError(f"cannot open lock file {path}: {e.strerror or e}") from None
    return None  # not reached: the last mode raises


def _create_lock_file(path: str, size: int) -> int:
    """Make the lock file whole under a name of this process, then link it into place: a
    lock file that cannot get its blocks is never seen by anyone (and a link, unlike a
    rename, never replaces one that another process made meanwhile)."""
    temp = f"{path}.{os.getpid()}.new"
    try:
        os.unlink(temp)  # left by a process of the same pid that crashed
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StoreError(f"cannot create lock file {path}: {e.strerror or e}") from None
    try:
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StoreError(f"cannot create lock file {path}: {e.strerror or e}") from None
    try:
        try:
            os.fchmod(fd, 0o600)
            _allocate(fd, path, size)
            os.link(temp, path)
        finally:
            os.unlink(temp)
    except FileExistsError:
        os.close(fd)
        # Another process made it meanwhile: use it as it is (and check it).
        opened = _open_lock_file(path, read_only=False)
        if opened is None:
            raise StoreError(f"lock file {path} vanished while it was being opened; try again") from None
        return opened
    except OSError as e:
        os.close(fd)
        raise StoreError(f"cannot create lock file {path}: {e.strerror or e}") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _allocate(fd: int, path: str, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno == errno.EBADF:  # opened read-only: cannot repair it
            raise StoreError(
                f"lock file {path} has no disk blocks behind some of its bytes (a full disk, or an older "
                "version, left it so) and this user cannot give it them: run any write command (ADD, DEL) "
                "once, or remove it while no process uses the database"
            ) from None
        raise StoreError(
            f"cannot give lock file {path} its disk blocks: {e.strerror or e}; free some space and try again"
        ) from None


# struct flock: l_type, l_whence, l_start, l_len, l_pid (and the padding after it).
_FLOCK = struct.Struct("@hhqqi4x")


def _first_open_in_progress(fd: int) -> bool:
    """Whether another process holds the write lock on byte 0 of the lock file *fd* that
    LMDB's first opener holds while it sets the files up.

    Asked (``F_GETLK``), not tried with a shared lock of our own: an LMDB opener that met
    such a lock would take the lock file for set up by someone else, find no magic in it
    and fail with MDB_INVALID ("not an LMDB database").
    """
    query = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 1, 0)
    answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    return bool(_FLOCK.unpack(answer)[0] != fcntl.F_UNLCK)


def _wait_for_first_opener(fd: int, path: str, deadline: float, timeout: float) -> None:
    delay = 0.0005
    while True:
        if not _first_open_in_progress(fd):
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StoreTimeoutError(
                f"lock file {path} is locked by another process opening the database (a write lock on "
                f"its byte 0); gave up after {timeout:g}s"
            )
        time.sleep(min(remaining, delay))
        delay = min(delay * 2, 0.01)


def resolve(path: str) -> str:
    """The real path of the database *path* names: symlinks and ``..`` resolved.

    A relative path stays relative to the current directory, as before.
    """
    return os.path.realpath(path)


def check_single_name(fd: int, real: str, given: str, info: os.stat_result | None = None) -> None:
    """Refuse a database file that LMDB could reach through a second lock file.

    Costs an ``fstat`` (none when given *info*) and two reads of ``/proc/self/fdinfo`` (about 40 microseconds);
    ``/proc/self/mountinfo`` is read only to name a refused mount.

    :param fd: a descriptor of the file at *real*.
    :param real: the resolved path (:func:`resolve`).
    :param given: the path as the caller named it, for the message.
    :param info: the status of *fd*, if the caller has it.
    :raises DatabaseAliasError: the file has other hard links, or is a mount point.
    """
    if info is None:
        info = os.fstat(fd)
    if info.st_nlink > 1:
        raise DatabaseAliasError(_hard_link_message(info, real, given))
    directory = os.path.dirname(real) or "."
    dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # A file mounted on its own lies on another mount than its directory.  The device
        # number is the fallback where /proc does not say: it also differs for a file of
        # an overlayfs whose layers lie on several file systems, which is no mount.
        file_mount, dir_mount = _mount_id(fd), _mount_id(dir_fd)
        if file_mount is not None and dir_mount is not None:
            mounted = file_mount != dir_mount
        else:
            mounted = os.fstat(dir_fd).st_dev != info.st_dev
    finally:
        os.close(dir_fd)
    if mounted:
        raise DatabaseAliasError(_mount_message(real, given))


def _mount_id(fd: int) -> int | None:
    """The id of the mount *fd* lies on, or None where /proc does not tell."""
    try:
        info_fd = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(info_fd, 4096)
    finally:
        os.close(info_fd)
    start = text.find(b"\nmnt_id:")
    if start < 0:
        return None
    return int(text[start + 8 : text.index(b"\n", start + 1)])


def _hard_link_message(info: os.stat_result, real: str, given: str) -> str:
    others = _other_names(info, real)
    shown = ", ".join(others) if others else "a name in another directory"
    named = given if given == real else f"{given} ({real})"
    return (
        f"database {named} has {info.st_nlink} hard links (also {shown}); LMDB keeps its lock "
        "file beside each name, so writers using different names would not exclude each other "
        "and one address could be handed out twice: remove the extra links and use one path "
        "(a symlink is fine)"
    )


def _other_names(info: os.stat_result, real: str) -> list[str]:
    """The other names of the file in its own directory (other directories are not searched)."""
    directory = os.path.dirname(real) or "."
    names = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                path = os.path.join(directory, entry.name)
                if path == real:
                    continue
                try:
                    found = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (found.st_dev, found.st_ino) == (info.st_dev, info.st_ino):
                    names.append(path)
    except OSError:
        pass
    return sorted(names)


def _mount_message(real: str, given: str) -> str:
    named = given if given == real else f"{given} ({real})"
    source = _mount_source(real)
    return (
        f"database {named} is a single file mounted from {source}; LMDB keeps its lock file "
        "beside the name, so writers on either side of the mount would not exclude each other "
        "and one address could be handed out twice: mount the directory that holds the database "
        "instead"
    )


def _mount_source(real: str) -> str:
    """``<path within its file system> on <source> (<type>)`` for the mount at *real*."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return "another place"
    found = "another place"
    for line in lines:
        fields, _, tail = line.partition(" - ")
        parts = fields.split(" ")
        if len(parts) >= 5 and _unescape(parts[4]) == real:
            fs_type, source = (tail.split(" ") + ["", ""])[:2]
            # The last entry wins: it is the mount on top.
            found = f"{_unescape(parts[3])} on {_unescape(source)} ({fs_type})"
    return found


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        text = text.replace("\\" + code, chr(int(code, 8)))
    return text
