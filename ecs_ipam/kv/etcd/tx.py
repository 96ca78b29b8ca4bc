"""Optimistic transactions over etcd: reads recorded, writes buffered, one etcd txn at
commit.

A read-only transaction reads one snapshot revision (the first read's).  A write
transaction reads the latest revision, and records what it saw; writes are buffered (and
visible to later reads of the same transaction).  The commit
is one etcd transaction that compares every key read against the revision it had,
checks that no scanned range gained or changed a key, and applies the writes.  A failed
compare raises :class:`Conflict`; the store re-runs the body instead, until the timeout.
When more keys were read than etcd accepts compares (128), a bucket's reads are checked
through its marker instead: coarser (any write to the bucket conflicts) but complete,
as every writer of this package rewrites it.

etcd numbers a write when it commits, after the transaction handed out the pair: a pair
returned by a write inside a transaction carries a provisional last_index, above every
real revision and growing within the transaction, that no stored pair will ever have (a
compare-and-swap with it after the commit fails safely; read the key again).

Every commit is safe to send twice: its compares include "the commit key does not exist
yet", and the answer to a failed compare includes that key, so an earlier copy that was
applied reads as success, never as a duplicate.  When no answer comes back at all, the
commit key tells whether it was applied (see TxState._settle).
"""

from __future__ import annotations

import time

from ...errors import StoreError, StoreTimeoutError, StoreUnavailableError
from ..base import KVPair, Tx, check_bucket_name, check_key, check_prefix
from .client import TXN, Client, Conflict, Json, MaybeApplied, NotApplied
from .layout import b64, prefix_end, unb64, utf8

# etcd's default --max-txn-ops: the most compares, and the most operations, in one txn.
MAX_TXN_OPS = 128
# The operations every commit adds to its writes: its commit key, and the sweep of old ones.
COMMIT_OPERATIONS = 2
# Room for the markers of the buckets one transaction writes (each written bucket
# rewrites its own): far more buckets than one command of the plugin writes.
MARKER_ROOM = 26
# The most keys one transaction may write or delete: Store.max_writes, by which GC sizes
# its batches.
MAX_WRITES = MAX_TXN_OPS - COMMIT_OPERATIONS - MARKER_ROOM
# After this many point reads of one bucket that missed the cache, a transaction (the
# allocator walking a crowded pool) fetches the whole bucket in one range instead.
READ_AHEAD_AFTER = 16
# Provisional last_index of a pair written inside a transaction, before the commit.
PROVISIONAL_INDEX = 1 << 62


# The value of a commit key: written by its commit, or by the fence that settles a commit
# whose answer was lost (see TxState._settle).
COMMITTED = b""
FENCED = b"fenced"
# The share of the timeout kept back to settle a lost answer, at most this many seconds:
# enough for another endpoint to answer while a leader election runs.
SETTLE_RESERVE = 1.5


def _absent(key: bytes) -> Json:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def _range_of(key: bytes) -> Json:
    return {"request_range": {"key": b64(key)}}


def _commit_record(answer: Json) -> Json | None:
    """The commit key as the failure branch of a commit (or fence) read it, if it exists."""
    kvs = answer["responses"][0]["response_range"].get("kvs")
    return kvs[0] if kvs else None


def _undecided(lost: MaybeApplied) -> StoreError:
    return type(lost)(
        f"{lost}; the commit may or may not have been applied, and no endpoint could tell within the "
        f"timeout (an ADD sent again for the same id and container id answers the address it recorded)"
    )


def compare_mod(key: bytes, revision: int, result: str = "EQUAL", end: bytes | None = None) -> Json:
    """An etcd compare of *key*'s (or the range's) mod_revision."""
    # An absent key compares as mod_revision 0, so EQUAL 0 means "still absent".
    compare = {"key": b64(key), "target": "MOD", "result": result, "mod_revision": str(revision)}
    if end is not None:
        compare["range_end"] = b64(end)
    return compare


def decoded(bucket: bytes, kvs: list[Json]) -> list[tuple[bytes, KVPair]]:
    """``(full key, pair)`` of each key/value of an etcd answer, for keys of *bucket*."""
    pairs = []
    for kv in kvs:
        full = unb64(kv["key"])
        key = full[len(bucket) :].decode("utf-8")
        pairs.append((full, KVPair(key, unb64(kv.get("value")), int(kv["mod_revision"]))))
    return pairs


class TxState:
    """What one transaction read (to be checked at commit) and wrote (to be applied)."""

    def __init__(self, client: Client, writable: bool, deadline: float, reruns: int = 0) -> None:
        self.client = client
        self.reruns = reruns
        self.layout = client.layout
        self.writable = writable
        self.deadline = deadline
        # The revision of the first read: the snapshot of a read-only transaction.
        self.revision: int | None = None
        # The snapshot as far as it was read: full key -> pair, or None for absent.
        self.known: dict[bytes, KVPair | None] = {}
        # Keys to compare at commit: full key -> (bucket data prefix, mod_revision or 0).
        self.checked: dict[bytes, tuple[bytes, int]] = {}
        # Scanned ranges, whose every key is in `known`: (bucket, start, end).
        self.ranges: list[tuple[bytes, bytes, bytes, int]] = []
        self.misses: dict[bytes, int] = {}
        self.writes: dict[bytes, KVPair | None] = {}
        self.tree_deletes: list[tuple[bytes, bytes]] = []
        self.written_buckets: set[bytes] = set()
        # Buckets dropped (data prefixes): their markers are deleted, unless written again.
        self.dropped: set[bytes] = set()
        self.sequence = 0
        self.committed_revision: int | None = None
        # The bucket names at the snapshot, once read: their markers' range is checked at
        # commit for a bucket created meanwhile.
        self.bucket_list: list[str] | None = None
        self.names_revision = 0
        self.latest_read: int | None = None

    # -- reads -------------------------------------------------------------------------------

    def _pair(self, bucket: bytes, kv: Json) -> tuple[bytes, KVPair]:
        return decoded(bucket, [kv])[0]

    def _covered(self, start: bytes, end: bytes) -> bool:
        return any(s <= start and end <= e for _, s, e, _ in self.ranges)

    def _fetch(self, start: bytes, end: bytes | None) -> tuple[int, list[Json]]:
        """``(revision read at, kvs)`` of a key or range.

        A read-only transaction reads its snapshot.  A write transaction reads the latest
        revision: every read is compared at commit anyway (a key against the revision it
        had, a range against the revision it was read at), so the commit goes through
        only if all it read is still current, and reading late leaves a shorter window
        for another writer to take the address a walk just found free.
        """
        revision, kvs = self.client.range(start, end, self._read_at(), self.deadline)
        self._note(revision)
        return revision, kvs

    def _read_at(self) -> int | None:
        return None if self.writable else self.revision

    def _note(self, revision: int) -> None:
        if self.revision is None:
            self.revision = revision
        self.latest_read = revision

    def _fetch_range(self, bucket: bytes, start: bytes, end: bytes) -> None:
        revision, kvs = self._fetch(start, end)
        for kv in kvs:
            full, pair = self._pair(bucket, kv)
            self.known[full] = pair
            self.checked[full] = (bucket, pair.last_index)
        self.ranges.append((bucket, start, end, revision))

    def read(self, bucket: bytes, full: bytes, check: bool = True) -> KVPair | None:
        """The pair under *full* in the snapshot (or as this transaction wrote it).

        :param check: compare it at commit (a hint is not: see Tx.find_hint).
        """
        if full in self.writes:
            return self.writes[full]
        if full not in self.known:
            if self._covered(full, full + b"\x00"):
                return None  # the range's own compare sees it appear
            self.misses[bucket] = self.misses.get(bucket, 0) + check
            if self.misses[bucket] > READ_AHEAD_AFTER:
                self._fetch_range(bucket, bucket, prefix_end(bucket))
                return self.known.get(full)
            _, kvs = self._fetch(full, None)
            self.known[full] = self._pair(bucket, kvs[0])[1] if kvs else None
        pair = self.known[full]
        if check and full not in self.checked:
            self.checked[full] = (bucket, pair.last_index if pair else 0)
        return pair

    def scan(self, bucket: bytes, prefix: bytes) -> list[KVPair]:
        start, end = bucket + prefix, prefix_end(bucket + prefix)
        if not self._covered(start, end):
            self._fetch_range(bucket, start, end)
        found = {full: pair for full, pair in self.known.items() if pair is not None and start <= full < end}
        for full, pair in self.writes.items():
            if start <= full < end:
                if pair is None:
                    found.pop(full, None)
                else:
                    found[full] = pair
        return [found[full] for full in sorted(found)]

    def bucket_names(self) -> list[str]:
        if self.bucket_list is None:
            self.names_revision, markers = self.client.markers(self._read_at(), self.deadline)
            self._note(self.names_revision)
            self.bucket_list = list(markers)
        written = {
            self.layout.bucket_of_marker(self.layout.marker_of(bucket))
            for bucket in self.written_buckets
            if any(pair is not None and full.startswith(bucket) for full, pair in self.writes.items())
        }
        dropped = {self.layout.bucket_of_marker(self.layout.marker_of(bucket)) for bucket in self.dropped}
        return sorted((set(self.bucket_list) - dropped) | written)

    # -- writes ------------------------------------------------------------------------------

    def check_writable(self) -> None:
        if not self.writable:
            raise StoreError("write in a read-only transaction")

    def write(self, bucket: bytes, full: bytes, key: str, value: bytes) -> KVPair:
        self.check_writable()
        self.sequence += 1
        pair = KVPair(key, value, PROVISIONAL_INDEX + self.sequence)
        self.writes[full] = pair
        self.written_buckets.add(bucket)
        return pair

    def remove(self, bucket: bytes, full: bytes) -> bool:
        self.check_writable()
        if self.read(bucket, full) is None:
            return False
        self.writes[full] = None
        self.written_buckets.add(bucket)
        return True

    def drop(self, bucket: bytes) -> bool:
        """Delete every pair of *bucket* and its marker.  The pairs are read as a scan is
        (a key put there meanwhile fails the commit), and so is the marker, which every
        commit writing the bucket rewrites."""
        self.check_writable()
        marker = self.layout.marker_of(bucket)
        existed = self.read(bucket, marker) is not None
        pairs = self.scan(bucket, b"")
        for pair in pairs:
            self.writes[bucket + pair.key.encode("utf-8")] = None
        self.tree_deletes.append((bucket, prefix_end(bucket)))
        self.written_buckets.discard(bucket)
        self.dropped.add(bucket)
        return existed or bool(pairs)

    # -- commit ------------------------------------------------------------------------------

    def commit(self) -> None:
        """Apply the buffered writes if everything read is still current.

        :raises Conflict: something read has changed since (the body must be re-run).
        """
        if not self.writes and not self.dropped:
            if self.writable and self.latest_read != self.revision:
                self._validate()
            return
        now = time.time()
        commit_key = self.layout.commit_key(now)
        compares = self._compares()
        if self.bucket_list is not None:
            # Creation, not modification: every write rewrites its bucket's marker, and
            # only a new bucket changes the names this transaction read.
            start = self.layout.markers
            compares.append(
                {
                    "key": b64(start),
                    "range_end": b64(prefix_end(start)),
                    "target": "CREATE",
                    "result": "LESS",
                    "create_revision": str(self.names_revision + 1),
                }
            )
        compares.append(_absent(commit_key))
        swept_from, swept_to = self.layout.expired_commits(now)
        operations = self._operations()
        operations.append({"request_put": {"key": b64(commit_key), "value": b64(COMMITTED)}})
        operations.append({"request_delete_range": {"key": b64(swept_from), "range_end": b64(swept_to)}})
        request = {"compare": compares, "success": operations, "failure": [_range_of(commit_key)]}
        answer = self._send(request, commit_key)
        revision = int(answer["header"]["revision"])
        if not answer.get("succeeded"):
            ours = _commit_record(answer)
            if ours is None:
                raise Conflict("key was modified by a concurrent transaction")
            # A copy of this request, sent before the connection broke, was applied.
            revision = int(ours["mod_revision"])
        self.committed_revision = revision

    def _validate(self) -> None:
        """Check that a write transaction that wrote nothing read one consistent state:
        its reads, made at several revisions, are all still current.

        :raises Conflict: one changed (the body must be re-run).
        """
        answer = self.client.call(TXN, {"compare": self._compares(), "success": [], "failure": []}, self.deadline)
        if not answer.get("succeeded"):
            raise Conflict("key was modified by a concurrent transaction")

    def _send(self, request: Json, commit_key: bytes) -> Json:
        """Send the commit; when its answer is lost, find out whether it was applied.

        :raises NotApplied: the answer was lost, and the commit was not applied.
        :raises StoreTimeoutError, StoreUnavailableError: it was not sent, or (the
            message says so) nobody could tell within the timeout whether it was applied.
        """
        client = self.client
        # Time kept back to settle a commit whose answer was lost.
        reserve = min(SETTLE_RESERVE, client.timeout / 3)
        try:
            return client.call(TXN, request, self.deadline - reserve)
        except MaybeApplied as lost:
            return self._settle(commit_key, lost)
        except (StoreTimeoutError, StoreUnavailableError):
            if time.monotonic() >= self.deadline:
                raise
        # No copy reached etcd, so no time is needed to settle one: use the rest.
        try:
            return client.call(TXN, request, self.deadline)
        except MaybeApplied as lost:
            raise _undecided(lost) from None

    def _settle(self, commit_key: bytes, lost: MaybeApplied) -> Json:
        """Decide whether a commit whose answer was lost was applied, by its commit key,
        which that commit alone writes.

        A read (on the next endpoint: the client moved on from the silent one) finds the
        key when the commit was applied.  When it is absent, a copy may still be on its
        way through raft: a fence then writes the key itself, if still absent, so that
        every copy in flight fails its compare "the commit key does not exist".  Either
        way the outcome is final when this returns or raises.

        :return: the answer of the commit, when it was applied.
        """
        fence = {
            "compare": [_absent(commit_key)],
            "success": [{"request_put": {"key": b64(commit_key), "value": b64(FENCED)}}],
            "failure": [_range_of(commit_key)],
        }
        try:
            _, kvs = self.client.range(commit_key, None, None, self.deadline)
            answer = {"responses": [{"response_range": {"kvs": kvs}}]}
            if not kvs:
                answer = self.client.call(TXN, fence, self.deadline)
        except (StoreTimeoutError, StoreUnavailableError):
            raise _undecided(lost) from None
        record = None if answer.get("succeeded") else _commit_record(answer)
        if record is None or unb64(record.get("value")) == FENCED:
            raise NotApplied(type(lost)(f"{lost}; the commit was not applied (etcd says so), nothing was written"))
        return {"header": {"revision": record["mod_revision"]}, "succeeded": True}

    def _compares(self) -> list[Json]:
        per_bucket: dict[bytes, list[Json]] = {}
        for full, (bucket, mod) in self.checked.items():
            if mod == 0 and self._covered(full, full + b"\x00"):
                continue  # the range's own compare sees it appear
            per_bucket.setdefault(bucket, []).append(compare_mod(full, mod))
        for bucket, start, end, revision in self.ranges:
            # A key deleted from the range is caught by its own compare above; one that
            # appeared or changed has a mod_revision above the revision it was read at.
            per_bucket.setdefault(bucket, []).append(compare_mod(start, revision + 1, "LESS", end))
        # The commit key takes one, the bucket names another.
        budget = MAX_TXN_OPS - 1 - (self.bucket_list is not None)
        total = sum(len(compares) for compares in per_bucket.values())
        coarse = []
        for bucket in sorted(per_bucket, key=lambda b: len(per_bucket[b]), reverse=True):
            if total <= budget:
                break
            total -= len(per_bucket[bucket]) - 1
            coarse.append(bucket)
        if coarse:
            # A marker unchanged since the first read means no commit wrote its bucket
            # since then: every later read of the bucket is still current.
            _, markers = self.client.markers(self.revision, self.deadline)
            for bucket in coarse:
                marker = self.layout.marker_of(bucket)
                name = self.layout.bucket_of_marker(marker)
                per_bucket[bucket] = [compare_mod(marker, markers.get(name, 0))]
        return [compare for compares in per_bucket.values() for compare in compares]

    def _operations(self) -> list[Json]:
        puts = [(full, pair) for full, pair in self.writes.items() if pair is not None]
        # etcd refuses a put inside a range deleted by the same transaction; such a range
        # is applied as the single deletes delete_tree buffered anyway.
        ranges = [(s, e) for s, e in self.tree_deletes if not any(s <= full < e for full, _ in puts)]
        operations = [{"request_put": {"key": b64(full), "value": b64(pair.value)}} for full, pair in puts]
        operations += [{"request_delete_range": {"key": b64(s), "range_end": b64(e)}} for s, e in ranges]
        operations += [
            {"request_delete_range": {"key": b64(full)}}
            for full, pair in self.writes.items()
            if pair is None and not any(s <= full < e for s, e in ranges)
        ]
        operations += [
            {"request_put": {"key": b64(self.layout.marker_of(bucket)), "value": ""}}
            for bucket in sorted(self.written_buckets)
        ]
        operations += [
            {"request_delete_range": {"key": b64(self.layout.marker_of(bucket))}}
            for bucket in sorted(self.dropped - self.written_buckets)
        ]
        return operations


class EtcdTx(Tx):
    def __init__(self, state: TxState, bucket_name: str) -> None:
        self._state = state
        self.bucket_name = bucket_name
        self.reruns = state.reruns
        self._prefix = state.layout.data_prefix(bucket_name)

    def _full(self, key: str) -> bytes:
        return self._prefix + utf8(key, "key")

    def _read(self, key: str) -> KVPair | None:
        return self._state.read(self._prefix, self._full(key))

    def find_hint(self, key: str) -> KVPair | None:
        return self._state.read(self._prefix, self._full(check_key(key)), check=False)

    def _write(self, key: str, value: bytes) -> KVPair:
        return self._state.write(self._prefix, self._full(key), key, value)

    def _remove(self, key: str) -> bool:
        return self._state.remove(self._prefix, self._full(key))

    def _scan(self, prefix: str) -> list[KVPair]:
        return self._state.scan(self._prefix, utf8(prefix, "prefix"))

    def delete_tree(self, prefix: str = "") -> None:
        # The same result as the base class's, sent to etcd as one range delete instead
        # of one delete per key (a transaction may hold only 128 operations).
        check_prefix(prefix)
        self._state.check_writable()
        pairs = self._scan(prefix)
        for pair in pairs:
            self._remove(pair.key)
        if pairs:
            start = self._prefix + utf8(prefix, "prefix")
            self._state.tree_deletes.append((start, prefix_end(start)))

    def drop_bucket(self, name: str) -> bool:
        return self._state.drop(EtcdTx(self._state, check_bucket_name(name))._prefix)

    def bucket(self, name: str) -> Tx:
        return EtcdTx(self._state, check_bucket_name(name))

    def buckets(self) -> list[str]:
        return self._state.bucket_names()
