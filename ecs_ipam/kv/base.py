"""The store interface every backend implements, and the libkv semantics built on it.

A backend supplies two small things:

* a :class:`Tx` subclass: one bucket's view of one transaction, with four primitives
  (``_read``, ``_write``, ``_remove``, ``_scan``), ``bucket()`` for another bucket of
  the same transaction and ``buckets()`` for the names of all of them;
* a :class:`Store` subclass: ``transaction()``, ``bucket()``, ``buckets()``, ``close()``.

Everything a caller sees (``put``/``get``/``atomic_put``...) is written once, here, on
top of those primitives, so every backend has exactly the same semantics and passes the
same contract suite.
"""

from __future__ import annotations

import abc
from operator import itemgetter

from ..errors import (
    CallNotSupportedError,
    InvalidArgumentError,
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
)

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from typing import NamedTuple, TypeVar

    from typing_extensions import Self  # typing.Self is 3.11+; never imported at run time

    T = TypeVar("T")

# LMDB refuses longer keys; every backend enforces the same limit so that code written
# against one backend keeps working on another.
MAX_KEY_BYTES = 511


if TYPE_CHECKING:

    class KVPair(NamedTuple):
        key: str
        value: bytes
        last_index: int

else:
    # The tuple collections.namedtuple would make, written out: importing collections
    # costs a plugin start more than its whole transaction (a sixth of a bare
    # interpreter's start-up).  tests/kv/test_kvpair.py holds it to the namedtuple.

    class KVPair(tuple):
        __slots__ = ()
        _fields = ("key", "value", "last_index")
        _field_defaults = {}  # noqa: RUF012 - namedtuple's, never written
        __match_args__ = _fields

        def __new__(cls, key, value, last_index):
            return tuple.__new__(cls, (key, value, last_index))

        key = property(itemgetter(0), doc="Alias for field number 0")
        value = property(itemgetter(1), doc="Alias for field number 1")
        last_index = property(itemgetter(2), doc="Alias for field number 2")

        @classmethod
        def _make(cls, iterable):
            result = tuple.__new__(cls, iterable)
            if len(result) != 3:
                raise TypeError(f"Expected 3 arguments, got {len(result)}")
            return result

        def _replace(self, **changes):
            result = self._make(map(changes.pop, self._fields, self))
            if changes:
                raise ValueError(f"Got unexpected field names: {list(changes)!r}")
            return result

        def _asdict(self):
            return {"key": self[0], "value": self[1], "last_index": self[2]}

        def __repr__(self):
            return f"{type(self).__name__}(key={self[0]!r}, value={self[1]!r}, last_index={self[2]!r})"

        def __getnewargs__(self):
            return tuple(self)


KVPair.__doc__ = """One key/value pair as stored, with the index used for compare-and-swap.

``last_index`` grows on every write of the key and never goes back, across processes
and reopenings.  A pair whose stored record is damaged (LMDB: not the ``[last_index,
value]`` its codec writes) is returned, rather than failing every read and listing that
meets it, with ``last_index`` :data:`DAMAGED_INDEX` and the stored bytes as its value; a
put, a delete, or a compare-and-swap given that pair replaces it.
"""

# The last_index of a pair whose stored record is damaged.
DAMAGED_INDEX = -1


def check_key(key: object, what: str = "key") -> str:
    """Return *key* if it is a usable key or bucket name, else raise InvalidArgumentError."""
    if not isinstance(key, str):
        raise InvalidArgumentError(f"{what} must be str, not {type(key).__name__}")
    if not key:
        raise InvalidArgumentError(f"{what} must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{what} is not valid unicode text") from None
    if size > MAX_KEY_BYTES:
        raise InvalidArgumentError(f"{what} is {size} bytes long; the limit is {MAX_KEY_BYTES}")
    return key


def check_bucket_name(name: object) -> str:
    """Return *name* if it is a usable bucket name, else raise InvalidArgumentError."""
    name = check_key(name, "bucket name")
    if "\0" in name:
        # LMDB takes database names as C strings: "a\0b" would silently open bucket "a".
        raise InvalidArgumentError("bucket name must not contain NUL")
    return name


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise InvalidArgumentError(f"prefix must be str, not {type(prefix).__name__}")
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError:
        # Backends that store keys as UTF-8 cannot even look such a prefix up.
        raise InvalidArgumentError("prefix is not valid unicode text") from None
    return prefix


def check_value(value: object) -> bytes:
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, bytes):
        raise InvalidArgumentError(f"value must be bytes, not {type(value).__name__}")
    return value


class Tx(abc.ABC):
    """One bucket's view of an open transaction.

    All operations of a transaction, in all of its buckets, commit together or not at
    all.  Operations raise the same errors as the :class:`Store` methods of the same name.
    """

    bucket_name: str
    #: How many times this transaction's body already lost a race and is being re-run
    #: (an optimistic backend: etcd); 0 on a backend that never re-runs a body.
    reruns = 0

    # -- primitives a backend implements ----------------------------------------------

    @abc.abstractmethod
    def _read(self, key: str) -> KVPair | None:
        """The pair stored under *key*, or None."""

    @abc.abstractmethod
    def _write(self, key: str, value: bytes) -> KVPair:
        """Store *value* under *key* with a new, larger last_index; return the new pair."""

    @abc.abstractmethod
    def _remove(self, key: str) -> bool:
        """Remove *key*; return whether it existed."""

    @abc.abstractmethod
    def _scan(self, prefix: str) -> list[KVPair]:
        """Every pair whose key starts with *prefix*, sorted by key."""

    @abc.abstractmethod
    def bucket(self, name: str) -> Tx:
        """The view of bucket *name* within this same transaction."""

    @abc.abstractmethod
    def buckets(self) -> list[str]:
        """The names of the database's buckets as this transaction sees them, sorted:
        those created by its own writes included.  A write transaction that read them
        does not commit over a bucket another writer created meanwhile."""

    @abc.abstractmethod
    def drop_bucket(self, name: str) -> bool:
        """Remove bucket *name* and every pair in it, with the rest of this transaction:
        it leaves :meth:`buckets`, its pairs are gone, and a later write (in this
        transaction or another) creates it again, empty.  Dropping a bucket that does not
        exist is no error and changes nothing.  A write transaction that dropped a
        bucket does not commit over a pair another writer put in it meanwhile.

        :return: whether the bucket existed.
        """

    def _contains(self, key: str) -> bool:
        """Whether *key* is stored.  A backend that can tell without decoding the value
        overrides this: the allocator's walk asks it once per used address."""
        return self._read(key) is not None

    # -- the libkv operations, identical for every backend -----------------------------

    def get(self, key: str) -> KVPair:
        pair = self._read(check_key(key))
        if pair is None:
            raise KeyNotFoundError(f"key not found: {key}")
        return pair

    def find(self, key: str) -> KVPair | None:
        """Like :meth:`get`, but None for a missing key instead of an exception."""
        return self._read(check_key(key))

    def find_hint(self, key: str) -> KVPair | None:
        """Like :meth:`find`, for a value that only guides the body (where a walk
        starts): a backend that checks reads at commit (etcd) does not check this one,
        so another writer changing it meanwhile is no conflict.  The body must stay
        correct whatever stale value it gets."""
        return self.find(key)

    def exists(self, key: str) -> bool:
        return self._contains(check_key(key))

    def put(self, key: str, value: bytes) -> KVPair:
        return self._write(check_key(key), check_value(value))

    def list(self, prefix: str = "") -> list[KVPair]:
        return self._scan(check_prefix(prefix))

    def delete(self, key: str) -> None:
        self._remove(check_key(key))

    def delete_tree(self, prefix: str = "") -> None:
        for pair in self._scan(check_prefix(prefix)):
            self._remove(pair.key)

    def atomic_put(self, key: str, value: bytes, previous: KVPair | None) -> KVPair:
        check_key(key)
        value = check_value(value)
        current = self._read(key)
        if previous is None:
            if current is not None:
                raise KeyExistsError(f"key already exists: {key}")
        elif current is None:
            raise KeyNotFoundError(f"key not found: {key}")
        elif current.last_index != previous.last_index:
            raise KeyModifiedError(f"key was modified: {key}")
        return self._write(key, value)

    def atomic_delete(self, key: str, previous: KVPair) -> None:
        check_key(key)
        if not isinstance(previous, KVPair):
            raise InvalidArgumentError("atomic_delete needs the previous KVPair")
        current = self._read(key)
        if current is None:
            raise KeyNotFoundError(f"key not found: {key}")
        if current.last_index != previous.last_index:
            raise KeyModifiedError(f"key was modified: {key}")
        self._remove(key)


class Store(abc.ABC):
    """A libkv-like key/value store bound to one bucket.

    Every method outside :meth:`transaction` is its own transaction.  Instances are
    context managers that :meth:`close` on exit.
    """

    bucket_name: str
    #: The most keys one transaction may write or delete (None: no limit).  Work that
    #: writes without bound (GC) runs as several transactions of at most this many.
    max_writes: int | None = None
    #: Whether a commit can end with its outcome unknown to the caller (etcd, when no
    #: endpoint answers in time): an ADD then answers a retry of the same attachment
    #: with the address the first one may have recorded, instead of "id already exists".
    uncertain_commits = False

    # -- what a backend implements -------------------------------------------------------

    @abc.abstractmethod
    def transaction(self, write: bool = True) -> AbstractContextManager[Tx]:
        """Open a transaction on this store's bucket (other buckets via ``tx.bucket``).

        Leaving the block normally commits; an exception aborts, and nothing the block
        wrote is kept.  A read transaction (``write=False``) sees one consistent snapshot.

        :raises StoreTimeoutError: a write transaction could not start within the timeout.
        """

    @abc.abstractmethod
    def bucket(self, name: str) -> Store:
        """A store for bucket *name* of the same database, sharing this connection."""

    @abc.abstractmethod
    def buckets(self) -> list[str]:
        """The names of the buckets in the database, sorted."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release this store's resources; further calls are errors."""

    # -- derived -----------------------------------------------------------------------

    def transact(self, body: Callable[[Tx], T], write: bool = True) -> T:
        """Run ``body(tx)`` in one transaction and return its result.

        *body* must be a pure function of what it reads through *tx*: backends that run
        transactions optimistically re-run it when a conflicting write wins the race.
        """
        with self.transaction(write=write) as tx:
            return body(tx)

    def get(self, key: str) -> KVPair:
        """Return the pair stored under *key*.

        :raises KeyNotFoundError: the key does not exist.
        """
        return self.transact(lambda tx: tx.get(key), write=False)

    def exists(self, key: str) -> bool:
        """Return whether *key* exists."""
        return self.transact(lambda tx: tx.exists(key), write=False)

    def put(self, key: str, value: bytes) -> None:
        """Store *value* under *key*, creating or replacing it."""
        self.transact(lambda tx: tx.put(key, value))

    def list(self, prefix: str = "") -> list[KVPair]:
        """Return every pair whose key starts with *prefix*, sorted by key ([] if none)."""
        return self.transact(lambda tx: tx.list(prefix), write=False)

    def delete(self, key: str) -> None:
        """Delete *key*; deleting a missing key is not an error."""
        self.transact(lambda tx: tx.delete(key))

    def delete_tree(self, prefix: str = "") -> None:
        """Delete every key that starts with *prefix*."""
        self.transact(lambda tx: tx.delete_tree(prefix))

    def atomic_put(self, key: str, value: bytes, previous: KVPair | None) -> KVPair:
        """Create or compare-and-swap *key*.

        :param previous: None to create only, else the pair last read.
        :return: the pair as now stored.
        :raises KeyExistsError: previous is None and the key exists.
        :raises KeyNotFoundError: previous is given and the key no longer exists.
        :raises KeyModifiedError: the key's last_index differs from previous.last_index.
        """
        return self.transact(lambda tx: tx.atomic_put(key, value, previous))

    def atomic_delete(self, key: str, previous: KVPair) -> None:
        """Delete *key* only if it is unchanged since *previous* was read.

        :raises KeyNotFoundError: the key does not exist.
        :raises KeyModifiedError: the key's last_index differs from previous.last_index.
        """
        self.transact(lambda tx: tx.atomic_delete(key, previous))

    def drop_bucket(self, name: str) -> bool:
        """Remove bucket *name* and all its pairs (see :meth:`Tx.drop_bucket`); a missing
        bucket is no error.  Stores already bound to it see it empty until written again.

        :return: whether the bucket existed.
        """
        return self.transact(lambda tx: tx.drop_bucket(name))

    def watch(self, key: str) -> Iterator[KVPair]:
        """Not supported by this backend (as libkv's bolt backend)."""
        raise CallNotSupportedError(f"watch is not supported by {type(self).__name__}")

    # builtins.list: in this class, "list" is the method above.
    def watch_tree(self, prefix: str) -> Iterator[builtins.list[KVPair]]:
        """Not supported by this backend (as libkv's bolt backend)."""
        raise CallNotSupportedError(f"watch_tree is not supported by {type(self).__name__}")

    def new_lock(self, key: str, **options: object) -> object:
        """Not supported by this backend (as libkv's bolt backend)."""
        raise CallNotSupportedError(f"new_lock is not supported by {type(self).__name__}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
