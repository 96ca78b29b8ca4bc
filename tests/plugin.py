"""Run ecs-ipam as a real process, as a container runtime does, and read back what it recorded.

Shared by the plugin-level tests (parallel launches, crashes, busy and broken databases,
bad input, security).  Nothing here imports the plugin into the test process except the
read-only helpers at the end, which read the database through ``ecs_ipam.kv``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import msgpack
import netaddr

ROOT = Path(__file__).resolve().parent.parent
V4_SUBNET = "169.254.172.0/22"
V6_SUBNET = "fd00:ec2::172:0/112"
# What the ECS agent sends as CNI_NETNS when it releases: a path that no longer exists.
AGENT_NETNS = "/host/proc//ns/net"

# Loads the plugin, says so on the ready pipe, then blocks until the gate pipe is closed:
# a crowd of plugins started this way reaches the database within a few milliseconds,
# instead of one interpreter start-up (about 0.1 s of CPU each) apart.
_GATED_MAIN = (
    "import os, sys\n"
    "from ecs_ipam.cni import main\n"
    "import ecs_ipam.ipam, ecs_ipam.kv.lmdb_store\n"
    "gate, ready = int(sys.argv[1]), int(sys.argv[2])\n"
    "os.write(ready, b'.')\n"
    "os.close(ready)\n"
    "os.read(gate, 1)\n"
    "os.close(gate)\n"
    "sys.exit(main([]))\n"
)

# Pipes hold at least this much, so a configuration this size is written at start-up and
# a crowd of plugins never waits for the test to feed them one after another.
_PIPE_SAFE = 16384


def netconf(owner_id: str | None = None, *, cni_version: str = "0.3.0", **fields: object) -> dict:
    """A network configuration as the ECS agent sends it; *fields* go into ``ipam``.

    Field names use ``_`` for ``-`` (``ipv6_subnet="fd00::/64"``); ``ipv4_subnet``
    defaults to the agent's task subnet, and ``None`` removes a field.
    """
    ipam: dict = {"type": "ecs-ipam", "ipv4-subnet": V4_SUBNET}
    if owner_id is not None:
        ipam["id"] = owner_id
    for name, value in fields.items():
        key = name.replace("_", "-")
        if value is None:
            ipam.pop(key, None)
        else:
            ipam[key] = value
    return {"cniVersion": cni_version, "name": "ecs-task-network", "ipam": ipam}


def plugin_environment(
    command: str,
    db_path: str | os.PathLike | None,
    env_overrides: Mapping[str, str | bytes | None] | None = None,
) -> dict:
    """The environment of one plugin run: the test's own, minus anything CNI, plus the run's.

    :param env_overrides: variables to set; ``None`` removes one (a missing variable).
    :raises ValueError: no database path at all: the plugin would use the host's default.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith(("CNI_", "IPAM_", "ECS_CNI_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(
        CNI_COMMAND=command,
        CNI_CONTAINERID="container-1",
        CNI_NETNS=AGENT_NETNS,
        CNI_IFNAME="eth0",
        CNI_PATH=str(ROOT),
        ECS_CNI_LOG_FILE=os.devnull,
    )
    if db_path is not None:
        env["IPAM_DB_PATH"] = os.fspath(db_path)
    for name, value in (env_overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    if "IPAM_DB_PATH" not in env:
        raise ValueError("a test must name its own database (IPAM_DB_PATH)")
    return env


def _stdin_bytes(conf: object) -> bytes:
    if isinstance(conf, bytes):
        return conf
    if isinstance(conf, str):
        return conf.encode("utf-8", "surrogatepass")
    return json.dumps(conf).encode("utf-8")


def parse_output(stdout: bytes) -> dict | None:
    """The one JSON object the plugin printed, or None when it printed nothing.

    :raises AssertionError: the output is anything else.
    """
    text = stdout.decode("utf-8")
    if not text.strip():
        return None
    assert text.endswith("\n") and text.count("\n") == 1, f"not one line of output: {text[:500]!r}"
    document = json.loads(text)
    assert isinstance(document, dict), f"output is not a JSON object: {text[:500]!r}"
    return document


class PluginProcess:
    """One plugin process, started at once; :meth:`finish` collects what it printed.

    :param gate_fds: ``(gate, ready)`` pipe ends: the plugin loads, writes a byte to
        *ready*, then waits until every write end of *gate* is closed before it runs
        (see :func:`start_together`).
    """

    def __init__(
        self,
        command: str,
        conf: object,
        db_path: str | os.PathLike | None,
        env_overrides: Mapping[str, str | bytes | None] | None = None,
        gate_fds: tuple[int, int] | None = None,
    ) -> None:
        env = plugin_environment(command, db_path, env_overrides)
        if gate_fds is None:
            args, pass_fds = [sys.executable, "-m", "ecs_ipam"], ()
        else:
            args, pass_fds = [sys.executable, "-c", _GATED_MAIN, *map(str, gate_fds)], gate_fds
        self.command = command
        self.started = time.monotonic()
        self.ended: float | None = None
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
            pass_fds=pass_fds,
        )
        self._stdin: bytes | None = _stdin_bytes(conf)
        if len(self._stdin) <= _PIPE_SAFE:
            try:
                self.proc.stdin.write(self._stdin)
                self.proc.stdin.close()
            except BrokenPipeError:
                pass  # killed already, or exited without reading: finish() reports it
            self.proc.stdin = None
            self._stdin = None

    def kill(self) -> None:
        """SIGKILL the plugin, as the OOM killer or a node shutdown would."""
        if self.proc.poll() is None:
            self.proc.kill()

    def finish(self, timeout: float) -> tuple[int, dict | None, str]:
        """Wait for the plugin; return ``(returncode, parsed output, stderr)``.

        A killed plugin has a negative returncode and its output is whatever it had
        printed (usually nothing), parsed only if complete.
        :raises AssertionError: the plugin was still running after *timeout* seconds.
        """
        try:
            out, err = self.proc.communicate(self._stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(
                f"{self.command} still running after {timeout}s; stderr: {err.decode(errors='replace')[-2000:]}"
            ) from None
        if self.ended is None:
            self.ended = time.monotonic()
        stderr = err.decode("utf-8", "replace")
        if self.proc.returncode < 0:
            try:
                return self.proc.returncode, parse_output(out), stderr
            except (AssertionError, ValueError):
                return self.proc.returncode, None, stderr
        return self.proc.returncode, parse_output(out), stderr


def start_together(
    runs: list[tuple[str, object, Mapping[str, str | bytes | None] | None]],
    db_path: str | os.PathLike,
    timeout: float = 120.0,
) -> list[PluginProcess]:
    """Start one plugin per ``(command, conf, env_overrides)`` and let them all go at once.

    Returns when every plugin has loaded and the gate is open; each plugin's ``started``
    is then the moment of the release.
    :raises AssertionError: they did not all load within *timeout* seconds.
    """
    gate_read, gate_write = os.pipe()
    ready_read, ready_write = os.pipe()
    plugins: list[PluginProcess] = []
    try:
        try:
            for command, conf, env_overrides in runs:
                plugins.append(PluginProcess(command, conf, db_path, env_overrides, (gate_read, ready_write)))
        finally:
            os.close(gate_read)
            os.close(ready_write)
        loaded, deadline = 0, time.monotonic() + timeout
        while loaded < len(plugins):
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([ready_read], [], [], max(remaining, 0))
            chunk = os.read(ready_read, 4096) if readable else b""
            if not chunk:
                for plugin in plugins:
                    plugin.kill()
                errors = {plugin.finish(10)[2][-500:] for plugin in plugins} - {""}
                raise AssertionError(f"only {loaded} of {len(plugins)} plugins loaded: {errors}")
            loaded += len(chunk)
    finally:
        os.close(ready_read)
        os.close(gate_write)
    released = time.monotonic()
    for plugin in plugins:
        plugin.started = released
    return plugins


def finish_all(plugins: list[PluginProcess], timeout: float) -> list[tuple[int, dict | None, str]]:
    """Wait for every plugin, noting when each one ended; return what each :meth:`finish` returns.

    :raises AssertionError: some plugin was still running after *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    running = list(plugins)
    while running and time.monotonic() < deadline:
        now = time.monotonic()
        for plugin in [p for p in running if p.proc.poll() is not None]:
            plugin.ended = now
            running.remove(plugin)
        time.sleep(0.005)
    return [plugin.finish(max(deadline - time.monotonic(), 0.1)) for plugin in plugins]


def run_plugin(
    command: str,
    conf: object,
    env_overrides: Mapping[str, str | bytes | None] | None = None,
    db_path: str | os.PathLike | None = None,
    timeout: float = 30.0,
) -> tuple[int, dict | None, str]:
    """Run ``python -m ecs_ipam`` once, as a runtime does, and wait for it.

    :param conf: the network configuration: a dict (sent as JSON), or raw str/bytes.
    :param env_overrides: CNI variables to set or (with ``None``) remove.
    :param db_path: the database (``IPAM_DB_PATH``); required unless in *env_overrides*.
    :return: ``(returncode, the JSON object printed or None, stderr)``.
    """
    return PluginProcess(command, conf, db_path, env_overrides).finish(timeout)


# Another process paused inside one of the plugin's own transactions: the body of an ADD
# (write) or of a STATUS (read), run by ecs_ipam.ipam on the real store.  It reports the
# addresses it claimed, then waits for "commit" on stdin; anything else aborts.
_PAUSED_TRANSACTION = """
import json, sys, time
from ecs_ipam import ipam, kv
from ecs_ipam.allocator import Owner
from ecs_ipam.config import parse_netconf

db_path, write, conf = sys.argv[1], sys.argv[2] == "write", parse_netconf(json.loads(sys.argv[3]))
store = kv.open_store(db_path, timeout=60)

class PausingStore:
    def transact(self, body, write=True):
        with store.transaction(write=write) as tx:
            result = body(tx)
            claimed = [str(address.ip) for _, address in result or ()]
            print("inside " + json.dumps(claimed), flush=True)
            if sys.stdin.readline().strip() != "commit":
                raise SystemExit(3)
        return result

if write:
    ipam.add(PausingStore(), conf, Owner(conf.owner_id, "holder", "eth0"), time.time())
else:
    ipam.status(PausingStore(), conf)
print("committed", flush=True)
"""


class PausedTransaction:
    """Another process inside one of the plugin's transactions, holding it until told.

    A write transaction (an ADD of *conf*) holds the database's writer lock; a read
    transaction (a STATUS) holds a reader slot.
    :raises AssertionError: the transaction did not start within *timeout* seconds.
    """

    def __init__(self, db_path: str | os.PathLike, conf: dict, write: bool = True, timeout: float = 30.0) -> None:
        mode = "write" if write else "read"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PAUSED_TRANSACTION, os.fspath(db_path), mode, json.dumps(conf)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        line = self._line(timeout)
        if not line.startswith("inside "):
            self.proc.kill()
            raise AssertionError(f"no transaction: {line!r} {self.proc.stderr.read().decode()[-2000:]}")
        self.claimed: list[str] = json.loads(line[len("inside ") :])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _line(self, timeout: float) -> str:
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().decode() if readable else ""

    def commit(self, timeout: float = 30.0) -> None:
        """Let the transaction commit; wait for the process to end."""
        self.proc.stdin.write(b"commit\n")
        self.proc.stdin.flush()
        line = self._line(timeout)
        assert line == "committed\n", (line, self.proc.stderr.read().decode()[-2000:])
        self.proc.communicate(timeout=timeout)

    def abort(self, timeout: float = 30.0) -> None:
        """Let the transaction abort; wait for the process to end."""
        self.proc.communicate(b"abort\n", timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the process inside its transaction and reap it."""
        self.proc.kill()
        self.proc.communicate(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL

    def __enter__(self) -> PausedTransaction:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def add_ok(db_path: str | os.PathLike, owner_id: str, **fields: object) -> dict:
    """Run an ADD that must succeed; return the result."""
    code, result, stderr = run_plugin("ADD", netconf(owner_id, **fields), db_path=db_path)
    assert code == 0, (result, stderr)
    return result


def result_ips(result: Mapping) -> list[str]:
    """The addresses (without prefix) of an ADD result of the 0.3.0 shape."""
    return [str(netaddr.IPNetwork(ip["address"]).ip) for ip in result["ips"]]


# --- the database, read back ------------------------------------------------------------------


def files_snapshot(directory: str | os.PathLike) -> dict[str, bytes | str]:
    """Every entry under *directory* with its bytes: what a rejected command must not change.

    LMDB's ``-lock`` files are listed but not compared byte for byte: readers register in
    them, which is no change to the database.
    """
    snapshot: dict[str, bytes | str] = {}
    top = os.fspath(directory)
    for parent, dirs, files in os.walk(top):
        for name in dirs:
            snapshot[os.path.relpath(os.path.join(parent, name), top) + "/"] = "<directory>"
        for name in files:
            path = os.path.join(parent, name)
            relative = os.path.relpath(path, top)
            if name.endswith("-lock"):
                snapshot[relative] = "<lock file>"
            else:
                with open(path, "rb") as f:
                    snapshot[relative] = f.read()
    return snapshot


def read_buckets(db_path: str | os.PathLike) -> dict[str, dict[str, object]]:
    """Every bucket of the database, each value decoded from msgpack where it is msgpack
    (other programs' buckets may hold anything); {} when there is no database."""
    from ecs_ipam import kv

    path = os.fspath(db_path)
    if not os.path.exists(path):
        return {}
    with kv.open_store(path, read_only=True) as store, store.transaction(write=False) as tx:
        return {name: {pair.key: _decoded(pair.value) for pair in tx.bucket(name).list()} for name in store.buckets()}


def _decoded(raw: bytes) -> object:
    try:
        return msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException):
        return raw


def check_records(db_path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """Check that the plugin's records are consistent; return ``{bucket: {owner id: address}}``.

    Consistent means, in every bucket named by a CIDR (a pool; other buckets belong to
    other programs or to a migration): the name is canonical; every key is an address of
    the pool, its last-known pointer or an id index entry; no id holds two
    addresses of a pool; each id's index entry names the address it holds and no index
    entry is left over.  Across buckets (one address space per database): no address is
    held by a task in one bucket and recorded in another.  An address cannot have two
    owners in one bucket, so what a test checks on top is that the owners recorded are the
    ones the plugin reported.
    :raises AssertionError: anything else.
    """
    from ecs_ipam.pool_store import GATEWAY_OWNER, INDEX_PREFIXES, LAST_KNOWN_KEY, id_index_key

    holders: dict[str, dict[str, str]] = {}
    recorded: dict[str, list[tuple[str, str]]] = {}
    for bucket, pairs in read_buckets(db_path).items():
        if "/" not in bucket:
            continue
        subnet = netaddr.IPNetwork(bucket)
        assert str(subnet.cidr) == bucket, f"bucket {bucket!r} is not a canonical CIDR"
        owners: dict[str, str] = {}
        index: dict[str, object] = {}
        for key, value in pairs.items():
            if key == LAST_KNOWN_KEY[subnet.version]:
                assert netaddr.IPAddress(value) in subnet, (bucket, key, value)
            elif key.startswith(INDEX_PREFIXES):
                index[key] = value
            else:
                address = netaddr.IPAddress(key)
                assert address in subnet and address.value != subnet.first, (bucket, key)
                assert str(address) == key, f"{bucket}: address key {key!r} is not canonical"
                owner = value["id"]
                recorded.setdefault(key, []).append((bucket, owner))
                # Anonymous leases ("") have no index entry, and any number coexist.
                if owner not in (GATEWAY_OWNER[subnet.version], ""):
                    owners[key] = owner
        counts = Counter(owners.values())
        twice = {owner: n for owner, n in counts.items() if n > 1}
        assert not twice, f"{bucket}: ids holding more than one address: {twice}"
        held = {owner: address for address, owner in owners.items()}
        expected_index = {id_index_key(owner): address for owner, address in held.items()}
        assert index == expected_index, f"{bucket}: id index {index} does not match records {held}"
        holders[bucket] = held
    for address, records in recorded.items():
        tasks = [(bucket, owner) for bucket, owner in records if owner not in GATEWAY_OWNER.values()]
        assert not tasks or len(records) == 1, f"{address} is recorded in several pools: {records}"
    return holders
