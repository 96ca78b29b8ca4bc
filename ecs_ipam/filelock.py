"""``flock`` with a deadline: the kernel's own call either waits forever or not at all."""

from __future__ import annotations

import fcntl
import time

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def flock_before(fd: int, operation: int, deadline: float, busy: Callable[[], Exception]) -> None:
    """Take ``flock(fd, operation)``, polling until *deadline* (``time.monotonic()``).

    :param operation: ``fcntl.LOCK_EX`` or ``fcntl.LOCK_SH``.
    :param busy: makes the exception raised when the deadline passes.
    """
    delay = 0.0005
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise busy() from None
            # Jitter keeps a crowd of waiting plugins from polling in lockstep; the cap
            # keeps a freed lock from sitting idle long.  Imported here: only a process
            # that waits needs it.
            import random

            time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
            delay = min(delay * 2, 0.01)
