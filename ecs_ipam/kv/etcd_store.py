"""The etcd v3 backend, selected by a URL: ``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]``.

The client speaks etcd's JSON gateway (``/v3/kv/range``, ``/v3/kv/txn``) over one
keep-alive HTTP/1.1 connection written on :mod:`socket`: importing it costs a few
milliseconds, where ``http.client`` (which pulls in ``email`` and ``ssl``) costs about
fifteen and a gRPC stack far more, and start-up time is the plugin's latency.  Several
endpoints: the next one is tried when a connection fails.

Layout under ``PREFIX`` (default ``ecs-ipam``), bucket names percent-escaped so that
none contains ``/`` and no bucket's range can reach into another's::

    PREFIX/d/<bucket>/<key>     a pair; last_index is the key's mod_revision
    PREFIX/m/<bucket>           the bucket's marker, rewritten by every commit that
                                writes the bucket (buckets() lists these)
    PREFIX/c/<time>-<token>     one per commit, so that a commit whose answer was
                                lost can tell whether it was applied; swept after an hour

Transactions are optimistic.  Reads go to etcd at one snapshot revision (the first
read's) and record what they saw; writes are buffered (and visible to later reads of
the same transaction).  The commit is one etcd transaction that compares every key read
against the revision it had, checks that no scanned range gained or changed a key, and
applies the writes.  A failed compare raises :class:`KeyModifiedError`; ``transact``
re-runs its body instead, until the timeout.  When more keys were read than etcd accepts
compares (128), a bucket's reads are checked through its marker instead: coarser (any
write to the bucket conflicts) but complete, as every writer of this module rewrites it.

etcd numbers a write when it commits, after the transaction handed out the pair: a pair
returned by a write inside a transaction carries a provisional last_index, above every
real revision and growing within the transaction, that no stored pair will ever have (a
compare-and-swap with it after the commit fails safely; read the key again).  The store's
own ``atomic_put`` returns the pair with its real last_index.

Every request is safe to send twice, which lets a commit whose connection broke (etcd
restarting, a member shutting down) be re-sent, to the same or another endpoint, until
the timeout: its compares include "the commit key does not exist yet", and the answer to
a failed compare includes that key, so an earlier copy that was applied reads as
success, never as a duplicate.

Limits: plain HTTP without etcd authentication (no TLS, no user); etcd 3.4 or later; at
most 128 operations per transaction (etcd's --max-txn-ops: a write, a delete, a
delete_tree and each written bucket count one); keys written by other etcd clients under
the prefix are seen, but do not rewrite bucket markers, so transactions that had to fall
back to markers do not see such writes.  When the timeout expires while a commit's answer
is missing, the commit may or may not have been applied (StoreTimeoutError says so).
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import threading
import time
from contextlib import contextmanager
from itertools import groupby
from typing import Callable, Iterator, TypeVar

from ..errors import (
    DatabaseNotFoundError,
    InvalidArgumentError,
    KeyModifiedError,
    KeyNotFoundError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
)
from .base import KVPair, Store, Tx, check_bucket_name, check_key, check_prefix

T = TypeVar("T")

SCHEME = "etcd://"
DEFAULT_PORT = 2379
DEFAULT_PREFIX = "ecs-ipam"

# etcd's default --max-txn-ops: the most compares, and the most operations, in one txn.
MAX_TXN_OPS = 128
# A commit key only has to outlive the retries of its own commit (one timeout); an hour
# also leaves room for clocks that disagree between hosts.
COMMIT_KEY_LIFETIME = 3600
# After this many point reads of one bucket that missed the cache, a transaction (the
# allocator walking a crowded pool) fetches the whole bucket in one range instead.
READ_AHEAD_AFTER = 16
# Connection attempts are capped when there is another endpoint to try, so that one
# black-holed member cannot eat the whole timeout.
CONNECT_TIMEOUT = 1.0
# Provisional last_index of a pair written inside a transaction, before the commit.
PROVISIONAL_INDEX = 1 << 62

MAX_LINE = 65536

# gRPC codes of errors that pass: CANCELLED (etcd shutting down), DEADLINE_EXCEEDED,
# RESOURCE_EXHAUSTED (too many requests), ABORTED, UNAVAILABLE (no leader).
TRANSIENT_GRPC_CODES = {1, 4, 8, 10, 14}


class _Conflict(KeyModifiedError):
    """A transaction's reads are no longer current: its body must be re-run."""


class _BrokenResponse(ConnectionError):
    """The connection ended or carried something that is not an HTTP response."""


# -- URLs and keys -------------------------------------------------------------------------


def parse_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """Split an ``etcd://`` URL into its endpoints and its key prefix.

    :return: ``([(host, port), ...], prefix)``; the prefix has no leading or trailing ``/``.
    :raises InvalidArgumentError: the URL is not a usable etcd URL.
    """
    if not isinstance(url, str) or not url.startswith(SCHEME):
        raise InvalidArgumentError(f"not an etcd URL: {url!r} (expected {SCHEME}HOST:PORT[/PREFIX])")
    authority, _, prefix = url[len(SCHEME):].partition("/")
    endpoints = [_parse_endpoint(item.strip(), url) for item in authority.split(",")]
    return endpoints, prefix.strip("/") or DEFAULT_PREFIX


def _parse_endpoint(item: str, url: str) -> tuple[str, int]:
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise InvalidArgumentError(f"bad endpoint {item!r} in {url}")
        port_text = rest[1:]
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
    elif ":" in item:
        raise InvalidArgumentError(f"bad endpoint {item!r} in {url}: write an IPv6 host as [ADDRESS]:PORT")
    else:
        host, port_text = item, ""
    if not host:
        raise InvalidArgumentError(f"endpoint without a host in {url}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidArgumentError(f"bad port {port_text!r} in {url}")
    return host, int(port_text)


def escape_bucket(name: str) -> str:
    """The bucket name as it appears in keys: ``%`` and ``/`` percent-encoded."""
    return name.replace("%", "%25").replace("/", "%2F")


def unescape_bucket(escaped: str) -> str:
    # Every "%" of an escaped name starts "%25" or "%2F", so decoding "%2F" first can
    # never match across two escapes.
    return escaped.replace("%2F", "/").replace("%25", "%")


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{what} is not valid unicode text") from None


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key above every key that starts with *prefix* (etcd's ``range_end``)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"  # etcd: every key from the start key on
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str | None) -> bytes:
    # The gateway leaves out empty fields: a missing value is an empty one.
    return base64.b64decode(text) if text else b""


class _Layout:
    """Where buckets, markers and commit keys live under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.root = _utf8(prefix, "etcd prefix") + b"/"
        self.markers = self.root + b"m/"
        self.commits = self.root + b"c/"

    def data_prefix(self, bucket: str) -> bytes:
        return self.root + b"d/" + escape_bucket(bucket).encode("utf-8") + b"/"

    def marker_of(self, data_prefix: bytes) -> bytes:
        return self.markers + data_prefix[len(self.root) + 2 : -1]

    def bucket_of_marker(self, marker: bytes) -> str:
        return unescape_bucket(marker[len(self.markers):].decode("utf-8"))

    def commit_key(self, now: float) -> bytes:
        return self.commits + b"%012d-" % int(now) + os.urandom(12).hex().encode("ascii")

    def expired_commits(self, now: float) -> tuple[bytes, bytes]:
        return self.commits, self.commits + b"%012d" % max(0, int(now) - COMMIT_KEY_LIFETIME)


# -- HTTP ------------------------------------------------------------------------------------


class _Connection:
    """One keep-alive HTTP/1.1 connection to one etcd endpoint."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.pid = os.getpid()
        self.sock = socket.create_connection((host, port), timeout=timeout)
        try:
            # Requests go out in one send; without this the reply to a small request
            # can wait on the peer's delayed ACK.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.reader = self.sock.makefile("rb")
        except BaseException:
            self.sock.close()
            raise
        self.keep_alive = True
        self.request_sent = False

    def post(
        self, path: str, payload: bytes, timeout: float, stream: bool = False
    ) -> tuple[int, bytes | None]:
        """Send one POST and return ``(status, body)``.

        :param stream: leave a successful chunked answer unread (body None), for :meth:`lines`.
        :raises OSError: the connection failed; it must not be used again.
        """
        self.sock.settimeout(timeout)
        self.request_sent = False
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.authority}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        self.sock.sendall(head.encode("ascii") + payload)
        self.request_sent = True
        return self._response(stream)

    def _line(self) -> bytes:
        line = self.reader.readline(MAX_LINE)
        if not line.endswith(b"\n"):
            raise _BrokenResponse("etcd closed the connection" if not line else "response line too long")
        return line

    def _exactly(self, size: int) -> bytes:
        data = self.reader.read(size)
        if len(data) != size:
            raise _BrokenResponse("etcd closed the connection mid-response")
        return data

    def _response(self, stream: bool) -> tuple[int, bytes | None]:
        parts = self._line().split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise _BrokenResponse("not an HTTP response")
        status = int(parts[1])
        headers = {}
        while (line := self._line()) not in (b"\r\n", b"\n"):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if headers.get(b"transfer-encoding") == b"chunked":
            if stream and status == 200:
                self.keep_alive = False  # the stream keeps the connection to its end
                return status, None
            body = b"".join(iter(self._chunk, None))
        elif b"content-length" in headers:
            length = headers[b"content-length"]
            if not length.isdigit():
                raise _BrokenResponse("bad Content-Length")
            body = self._exactly(int(length))
        else:
            body = self.reader.read()
            self.keep_alive = False
        if headers.get(b"connection") == b"close":
            self.keep_alive = False
        return status, body

    def _chunk(self) -> bytes | None:
        """The next chunk of a chunked body; None after the last."""
        size_text = self._line().split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _BrokenResponse("bad chunk size") from None
        if size == 0:
            while self._line() not in (b"\r\n", b"\n"):
                pass  # trailers: the gateway sends its gRPC ones here
            return None
        chunk = self._exactly(size)
        self._line()
        return chunk

    def lines(self) -> Iterator[bytes]:
        """The lines of a streamed answer as they arrive, waiting as long as it takes.

        :raises OSError: the connection broke.
        """
        self.sock.settimeout(None)
        pending = b""
        while (chunk := self._chunk()) is not None:
            *complete, pending = (pending + chunk).split(b"\n")
            yield from filter(None, complete)

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.sock.close()


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


class _Client:
    """The connection and key layout shared by every store opened on one URL."""

    def __init__(self, url: str, timeout: float) -> None:
        self.endpoints, self.prefix = parse_url(url)
        self.layout = _Layout(self.prefix)
        self.timeout = timeout
        self.refs = 1
        self.refs_lock = threading.Lock()
        # One request at a time on the one connection.
        self.lock = threading.Lock()
        self.current = 0
        self.conn: _Connection | None = None

    def where(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.endpoints)

    def call(self, path: str, body: dict, deadline: float) -> dict:
        """POST *body* to *path*, retrying on broken connections until *deadline*.

        Callers only send requests that are safe to apply twice.

        :raises StoreUnavailableError: no endpoint answered before the deadline.
        :raises StoreTimeoutError: the last attempt timed out at the deadline.
        :raises StoreError: etcd refused the request.
        """
        payload = json.dumps(body, separators=(",", ":")).encode("ascii")
        with self.lock:
            return self._call(path, payload, deadline, stream=False)

    def stream(self, path: str, body: dict, deadline: float) -> _Connection:
        """POST *body* to *path* on a connection of its own, and return that connection,
        whose :meth:`_Connection.lines` stream the answer (the caller closes it).

        :raises StoreError: as :meth:`call`.
        """
        payload = json.dumps(body, separators=(",", ":")).encode("ascii")
        with self.lock:
            return self._call(path, payload, deadline, stream=True)

    def _call(self, path: str, payload: bytes, deadline: float, stream: bool):
        # Out of time before the first attempt (the transaction's body used it up) is a
        # timeout too.
        failure, timed_out, attempts, delay = "the operation ran out of time", True, 0, 0.02
        # Whether a copy of the request may have reached etcd and been applied.
        maybe_applied = False
        while (remaining := deadline - time.monotonic()) > 0:
            host, port = self.endpoints[self.current]
            if self.conn is not None and self.conn.pid != os.getpid():
                # Inherited across fork: the parent keeps using it.  Closing our copy of
                # the descriptor does not disturb it.
                self.disconnect()
            conn = None if stream else self.conn
            try:
                if conn is None:
                    spare = len(self.endpoints) > 1
                    conn = _Connection(host, port, min(remaining, CONNECT_TIMEOUT) if spare else remaining)
                    if not stream:
                        self.conn = conn
                status, data = conn.post(path, payload, remaining, stream)
                if data is None:
                    return conn
                if stream or not conn.keep_alive:
                    self._drop(conn)
            except OSError as error:
                maybe_applied = maybe_applied or (conn is not None and conn.request_sent)
                self._drop(conn)
                failure, timed_out = f"{host}:{port}: {_describe(error)}", isinstance(error, TimeoutError)
                self.current = (self.current + 1) % len(self.endpoints)
                attempts += 1
                if attempts % len(self.endpoints) == 0:
                    delay = self._pause(deadline, delay)
                continue
            if status == 200:
                try:
                    return json.loads(data)
                except ValueError:
                    raise StoreError(f"etcd at {host}:{port} sent a response that is not JSON") from None
            message, code = _error_of(data, status)
            if status >= 500 or code in TRANSIENT_GRPC_CODES:
                # No leader, leader changed, etcd shutting down, request timed out inside
                # etcd: the request may still be applied, and sending it again is safe.
                failure, timed_out, maybe_applied = f"{host}:{port}: {message}", False, True
                if len(self.endpoints) > 1:
                    self.disconnect()
                    self.current = (self.current + 1) % len(self.endpoints)
                delay = self._pause(deadline, delay)
                continue
            if status == 404:
                raise StoreError(
                    f"etcd at {host}:{port} does not serve {path}: the v3 JSON API needs etcd 3.4 or later"
                )
            if "compacted" in message:
                raise _Conflict(f"etcd compacted the revision this transaction read: {message}")
            if "too many operations" in message:
                raise StoreError(
                    f"transaction too large for etcd ({message}); etcd's --max-txn-ops sets the limit"
                )
            raise StoreError(f"etcd at {host}:{port} refused the request: {message}")
        outcome = ""
        if maybe_applied and path == "/v3/kv/txn":
            outcome = "; the commit may or may not have been applied"
        if timed_out:
            raise StoreTimeoutError(
                f"etcd at {self.where()} did not answer within {self.timeout:g}s ({failure}){outcome}"
            )
        raise StoreUnavailableError(f"etcd at {self.where()} is unavailable ({failure}){outcome}")

    @staticmethod
    def _pause(deadline: float, delay: float) -> float:
        # Jitter keeps a crowd of plugins that lost the same etcd from retrying in step.
        time.sleep(max(0.0, min(deadline - time.monotonic(), delay * random.uniform(0.5, 1.5))))
        return min(delay * 2, 0.25)

    def disconnect(self) -> None:
        self._drop(self.conn)

    def _drop(self, conn: _Connection | None) -> None:
        if conn is not None:
            if conn is self.conn:
                self.conn = None
            conn.close()

    def watch(
        self, start: bytes, end: bytes | None, revision: int, timeout: float
    ) -> Iterator[list[dict]]:
        """Yield the events of every change to *start* (or the range up to *end*) after
        *revision*, as etcd batches them; reconnect and resume when the stream breaks.

        :raises _Conflict: etcd compacted history the watch still needed.
        :raises StoreUnavailableError: etcd could not be reached again within *timeout*.
        """
        delay = 0.02
        while True:
            request = {"key": _b64(start), "start_revision": str(revision + 1)}
            if end is not None:
                request["range_end"] = _b64(end)
            conn = self.stream("/v3/watch", {"create_request": request}, time.monotonic() + timeout)
            try:
                for line in conn.lines():
                    message = json.loads(line)
                    result = message.get("result")
                    if result is None:
                        break  # the gateway reports a broken watch as an error message
                    if result.get("compact_revision"):
                        raise _Conflict(f"etcd compacted revision {revision + 1}, which the watch needed")
                    if result.get("canceled"):
                        raise StoreError(f"etcd cancelled the watch: {result.get('cancel_reason', '')}")
                    events = result.get("events")
                    if events:
                        revision = max(int(event["kv"]["mod_revision"]) for event in events)
                        yield events
                        delay = 0.02
            except (OSError, ValueError):
                pass  # reconnect below, from the last revision seen
            finally:
                conn.close()
            # A member that keeps ending streams at once must not be hammered.
            delay = self._pause(time.monotonic() + delay * 2, delay)

    # -- requests ----------------------------------------------------------------------------

    def range(self, start: bytes, end: bytes | None, revision: int | None, deadline: float,
              keys_only: bool = False, limit: int = 0) -> tuple[int, list[dict]]:
        """Return ``(header revision, kvs)`` of a range (one key when *end* is None)."""
        body: dict = {"key": _b64(start)}
        if end is not None:
            body["range_end"] = _b64(end)
        if revision is not None:
            body["revision"] = str(revision)
        if keys_only:
            body["keys_only"] = True
        if limit:
            body["limit"] = str(limit)
        answer = self.call("/v3/kv/range", body, deadline)
        return int(answer["header"]["revision"]), answer.get("kvs", [])


def _error_of(data: bytes, status: int) -> tuple[str, int | None]:
    """The message and gRPC status code of an error answer from the gateway."""
    try:
        answer = json.loads(data)
        return str(answer.get("message") or answer.get("error")), answer.get("code")
    except (ValueError, AttributeError):
        return f"HTTP status {status}", None


# -- transactions ------------------------------------------------------------------------------


def _compare_mod(key: bytes, revision: int, result: str = "EQUAL", end: bytes | None = None) -> dict:
    # An absent key compares as mod_revision 0, so EQUAL 0 means "still absent".
    compare = {"key": _b64(key), "target": "MOD", "result": result, "mod_revision": str(revision)}
    if end is not None:
        compare["range_end"] = _b64(end)
    return compare


class _TxState:
    """What one transaction read (to be checked at commit) and wrote (to be applied)."""

    def __init__(self, client: _Client, writable: bool, deadline: float) -> None:
        self.client = client
        self.layout = client.layout
        self.writable = writable
        self.deadline = deadline
        self.revision: int | None = None
        # The snapshot as far as it was read: full key -> pair, or None for absent.
        self.known: dict[bytes, KVPair | None] = {}
        # Keys to compare at commit: full key -> (bucket data prefix, mod_revision or 0).
        self.checked: dict[bytes, tuple[bytes, int]] = {}
        # Scanned ranges, whose every key is in `known`: (bucket, start, end).
        self.ranges: list[tuple[bytes, bytes, bytes]] = []
        self.misses: dict[bytes, int] = {}
        self.writes: dict[bytes, KVPair | None] = {}
        self.tree_deletes: list[tuple[bytes, bytes]] = []
        self.written_buckets: set[bytes] = set()
        self.sequence = 0
        self.committed_revision: int | None = None

    # -- reads -------------------------------------------------------------------------------

    def _pair(self, bucket: bytes, kv: dict) -> tuple[bytes, KVPair]:
        return _decoded(bucket, [kv])[0]

    def _covered(self, start: bytes, end: bytes) -> bool:
        return any(s <= start and end <= e for _, s, e in self.ranges)

    def _fetch(self, bucket: bytes, start: bytes, end: bytes | None) -> list[dict]:
        revision, kvs = self.client.range(start, end, self.revision, self.deadline)
        if self.revision is None:
            self.revision = revision
        return kvs

    def _fetch_range(self, bucket: bytes, start: bytes, end: bytes) -> None:
        for kv in self._fetch(bucket, start, end):
            full, pair = self._pair(bucket, kv)
            self.known[full] = pair
            self.checked[full] = (bucket, pair.last_index)
        self.ranges.append((bucket, start, end))

    def read(self, bucket: bytes, full: bytes) -> KVPair | None:
        if full in self.writes:
            return self.writes[full]
        if full in self.known:
            return self.known[full]
        if self._covered(full, full + b"\x00"):
            return None
        self.misses[bucket] = self.misses.get(bucket, 0) + 1
        if self.misses[bucket] > READ_AHEAD_AFTER:
            self._fetch_range(bucket, bucket, prefix_end(bucket))
            return self.known.get(full)
        kvs = self._fetch(bucket, full, None)
        pair = self._pair(bucket, kvs[0])[1] if kvs else None
        self.known[full] = pair
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

    # -- commit ------------------------------------------------------------------------------

    def commit(self) -> None:
        """Apply the buffered writes if everything read is still current.

        :raises _Conflict: something read has changed since (the body must be re-run).
        """
        if not self.writes:
            return  # nothing to apply; the reads came from one snapshot
        now = time.time()
        commit_key = self.layout.commit_key(now)
        compares = self._compares()
        compares.append(
            {"key": _b64(commit_key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        )
        swept_from, swept_to = self.layout.expired_commits(now)
        operations = self._operations()
        operations.append({"request_put": {"key": _b64(commit_key), "value": ""}})
        operations.append({"request_delete_range": {"key": _b64(swept_from), "range_end": _b64(swept_to)}})
        answer = self.client.call(
            "/v3/kv/txn",
            {
                "compare": compares,
                "success": operations,
                "failure": [{"request_range": {"key": _b64(commit_key)}}],
            },
            self.deadline,
        )
        revision = int(answer["header"]["revision"])
        if not answer.get("succeeded"):
            ours = answer["responses"][0]["response_range"].get("kvs")
            if not ours:
                raise _Conflict("key was modified by a concurrent transaction")
            # A copy of this request, sent before the connection broke, was applied.
            revision = int(ours[0]["mod_revision"])
        self.committed_revision = revision

    def _compares(self) -> list[dict]:
        per_bucket: dict[bytes, list[dict]] = {}
        for full, (bucket, mod) in self.checked.items():
            if mod == 0 and self._covered(full, full + b"\x00"):
                continue  # the range's own compare sees it appear
            per_bucket.setdefault(bucket, []).append(_compare_mod(full, mod))
        for bucket, start, end in self.ranges:
            # A key deleted from the range is caught by its own compare above; one that
            # appeared or changed has a mod_revision above the snapshot.
            per_bucket.setdefault(bucket, []).append(_compare_mod(start, self.revision + 1, "LESS", end))
        budget = MAX_TXN_OPS - 1  # the commit key takes one
        total = sum(len(compares) for compares in per_bucket.values())
        coarse = []
        for bucket in sorted(per_bucket, key=lambda b: len(per_bucket[b]), reverse=True):
            if total <= budget:
                break
            total -= len(per_bucket[bucket]) - 1
            coarse.append(bucket)
        if coarse:
            markers = self._markers_at_snapshot()
            for bucket in coarse:
                marker = self.layout.marker_of(bucket)
                per_bucket[bucket] = [_compare_mod(marker, markers.get(marker, 0))]
        return [compare for compares in per_bucket.values() for compare in compares]

    def _markers_at_snapshot(self) -> dict[bytes, int]:
        start = self.layout.markers
        _, kvs = self.client.range(start, prefix_end(start), self.revision, self.deadline, keys_only=True)
        return {_unb64(kv["key"]): int(kv["mod_revision"]) for kv in kvs}

    def _operations(self) -> list[dict]:
        puts = [full for full, pair in self.writes.items() if pair is not None]
        # etcd refuses a put inside a range deleted by the same transaction; such a range
        # is applied as the single deletes delete_tree buffered anyway.
        ranges = [(s, e) for s, e in self.tree_deletes if not any(s <= full < e for full in puts)]
        operations = [
            {"request_put": {"key": _b64(full), "value": _b64(self.writes[full].value)}} for full in puts
        ]
        operations += [{"request_delete_range": {"key": _b64(s), "range_end": _b64(e)}} for s, e in ranges]
        operations += [
            {"request_delete_range": {"key": _b64(full)}}
            for full, pair in self.writes.items()
            if pair is None and not any(s <= full < e for s, e in ranges)
        ]
        operations += [
            {"request_put": {"key": _b64(self.layout.marker_of(bucket)), "value": ""}}
            for bucket in sorted(self.written_buckets)
        ]
        return operations


class _EtcdTx(Tx):
    def __init__(self, state: _TxState, bucket_name: str) -> None:
        self._state = state
        self.bucket_name = bucket_name
        self._prefix = state.layout.data_prefix(bucket_name)

    def _full(self, key: str) -> bytes:
        return self._prefix + _utf8(key, "key")

    def _read(self, key: str) -> KVPair | None:
        return self._state.read(self._prefix, self._full(key))

    def _write(self, key: str, value: bytes) -> KVPair:
        return self._state.write(self._prefix, self._full(key), key, value)

    def _remove(self, key: str) -> bool:
        return self._state.remove(self._prefix, self._full(key))

    def _scan(self, prefix: str) -> list[KVPair]:
        return self._state.scan(self._prefix, _utf8(prefix, "prefix"))

    def delete_tree(self, prefix: str = "") -> None:
        # The same result as the base class's, sent to etcd as one range delete instead
        # of one delete per key (a transaction may hold only 128 operations).
        check_prefix(prefix)
        self._state.check_writable()
        pairs = self._scan(prefix)
        for pair in pairs:
            self._remove(pair.key)
        if pairs:
            start = self._prefix + _utf8(prefix, "prefix")
            self._state.tree_deletes.append((start, prefix_end(start)))

    def bucket(self, name: str) -> Tx:
        return _EtcdTx(self._state, check_bucket_name(name))


def _follow(
    client: _Client, bucket: bytes, start: bytes, end: bytes | None, revision: int, kvs: list, timeout: float
) -> Iterator[dict[bytes, KVPair]]:
    """Yield the content of a key or range (full key -> pair) as read at *revision*, then
    after every revision that changed it (one transaction: one yield, however etcd
    batched its events); read it whole again when etcd compacted the history the watch
    needed."""
    content = dict(_decoded(bucket, kvs))
    yield content
    while True:
        try:
            for events in client.watch(start, end, revision, timeout):
                for _, group in groupby(events, key=lambda event: event["kv"]["mod_revision"]):
                    for event in group:
                        full, pair = _decoded(bucket, [event["kv"]])[0]
                        if event.get("type") == "DELETE":
                            content.pop(full, None)
                        else:
                            content[full] = pair
                    yield content
        except _Conflict:
            revision, kvs = client.range(start, end, None, time.monotonic() + timeout)
            content = dict(_decoded(bucket, kvs))
            yield content


def _decoded(bucket: bytes, kvs: list[dict]) -> list[tuple[bytes, KVPair]]:
    """``(full key, pair)`` of each key/value of an etcd answer, for keys of *bucket*."""
    pairs = []
    for kv in kvs:
        full = _unb64(kv["key"])
        key = full[len(bucket):].decode("utf-8")
        pairs.append((full, KVPair(key, _unb64(kv.get("value")), int(kv["mod_revision"]))))
    return pairs


# -- the store ---------------------------------------------------------------------------------


class EtcdStore(Store):
    """A bucket of a database kept in etcd.

    :param url: ``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]``.
    :param bucket: the bucket this store reads and writes.
    :param timeout: seconds an operation may take, retries included, before
        StoreTimeoutError or StoreUnavailableError.
    :param read_only: refuse write transactions.
    :param create: when false (or read-only), the prefix must already hold a database.
    :raises InvalidArgumentError: the URL or bucket name is not usable.
    :raises DatabaseNotFoundError: nothing was ever written under the prefix, and the
        caller asked not to create a database.
    :raises StoreUnavailableError: etcd could not be reached to check that.
    """

    def __init__(
        self,
        url: str,
        bucket: str = "IPAM",
        timeout: float = 5.0,
        *,
        read_only: bool = False,
        create: bool = True,
        _client: _Client | None = None,
    ) -> None:
        self.bucket_name = check_bucket_name(bucket)
        self.url = url
        self.timeout = timeout
        self.read_only = read_only
        if _client is None:
            _client = _Client(url, timeout)
            if read_only or not create:
                try:
                    self._require_database(_client)
                except BaseException:
                    _client.disconnect()
                    raise
        else:
            with _client.refs_lock:
                _client.refs += 1
        self._client: _Client | None = _client

    def _require_database(self, client: _Client) -> None:
        start = client.layout.markers
        _, kvs = client.range(start, prefix_end(start), None, time.monotonic() + self.timeout,
                              keys_only=True, limit=1)
        if not kvs:
            raise DatabaseNotFoundError(f"no database at {self.url}: nothing under prefix {client.prefix!r}")

    def _live_client(self) -> _Client:
        if self._client is None:
            raise StoreError(f"store for {self.url} is closed")
        return self._client

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Tx]:
        """See :meth:`Store.transaction`.

        :raises KeyModifiedError: at the end of the block, when a key the block read was
            changed by someone else meanwhile; nothing was written.
        """
        with self._transaction(write, time.monotonic() + self.timeout) as tx:
            yield tx

    @contextmanager
    def _transaction(self, write: bool, deadline: float) -> Iterator[_EtcdTx]:
        client = self._live_client()
        if write and self.read_only:
            raise StoreError(f"database {self.url} is open read-only")
        state = _TxState(client, write, deadline)
        yield _EtcdTx(state, self.bucket_name)
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
        while True:
            try:
                with self._transaction(write, deadline) as tx:
                    result = body(tx)
                return result, tx._state.committed_revision
            except _Conflict:
                remaining = deadline - time.monotonic()
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
        full = bucket + _utf8(check_key(key), "key")
        revision, kvs = client.range(full, None, None, time.monotonic() + self.timeout)
        if not kvs:
            raise KeyNotFoundError(f"key not found: {key}")
        return self._watch_key(client, bucket, full, revision, kvs)

    def _watch_key(
        self, client: _Client, bucket: bytes, full: bytes, revision: int, kvs: list
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
        start = bucket + _utf8(check_prefix(prefix), "prefix")
        end = prefix_end(start)
        revision, kvs = client.range(start, end, None, time.monotonic() + self.timeout)
        return self._watch_range(client, bucket, start, end, revision, kvs)

    def _watch_range(
        self, client: _Client, bucket: bytes, start: bytes, end: bytes, revision: int, kvs: list
    ) -> Iterator[list[KVPair]]:
        for content in _follow(client, bucket, start, end, revision, kvs, self.timeout):
            yield [content[full] for full in sorted(content)]

    def bucket(self, name: str) -> "EtcdStore":
        client = self._live_client()
        return EtcdStore(self.url, name, self.timeout, read_only=self.read_only, _client=client)

    def buckets(self) -> list[str]:
        client = self._live_client()
        start = client.layout.markers
        _, kvs = client.range(start, prefix_end(start), None, time.monotonic() + self.timeout, keys_only=True)
        return sorted(client.layout.bucket_of_marker(_unb64(kv["key"])) for kv in kvs)

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
