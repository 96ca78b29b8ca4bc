"""One keep-alive HTTP/1.1 connection to one etcd endpoint, written on :mod:`socket`.

Importing it costs a few milliseconds, where ``http.client`` (which pulls in ``email``
and ``ssl``) costs about fifteen, and start-up time is the plugin's latency.  TLS is
added by :mod:`.tls`, which subclasses :class:`Connection`.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

MAX_LINE = 65536
# A socket timeout is a TimeoutError from Python 3.10 on; before, socket.timeout is another OSError.
TIMEOUTS = (TimeoutError, socket.timeout)


class BrokenResponse(ConnectionError):
    """The connection ended or carried something that is not an HTTP response."""


class Connection:
    """One keep-alive HTTP/1.1 connection to one etcd endpoint.

    :raises OSError: the connection could not be made.
    """

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.pid = os.getpid()
        raw = socket.create_connection((host, port), timeout=timeout)
        try:
            # Requests go out in one send; without this the reply to a small request
            # can wait on the peer's delayed ACK.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self._secure(raw, host)
        except BaseException:
            raw.close()
            raise
        try:
            self.reader = self.sock.makefile("rb")
        except BaseException:
            self.sock.close()
            raise
        self.keep_alive = True
        self.request_sent = False
        # Whether any byte of an answer to the last request arrived.
        self.answered = False
        self.requests = 0

    def _secure(self, raw: socket.socket, host: str) -> socket.socket:
        """The socket requests go over: *raw* itself for plain HTTP."""
        return raw

    def post(
        self, path: str, payload: bytes, timeout: float, stream: bool = False, token: str | None = None
    ) -> tuple[int, bytes | None]:
        """Send one POST and return ``(status, body)``.

        :param stream: leave a successful chunked answer unread (body None), for :meth:`lines`.
        :param token: the etcd auth token, sent in the ``Authorization`` header.
        :raises OSError: the connection failed; it must not be used again.
        """
        self.sock.settimeout(timeout)
        self.requests += 1
        self.request_sent = False
        self.answered = False
        auth = f"Authorization: {token}\r\n" if token else ""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.authority}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        self.sock.sendall(head.encode("ascii") + payload)
        self.request_sent = True
        return self._response(stream)

    def lacks_client_auth(self) -> bool:
        """Whether the server's certificate cannot serve as a client certificate (TLS only)."""
        return False

    def _line(self) -> bytes:
        line = self.reader.readline(MAX_LINE)
        if line:
            self.answered = True
        if not line.endswith(b"\n"):
            raise BrokenResponse("etcd closed the connection" if not line else "response line too long")
        return line

    def _exactly(self, size: int) -> bytes:
        data = self.reader.read(size)
        if len(data) != size:
            raise BrokenResponse("etcd closed the connection mid-response")
        return data

    def _response(self, stream: bool) -> tuple[int, bytes | None]:
        parts = self._line().split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise BrokenResponse("not an HTTP response")
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
                raise BrokenResponse("bad Content-Length")
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
            raise BrokenResponse("bad chunk size") from None
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


# A TLS 1.2 ClientHello offering one cipher suite and no extensions: whatever a TLS
# server makes of it, it answers with a TLS record (a ServerHello or an alert).
_CLIENT_HELLO_BODY = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x00\x2f" + b"\x01\x00"
# The blank line after it makes a plain HTTP server answer at once (400) instead of
# waiting for the end of a request line.
_CLIENT_HELLO = (
    b"\x16\x03\x01"
    + (len(_CLIENT_HELLO_BODY) + 4).to_bytes(2, "big")
    + b"\x01"
    + len(_CLIENT_HELLO_BODY).to_bytes(3, "big")
    + _CLIENT_HELLO_BODY
    + b"\r\n\r\n"
)
_TLS_RECORD_TYPES = (0x15, 0x16)  # alert, handshake


def speaks_tls(host: str, port: int, timeout: float) -> bool:
    """Whether the server at *host*:*port* answers a TLS ClientHello with a TLS record.

    Asked when a plain HTTP request was met by a closed connection, to tell an etcd that
    serves TLS (which drops plain requests without a word) from one that went away.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as probe:
            probe.sendall(_CLIENT_HELLO)
            first = probe.recv(1)
    except OSError:
        return False
    return len(first) == 1 and first[0] in _TLS_RECORD_TYPES


def describe(error: BaseException) -> str:
    """A short reason for a failed connection, for error messages."""
    if isinstance(error, TIMEOUTS):
        return "timed out"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
