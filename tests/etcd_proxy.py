"""A small HTTP proxy on loopback in front of one etcd member, that misbehaves on demand.

    proxy = FaultyProxy(member.endpoint)
    proxy.mode = DROP_COMMIT_ANSWERS   # every txn reaches etcd, no answer comes back
    ... f"etcd://{proxy.endpoint}" ...
    proxy.close()

Modes (``proxy.mode``, changed at any time):

* ``FORWARD``: a plain proxy.
* ``DROP_COMMIT_ANSWERS``: a ``/v3/kv/txn`` is forwarded and applied, but its answer is
  never sent; the client's connection stays open and silent (a member that relayed the
  commit, then froze).  Other requests pass.
* ``SILENT_AFTER_COMMIT``: as above, and from then on nothing is answered at all.
* ``SILENT``: connections are accepted and never answered.
* ``CLOSE_BEFORE_NEXT_COMMIT``: the next ``/v3/kv/txn`` never reaches etcd, and the
  client's connection is closed (etcd restarting); then ``FORWARD`` again.
* ``CLOSE_AFTER_NEXT_COMMIT``: the next ``/v3/kv/txn`` is applied, then the client's
  connection is closed before its answer; then ``FORWARD`` again.

``proxy.commits`` counts the txn requests forwarded, ``proxy.dropped`` the answers lost,
``proxy.closed_on`` the txns the connection was closed on.
"""

from __future__ import annotations

import http.client
import socket
import threading

FORWARD = "forward"
DROP_COMMIT_ANSWERS = "drop-commit-answers"
SILENT_AFTER_COMMIT = "silent-after-commit"
SILENT = "silent"
CLOSE_BEFORE_NEXT_COMMIT = "close-before-next-commit"
CLOSE_AFTER_NEXT_COMMIT = "close-after-next-commit"


class FaultyProxy:
    def __init__(self, target: str, mode: str = FORWARD) -> None:
        self.target = target
        self.mode = mode
        self.commits = 0
        self.dropped = 0
        self.closed_on = 0
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _hang(self, client: socket.socket) -> None:
        """Keep the connection open and say nothing until the client gives up."""
        client.settimeout(None)
        while not self.closed.is_set():
            try:
                if not client.recv(65536):
                    return
            except OSError:
                return

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        upstream = http.client.HTTPConnection(self.target, timeout=30)
        with client:
            try:
                self._relay(client, reader, upstream)
            finally:
                upstream.close()

    def _relay(self, client: socket.socket, reader, upstream: http.client.HTTPConnection) -> None:
        while True:
            if self.mode == SILENT:
                return self._hang(client)
            try:
                request_line = reader.readline()
                if not request_line:
                    return
                headers = {}
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = reader.read(int(headers.get("content-length", 0)))
            except OSError:
                return
            if self.mode == SILENT:
                return self._hang(client)
            path = request_line.split()[1].decode()
            closing = self._closing(path)
            if closing == CLOSE_BEFORE_NEXT_COMMIT:
                return
            forwarded = {"Content-Type": "application/json"}
            if "authorization" in headers:
                forwarded["Authorization"] = headers["authorization"]
            try:
                upstream.request("POST", path, body, forwarded)
                answer = upstream.getresponse()
                data = answer.read()
            except OSError:
                return  # the member went away: so does the client's connection
            if closing == CLOSE_AFTER_NEXT_COMMIT:
                return
            if path == "/v3/kv/txn":
                with self.lock:
                    self.commits += 1
                    drop = self.mode in (DROP_COMMIT_ANSWERS, SILENT_AFTER_COMMIT)
                    if drop:
                        self.dropped += 1
                    if self.mode == SILENT_AFTER_COMMIT:
                        self.mode = SILENT
                if drop:
                    return self._hang(client)
            head = f"HTTP/1.1 {answer.status} X\r\nContent-Length: {len(data)}\r\n\r\n"
            try:
                client.sendall(head.encode() + data)
            except OSError:
                return

    def _closing(self, path: str) -> str | None:
        """The close mode this request spends, if it is the txn that mode waits for."""
        if path != "/v3/kv/txn":
            return None
        with self.lock:
            if self.mode not in (CLOSE_BEFORE_NEXT_COMMIT, CLOSE_AFTER_NEXT_COMMIT):
                return None
            closing, self.mode = self.mode, FORWARD
            self.closed_on += 1
            return closing

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
