"""Which system call a process sleeps in, from ``/proc/PID/syscall``: a test that must
act while a process waits in the kernel's flock waits for that, not for a fixed time."""

from __future__ import annotations

import os
import time

# flock's number on the machines the project supports (the kernel's syscall tables).
FLOCK = {"x86_64": 73, "aarch64": 32}[os.uname().machine]


def current_syscall(pid: int) -> int | None:
    """The number of the system call *pid* is in, or None when it runs in user space."""
    with open(f"/proc/{pid}/syscall") as f:
        first = f.read().split(" ", 1)[0].strip()
    return int(first) if first.lstrip("-").isdigit() else None


def wait_until_in_flock(pid: int, within: float = 30.0) -> None:
    """Return once *pid* sleeps in flock, however long a loaded machine takes to get it
    there; fail the test after *within* seconds."""
    deadline = time.monotonic() + within
    while current_syscall(pid) != FLOCK:
        assert time.monotonic() < deadline, f"process {pid} is in syscall {current_syscall(pid)}, not flock"
        time.sleep(0.01)
