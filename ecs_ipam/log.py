"""A minimal append-only log, rolled every hour as the Go plugin's: one line per event.

The current file is at the configured path; when a line is written in a later hour (UTC)
than the file was last written, the file is first renamed ``<path>.YYYY-MM-DD-HH`` after
the hour it holds, and only the newest :data:`KEEP` finished hours are kept.  Deciding
costs one ``fstat`` of the open file per line.

Plugins run concurrently and may all find the finished hour at the same moment: the
rollers take turns on an ``flock`` of the old file and only the first one renames it (the
others see that the path names a new file by then); the old file is moved by ``link``
then ``unlink``, so a plugin still appending to it writes into the finished file, and
``link`` never replaces an existing name (if the finished hour exists already, the file
stays current and is rolled later).  Lines go out with ``O_APPEND``, each in one ``write``:
they are never lost, at worst filed under the next hour.

Logging must never change the plugin's output or exit code, so every failure to write
or roll is swallowed, and only a regular file that is not the plugin's own stdout is
written: the file is opened with ``O_NONBLOCK`` (a FIFO at the path never blocks the
plugin, which has committed its lease by then), and a FIFO, a device, ``/dev/stdout`` or
``/dev/stderr`` get no line.  The stdlib ``logging`` package is not used: importing and
configuring it would cost every container start a few milliseconds for one or two lines.
"""

from __future__ import annotations

import os
import time

LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "critical": 50, "off": 100}
# Finished hours kept beside the current file, as the Go plugin's seelog configuration.
KEEP = 24
_HOUR_FORMAT = "%Y-%m-%d-%H"


class Log:
    def __init__(self, path: str, level: str = "info") -> None:
        self.path = path
        self.threshold = LEVELS.get(level.lower(), LEVELS["info"])

    def _write(self, level: str, message: str) -> None:
        if LEVELS[level] < self.threshold:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        line = f"{stamp} [{level}] pid={os.getpid()} {message}\n".encode("utf-8", "backslashreplace")
        try:
            fd = self._open_current(now)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except (OSError, ValueError):
            pass

    def _open_current(self, now: float) -> int:
        """An O_APPEND descriptor of the current file, rolled first if it holds a finished hour.

        :raises OSError: the path is not a regular file, or is the file of stdout or stderr.
        """
        fd, st = _open_log(self.path)
        try:
            if st.st_size == 0 or _hour(st.st_mtime) == _hour(now):
                return fd
            try:
                rolled = self._roll(fd, st)
            except OSError:
                # No hard links on this file system, no right to make one...: a log that
                # cannot roll still takes the line.
                rolled = False
            if not rolled:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return _open_log(self.path)[0]

    def _roll(self, fd: int, st: os.stat_result) -> bool:
        """Move the finished file *fd* to its hour's name; return whether the path changed."""
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                return True  # rolled by another plugin, not yet re-created
            if (current.st_dev, current.st_ino) != (st.st_dev, st.st_ino):
                return True  # another plugin rolled it first
            try:
                os.link(self.path, f"{self.path}.{_hour(st.st_mtime)}")
            except FileExistsError:
                # That hour was rolled already (the clock went back): keep this file as the
                # current one, to be rolled under a later hour, rather than copy lines that
                # another plugin may be appending at this moment.
                return False
            os.unlink(self.path)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        self._prune()
        return True

    def _prune(self) -> None:
        import contextlib

        directory, base = os.path.split(self.path)
        prefix = base + "."
        finished = sorted(
            name for name in os.listdir(directory or ".") if name.startswith(prefix) and _is_hour(name[len(prefix) :])
        )
        for name in finished[:-KEEP]:
            with contextlib.suppress(FileNotFoundError):  # pruned by another plugin
                os.unlink(os.path.join(directory, name))

    @property
    def debugging(self) -> bool:
        """Whether debug lines are written: a caller skips building them otherwise."""
        return self.threshold <= LEVELS["debug"]

    def debug(self, message: str) -> None:
        self._write("debug", message)

    def info(self, message: str) -> None:
        self._write("info", message)

    def error(self, message: str) -> None:
        self._write("error", message)


def _hour(timestamp: float) -> str:
    return time.strftime(_HOUR_FORMAT, time.gmtime(timestamp))


def _is_hour(text: str) -> bool:
    return len(text) == 13 and text[4] == text[7] == text[10] == "-" and text.replace("-", "").isdigit()


_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _open_log(path: str) -> tuple[int, os.stat_result]:
    """An O_APPEND descriptor of the log file *path*, and its status.

    :raises OSError: as :func:`_require_log_file`, or the file cannot be opened.
    """
    fd = os.open(path, _OPEN_FLAGS, 0o644)
    try:
        st = os.fstat(fd)
        _require_log_file(st)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _require_log_file(st: os.stat_result) -> None:
    """:raises OSError: *st* is not a regular file, or is the file stdout or stderr write to
    (a line there would land in front of the result the caller parses)."""
    if not _is_regular(st.st_mode):
        raise OSError("the log is not a regular file")
    if (st.st_dev, st.st_ino) in _standard_files():
        raise OSError("the log is the file of stdout or stderr")


_standard: set[tuple[int, int]] | None = None


def _standard_files() -> set[tuple[int, int]]:
    """The files of descriptors 1 and 2, looked at once per process (a line costs one fstat)."""
    global _standard
    if _standard is None:
        _standard = set()
        for fd in (1, 2):
            try:
                st = os.fstat(fd)
            except OSError:
                continue
            _standard.add((st.st_dev, st.st_ino))
    return _standard


def _is_regular(mode: int) -> bool:
    return mode & 0o170000 == 0o100000
