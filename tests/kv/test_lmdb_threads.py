"""Threads of one process sharing an LMDB store.

LMDB may only resize its map while the process has no transaction open; the store
counts transactions per thread and makes a growing writer wait for the others.  LMDB
also lets one transaction at a time open buckets, and a drop closes a handle under every
thread (see ecs_ipam.kv.lmdb_handles).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ecs_ipam.errors import KeyModifiedError, StoreError
from ecs_ipam.kv.lmdb_store import LMDBStore


def reading_while(read: Callable[[int], None], work: Callable[[], None], readers: int = 3) -> tuple[list, int]:
    """Run ``read(n)`` over and over in *readers* threads (n counts each thread's reads)
    until ``work()`` returns in this one: ``(the readers' errors, reads done)``."""
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0] * readers

    def reader(me: int) -> None:
        while not stop.is_set():
            try:
                read(reads[me] * readers + me)
                reads[me] += 1
            except BaseException as error:  # noqa: BLE001  (returned to the test)
                errors.append(error)

    threads = [threading.Thread(target=reader, args=(me,)) for me in range(readers)]
    for thread in threads:
        thread.start()
    try:
        work()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return errors, sum(reads)


def test_readers_in_other_threads_survive_the_map_growing(tmp_path):
    store = LMDBStore(str(tmp_path / "db"), "b", map_size=64 * 1024)
    store.put("seed", b"x")
    start_size = store._env.env.info()["map_size"]

    def read(_: int) -> None:
        # Each read transaction stays open for a while, so that the writer's growth of
        # the map falls inside some of them.
        with store.transaction(write=False) as tx:
            assert tx.get("seed").value == b"x"
            tx.list("k")
            time.sleep(0.0002)
            assert tx.get("seed").value == b"x"

    def write() -> None:
        for batch in range(10):
            with store.transaction() as tx:
                for i in range(100):
                    tx.put(f"k{batch:03}-{i:03}", b"v" * 200)

    errors, reads = reading_while(read, write)
    assert errors == []
    assert reads > 0
    assert store._env.env.info()["map_size"] > start_size
    assert len(store.list("k")) == 1000
    store.close()


def test_a_write_that_must_grow_inside_a_read_transaction_is_refused(tmp_path):
    store = LMDBStore(str(tmp_path / "db"), "b", map_size=64 * 1024)
    with store.transaction(write=False):
        try:
            store.put("big", b"v" * 200_000)
        except StoreError as error:
            assert "do not nest transactions" in str(error)
        else:
            raise AssertionError("growing the map under an open transaction must be refused")
    store.put("big", b"v" * 200_000)
    assert len(store.get("big").value) == 200_000
    store.close()


def test_readers_in_other_threads_never_see_a_dropped_bucket_through_a_reused_slot(tmp_path):
    # LMDB closes a dropped bucket's handle at once and gives its slot to the next bucket
    # opened; a reader in another thread that still held the old handle must see its own
    # snapshot or no bucket, never the pairs of the bucket that took the slot.
    store = LMDBStore(str(tmp_path / "db"), "b")
    seen = {"whole": 0, "missing": 0}

    def read(_: int) -> None:
        with store.transaction(write=False) as tx:
            first = tx.bucket("b").find("generation")
            time.sleep(0.0001)
            second = tx.bucket("b").find("copy")
        if first is None:
            assert second is None
            seen["missing"] += 1
        else:
            assert second is not None and first.value == second.value, (first, second)
            seen["whole"] += 1

    def drop_and_reuse() -> None:
        for generation in range(300):
            value = str(generation).encode()
            with store.transaction() as tx:
                tx.bucket("b").put("generation", value)
                tx.bucket("b").put("copy", value)
            time.sleep(0.001)  # time for readers to see it
            store.drop_bucket("b")
            # The slot b had goes to a bucket of other pairs under the same keys.
            other = f"other-{generation % 3}"
            with store.transaction() as tx:
                tx.bucket(other).put("generation", b"other")
                tx.bucket(other).put("copy", b"pairs")
            store.drop_bucket(other)

    errors, _ = reading_while(read, drop_and_reuse)
    store.close()
    assert errors == []
    assert seen["whole"] and seen["missing"]


def test_threads_opening_buckets_at_once_keep_every_answer_and_every_commit(tmp_path):
    # Readers opening buckets this process had never opened, beside a writer creating new
    # ones, cost the writer its commit (MDB_BAD_DBI) and the readers their answers
    # (Invalid argument) when they did not wait for one another.
    path = str(tmp_path / "db")
    seed = LMDBStore(path, "b")
    with seed.transaction() as tx:
        for n in range(200):
            tx.bucket(f"old-{n}").put("k", str(n).encode())
    seed.close()
    # Opened again: the environment shares no handle yet, as when the plugin finds a
    # database that another process wrote.
    store = LMDBStore(path, "b")

    def read(count: int) -> None:
        n = count * 7 % 200
        with store.transaction(write=False) as tx:
            assert tx.bucket(f"old-{n}").get("k").value == str(n).encode()

    def create() -> None:
        for n in range(200):
            with store.transaction() as tx:
                tx.bucket(f"new-{n}").put("k", str(n).encode())
                assert tx.bucket(f"new-{n}").get("k").value == str(n).encode()

    errors, reads = reading_while(read, create)
    assert errors == []
    assert reads > 0
    assert [store.bucket(f"new-{n}").get("k").value for n in range(200)] == [str(n).encode() for n in range(200)]
    store.close()


def test_a_read_that_cannot_open_a_bucket_after_other_threads_did_says_run_again(tmp_path):
    path = str(tmp_path / "db")
    seed = LMDBStore(path, "a")
    with seed.transaction() as tx:
        tx.put("k", b"a")
        tx.bucket("b").put("k", b"b")
    seed.close()
    store = LMDBStore(path, "a")
    store.put("k", b"a2")  # this process now shares bucket a's handle, not b's
    read_a = threading.Event()
    other_opened = threading.Event()
    outcome: list[object] = []

    def reader() -> None:
        try:
            with store.transaction(write=False) as tx:
                outcome.append(tx.get("k").value)
                read_a.set()
                other_opened.wait(10)
                outcome.append(tx.bucket("never").find("k"))  # absent from the snapshot: no need to open
                outcome.append(tx.bucket("b").get("k").value)
        except KeyModifiedError as error:
            outcome.append(error)

    thread = threading.Thread(target=reader)
    thread.start()
    read_a.wait(10)
    store.bucket("c").put("k", b"c")  # another thread opens (creates) a bucket meanwhile
    other_opened.set()
    thread.join()
    assert outcome[:2] == [b"a2", None]
    assert isinstance(outcome[2], KeyModifiedError) and "run the transaction again" in str(outcome[2])
    # Run again, it reads b.
    with store.transaction(write=False) as tx:
        assert tx.bucket("b").get("k").value == b"b"
    store.close()
