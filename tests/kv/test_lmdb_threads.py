"""Threads of one process sharing an LMDB store while the map grows under them.

LMDB may only resize its map while the process has no transaction open; the store
counts transactions per thread and makes a growing writer wait for the others.
"""

import threading
import time

from ecs_ipam.errors import StoreError
from ecs_ipam.kv.lmdb_store import LMDBStore


def test_readers_in_other_threads_survive_the_map_growing(tmp_path):
    store = LMDBStore(str(tmp_path / "db"), "b", map_size=64 * 1024)
    store.put("seed", b"x")
    stop = threading.Event()
    errors: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        while not stop.is_set():
            try:
                # Hold each read transaction open for a while, so that the writer's
                # growth of the map falls inside some of them.
                with store.transaction(write=False) as tx:
                    assert tx.get("seed").value == b"x"
                    tx.list("k")
                    time.sleep(0.0002)
                    assert tx.get("seed").value == b"x"
                reads[0] += 1
            except BaseException as error:  # noqa: BLE001  (collected and asserted below)
                errors.append(error)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        start_size = store._env.env.info()["map_size"]
        for batch in range(10):
            with store.transaction() as tx:
                for i in range(100):
                    tx.put(f"k{batch:03}-{i:03}", b"v" * 200)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert reads[0] > 0
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
