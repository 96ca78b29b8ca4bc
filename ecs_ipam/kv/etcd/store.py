"""The etcd store: a :class:`~ecs_ipam.kv.base.Store` whose database lives under a key
prefix of an etcd v3 cluster (``etcd://`` or ``etcds://HOST:PORT[,HOST:PORT...][/PREFIX]``).

The wire side (connection, TLS, user, retries) is :mod:`.client`, the key layout
:mod:`.layout`, transactions :mod:`.tx`.  This module opens the database, runs
transaction bodies until one commits, and follows keys with watches.

The store's own ``atomic_put`` returns the pair with its real last_index (a pair written
inside a transaction carries a provisional one, see :mod:`.tx`).

Limits: etcd 3.4 or later; at most 128 operations per transaction (etcd's
--max-txn-ops: a write, a delete, a delete_tree and each written bucket count one);
keys written by other etcd clients under the prefix are seen, but do not rewrite bucket
markers, so transactions that had to fall back to markers do not see such writes.  When
the timeout expires while a commit's answer is missing, the commit may or may not have
been applied (StoreTimeoutError says so).
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from itertools import groupby
from typing import TYPE_CHECKING, TypeVar

from ...errors import KeyNotFoundError, StoreError, StoreTimeoutError
from ..base import KVPair, Store, Tx, check_bucket_name, check_key, check_prefix
from .client import Client, Conflict, Json, NotApplied
from .layout import prefix_end, utf8
from .settings import security_of
from .tx import MAX_WRITES, EtcdTx, TxState, decoded

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

T = TypeVar("T")


def _follow(
    client: Client, bucket: bytes, start: bytes, end: bytes | None, revision: int, kvs: list[Json], timeout: float
) -> Iterator[dict[bytes, KVPair]]:
    """Yield the content of a key or range (full key -> pair) as read at *revision*, then
    after every revision that changed it (one transaction: one yield, however etcd
    batched its events); read it whole again when etcd compacted the history the watch
    needed."""
    content = dict(decoded(bucket, kvs))
    yield content
    while True:
        try:
            for events in client.watch(start, end, revision, timeout):
                for _, group in groupby(events, key=lambda event: event["kv"]["mod_revision"]):
                    for event in group:
                        full, pair = decoded(bucket, [event["kv"]])[0]
                        if event.get("type") == "DELETE":
                            content.pop(full, None)
                        else:
                            content[full] = pair
                    yield content
        except Conflict:
            revision, kvs = client.range(start, end, None, time.monotonic() + timeout)
            content = dict(decoded(bucket, kvs))
            yield content


class EtcdStore(Store):
    """A bucket of a database kept in etcd.

    ``max_writes`` is :data:`.tx.MAX_WRITES` (etcd's --max-txn-ops, less a commit's own
    operations and room for the bucket markers).

    :param url: ``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]``, ``etcds://`` for TLS.
    :param bucket: the bucket this store reads and writes.
    :param timeout: seconds an operation may take, retries included, before
        StoreTimeoutError or StoreUnavailableError.
    :param read_only: refuse write transactions.
    :param create: when false (or read-only), etcd is asked at once whether the prefix
        can be read (a prefix nothing was written under is an empty database: no bucket).
    :param cacert, cert, key, user, password: TLS files and etcd user; each one not
        given is read from *environ* (``IPAM_ETCD_CACERT``... see :mod:`.settings`).
    :param environ: where unset options are read (default: the process environment).
    :raises InvalidArgumentError: the URL or bucket name is not usable.
    :raises InvalidEnvironmentError: the TLS files or the user settings are not usable
        (the message names the variable).
    :raises StoreError: etcd refused the user or the TLS handshake (checked at once when
        the database must already exist, else by the first operation).
    :raises StoreUnavailableError: etcd could not be reached to check the prefix.
    """

    uncertain_commits = True

    def __init__(
        self,
        url: str,
        bucket: str = "IPAM",
        timeout: float = 5.0,
        *,
        read_only: bool = False,
        create: bool = True,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        user: str | None = None,
        password: str | None = None,
        environ: Mapping[str, str] | None = None,
        _client: Client | None = None,
    ) -> None:
        self.max_writes = MAX_WRITES
        self.bucket_name = check_bucket_name(bucket)
        self.url = url
        self.timeout = timeout
        self.read_only = read_only
        if _client is None:
            options = {"cacert": cacert, "cert": cert, "key": key, "user": user, "password": password}
            _client = Client(url, timeout, security_of(url, options, environ))
            if read_only or not create:
                try:
                    self._require_database(_client)
                except BaseException:
                    _client.disconnect()
                    raise
        else:
            with _client.refs_lock:
                _client.refs += 1
        self._client: Client | None = _client

    def _require_database(self, client: Client) -> None:
        # Reachable and readable is enough: a prefix nothing was written under yet is an
        # empty database (no bucket), not a missing one.
        client.markers(None, time.monotonic() + self.timeout, limit=1)

    def _live_client(self) -> Client:
        if self._client is None:
            raise StoreError(f"store for {self.url} is closed")
        return self._client

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Tx]:
        """See :meth:`Store.transaction`.

        :raises KeyModifiedError: at the end of the block, when a key the block read was
            changed by someone else meanwhile; nothing was written.
        """
        try:
            with self._transaction(write, time.monotonic() + self.timeout) as tx:
                yield tx
        except NotApplied as settled:
            raise settled.final from None

    @contextmanager
    def _transaction(self, write: bool, deadline: float, reruns: int = 0) -> Iterator[EtcdTx]:
        client = self._live_client()
        if write and self.read_only:
            raise StoreError(f"database {self.url} is open read-only")
        state = TxState(client, write, deadline, reruns)
        yield EtcdTx(state, self.bucket_name)
        state.commit()

    def transact(self, body: Callable[[Tx], T], write: bool = True) -> T:
        """Run ``body(tx)`` in one transaction, re-running it when another writer got in
        first, until the timeout.

        :raises StoreTimeoutError: the body kept losing races for the whole timeout.
        """
        return self._run(body, write)[0]

    def _run(self, body: Callable[[Tx], T], write: bool) -> tuple[T, int | None]:
        """transact(), also returning the revision of the commit (None: nothing written)."""
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        reruns = 0
        while True:
            try:
                with self._transaction(write, deadline, reruns) as tx:
                    result = body(tx)
                return result, tx._state.committed_revision
            except Conflict as conflict:
                # Also a commit settled as never applied: a clean re-run, time allowing.
                reruns += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0 and isinstance(conflict, NotApplied):
                    raise conflict.final from None
                if remaining <= 0:
                    raise StoreTimeoutError(
                        f"etcd at {self.url}: other writers kept changing what this transaction read "
                        f"for {self.timeout:g}s"
                    ) from None
                time.sleep(min(remaining, random.uniform(0, delay)))
                delay = min(delay * 2, 0.1)

    def atomic_put(self, key: str, value: bytes, previous: KVPair | None) -> KVPair:
        """See :meth:`Store.atomic_put`; the pair returned carries its real last_index."""
        pair, revision = self._run(lambda tx: tx.atomic_put(key, value, previous), True)
        assert revision is not None  # the body wrote, so the commit has a revision
        return KVPair(pair.key, pair.value, revision)

    def watch(self, key: str) -> Iterator[KVPair]:
        """Yield the pair under *key* now, then again after every change to it; stop when
        the key is deleted.

        The iterator waits as long as it takes for the next change, on a connection of
        its own; close it (or leave the loop over it) to stop watching.  When the
        connection breaks it reconnects and resumes where it stopped.

        :raises KeyNotFoundError: the key does not exist (raised by the call itself).
        :raises StoreUnavailableError: etcd could not be reached again within the timeout.
        """
        client = self._live_client()
        bucket = client.layout.data_prefix(self.bucket_name)
        full = bucket + utf8(check_key(key), "key")
        revision, kvs = client.range(full, None, None, time.monotonic() + self.timeout)
        if not kvs:
            raise KeyNotFoundError(f"key not found: {key}")
        return self._watch_key(client, bucket, full, revision, kvs)

    def _watch_key(
        self, client: Client, bucket: bytes, full: bytes, revision: int, kvs: list[Json]
    ) -> Iterator[KVPair]:
        for content in _follow(client, bucket, full, None, revision, kvs, self.timeout):
            if full not in content:
                return
            yield content[full]

    def watch_tree(self, prefix: str) -> Iterator[list[KVPair]]:
        """Yield every pair whose key starts with *prefix* (sorted, as :meth:`list`) now,
        then again after every transaction that changed any of them.

        As :meth:`watch`, but the prefix need not match anything yet (the first list is
        then empty), and it never stops by itself.
        """
        client = self._live_client()
        bucket = client.layout.data_prefix(self.bucket_name)
        start = bucket + utf8(check_prefix(prefix), "prefix")
        end = prefix_end(start)
        revision, kvs = client.range(start, end, None, time.monotonic() + self.timeout)
        return self._watch_range(client, bucket, start, end, revision, kvs)

    def _watch_range(
        self, client: Client, bucket: bytes, start: bytes, end: bytes, revision: int, kvs: list[Json]
    ) -> Iterator[list[KVPair]]:
        for content in _follow(client, bucket, start, end, revision, kvs, self.timeout):
            yield [content[full] for full in sorted(content)]

    def bucket(self, name: str) -> EtcdStore:
        client = self._live_client()
        return EtcdStore(self.url, name, self.timeout, read_only=self.read_only, _client=client)

    def buckets(self) -> list[str]:
        _, markers = self._live_client().markers(None, time.monotonic() + self.timeout)
        return sorted(markers)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with client.refs_lock:
            client.refs -= 1
            last = client.refs == 0
        if last:
            with client.lock:
                client.disconnect()
