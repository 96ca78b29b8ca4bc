"""One database file, one name for LMDB: where its lock file lies and who may open it.

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

import os

from ..errors import DatabaseAliasError


def resolve(path: str) -> str:
    """The real path of the database *path* names: symlinks and ``..`` resolved.

    A relative path stays relative to the current directory, as before.
    """
    return os.path.realpath(path)


def check_single_name(fd: int, real: str, given: str) -> None:
    """Refuse a database file that LMDB could reach through a second lock file.

    Costs an ``fstat`` and two reads of ``/proc/self/fdinfo`` (about 40 microseconds);
    ``/proc/self/mountinfo`` is read only to name a refused mount.

    :param fd: a descriptor of the file at *real*.
    :param real: the resolved path (:func:`resolve`).
    :param given: the path as the caller named it, for the message.
    :raises DatabaseAliasError: the file has other hard links, or is a mount point.
    """
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
