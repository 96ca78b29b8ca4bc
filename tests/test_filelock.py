"""ecs_ipam.filelock on real processes: a waiter sleeps in the kernel's flock (so it gets a
freed lock at once), gives up at its deadline, excludes every other holder, and leaves
SIGALRM as it found it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from syscalls import wait_until_in_flock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Holds an exclusive flock on argv[1] until its stdin closes; says "held" once it has it.
HOLDER = """
import fcntl, sys
fd = open(sys.argv[1], "a")
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""

# Waits for the lock with flock_before (deadline argv[2] seconds), reports what happened.
WAITER = """
import fcntl, os, signal, sys, time
sys.path.insert(0, sys.argv[3])
from ecs_ipam.filelock import flock_before

class Busy(Exception):
    pass

fd = os.open(sys.argv[1], os.O_RDONLY)
print("waiting", flush=True)
began = time.monotonic()
try:
    flock_before(fd, fcntl.LOCK_EX, began + float(sys.argv[2]), Busy)
    outcome = "locked"
except Busy:
    outcome = "busy"
waited = time.monotonic() - began
left = (signal.getsignal(signal.SIGALRM) == signal.SIG_DFL, signal.getitimer(signal.ITIMER_REAL))
print(outcome, repr(waited), left[0], left[1], flush=True)
"""


def start(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


@pytest.fixture
def holder(tmp_path):
    path = tmp_path / "lock"
    path.touch()
    proc = start(HOLDER, str(path))
    assert line(proc) == "held"
    yield path, proc
    proc.kill()
    proc.wait()


def last_line(proc: subprocess.Popen[str]) -> str:
    """The process's last line once it exits (a wait that never ends fails the test)."""
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return out.strip().splitlines()[-1]


def test_a_waiter_sleeps_in_flock_and_gets_the_lock_when_it_is_freed(holder):
    path, proc = holder
    waiter = start(WAITER, str(path), "30", ROOT)
    assert line(waiter) == "waiting"
    # It waits in the kernel's flock, not in a sleep between polls.
    wait_until_in_flock(waiter.pid)
    proc.stdin.close()  # the holder exits, which frees the lock
    outcome, _, restored, timer = last_line(waiter).split(" ", 3)
    assert outcome == "locked"
    assert restored == "True" and timer == "(0.0, 0.0)"


@pytest.mark.parametrize("seconds", [0.3, 0.0005])
def test_a_waiter_gives_up_at_its_deadline_and_restores_sigalrm(holder, seconds):
    path, _ = holder
    waiter = start(WAITER, str(path), str(seconds), ROOT)
    assert line(waiter) == "waiting"
    outcome, waited, restored, timer = last_line(waiter).split(" ", 3)
    assert outcome == "busy"
    assert float(waited) >= seconds
    assert float(waited) < seconds + 5  # bounded: it does not wait for the holder
    assert restored == "True" and timer == "(0.0, 0.0)"


# Another SIGALRM user, or a thread: the timer is not the wait's to use; it polls instead
# and leaves the other user's handler and timer alone.
FOREIGN = """
import fcntl, os, signal, sys, threading, time
sys.path.insert(0, sys.argv[2])
from ecs_ipam.filelock import flock_before

class Busy(Exception):
    pass

fired = []
signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
signal.setitimer(signal.ITIMER_REAL, 30)
fd = os.open(sys.argv[1], os.O_RDONLY)
outcomes = []

def wait():
    began = time.monotonic()
    try:
        flock_before(fd, fcntl.LOCK_EX, began + 0.3, Busy)
        outcomes.append("locked")
    except Busy:
        outcomes.append(f"busy {time.monotonic() - began >= 0.3}")

wait()
thread = threading.Thread(target=wait)
thread.start()
thread.join()
remaining = signal.getitimer(signal.ITIMER_REAL)[0]
print(outcomes, fired, 25 < remaining <= 30, signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, None))
"""


def test_a_process_that_uses_sigalrm_itself_keeps_it_and_still_gets_the_deadline(holder):
    path, _ = holder
    done = subprocess.run([sys.executable, "-c", FOREIGN, str(path), ROOT], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['busy True', 'busy True'] [] True True"


# Each of many processes adds one to a counter file under the lock, with a pause between
# reading and writing it: any two inside at once lose an increment.
COUNTER = """
import fcntl, os, sys, time
sys.path.insert(0, sys.argv[2])
from ecs_ipam.filelock import flock_before

fd = os.open(sys.argv[1], os.O_RDWR)
flock_before(fd, fcntl.LOCK_EX, time.monotonic() + 60, RuntimeError)
count = int(os.pread(fd, 32, 0) or b"0")
time.sleep(0.002)
os.pwrite(fd, str(count + 1).encode().ljust(32), 0)
fcntl.flock(fd, fcntl.LOCK_UN)
"""


def test_holders_exclude_one_another(tmp_path):
    counter = tmp_path / "counter"
    counter.write_bytes(b"0")
    crowd = [
        subprocess.Popen([sys.executable, "-c", COUNTER, str(counter), ROOT], stderr=subprocess.PIPE) for _ in range(24)
    ]
    for proc in crowd:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert int(counter.read_bytes()) == 24
