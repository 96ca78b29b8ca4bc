"""Random sequences of store operations, checked against a plain dict model.

The model knows values, and for compare-and-swap a *generation* per key: how many
committed writes or deletes the key has seen.  A pair read at generation g is current
exactly while the key exists at generation g; the store's last_index must agree, without
the model ever trusting it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, precondition, rule

from ecs_ipam.errors import KeyExistsError, KeyModifiedError, KeyNotFoundError
from ecs_ipam.kv import KVPair
from ecs_ipam.kv.lmdb_store import LMDBStore
from ecs_ipam.kv.memory import MemoryStore

BUCKETS = ["test", "other"]
buckets = st.sampled_from(BUCKETS)
# A small alphabet so that keys collide and prefixes match often.
keys = st.text(alphabet="ab/\u00e9", min_size=1, max_size=3)
prefixes = st.text(alphabet="ab/\u00e9", max_size=2)
values = st.binary(max_size=6)


@dataclass(frozen=True)
class Seen:
    """A pair as the store returned it, and the key's generation at that moment."""

    bucket: str
    pair: KVPair
    generation: int


class Abort(Exception):
    """Raised inside a transaction to make it roll back."""


class Model:
    """Values and generations per bucket; copied to play a transaction."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, bytes]] = {name: {} for name in BUCKETS}
        self.generations: dict[tuple[str, str], int] = {}
        self.written: set[str] = set()

    def copy(self) -> Model:
        other = Model()
        other.values = {name: dict(pairs) for name, pairs in self.values.items()}
        other.generations = dict(self.generations)
        other.written = set(self.written)
        return other

    def generation(self, bucket: str, key: str) -> int:
        return self.generations.get((bucket, key), 0)

    def put(self, bucket: str, key: str, value: bytes) -> None:
        self.values[bucket][key] = value
        self.generations[(bucket, key)] = self.generation(bucket, key) + 1
        self.written.add(bucket)

    def delete(self, bucket: str, key: str) -> None:
        if self.values[bucket].pop(key, None) is not None:
            self.generations[(bucket, key)] = self.generation(bucket, key) + 1

    def is_current(self, seen: Seen) -> bool:
        key = seen.pair.key
        return key in self.values[seen.bucket] and self.generation(seen.bucket, key) == seen.generation

    def listing(self, bucket: str, prefix: str = "") -> list[tuple[str, bytes]]:
        return sorted((k, v) for k, v in self.values[bucket].items() if k.startswith(prefix))


class StoreMachine(RuleBasedStateMachine):
    """Operations on a store and on the model side by side; subclasses open the store."""

    seen = Bundle("seen")

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.store = self.open_store()

    def open_store(self):
        raise NotImplementedError

    def teardown(self) -> None:
        self.store.close()

    def in_bucket(self, bucket: str):
        return self.store if bucket == "test" else self.store.bucket(bucket)

    def _with_bucket(self, bucket: str, operation):
        store = self.in_bucket(bucket)
        try:
            return operation(store)
        finally:
            if store is not self.store:
                store.close()

    # -- plain writes --------------------------------------------------------------------

    @rule(bucket=buckets, key=keys, value=values)
    def put(self, bucket, key, value):
        self._with_bucket(bucket, lambda store: store.put(key, value))
        self.model.put(bucket, key, value)

    @rule(bucket=buckets, key=keys)
    def delete(self, bucket, key):
        self._with_bucket(bucket, lambda store: store.delete(key))
        self.model.delete(bucket, key)

    @rule(bucket=buckets, prefix=prefixes)
    def delete_tree(self, bucket, prefix):
        self._with_bucket(bucket, lambda store: store.delete_tree(prefix))
        for key, _ in self.model.listing(bucket, prefix):
            self.model.delete(bucket, key)

    # -- reads that remember pairs for compare-and-swap ----------------------------------

    @rule(target=seen, bucket=buckets, key=keys)
    def read(self, bucket, key):
        expected = self.model.values[bucket].get(key)
        if expected is None:
            assert not self._with_bucket(bucket, lambda store: store.exists(key))
            return multiple()
        pair = self._with_bucket(bucket, lambda store: store.get(key))
        assert (pair.key, pair.value) == (key, expected)
        return Seen(bucket, pair, self.model.generation(bucket, key))

    @rule(bucket=buckets, prefix=prefixes)
    def list(self, bucket, prefix):
        listed = self._with_bucket(bucket, lambda store: store.list(prefix))
        assert [(pair.key, pair.value) for pair in listed] == self.model.listing(bucket, prefix)

    # -- compare-and-swap ----------------------------------------------------------------

    @rule(target=seen, bucket=buckets, key=keys, value=values)
    def create_only(self, bucket, key, value):
        try:
            pair = self._with_bucket(bucket, lambda store: store.atomic_put(key, value, None))
        except KeyExistsError:
            assert key in self.model.values[bucket]
            return multiple()
        assert key not in self.model.values[bucket]
        self.model.put(bucket, key, value)
        return Seen(bucket, pair, self.model.generation(bucket, key))

    @rule(target=seen, seen=seen, value=values)
    def swap(self, seen, value):
        """Compare-and-swap with a remembered pair: current or stale, the model decides."""
        bucket, key = seen.bucket, seen.pair.key
        try:
            pair = self._with_bucket(bucket, lambda store: store.atomic_put(key, value, seen.pair))
        except KeyNotFoundError:
            assert key not in self.model.values[bucket]
            return multiple()
        except KeyModifiedError:
            assert key in self.model.values[bucket] and not self.model.is_current(seen)
            return multiple()
        assert self.model.is_current(seen), "a stale pair was accepted"
        assert pair.last_index > seen.pair.last_index
        self.model.put(bucket, key, value)
        return Seen(bucket, pair, self.model.generation(bucket, key))

    @rule(seen=seen)
    def atomic_delete(self, seen):
        bucket, key = seen.bucket, seen.pair.key
        try:
            self._with_bucket(bucket, lambda store: store.atomic_delete(key, seen.pair))
        except KeyNotFoundError:
            assert key not in self.model.values[bucket]
            return
        except KeyModifiedError:
            assert key in self.model.values[bucket] and not self.model.is_current(seen)
            return
        assert self.model.is_current(seen), "a stale pair deleted the key"
        self.model.delete(bucket, key)

    # -- transactions --------------------------------------------------------------------

    @rule(
        operations=st.lists(
            st.tuples(st.sampled_from(["put", "delete", "delete_tree"]), buckets, keys, values),
            min_size=1,
            max_size=6,
        ),
        fail=st.booleans(),
    )
    def transaction(self, operations, fail):
        """Several writes in two buckets, then commit or raise midway through."""
        scratch = self.model.copy()
        try:
            with self.store.transaction() as tx:
                for kind, bucket, key, value in operations:
                    view = tx.bucket(bucket)
                    if kind == "put":
                        view.put(key, value)
                        scratch.put(bucket, key, value)
                    elif kind == "delete":
                        view.delete(key)
                        scratch.delete(bucket, key)
                    else:
                        prefix = key[:1]
                        view.delete_tree(prefix)
                        for doomed, _ in scratch.listing(bucket, prefix):
                            scratch.delete(bucket, doomed)
                    assert [(p.key, p.value) for p in view.list()] == scratch.listing(bucket)
                if fail:
                    raise Abort()
        except Abort:
            return
        self.model = scratch

    # -- what must always hold -----------------------------------------------------------

    @invariant()
    def contents_match_the_model(self):
        for bucket in BUCKETS:
            listed = self._with_bucket(bucket, lambda store: store.list())
            assert [(pair.key, pair.value) for pair in listed] == self.model.listing(bucket)

    @invariant()
    def buckets_are_those_written(self):
        listed = set(self.store.buckets())
        holding_keys = {bucket for bucket in BUCKETS if self.model.values[bucket]}
        # A bucket emptied by deletes may or may not still be listed; one never written
        # must not be.
        assert holding_keys <= listed <= self.model.written


class MemoryStoreMachine(StoreMachine):
    def open_store(self):
        return MemoryStore("test")


class LMDBStoreMachine(StoreMachine):
    def open_store(self):
        self.directory = tempfile.mkdtemp(prefix="kv-model-")
        self.path = self.directory + "/kv.db"
        return LMDBStore(self.path, "test")

    def teardown(self) -> None:
        super().teardown()
        shutil.rmtree(self.directory, ignore_errors=True)

    @precondition(lambda self: self.model.written)
    @rule()
    def reopen(self):
        """Close and reopen the file: contents stay, and indexes keep growing."""
        before = {bucket: self._with_bucket(bucket, lambda store: store.list()) for bucket in BUCKETS}
        self.store.close()
        self.store = LMDBStore(self.path, "test")
        after = {bucket: self._with_bucket(bucket, lambda store: store.list()) for bucket in BUCKETS}
        assert after == before


MODEL_SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestMemoryStoreModel = MemoryStoreMachine.TestCase
TestMemoryStoreModel.settings = MODEL_SETTINGS
TestLMDBStoreModel = LMDBStoreMachine.TestCase
TestLMDBStoreModel.settings = MODEL_SETTINGS
