"""``flock`` with a deadline: the kernel's own call either waits forever or not at all.

A waiter sleeps in the kernel's blocking ``flock``, which hands the lock over the moment
it is free, and a one-shot ``SIGALRM`` timer set to the deadline interrupts the wait.
Polling with sleeps (the fallback) leaves a freed lock idle while its waiters sleep: with
dozens of plugins started at once, those gaps add up to most of the burst.

The timer is used only where it is this call's to use: in the main thread of a process
with no other Python thread (the signal goes to the main thread, and only there can a
handler be set), SIGALRM not blocked, neither handled by someone else nor timed.  An
embedder that uses SIGALRM or threads gets the polling wait, with the same deadline.
"""

from __future__ import annotations

import fcntl
import time

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

# setitimer(0) disarms, so a deadline closer than this still gets a timer that fires.
_MIN_TIMER = 0.001


def flock_before(fd: int, operation: int, deadline: float, busy: Callable[[], Exception]) -> None:
    """Take ``flock(fd, operation)``, waiting until *deadline* (``time.monotonic()``).

    :param operation: ``fcntl.LOCK_EX`` or ``fcntl.LOCK_SH``.
    :param busy: makes the exception raised when the deadline passes.
    """
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise busy()
    if not _wait_under_timer(fd, operation, remaining, busy):
        _poll(fd, operation, deadline, busy)


class _Expired(Exception):
    """Raised by the SIGALRM handler into the blocking flock it interrupts."""


class _Waiting:
    """The SIGALRM handler of one wait: interrupts the flock only while it is waiting."""

    def __init__(self) -> None:
        self.waiting = True

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.waiting:
            raise _Expired


def _wait_under_timer(fd: int, operation: int, remaining: float, busy: Callable[[], Exception]) -> bool:
    """Wait in a blocking flock for at most *remaining* seconds; False if the timer is not
    this call's to use (the caller then polls)."""
    # The C modules under threading and signal: the signal module would import enum, a
    # few milliseconds for every plugin that has to wait.
    import _thread

    if TYPE_CHECKING:
        import signal as _signal  # the same functions, typed
    else:
        import _signal

    if (
        _thread._count()
        or _signal.getsignal(_signal.SIGALRM) != _signal.SIG_DFL
        or _signal.getitimer(_signal.ITIMER_REAL) != (0.0, 0.0)
        or _signal.SIGALRM in _signal.pthread_sigmask(_signal.SIG_BLOCK, ())
    ):
        return False  # other threads, or somebody else's SIGALRM
    handler = _Waiting()
    try:
        _signal.signal(_signal.SIGALRM, handler)
    except ValueError:  # not the main thread
        return False
    try:
        try:
            _signal.setitimer(_signal.ITIMER_REAL, max(remaining, _MIN_TIMER))
            try:
                # Interrupted by the handler's _Expired (EINTR is retried otherwise, PEP 475).
                fcntl.flock(fd, operation)
            finally:
                handler.waiting = False
                _signal.setitimer(_signal.ITIMER_REAL, 0)
                _run_pending_handlers()
        except _Expired:
            handler.waiting = False
            _signal.setitimer(_signal.ITIMER_REAL, 0)
            # The timer may have gone off just as the kernel granted the lock: a second
            # flock on the same descriptor answers at once whether this process holds it.
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
            except BlockingIOError:
                raise busy() from None
    finally:
        _signal.signal(_signal.SIGALRM, _signal.SIG_DFL)
    return True


def _run_pending_handlers() -> None:
    # Entering a Python function runs the handlers of signals already delivered, while
    # this wait's handler (now a no-op) is still the one installed: a timer that went off
    # as the wait ended must not reach the handler restored after it.
    return None


def _poll(fd: int, operation: int, deadline: float, busy: Callable[[], Exception]) -> None:
    delay = 0.0005
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise busy() from None
            # Jitter keeps a crowd of waiting threads from polling in lockstep; the cap
            # keeps a freed lock from sitting idle long.  Imported here: only a process
            # that polls needs it.
            import random

            time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, 0.01)
