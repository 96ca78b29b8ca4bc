"""An in-memory backend: the reference model of the store contract, and the fake store
that allocator and IPAM tests run on without touching a disk."""

from __future__ import annotations

import threading
from contextlib import contextmanager

from ..errors import StoreError
from .base import KVPair, Store, Tx, check_bucket_name

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    # Puts a bucket or pair back as it was when a transaction aborts.
    Undo = list[Callable[[], object]]


class MemoryDatabase:
    """Buckets of pairs shared by every :class:`MemoryStore` opened on it."""

    def __init__(self) -> None:
        self.buckets: dict[str, dict[str, KVPair]] = {}
        self.last_index = 0
        # Re-entrant so that Store methods called inside a transaction on the same
        # thread do not deadlock; one lock also serializes readers, which is fine for a
        # store that lives in one process.
        self.lock = threading.RLock()


class _MemoryTx(Tx):
    def __init__(self, db: MemoryDatabase, bucket_name: str, undo: Undo, write: bool) -> None:
        self._db = db
        self.bucket_name = bucket_name
        self._undo = undo
        self._writable = write

    def _pairs(self) -> dict[str, KVPair]:
        return self._db.buckets.get(self.bucket_name, {})

    def _writable_pairs(self) -> dict[str, KVPair]:
        if not self._writable:
            raise StoreError("write in a read-only transaction")
        if self.bucket_name not in self._db.buckets:
            self._db.buckets[self.bucket_name] = {}
            self._undo.append(lambda: self._db.buckets.pop(self.bucket_name, None))
        return self._db.buckets[self.bucket_name]

    def _remember(self, pairs: dict[str, KVPair], key: str) -> None:
        old = pairs.get(key)
        index = self._db.last_index

        def restore() -> None:
            self._db.last_index = index
            if old is None:
                pairs.pop(key, None)
            else:
                pairs[key] = old

        self._undo.append(restore)

    def _read(self, key: str) -> KVPair | None:
        return self._pairs().get(key)

    def _write(self, key: str, value: bytes) -> KVPair:
        pairs = self._writable_pairs()
        self._remember(pairs, key)
        self._db.last_index += 1
        pair = KVPair(key, value, self._db.last_index)
        pairs[key] = pair
        return pair

    def _remove(self, key: str) -> bool:
        if key not in self._pairs():
            if not self._writable:
                raise StoreError("write in a read-only transaction")
            return False
        pairs = self._writable_pairs()
        self._remember(pairs, key)
        del pairs[key]
        return True

    def _scan(self, prefix: str) -> list[KVPair]:
        pairs = self._pairs()
        return [pairs[k] for k in sorted(pairs) if k.startswith(prefix)]

    def bucket(self, name: str) -> Tx:
        return _MemoryTx(self._db, check_bucket_name(name), self._undo, self._writable)

    def buckets(self) -> list[str]:
        return sorted(self._db.buckets)

    def drop_bucket(self, name: str) -> bool:
        check_bucket_name(name)
        if not self._writable:
            raise StoreError("write in a read-only transaction")
        pairs = self._db.buckets.pop(name, None)
        if pairs is None:
            return False
        # The same dict goes back, so that undo steps recorded before still apply to it.
        self._undo.append(lambda: self._db.buckets.__setitem__(name, pairs))
        return True


class MemoryStore(Store):
    """A store kept in a :class:`MemoryDatabase` (a fresh one unless *db* is given)."""

    def __init__(self, bucket: str = "IPAM", db: MemoryDatabase | None = None) -> None:
        self.bucket_name = check_bucket_name(bucket)
        self.db = db if db is not None else MemoryDatabase()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Tx]:
        self._check_open()
        with self.db.lock:
            undo: Undo = []
            try:
                yield _MemoryTx(self.db, self.bucket_name, undo, write)
            except BaseException:
                for restore in reversed(undo):
                    restore()
                raise

    def bucket(self, name: str) -> MemoryStore:
        self._check_open()
        return MemoryStore(name, self.db)

    def buckets(self) -> list[str]:
        self._check_open()
        with self.db.lock:
            return sorted(self.db.buckets)

    def close(self) -> None:
        self._closed = True
