"""A real etcd for tests: one member on loopback ports, with its data in a temporary directory.

    server = EtcdServer(tmp_path / "etcd")
    server.start()
    ... server.url ...          # etcd://127.0.0.1:PORT
    server.stop(); server.start()   # a restart keeps the data
    server.stop()

With ``tls=ServerTLS(...)`` it serves clients over TLS only and asks each for a
certificate of the CA (``--client-cert-auth``): ``server.url`` is then ``etcds://...``.
``server.enable_auth(...)`` creates root and users with roles limited to a prefix, then
turns etcd authentication on (through the JSON gateway: no password on a command line).
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

ETCD = shutil.which("etcd")
NOT_INSTALLED = "etcd is not installed (Debian: apt-get install etcd-server)"


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_etcd(directory: Path) -> Iterator[EtcdServer]:
    """A plain etcd started in *directory* for the body of the ``with``; skips the test
    where etcd is not installed."""
    import pytest

    if ETCD is None:
        pytest.skip(NOT_INSTALLED)
    server = EtcdServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ServerTLS(NamedTuple):
    """The PEM files of a TLS etcd: its CA, its certificate and key, and a client
    certificate and key of the same CA that the test harness itself uses."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


def prefix_range(prefix: str) -> tuple[str, str]:
    """``(key, range_end)`` of every key under ``prefix/``, base64 as the gateway wants."""
    start = f"{prefix}/".encode()
    end = start[:-1] + bytes([start[-1] + 1])
    return base64.b64encode(start).decode(), base64.b64encode(end).decode()


class EtcdServer:
    """One etcd process; the same ports and data directory across restarts."""

    def __init__(
        self, directory: Path, tls: ServerTLS | None = None, extra_args: tuple[str, ...] = (), name: str = "test"
    ) -> None:
        self.name = name
        # The --initial-cluster of every member (EtcdCluster sets it); alone by default.
        self.initial_cluster: str | None = None
        self.cluster_token = "ecs-ipam-test"
        self.tls = tls
        self.extra_args = list(extra_args)
        self.root_token: str | None = None
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = self.directory / "etcd.log"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'etcds' if self.tls else 'etcd'}://{self.endpoint}"

    @property
    def base(self) -> str:
        """The client URL in etcd's own form (http:// or https://)."""
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            "--cert-file",
            str(self.tls.cert),
            "--key-file",
            str(self.tls.key),
            "--trusted-ca-file",
            str(self.tls.ca),
            "--client-cert-auth",
        ]

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, timeout: float = 30.0) -> None:
        """Start etcd and wait until it serves requests.

        :raises RuntimeError: it exited or did not answer within *timeout* (its log is in the message).
        """
        self.launch()
        self.wait_healthy(timeout)

    def launch(self) -> None:
        """Start the etcd process without waiting for it (a cluster's members start together)."""
        if ETCD is None:
            raise RuntimeError(NOT_INSTALLED)
        client = self.base
        peer = self.peer_url
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    ETCD,
                    "--name",
                    self.name,
                    "--data-dir",
                    str(self.directory / "data"),
                    "--listen-client-urls",
                    client,
                    "--advertise-client-urls",
                    client,
                    "--listen-peer-urls",
                    peer,
                    "--initial-advertise-peer-urls",
                    peer,
                    "--initial-cluster",
                    self.initial_cluster or f"{self.name}={peer}",
                    "--initial-cluster-token",
                    self.cluster_token,
                    "--log-level",
                    "warn",
                    *self._tls_args(),
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until the launched etcd serves requests (a cluster member: has a leader).

        :raises RuntimeError: it exited or did not answer within *timeout*.
        """
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.process.returncode}:\n{self.log()}")
            if self.healthy():
                self.root_token = None  # simple tokens do not survive a restart
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy within {timeout:g}s:\n{self.log()}")

    def _context(self):
        if self.tls is None:
            return None
        import ssl

        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/health", timeout=1, context=self._context()) as answer:
                return json.loads(answer.read()).get("health") == "true"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def request(self, path: str, body: dict, token: str | None = None) -> dict:
        """POST *body* to the JSON gateway (as root once auth is on) and return the answer.

        :raises RuntimeError: etcd refused it (its answer is in the message).
        """
        headers = {"Content-Type": "application/json"}
        if token is None and self.root_token is not None and path != "/v3/auth/authenticate":
            token = self.root_token
        if token:
            headers["Authorization"] = token
        call = urllib.request.Request(f"{self.base}{path}", json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(call, timeout=10, context=self._context()) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"etcd refused {path}: {error.read().decode(errors='replace')}") from None

    def add_user(self, name: str, password: str, prefix: str | None) -> None:
        """Create user *name* with read-write access to the keys under ``prefix/`` only
        (through a role of the same name); no role when *prefix* is None."""
        self.request("/v3/auth/user/add", {"name": name, "password": password})
        if prefix is not None:
            key, range_end = prefix_range(prefix)
            self.request("/v3/auth/role/add", {"name": name})
            self.request(
                "/v3/auth/role/grant",
                {"name": name, "perm": {"permType": "READWRITE", "key": key, "range_end": range_end}},
            )
            self.request("/v3/auth/user/grant", {"user": name, "role": name})

    def enable_auth(self, root_password: str) -> None:
        """Create root (with the root role) and turn authentication on; later
        :meth:`request` calls go as root."""
        self.request("/v3/auth/user/add", {"name": "root", "password": root_password})
        self.request("/v3/auth/user/grant", {"user": "root", "role": "root"})
        self.request("/v3/auth/enable", {})
        self.root_password = root_password
        self.login_root()

    def login_root(self) -> None:
        answer = self.request("/v3/auth/authenticate", {"name": "root", "password": self.root_password})
        self.root_token = answer["token"]

    def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix/``, read as root."""
        if self.root_token is None and getattr(self, "root_password", None):
            self.login_root()
        key, range_end = prefix_range(prefix)
        answer = self.request("/v3/kv/range", {"key": key, "range_end": range_end, "keys_only": True})
        return [base64.b64decode(kv["key"]).decode() for kv in answer.get("kvs", [])]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop etcd (SIGKILL: as if it crashed) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


class EtcdCluster:
    """*size* etcd members on loopback ports, each with its data in *directory*/<name>.

    ``cluster.url`` names every member, in order; ``freeze``/``thaw`` stop and resume
    one member's process (SIGSTOP: a long GC pause, a full disk, a one-way network loss
    look the same from outside), ``member_id``/``leader`` say who leads.
    """

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.members = [EtcdServer(Path(directory) / f"m{n}", name=f"m{n}") for n in range(size)]
        initial = ",".join(f"{member.name}={member.peer_url}" for member in self.members)
        for member in self.members:
            member.initial_cluster = initial
            member.cluster_token = f"ecs-ipam-{self.members[0].peer_port}"

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(member.endpoint for member in self.members)

    def start(self, timeout: float = 60.0) -> None:
        for member in self.members:
            member.launch()
        for member in self.members:
            member.wait_healthy(timeout)

    def stop(self) -> None:
        for member in self.members:
            self.thaw(member)
            member.stop(signal.SIGKILL)

    @staticmethod
    def freeze(member: EtcdServer) -> None:
        assert member.process is not None
        member.process.send_signal(signal.SIGSTOP)

    @staticmethod
    def thaw(member: EtcdServer) -> None:
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGCONT)

    def status(self, member: EtcdServer) -> dict:
        return member.request("/v3/maintenance/status", {})

    def leader(self) -> EtcdServer:
        """The member that leads now (asked of every member until one knows)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for member in self.members:
                try:
                    status = self.status(member)
                except (OSError, RuntimeError):
                    continue
                for candidate in self.members:
                    if candidate.process is not None and self.status_id(candidate) == status.get("leader"):
                        return candidate
            time.sleep(0.1)
        raise RuntimeError("the cluster has no leader")

    def status_id(self, member: EtcdServer) -> str | None:
        try:
            return str(self.status(member)["header"]["member_id"])
        except (OSError, RuntimeError, KeyError):
            return None


@contextmanager
def running_cluster(directory: Path, size: int = 3) -> Iterator[EtcdCluster]:
    """A started :class:`EtcdCluster` for the body of the ``with``; every member is
    resumed and killed at the end, whatever happened.  Skips where etcd is missing."""
    import pytest

    if ETCD is None:
        pytest.skip(NOT_INSTALLED)
    cluster = EtcdCluster(directory, size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
