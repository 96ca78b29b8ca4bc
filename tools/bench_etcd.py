"""Benchmark the plugin on etcd: conflicts, throughput, a frozen member, the cost of an ADD.

Usage::

    python tools/bench.py --etcd            # this section alone (a few minutes on two cores)
    python tools/bench.py --etcd --smoke    # tiny sizes
    python tools/bench_etcd.py [--smoke]    # the same

Starts its own etcd (``etcd`` on the PATH: Debian's ``etcd-server``), one member and a
three-member cluster on free loopback ports, in a temporary directory it removes at the
end.  Every ADD is a real plugin process (``python -m ecs_ipam`` of this checkout, or of
the installed package), as a container runtime starts it; each "host" is a thread that
starts its ADDs one after another.  Tables:

* ``Txn`` calls per ADD (etcd's own gRPC counters, summed over the members), for ADDs one
  after another and for ADDs 32 at a time: what concurrent ADDs cost in conflicts; and for
  32 threads of one process released together (the embedded API), where every ADD races;
* ADDs per second, 8 hosts sharing one pool, on one member and on three;
* the wall time of one ADD process with the first member of the URL frozen (SIGSTOP),
  against all members healthy, with the 5 s default timeout;
* one ADD process on plain etcd against the same on an LMDB file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBNET = "10.64.0.0/20"
FULL = {
    "sequential": 64,
    "concurrent": 64,
    "at_once": 32,
    "hosts": 8,
    "per_host": 50,
    "frozen": 12,
    "pair": 20,
    "per_thread": 4,
}
SMOKE = {
    "sequential": 8,
    "concurrent": 8,
    "at_once": 8,
    "hosts": 4,
    "per_host": 4,
    "frozen": 4,
    "pair": 4,
    "per_thread": 2,
}


class BenchError(Exception):
    """The benchmark could not run (etcd missing or not starting, an ADD that failed)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Member:
    """One etcd process on loopback ports, with its data in *directory*."""

    def __init__(self, directory: str, name: str) -> None:
        self.directory = directory
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def launch(self, etcd: str, initial_cluster: str, token: str) -> None:
        client = f"http://{self.endpoint}"
        with open(os.path.join(self.directory, f"{self.name}.log"), "ab") as log:
            self.process = subprocess.Popen(
                [
                    etcd,
                    "--name",
                    self.name,
                    "--data-dir",
                    os.path.join(self.directory, self.name),
                    "--listen-client-urls",
                    client,
                    "--advertise-client-urls",
                    client,
                    "--listen-peer-urls",
                    self.peer_url,
                    "--initial-advertise-peer-urls",
                    self.peer_url,
                    "--initial-cluster",
                    initial_cluster,
                    "--initial-cluster-token",
                    token,
                    "--log-level",
                    "error",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://{self.endpoint}{path}", timeout=2) as answer:
            data: bytes = answer.read()
            return data

    def healthy(self) -> bool:
        try:
            return bool(json.loads(self.get("/health")).get("health") == "true")
        except (OSError, ValueError):
            return False

    def txn_calls(self) -> int:
        """How many Txn requests this member's gRPC server handled (the gateway's too)."""
        total = 0
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith("grpc_server_handled_total{") and 'grpc_method="Txn"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total


class Cluster:
    def __init__(self, etcd: str, directory: str, size: int) -> None:
        self.members = [Member(directory, f"m{size}-{n}") for n in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        token = f"bench-{uuid.uuid4().hex[:8]}"
        for member in self.members:
            member.launch(etcd, initial, token)
        deadline = time.monotonic() + 60
        while not all(member.healthy() for member in self.members):
            if time.monotonic() > deadline or any(m.process and m.process.poll() is not None for m in self.members):
                self.stop()
                raise BenchError(f"etcd did not start (logs in {directory})")
            time.sleep(0.1)

    def url(self, prefix: str) -> str:
        return "etcd://" + ",".join(member.endpoint for member in self.members) + "/" + prefix

    def txn_calls(self) -> int:
        return sum(member.txn_calls() for member in self.members)

    def stop(self) -> None:
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                member.process.send_signal(signal.SIGCONT)
                member.process.kill()
                member.process.wait()


def plugin_env(db: str, root: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "IPAM_", "ECS_CNI_"))}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        CNI_COMMAND="ADD",
        CNI_NETNS="/var/run/netns/bench",
        CNI_IFNAME="eth0",
        CNI_PATH=REPO_ROOT,
        ECS_CNI_LOG_FILE=os.devnull,
        IPAM_DB_PATH=db,
        IPAM_DB_CONNECTION_TIMEOUT="5s",
    )
    return env


def add(db: str, owner: str, root: str = REPO_ROOT) -> float:
    """One ADD process for *owner*, of the package in checkout *root*; its wall time.

    :raises BenchError: it failed.
    """
    conf = {"cniVersion": "0.3.0", "name": "bench", "ipam": {"type": "ecs-ipam", "ipv4-subnet": SUBNET, "id": owner}}
    env = plugin_env(db, root)
    env["CNI_CONTAINERID"] = f"c-{owner}"
    started = time.perf_counter()
    # In *root*: `-m` puts the working folder first on the path, ahead of PYTHONPATH.
    done = subprocess.run(
        [sys.executable, "-m", "ecs_ipam"], input=json.dumps(conf).encode(), capture_output=True, env=env, cwd=root
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"ADD {owner} failed: {done.stdout.decode(errors='replace')[:300]}")
    return elapsed


def in_parallel(db: str, owners: list[str], workers: int, root: str = REPO_ROOT) -> tuple[float, int]:
    """ADD every owner, *workers* processes at a time: ``(seconds it took, ADDs that
    failed)``.  A failure (code 11 on a machine too loaded to answer in time) is
    counted, not fatal: the rows say how many there were."""
    pending = list(reversed(owners))
    lock = threading.Lock()
    failures: list[BenchError] = []

    def work() -> None:
        while True:
            with lock:
                if not pending:
                    return
                owner = pending.pop()
            try:
                add(db, owner, root)
            except BenchError as error:
                with lock:
                    failures.append(error)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if len(failures) == len(owners):
        raise BenchError(str(failures[0]))
    for failure in failures[:3]:
        print(f"(failed: {failure})", file=sys.stderr)
    return time.perf_counter() - started, len(failures)


# Writers that are truly concurrent: threads of one process, each with its own store and
# connection, released together, ADDing through the embedded API (no process start-up to
# spread them out in time).  Prints {"failed": N}.
_THREADS = """
import json, sys, threading
from ecs_ipam import IPAM
url, threads, per, subnet = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def conf(owner):
    return {"cniVersion": "0.3.0", "name": "bench", "ipam": {"type": "ecs-ipam", "ipv4-subnet": subnet, "id": owner}}
barrier, failed = threading.Barrier(threads), []
def work(k):
    with IPAM(url) as ipam:
        barrier.wait()
        for n in range(k * per, (k + 1) * per):
            try:
                ipam.add(conf(f"w-{n}"), f"c-{n}", "eth0")
            except Exception as error:
                failed.append(str(error))
workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
print(json.dumps({"failed": len(failed)}))
"""


def threads_txn_per_add(cluster: Cluster, threads: int, per: int, root: str) -> tuple[float, float, int]:
    """``(Txn calls per ADD, seconds, failed ADDs)`` of *threads* writers in one process,
    *per* ADDs each, in a pool one ADD created."""
    url = cluster.url(f"bench-{uuid.uuid4().hex[:8]}")
    add(url, "first", root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    before = cluster.txn_calls()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _THREADS, url, str(threads), str(per), SUBNET],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"the threaded writers failed: {done.stderr[-300:]}")
    failed = int(json.loads(done.stdout)["failed"])
    return (cluster.txn_calls() - before) / max(1, threads * per - failed), seconds, failed


def owners(tag: str, count: int) -> list[str]:
    return [f"{tag}-{n:04d}" for n in range(count)]


def txn_per_add(cluster: Cluster, count: int, workers: int, root: str = REPO_ROOT) -> tuple[float, int]:
    """``(Txn calls per ADD that succeeded, ADDs that failed)``, in a pool that one ADD
    created first (the ADDs that create a pool at the same moment all race for its
    bucket and gateway once: a cost of the pool's first second, not of its life)."""
    url = cluster.url(f"bench-{uuid.uuid4().hex[:8]}")
    add(url, "first", root)
    before = cluster.txn_calls()
    _, failed = in_parallel(url, owners("t", count), workers, root)
    return (cluster.txn_calls() - before) / (count - failed), failed


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    cells = [header] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n## {title}\n")
    for n, row in enumerate(cells):
        print("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def run(params: dict[str, int], etcd: str, workdir: str, against: str | None) -> None:
    """Every table; with *against* (another checkout), its rows beside this one's for
    the conflicts and the throughput, measured alternately in the same run."""
    roots = [("", REPO_ROOT)] + ([(f" ({against})", against)] if against else [])
    single = Cluster(etcd, workdir, 1)
    try:
        triple = Cluster(etcd, workdir, 3)
    except BaseException:
        single.stop()
        raise
    try:
        rows = []
        for name, cluster in (("1 member", single), ("3 members", triple)):
            for label, root in roots:
                sequential, _ = txn_per_add(cluster, params["sequential"], 1, root)
                concurrent, failed = txn_per_add(cluster, params["concurrent"], params["at_once"], root)
                rows.append([name + label, sequential, concurrent, concurrent / sequential, failed])
        table(
            f"Txn calls per ADD: one at a time, and {params['at_once']} at a time",
            ["etcd", "sequential", "concurrent", "ratio", "failed ADDs"],
            rows,
        )

        rows = []
        threads, per = params["at_once"], params["per_thread"]
        for name, cluster in (("1 member", single), ("3 members", triple)):
            for label, root in roots:
                calls, seconds, failed = threads_txn_per_add(cluster, threads, per, root)
                rows.append([name + label, threads * per, calls, seconds, failed])
        table(
            f"{threads} writers in one process (embedded API), {per} ADDs each",
            ["etcd", "ADDs", "Txn calls per ADD", "seconds", "failed ADDs"],
            rows,
        )

        rows = []
        total = params["hosts"] * params["per_host"]
        for name, cluster in (("1 member", single), ("3 members", triple)):
            for label, root in roots:
                url = cluster.url(f"bench-{uuid.uuid4().hex[:8]}")
                seconds, failed = in_parallel(url, owners("h", total), params["hosts"], root)
                rows.append([name + label, total, seconds, (total - failed) / seconds, failed])
        table(f"{params['hosts']} hosts sharing one pool", ["etcd", "ADDs", "seconds", "ADDs/s", "failed ADDs"], rows)

        rows = []
        url = triple.url(f"bench-{uuid.uuid4().hex[:8]}")
        healthy = [add(url, owner) for owner in owners("ok", params["frozen"])]
        first = triple.members[0]
        assert first.process is not None
        first.process.send_signal(signal.SIGSTOP)
        try:
            frozen = [add(url, owner) for owner in owners("fz", params["frozen"])]
        finally:
            first.process.send_signal(signal.SIGCONT)
        for name, times in (("all members healthy", healthy), ("first member frozen", frozen)):
            rows.append([name, len(times), statistics.median(times), max(times)])
        table(
            "One ADD process on 3 members (5 s timeout), seconds",
            ["cluster", "ADDs", "median", "max"],
            rows,
        )

        lmdb = os.path.join(workdir, "pair.db")
        url = single.url(f"bench-{uuid.uuid4().hex[:8]}")
        add(lmdb, "warm")
        add(url, "warm")
        on_lmdb, on_etcd = [], []
        for owner in owners("p", params["pair"]):
            on_lmdb.append(add(lmdb, owner))
            on_etcd.append(add(url, owner))
        lmdb_ms, etcd_ms = statistics.median(on_lmdb) * 1000, statistics.median(on_etcd) * 1000
        table(
            "One ADD process, ms (median, interleaved)",
            ["LMDB file", "etcd:// on loopback", "etcd/LMDB"],
            [[lmdb_ms, etcd_ms, etcd_ms / lmdb_ms]],
        )
    finally:
        single.stop()
        triple.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_etcd.py", description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes")
    parser.add_argument("--keep", action="store_true", help="keep the etcd data and logs")
    parser.add_argument(
        "--against", metavar="CHECKOUT", help="another checkout of ecs-ipam whose rows to show beside (a git worktree)"
    )
    args = parser.parse_args(argv)
    etcd = shutil.which("etcd")
    if etcd is None:
        print("bench: etcd is not installed (Debian: apt-get install etcd-server)", file=sys.stderr)
        return 1
    workdir = tempfile.mkdtemp(prefix="ecs-ipam-bench-etcd-")
    print(f"# ecs-ipam on etcd{' (smoke sizes)' if args.smoke else ''}")
    print(f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
    try:
        run(SMOKE if args.smoke else FULL, etcd, workdir, args.against)
    except BenchError as error:
        print(f"\nbench: FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
