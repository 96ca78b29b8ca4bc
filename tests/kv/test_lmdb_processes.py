"""Many processes on one LMDB file: no lost update, no write in the wrong place.

Workers are started with the "spawn" method: each opens its own environment, as every
plugin invocation does (an LMDB environment must never cross a fork).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import tempfile
import time

import pytest

from ecs_ipam.errors import KeyModifiedError
from ecs_ipam.kv.lmdb_store import LMDBStore

SPAWN = multiprocessing.get_context("spawn")
COUNTER = "counter"


def increment_by_compare_and_swap(path: str, times: int, start, results) -> None:
    """Add 1 to the counter *times* times with get + atomic_put, retrying on conflict."""
    conflicts = 0
    with LMDBStore(path, "test", timeout=60) as store:
        start.wait()
        for _ in range(times):
            while True:
                pair = store.get(COUNTER)
                try:
                    store.atomic_put(COUNTER, str(int(pair.value) + 1).encode(), pair)
                    break
                except KeyModifiedError:
                    conflicts += 1
    results.put(conflicts)


def increment_in_a_transaction(path: str, times: int, start, results) -> None:
    """Add 1 to the counter *times* times, each a read-modify-write in one transaction."""

    def add_one(tx) -> None:
        tx.put(COUNTER, str(int(tx.get(COUNTER).value) + 1).encode())

    with LMDBStore(path, "test", timeout=60) as store:
        start.wait()
        for _ in range(times):
            store.transact(add_one)
    results.put(0)


def fill_own_bucket(path: str, worker: int, times: int, start, results) -> None:
    """Write, overwrite and delete keys of bucket worker-<n>, plus one shared bucket."""
    with LMDBStore(path, f"worker-{worker}", timeout=60) as store:
        start.wait()
        for n in range(times):
            store.put(f"key{n:04d}", f"{worker}:{n}".encode())
            if n % 3 == 0:
                store.put(f"key{n:04d}", f"{worker}:{n}:again".encode())
            if n % 5 == 0:
                store.delete(f"key{n:04d}")
        with store.transaction() as tx:
            tx.put("done", b"yes")
            tx.bucket("shared").put(f"from-{worker}", str(times).encode())
    results.put(0)


def expected_bucket(worker: int, times: int) -> dict[str, bytes]:
    contents = {"done": b"yes"}
    for n in range(times):
        if n % 5 == 0:
            continue
        suffix = ":again" if n % 3 == 0 else ""
        contents[f"key{n:04d}"] = f"{worker}:{n}{suffix}".encode()
    return contents


def run_workers(target, argument_lists: list[tuple]) -> list[int]:
    """Run one process per argument tuple, released together; return what each reported."""
    start = SPAWN.Event()
    results = SPAWN.Queue()
    workers = [SPAWN.Process(target=target, args=(*args, start, results)) for args in argument_lists]
    for worker in workers:
        worker.start()
    start.set()
    reported: list[int] = []
    deadline = time.monotonic() + 120
    try:
        while len(reported) < len(workers):
            try:
                reported.append(results.get(timeout=0.2))
            except queue.Empty:
                crashed = any(worker.exitcode not in (None, 0) for worker in workers)
                if crashed or time.monotonic() > deadline:
                    exits = ", ".join(str(worker.exitcode) for worker in workers)
                    pytest.fail(f"a worker crashed or hung; exit codes: {exits}")
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert [worker.exitcode for worker in workers] == [0] * len(workers)
    return reported


def counter_after(path: str, target, processes: int, times: int) -> tuple[int, int]:
    with LMDBStore(path, "test") as store:
        store.put(COUNTER, b"0")
    conflicts = run_workers(target, [(path, times)] * processes)
    with LMDBStore(path, "test") as store:
        return int(store.get(COUNTER).value), sum(conflicts)


def test_compare_and_swap_increments_from_many_processes_are_never_lost(tmp_path):
    total, _ = counter_after(str(tmp_path / "kv.db"), increment_by_compare_and_swap, 8, 50)

    assert total == 8 * 50


def test_transactions_from_many_processes_are_serialized(tmp_path):
    total, _ = counter_after(str(tmp_path / "kv.db"), increment_in_a_transaction, 8, 50)

    assert total == 8 * 50


def test_writers_in_different_buckets_keep_their_own_contents(tmp_path):
    path = str(tmp_path / "kv.db")
    processes, times = 6, 60

    run_workers(fill_own_bucket, [(path, worker, times) for worker in range(processes)])

    with LMDBStore(path, "test") as store:
        names = [f"worker-{worker}" for worker in range(processes)]
        assert store.buckets() == sorted(["shared", *names])
        for worker, name in enumerate(names):
            with store.bucket(name) as bucket:
                assert {pair.key: pair.value for pair in bucket.list()} == expected_bucket(worker, times)
        with store.bucket("shared") as shared:
            assert {pair.key: pair.value for pair in shared.list()} == {
                f"from-{worker}": str(times).encode() for worker in range(processes)
            }


@pytest.mark.slow
def test_compare_and_swap_under_heavy_contention(tmp_path):
    total, conflicts = counter_after(str(tmp_path / "kv.db"), increment_by_compare_and_swap, 24, 200)

    assert total == 24 * 200
    assert conflicts > 0  # with this many processes the race did happen


@pytest.mark.slow
def test_many_writers_in_many_buckets(tmp_path):
    path = str(tmp_path / "kv.db")
    processes, times = 24, 300

    run_workers(fill_own_bucket, [(path, worker, times) for worker in range(processes)])

    with LMDBStore(path, "test") as store:
        for worker in range(processes):
            with store.bucket(f"worker-{worker}") as bucket:
                assert {pair.key: pair.value for pair in bucket.list()} == expected_bucket(worker, times)


def open_new_files(directory: str, rounds: int, start, results) -> None:
    """Open ``<directory>/<round>.db`` once per round, all workers together, as plugins
    started at once on a database nobody has made yet; put every failure on *results*."""
    failures = []
    for n in range(rounds):
        start.wait()
        try:
            LMDBStore(os.path.join(directory, f"{n}.db"), "test", timeout=60).close()
        except Exception as e:  # noqa: BLE001 - every failure is the finding
            failures.append(f"round {n}: {type(e).__name__}: {e}")
    results.put(failures)


def test_processes_opening_a_new_file_at_once_never_find_it_damaged(tmp_path):
    # LMDB's first opener writes the two meta pages of a new file with one pwrite, which
    # the kernel may publish a page at a time (tmpfs does; ext4 with large folios seldom
    # does): another opener looking in between saw one meta page, as in a truncated file.
    # And an LMDB open that met another opener's probe (a shared lock on the lock file's
    # byte 0) took the new lock file for set up already: "not an LMDB database".
    # Before the fixes about two runs in three met one of them here (tmpfs, two cores);
    # tests/test_parallel.py holds that moment open for a deterministic check.
    shm = "/dev/shm"
    directory = tempfile.mkdtemp(dir=shm) if os.path.isdir(shm) else str(tmp_path)
    try:
        workers, rounds = 4, 400
        start = SPAWN.Barrier(workers)
        results = SPAWN.Queue()
        procs = [SPAWN.Process(target=open_new_files, args=(directory, rounds, start, results)) for _ in range(workers)]
        for proc in procs:
            proc.start()
        failures = [failure for _ in procs for failure in results.get(timeout=300)]
        for proc in procs:
            proc.join(60)
        assert failures == []
    finally:
        if directory != str(tmp_path):
            shutil.rmtree(directory)
