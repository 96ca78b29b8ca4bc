"""The etcd gateway client: endpoints, TLS, authentication, retries.

It speaks etcd's JSON gateway (``/v3/kv/range``, ``/v3/kv/txn``, ``/v3/watch``,
``/v3/auth/authenticate``) over one keep-alive connection (:mod:`.http`, :mod:`.tls`).
Several endpoints: the next one is tried when a connection fails.

Every request it is given is safe to send twice, which lets a request whose connection
broke (etcd restarting, a member shutting down) be re-sent, to the same or another
endpoint, until the deadline.

With a user, it gets a token from ``/v3/auth/authenticate`` before the first request
and sends it with every request; when etcd no longer accepts the token (it expired, the
member restarted, the user's password or roles changed), it authenticates again and
re-sends the request.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from ...errors import KeyModifiedError, StoreError, StoreTimeoutError, StoreUnavailableError
from .http import TIMEOUTS, BrokenResponse, Connection, describe, speaks_tls
from .layout import Layout, b64, prefix_end, unb64
from .settings import VARIABLES, Security, parse_url

if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterator

# A JSON object of the gateway.
Json = dict[str, Any]

# How long one attempt waits for an endpoint while there is another one to try: a
# frozen or partitioned member (a long GC pause, a full disk, a one-way network loss)
# costs this much, not the whole timeout.  etcd answers a healthy request in
# milliseconds; a leader election takes about one second (its default election timeout).
REQUEST_TIMEOUT = 1.0
# The TLS probe of an endpoint that dropped a plain request.
CONNECT_TIMEOUT = 1.0
AUTHENTICATE = "/v3/auth/authenticate"
TXN = "/v3/kv/txn"
# gRPC codes of errors that pass: CANCELLED (etcd shutting down), DEADLINE_EXCEEDED,
# RESOURCE_EXHAUSTED (too many requests), ABORTED, UNAVAILABLE (no leader).
TRANSIENT_GRPC_CODES = {1, 4, 8, 10, 14}
# etcd's answers to a token it no longer accepts; a fresh token cures them.
STALE_TOKEN = ("invalid auth token", "revision of auth store is old", "revision in header is old")
# How many fresh tokens one request may need (a token revoked again at once is refused).
TOKEN_ATTEMPTS = 3


class Conflict(KeyModifiedError):
    """A transaction's reads are no longer current: its body must be re-run."""


class NotApplied(Conflict):
    """A commit whose answer was lost was settled as never applied: nothing was written,
    and the body may be re-run while time remains; else *final* is the error to raise."""

    def __init__(self, final: StoreError) -> None:
        super().__init__(str(final))
        self.final = final


class RefusedError(StoreError):
    """etcd answered the request with an error that sending it again will not change."""

    def __init__(self, msg: str, reason: str = "") -> None:
        super().__init__(msg)
        self.reason = reason


class MaybeApplied(StoreError):
    """The request reached etcd, or may have, and no answer came back: it may have
    been applied.  Raised as one of the two classes below (code 11)."""


class TimeoutMaybeApplied(MaybeApplied, StoreTimeoutError):
    """No endpoint answered in time, and a copy of the request may have been applied."""


class UnavailableMaybeApplied(MaybeApplied, StoreUnavailableError):
    """No endpoint could serve the request, and a copy of it may have been applied."""


class _StaleToken(Exception):
    """etcd no longer accepts the token: authenticate again."""


class _Broken(Exception):
    """One attempt's connection failed (:meth:`Client._exchange`)."""

    def __init__(self, error: OSError, sent: bool, fresh: bool) -> None:
        super().__init__(describe(error))
        self.timed_out = isinstance(error, TIMEOUTS)
        # The request went out (it may have been applied).
        self.sent = sent
        # A new connection that broke before any byte of an answer.
        self.fresh = fresh


class _Trail:
    """What the attempts of one request met, for the error raised when time runs out."""

    def __init__(self) -> None:
        # Out of time before the first attempt (a transaction's body used it up) is a
        # timeout too.
        self.failure = "the operation ran out of time"
        self.timed_out = True
        self.maybe_applied = False
        self.attempts = 0
        self.delay = 0.02

    def broken(self, host: str, port: int, broken: _Broken) -> None:
        self.failure = f"{host}:{port}: {broken}"
        self.timed_out = broken.timed_out
        self.maybe_applied = self.maybe_applied or broken.sent

    def transient(self, host: str, port: int, message: str) -> None:
        self.failure = f"{host}:{port}: {message}"
        self.timed_out = False
        self.maybe_applied = True

    def error(self, where: str, timeout: float, path: str) -> StoreError:
        if self.timed_out:
            text = f"etcd at {where} did not answer within {timeout:g}s ({self.failure})"
        else:
            text = f"etcd at {where} is unavailable ({self.failure})"
        if self.maybe_applied and path == TXN:
            return (TimeoutMaybeApplied if self.timed_out else UnavailableMaybeApplied)(text)
        return (StoreTimeoutError if self.timed_out else StoreUnavailableError)(text)


class Client:
    """The connection, security and key layout shared by every store opened on one URL.

    :raises InvalidArgumentError: the URL is not usable.
    :raises InvalidEnvironmentError: a certificate or key file cannot be used.
    """

    def __init__(self, url: str, timeout: float, security: Security) -> None:
        self.endpoints, self.prefix = parse_url(url)
        self.layout = Layout(self.prefix)
        self.timeout = timeout
        self.user = security.user
        self._password = security.password
        self._token: str | None = None
        self._token_cache = security.token_cache if security.user is not None else None
        self._cache_read = False
        self._context: ssl.SSLContext | None = None
        self._has_certificate = bool(security.cert)
        if security.tls:
            # Imported here: a plain URL must not pay for ssl.
            from .tls import context_for

            self._context = context_for(security)
        self.refs = 1
        self.refs_lock = threading.Lock()
        # One request at a time on the one connection.
        self.lock = threading.Lock()
        # Each process starts at an endpoint of its own, so that a member that hangs
        # delays some plugins by one short bound (REQUEST_TIMEOUT), not every plugin;
        # within the process, the last endpoint that answered is tried first.
        self.current = random.randrange(len(self.endpoints))
        self.conn: Connection | None = None

    def where(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.endpoints)

    def call(self, path: str, body: Json, deadline: float) -> Json:
        """POST *body* to *path*, retrying on broken connections until *deadline*.

        Callers only send requests that are safe to apply twice.

        :raises StoreUnavailableError: no endpoint answered before the deadline.
        :raises StoreTimeoutError: the last attempt timed out at the deadline.
        :raises StoreError: etcd refused the request, the user or the TLS handshake.
        """
        payload = json.dumps(body, separators=(",", ":")).encode("ascii")
        with self.lock:
            answer = self._authenticated(path, payload, deadline, stream=False)
        assert isinstance(answer, dict)
        return answer

    def stream(self, path: str, body: Json, deadline: float) -> Connection:
        """POST *body* to *path* on a connection of its own, and return that connection,
        whose :meth:`Connection.lines` stream the answer (the caller closes it).

        :raises StoreError: as :meth:`call`.
        """
        payload = json.dumps(body, separators=(",", ":")).encode("ascii")
        with self.lock:
            answer = self._authenticated(path, payload, deadline, stream=True)
        assert isinstance(answer, Connection)
        return answer

    def forget_token(self) -> None:
        """Authenticate again before the next request (etcd refused the token)."""
        self._token = None

    # -- authentication ------------------------------------------------------------------

    def _authenticated(self, path: str, payload: bytes, deadline: float, stream: bool) -> Json | Connection:
        if self._token_cache is not None and self.user is not None and not self._cache_read:
            self._cache_read = True
            self._reuse_token(self._token_cache, self.user)
        for _ in range(TOKEN_ATTEMPTS):
            if self.user is not None and self._token is None:
                self._token = self._authenticate(deadline)
                if self._token_cache is not None:
                    from .token_cache import save

                    save(self._token_cache, self.user, self._endpoint_name(self.current), self._token)
            try:
                return self._call(path, payload, deadline, stream)
            except _StaleToken:
                self._token = None
        raise StoreError(f"etcd at {self.where()} kept refusing fresh tokens of user {self.user!r}")

    def _reuse_token(self, path: str, user: str) -> None:
        """Start with the token a previous process kept, at the endpoint that issued it
        (etcd's simple tokens are known to that member only); once per client."""
        from .token_cache import load

        names = [self._endpoint_name(n) for n in range(len(self.endpoints))]
        kept = load(path, user, names)
        if kept is not None:
            self.current = names.index(kept[0])
            self._token = kept[1]

    def _endpoint_name(self, index: int) -> str:
        host, port = self.endpoints[index]
        return f"{host}:{port}"

    def _authenticate(self, deadline: float) -> str:
        # The body is built here and never kept: the password is in no message or log.
        password = self._password.reveal() if self._password is not None else ""
        payload = json.dumps({"name": self.user, "password": password}).encode("utf-8")
        try:
            answer = self._call(AUTHENTICATE, payload, deadline, stream=False)
        except RefusedError as error:
            if not error.reason:
                raise  # not an answer about the user (a TLS port, say)
            raise RefusedError(
                f"etcd at {self.where()} refused user {self.user!r} ({error.reason}); "
                f"check {VARIABLES['user']} and {VARIABLES['password']}",
                error.reason,
            ) from None
        assert isinstance(answer, dict)
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise StoreError(f"etcd at {self.where()} authenticated user {self.user!r} but sent no token")
        return token

    # -- one request, tried on each endpoint in turn -------------------------------------

    def _connect(self, host: str, port: int, timeout: float) -> Connection:
        if self._context is not None:
            from .tls import TLSConnection

            return TLSConnection(host, port, timeout, self._context, self._has_certificate)
        return Connection(host, port, timeout)

    def _call(self, path: str, payload: bytes, deadline: float, stream: bool) -> Json | Connection:
        """Send the request to the current endpoint, then to the next ones, until one
        answers or the deadline passes; the answer, or the connection of a stream.

        :raises _StaleToken: etcd refused the token (authenticate, then call again).
        :raises MaybeApplied: time ran out after a copy of a txn may have been applied.
        """
        token = None if path == AUTHENTICATE else self._token
        trail = _Trail()
        while (remaining := deadline - time.monotonic()) > 0:
            host, port = self.endpoints[self.current]
            try:
                conn, status, data = self._exchange(
                    host, port, path, payload, self._bound(remaining, trail), stream, token
                )
            except _Broken as broken:
                trail.broken(host, port, broken)
                if broken.fresh and self._context is None and self._serves_tls(host, port, deadline):
                    raise RefusedError(f"etcd at {host}:{port} serves TLS: use etcds://") from None
                self._next_endpoint(trail, deadline)
                continue
            if data is None:
                return conn
            if status == 200:
                return _json_object(host, port, data)
            message, code = _error_of(data, status)
            if token is not None and any(stale in message for stale in STALE_TOKEN):
                raise _StaleToken(message)
            if status == 503 and conn.lacks_client_auth():
                raise RefusedError(
                    f"etcd at {host}:{port} cannot serve its JSON gateway ({message}): the server's certificate "
                    f"lacks the clientAuth extended key usage, which the gateway needs to present it to etcd "
                    f"itself; issue it with extendedKeyUsage=serverAuth,clientAuth"
                )
            if status >= 500 or code in TRANSIENT_GRPC_CODES:
                # No leader, leader changed, etcd shutting down, request timed out inside
                # etcd: the request may still be applied, and sending it again is safe.
                trail.transient(host, port, message)
                self.disconnect()
                self._next_endpoint(trail, deadline)
                continue
            self._refuse(host, port, path, message, status, data)
        raise trail.error(self.where(), self.timeout, path)

    def _bound(self, remaining: float, trail: _Trail) -> float:
        """How long the next attempt may wait for its endpoint.

        With another endpoint to try, a silent one (frozen, partitioned, overloaded)
        costs a short bound, not the whole deadline.  The bound doubles with every
        round through all the endpoints, so a cluster that is merely slow (a loaded
        host) still gets its time.  It does not double from one endpoint to the next:
        while a frozen leader is being replaced, the followers also keep silent about
        the requests they forwarded to it, and a bound doubled per attempt would hand
        the frozen member most of the deadline once they had used their turns.
        """
        count = len(self.endpoints)
        if count == 1:
            return remaining
        return min(remaining, REQUEST_TIMEOUT * float(2 ** (trail.attempts // count)))

    def _exchange(
        self, host: str, port: int, path: str, payload: bytes, bound: float, stream: bool, token: str | None
    ) -> tuple[Connection, int, bytes | None]:
        """One POST on the kept-alive connection (a new one for a stream).

        :raises _Broken: the connection failed; it is closed.
        """
        if self.conn is not None and self.conn.pid != os.getpid():
            # Inherited across fork: the parent keeps using it.  Closing our copy of the
            # descriptor does not disturb it.
            self.disconnect()
        conn = None if stream else self.conn
        try:
            if conn is None:
                conn = self._connect(host, port, bound)
                if not stream:
                    self.conn = conn
            status, data = conn.post(path, payload, bound, stream, token)
        except OSError as error:
            self._drop(conn)
            # A fresh connection that broke before any answer: maybe a TLS port that
            # drops plain requests (a kept-alive one may just have been closed while idle).
            fresh = isinstance(error, BrokenResponse) and conn is not None and conn.requests == 1 and not conn.answered
            raise _Broken(error, conn is not None and conn.request_sent, fresh) from None
        except StoreError:
            self._drop(conn)
            raise
        if data is not None and (stream or not conn.keep_alive):
            self._drop(conn)
        return conn, status, data

    def _serves_tls(self, host: str, port: int, deadline: float) -> bool:
        return speaks_tls(host, port, min(max(deadline - time.monotonic(), 0.01), CONNECT_TIMEOUT))

    def _next_endpoint(self, trail: _Trail, deadline: float) -> None:
        """Move on to the next endpoint; pause after every round through all of them."""
        trail.attempts += 1
        self.current = (self.current + 1) % len(self.endpoints)
        if trail.attempts % len(self.endpoints) == 0:
            trail.delay = self._pause(deadline, trail.delay)

    def _refuse(self, host: str, port: int, path: str, message: str, status: int, data: bytes | None) -> None:
        """Raise the error for an answer that sending the request again will not change."""
        if status == 404:
            raise StoreError(f"etcd at {host}:{port} does not serve {path}: the v3 JSON API needs etcd 3.4 or later")
        if status == 400 and data is not None and b"HTTPS" in data and b"HTTP request" in data:
            raise RefusedError(f"etcd at {host}:{port} serves TLS: use etcds://", message)
        if "CommonName of client" in message:
            raise RefusedError(
                f"etcd at {host}:{port} refused the client certificate: with authentication on, its JSON "
                f"gateway refuses certificates that have a Common Name; issue {VARIABLES['cert']} without one "
                f"(a subject such as /O=ecs-ipam)"
            )
        if "compacted" in message:
            raise Conflict(f"etcd compacted the revision this transaction read: {message}")
        if "too many operations" in message:
            raise StoreError(f"transaction too large for etcd ({message}); etcd's --max-txn-ops sets the limit")
        if self.user is None and ("user name is empty" in message or "permission denied" in message):
            raise RefusedError(
                f"etcd at {host}:{port} requires a user ({message}): "
                f"set {VARIABLES['user']} and {VARIABLES['password']}",
                message,
            )
        if "permission denied" in message:
            raise RefusedError(
                f"etcd at {host}:{port} refused user {self.user!r} access to prefix {self.prefix!r} ({message})",
                message,
            )
        raise RefusedError(f"etcd at {host}:{port} refused the request: {message}", message)

    @staticmethod
    def _pause(deadline: float, delay: float) -> float:
        # Jitter keeps a crowd of plugins that lost the same etcd from retrying in step.
        time.sleep(max(0.0, min(deadline - time.monotonic(), delay * random.uniform(0.5, 1.5))))
        return min(delay * 2, 0.25)

    def disconnect(self) -> None:
        self._drop(self.conn)

    def _drop(self, conn: Connection | None) -> None:
        if conn is not None:
            if conn is self.conn:
                self.conn = None
            conn.close()

    def watch(self, start: bytes, end: bytes | None, revision: int, timeout: float) -> Iterator[list[Json]]:
        """Yield the events of every change to *start* (or the range up to *end*) after
        *revision*, as etcd batches them; reconnect and resume when the stream breaks.

        :raises Conflict: etcd compacted history the watch still needed.
        :raises StoreUnavailableError: etcd could not be reached again within *timeout*.
        """
        delay = 0.02
        while True:
            request = {"key": b64(start), "start_revision": str(revision + 1)}
            if end is not None:
                request["range_end"] = b64(end)
            conn = self.stream("/v3/watch", {"create_request": request}, time.monotonic() + timeout)
            try:
                for line in conn.lines():
                    message = json.loads(line)
                    result = message.get("result")
                    if result is None:
                        # The gateway reports a broken watch as an error message; one
                        # about the token needs a fresh token to reconnect with.
                        error = message.get("error") or {}
                        if any(stale in str(error) for stale in STALE_TOKEN):
                            self.forget_token()
                        break
                    if result.get("compact_revision"):
                        raise Conflict(f"etcd compacted revision {revision + 1}, which the watch needed")
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

    def range(
        self,
        start: bytes,
        end: bytes | None,
        revision: int | None,
        deadline: float,
        keys_only: bool = False,
        limit: int = 0,
    ) -> tuple[int, list[Json]]:
        """Return ``(header revision, kvs)`` of a range (one key when *end* is None)."""
        body: Json = {"key": b64(start)}
        if end is not None:
            body["range_end"] = b64(end)
        if revision is not None:
            body["revision"] = str(revision)
        if keys_only:
            body["keys_only"] = True
        if limit:
            body["limit"] = str(limit)
        answer = self.call("/v3/kv/range", body, deadline)
        return int(answer["header"]["revision"]), list(answer.get("kvs", []))

    def markers(self, revision: int | None, deadline: float, limit: int = 0) -> tuple[int, dict[str, int]]:
        """``(header revision, {bucket name: its marker's mod_revision})``: the buckets
        of the database (at *revision*, or the latest), read from their markers."""
        start = self.layout.markers
        at, kvs = self.range(start, prefix_end(start), revision, deadline, keys_only=True, limit=limit)
        return at, {self.layout.bucket_of_marker(unb64(kv["key"])): int(kv["mod_revision"]) for kv in kvs}


def _json_object(host: str, port: int, data: bytes) -> Json:
    try:
        answer = json.loads(data)
    except ValueError:
        raise StoreError(f"etcd at {host}:{port} sent a response that is not JSON") from None
    if not isinstance(answer, dict):
        raise StoreError(f"etcd at {host}:{port} sent a response that is not a JSON object")
    return answer


def _error_of(data: bytes | None, status: int) -> tuple[str, int | None]:
    """The message and gRPC status code of an error answer from the gateway."""
    try:
        answer = json.loads(data or b"")
        code = answer.get("code")
        return str(answer.get("message") or answer.get("error")), code if isinstance(code, int) else None
    except (ValueError, AttributeError):
        # Not the gateway's JSON: etcd's HTTP layer answers in one line of text.
        text = (data or b"").decode("utf-8", "replace").strip().splitlines()
        return (text[0][:200] if text else f"HTTP status {status}"), None
