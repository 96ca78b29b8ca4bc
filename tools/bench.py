"""Benchmark the plugin as the container runtime sees it, and the allocator as the pool fills.

Usage::

    python tools/bench.py            # the full run (a few minutes on two cores)
    python tools/bench.py --smoke    # tiny sizes, well under a minute: CI runs this
    python tools/bench.py --check    # exit 2 when a target of issue #5 or #12 is missed
    python tools/bench.py --peer PATH/TO/OTHER-IPAM-PLUGIN   # its rows side by side
    python tools/bench.py --etcd     # the plugin on etcd instead: see tools/bench_etcd.py

Sections, each printed as a table:

* process latency: an ADD+DEL pair of ``ecs-ipam`` processes, next to the floor (two bare
  interpreters, ``python -I -c pass``: what any Python plugin pays before its first
  import), each ``--peer`` plugin and Debian's ``host-local`` plugin when it is installed;
  samples are interleaved so that load from elsewhere on the machine hits every row alike;
  peak RSS of each process;
* a parallel ADD storm (and the DEL storm that undoes it) against one database, next to
  as many bare interpreters started at once; rounds interleaved, medians reported;
* filling a small pool through the CLI, and a /16 and many addresses of an IPv6 /64
  through the embedded API: the last window of (up to 1,000) allocations against the
  first; the API rows time the two alternately, in a fresh pool and in one filled up to
  the last window, so that a burst of load or fsync latency elsewhere hits both alike;
* DEL by id in a pool with few addresses in use against a full one (alternately too),
  and the worst walk: ADD in a full /16 right after releasing one early address.

Run it with the interpreter the plugin is installed for (a venv's python finds the venv's
``ecs-ipam``).  In a source checkout without an installed console script it runs
``python -m ecs_ipam`` from the checkout.  The children run without
``PYTHONDONTWRITEBYTECODE``, so that, as in an installed plugin, they load cached bytecode
instead of compiling the package at every start.

Exit code: 0 when every section ran, 1 when the plugin failed where it must not (a
sequential ADD or DEL), 2 with ``--check`` when a target was missed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from statistics import median
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ecs_ipam import IPAM

Env = dict[str, str]
# What a section measured against its limit: (measured, limit).
Targets = dict[str, tuple[float, float]]
# A process from start(): it, its stdin and stderr files, and when it began.
Started = tuple["subprocess.Popen[bytes]", IO[bytes], IO[bytes], float]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_LOCAL = "/usr/lib/cni/host-local"
# Measures peak RSS from a small parent: Linux carries a process's peak RSS over exec, and
# a child of this benchmark starts out as a copy of it, so rusage seen from here never
# reports less than the benchmark's own size.
GNU_TIME = "/usr/bin/time"
FLOOR_CODE = "pass"

# Targets of issue #26 (the process rows, against bare interpreters) and #5 (the rest).
MAX_LATENCY_RATIO = 1.8  # the pip-installed console script
MAX_ISOLATED_LATENCY_RATIO = 1.5  # python -I -S with an explicit path, as the bundle runs
MAX_STORM_RATIO = 2.5
TARGET_STORM_WIDTH = 64
MAX_ADD_RSS_ABOVE_FLOOR_MB = 6.0
# Issue #19: --plugin pointed at the self-contained bundle, against the console script.
MAX_PLUGIN_TO_CONSOLE_SCRIPT_RATIO = 1.25
MAX_FILL_RATIO = 1.5
MAX_DEL_RATIO = 1.5

SECTIONS = ("phases", "latency", "storm", "cli", "api", "pools")

FULL = {
    "runs": 60,
    "phase_runs": 30,
    "storm": [16, 64, 128],
    "storm_rounds": 3,
    "cli_subnet": "10.20.0.0/22",
    "api_subnet": "10.16.0.0/16",
    "v6_subnet": "fd00:ec2:0:1::/64",
    "v6_count": 16382,
    "del_count": 200,
    "pools": 50,
    "pool_samples": 200,
}
SMOKE = {
    "runs": 3,
    "phase_runs": 3,
    "storm": [8],
    "storm_rounds": 1,
    "cli_subnet": "10.20.0.0/28",
    "api_subnet": "10.16.0.0/24",
    "v6_subnet": "fd00:ec2:0:1::/64",
    "v6_count": 100,
    "del_count": 20,
    "pools": 50,
    "pool_samples": 10,
}


class BenchError(Exception):
    """The plugin failed where the benchmark needs it to succeed."""


# --- running processes ---------------------------------------------------------------------


class Outcome:
    """One finished process: exit code, stdout, stderr, wall seconds, peak RSS in MB."""

    __slots__ = ("code", "err", "out", "rss_mb", "seconds")

    def __init__(self, code: int, out: bytes, err: bytes, seconds: float, rss_mb: float) -> None:
        self.code, self.out, self.err, self.seconds, self.rss_mb = code, out, err, seconds, rss_mb

    def json(self) -> dict[str, Any]:
        try:
            document: dict[str, Any] = json.loads(self.out)
            return document
        except ValueError:
            return {}


def start(argv: list[str], env: Env, stdin: bytes) -> Started:
    """Start *argv* reading *stdin* from a file (so no feeder thread is timed)."""
    # Both files are handed to the caller: finish() closes them.
    source = tempfile.TemporaryFile()  # noqa: SIM115
    source.write(stdin)
    source.seek(0)
    errors = tempfile.TemporaryFile()  # noqa: SIM115
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=source, stdout=subprocess.PIPE, stderr=errors, env=env)
    return proc, source, errors, began


def finish(started: Started) -> Outcome:
    """Wait for a process from :func:`start`; its own rusage gives its peak RSS."""
    proc, source, errors, began = started
    assert proc.stdout is not None  # started with stdout=PIPE
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - began
    # Reaped here, not by Popen: tell it, so that it does not wait for the pid again.
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    source.close()
    errors.seek(0)
    err = errors.read()
    errors.close()
    return Outcome(proc.returncode, out, err, seconds, usage.ru_maxrss / 1024)


def run(argv: list[str], env: Env, stdin: bytes = b"") -> Outcome:
    return finish(start(argv, env, stdin))


def peak_rss_mb(argv: list[str], env: Env, stdin: bytes = b"") -> float | None:
    """The peak RSS of *argv* in MB, measured by GNU time; None without it."""
    if not os.access(GNU_TIME, os.X_OK):
        return None
    with tempfile.NamedTemporaryFile("r") as report:
        outcome = run([GNU_TIME, "-q", "-f", "%M", "-o", report.name, *argv], env, stdin)
        checked(outcome, " ".join(argv))
        return int(report.read().split()[-1]) / 1024


def plugin_command(explicit: str | None) -> tuple[list[str], Env, str]:
    """The ecs-ipam command line, extra environment, and a label for the table."""
    if explicit:
        return explicit.split(), {}, explicit
    beside = os.path.join(os.path.dirname(sys.executable), "ecs-ipam")
    for candidate in (beside, shutil.which("ecs-ipam")):
        if candidate and os.access(candidate, os.X_OK):
            return [candidate], {}, "ecs-ipam (console script)"
    return [sys.executable, "-m", "ecs_ipam"], {"PYTHONPATH": REPO_ROOT}, "python -m ecs_ipam (checkout)"


def child_environment(extra: Env) -> Env:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra)
    return env


class Plugin:
    """ecs-ipam as a process, on one database."""

    cni_version = "1.0.0"
    # The pair's median / floor this row must stay under, for the targets table.
    limit: float | None = None

    def __init__(self, argv: list[str], base_env: Env, workdir: str, name: str, subnet: str, label: str = "") -> None:
        self.argv = argv
        self.label = label
        self.base_env = base_env
        self.db_path = os.path.join(workdir, f"{name}.db")
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.subnet = subnet

    def conf(self, owner: str) -> bytes:
        return json.dumps(
            {
                "cniVersion": self.cni_version,
                "name": "bench",
                "type": "ecs-ipam",
                "ipam": {
                    "type": "ecs-ipam",
                    "id": owner,
                    "ipv4-subnet": self.subnet,
                    "ipv4-routes": [{"dst": "169.254.170.2/32"}],
                },
            }
        ).encode()

    def env(self, command: str, owner: str) -> Env:
        return dict(
            self.base_env,
            CNI_COMMAND=command,
            CNI_CONTAINERID=f"container-{owner}",
            CNI_NETNS=f"/var/run/netns/{owner}",
            CNI_IFNAME="eth0",
            IPAM_DB_PATH=self.db_path,
            ECS_CNI_LOG_FILE=self.log_path,
        )

    def start(self, command: str, owner: str) -> Started:
        return start(self.argv, self.env(command, owner), self.conf(owner))

    def call(self, command: str, owner: str) -> Outcome:
        return finish(self.start(command, owner))


class Peer(Plugin):
    """Another ecs-ipam implementation (the Go original, say): same environment and
    configuration, at the one cniVersion the Go original accepts."""

    cni_version = "0.3.0"

    def env(self, command: str, owner: str) -> Env:
        return dict(super().env(command, owner), CNI_PATH=os.path.dirname(self.argv[0]))


class HostLocal(Plugin):
    """Debian's host-local IPAM plugin, for comparison."""

    def __init__(self, base_env: Env, workdir: str, name: str, subnet: str) -> None:
        super().__init__([HOST_LOCAL], base_env, workdir, name, subnet, "host-local")
        self.data_dir = os.path.join(workdir, f"{name}.d")

    def conf(self, owner: str) -> bytes:
        return json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "bench",
                "type": "host-local",
                "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]], "dataDir": self.data_dir},
            }
        ).encode()

    def env(self, command: str, owner: str) -> Env:
        return dict(
            self.base_env,
            CNI_COMMAND=command,
            CNI_CONTAINERID=f"container-{owner}",
            CNI_NETNS=f"/var/run/netns/{owner}",
            CNI_IFNAME="eth0",
            CNI_PATH=os.path.dirname(HOST_LOCAL),
        )


def isolated_code(body: str) -> str:
    """``python -I -S -c`` code that finds ecs-ipam and its dependencies where this
    interpreter finds them, as the self-contained bundle will (no site, no wrapper)."""
    import lmdb
    import msgpack
    import netaddr

    import ecs_ipam

    paths: list[str] = []
    for module in (ecs_ipam, lmdb, msgpack, netaddr):
        root = os.path.dirname(os.path.dirname(os.path.abspath(str(module.__file__))))
        if root not in paths:
            paths.append(root)
    return f"import sys; sys.path[:0] = {paths!r}\n{body}"


def isolated_plugin(base_env: Env, workdir: str, name: str, subnet: str) -> Plugin:
    code = isolated_code("from ecs_ipam.entry import run; run()")
    plugin = Plugin(
        [sys.executable, "-I", "-S", "-c", code], base_env, workdir, name, subnet, "python -I -S (bundle-like)"
    )
    plugin.limit = MAX_ISOLATED_LATENCY_RATIO
    return plugin


def checked(outcome: Outcome, what: str) -> Outcome:
    if outcome.code != 0:
        raise BenchError(f"{what} failed with exit code {outcome.code}: {outcome.out[:300]!r} {outcome.err[:300]!r}")
    return outcome


# --- statistics and tables -------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * share)) - 1]


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [header] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n## {title}\n")
    for n, row in enumerate(cells):
        print(
            "  " + "  ".join(text.ljust(w) if i == 0 else text.rjust(w) for i, (text, w) in enumerate(zip(row, widths)))
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def ms(seconds: float) -> float:
    return seconds * 1000


# --- sections -------------------------------------------------------------------------------

# One CNI call as ecs_ipam.entry makes it, with its phases timed on the clock all processes
# share (perf_counter is CLOCK_MONOTONIC on Linux), and the writer lock's hold timed
# around the store's own lock methods; the times go to stderr.
PHASE_DRIVER = """
import time
started = time.perf_counter()
import gc
gc.disable()
import os
from ecs_ipam import entry, ipam
from ecs_ipam.kv import lmdb_store
imported = time.perf_counter()
held = []
Environment = lmdb_store._Environment
lock_writer, unlock_writer = Environment.lock_writer, Environment.unlock_writer
def timed_lock(self, timeout):
    lock_writer(self, timeout)
    held.append(time.perf_counter())
def timed_unlock(self):
    held.append(time.perf_counter())
    unlock_writer(self)
Environment.lock_writer, Environment.unlock_writer = timed_lock, timed_unlock
code = entry.main()
worked = time.perf_counter()
os.write(2, ("phases " + " ".join(map(repr, [started, imported, worked, *held])) + "\\n").encode())
entry.exit_now(code)
"""
# The floor's own start-up and shutdown.
PHASE_FLOOR = "import time, os; os.write(2, ('phases %r\\n' % time.perf_counter()).encode())"


def phase_times(started: Started) -> list[float]:
    """Spawn-relative times of a phase-reporting process: [spawned, *reported, reaped]."""
    began = started[3]
    outcome = checked(finish(started), "a phase-timed call")
    line = next(line for line in outcome.err.decode().splitlines() if line.startswith("phases "))
    return [began, *map(float, line.split()[1:]), began + outcome.seconds]


PHASES = ("start-up", "imports", "work", "in lock", "shutdown", "total")


def phases(plugin: Plugin, floor_env: Env, runs: int) -> None:
    """Where one ADD's and one DEL's time goes: start-up (spawn to the first line: the
    interpreter, site), imports, the work, and shutdown (exit to reaped), with the time
    inside the writer lock; beside a bare interpreter's start-up and shutdown.  Once with
    site (as the console script runs, less its wrapper), once with ``-I -S`` (as the
    bundle will)."""
    modes = {"python": [], "python -I -S": ["-I", "-S"]}
    samples: dict[str, dict[str, list[float]]] = {}

    def record(row: str, values: list[float]) -> None:
        for phase, value in zip(PHASES, values):
            samples.setdefault(row, {}).setdefault(phase, []).append(value)

    warmup = 3  # bytecode caches, page cache, the database itself
    for n in range(warmup + runs):
        for mode, flags in modes.items():
            floor = phase_times(start([sys.executable, "-I", *flags[1:], "-c", PHASE_FLOOR], floor_env, b""))
            driver = isolated_code(PHASE_DRIVER) if flags else PHASE_DRIVER
            owner = f"phases-{n}"
            calls = [
                phase_times(
                    start([sys.executable, *flags, "-c", driver], plugin.env(command, owner), plugin.conf(owner))
                )
                for command in ("ADD", "DEL")
            ]
            if n < warmup:
                continue
            spawned, printed, reaped = floor
            record(
                f"floor: python {' '.join(['-I', *flags[1:]])} -c pass",
                [printed - spawned, 0, 0, 0, reaped - printed, reaped - spawned],
            )
            for command, (spawned, started, imported, worked, *held, reaped) in zip(("ADD", "DEL"), calls):
                in_lock = sum(held[1::2]) - sum(held[::2])
                record(
                    f"{command}, {mode}",
                    [
                        started - spawned,
                        imported - started,
                        worked - imported,
                        in_lock,
                        reaped - worked,
                        reaped - spawned,
                    ],
                )
    rows: list[list[object]] = []
    for row, by_phase in samples.items():
        medians = {phase: median(values) for phase, values in by_phase.items()}
        rows.append([row, *(round(medians[p] * 1e6) if p == "in lock" else ms(medians[p]) for p in PHASES)])
    table(
        f"Phases of one call, median of {runs} interleaved samples (ms; in lock: microseconds)",
        ["call", *PHASES[:3], "in lock (us)", *PHASES[4:]],
        rows,
    )


def latency(
    plugin: Plugin, others: list[Plugin], floor_env: Env, runs: int, targets: Targets, reference: int | None = None
) -> None:
    """ADD+DEL pairs next to the floor and *others*; *reference*: the console script's index
    in *others*, whose pair the plugin's is measured against (issue #19)."""
    floor_argv = [sys.executable, "-I", "-c", FLOOR_CODE]
    # Keyed by name, and the other plugins by their index.
    rows_of: list[tuple[str | int, str]] = [
        ("floor", f"floor: 2 x python -I -c '{FLOOR_CODE}'"),
        ("ecs", f"ecs-ipam ADD+DEL: {plugin.label}"),
    ]
    rows_of += [(n, f"{other.label} ADD+DEL") for n, other in enumerate(others)]
    samples: dict[str | int, list[float]] = {key: [] for key, _ in rows_of}
    rss: dict[str | int, list[float]] = {key: [] for key, _ in rows_of}
    warmup = 3
    for n in range(warmup + runs):
        first, second = run(floor_argv, floor_env), run(floor_argv, floor_env)
        checked(first, "the bare-interpreter floor")
        owner = f"latency-{n}"
        add = checked(plugin.call("ADD", owner), "ecs-ipam ADD")
        delete = checked(plugin.call("DEL", owner), "ecs-ipam DEL")
        pairs: list[tuple[str | int, Outcome, Outcome]] = [("floor", first, second), ("ecs", add, delete)]
        for index, other in enumerate(others):
            pairs.append(
                (
                    index,
                    checked(other.call("ADD", owner), f"{other.label} ADD"),
                    checked(other.call("DEL", owner), f"{other.label} DEL"),
                )
            )
        if n < warmup:
            continue  # bytecode caches, page cache, the database file itself
        for key, one, two in pairs:
            samples[key].append(one.seconds + two.seconds)
            rss[key].append(one.rss_mb)
    # Peak RSS of the first process of each pair (an ADD) from a small parent, when GNU
    # time is there; else what rusage says here, an upper bound (see GNU_TIME).
    exact = True
    for n in range(min(runs, 5)):
        owner = f"rss-{n}"
        measured: list[tuple[str | int, float | None]] = [("floor", peak_rss_mb(floor_argv, floor_env))]
        measured.append(("ecs", peak_rss_mb(plugin.argv, plugin.env("ADD", owner), plugin.conf(owner))))
        checked(plugin.call("DEL", owner), "ecs-ipam DEL")
        for index, other in enumerate(others):
            measured.append((index, peak_rss_mb(other.argv, other.env("ADD", owner), other.conf(owner))))
            checked(other.call("DEL", owner), f"{other.label} DEL")
        if any(value is None for _, value in measured):
            exact = False
            break
        if n == 0:
            rss = {key: [] for key in rss}
        for key, value in measured:
            if value is not None:  # none is: checked above
                rss[key].append(value)
    floor = median(samples["floor"])
    rows = []
    for key, name in rows_of:
        values = [ms(s) for s in samples[key]]
        rows.append(
            [name, median(values), percentile(values, 0.9), max(values), median(samples[key]) / floor, max(rss[key])]
        )
    table(
        f"Process latency, {runs} interleaved samples (ms)",
        [
            "pair",
            "median",
            "p90",
            "max",
            "/floor",
            "peak RSS MB (1st)" if exact else "peak RSS MB (1st; upper bound: no GNU time)",
        ],
        rows,
    )
    targets["latency: ecs-ipam pair median / floor"] = (median(samples["ecs"]) / floor, MAX_LATENCY_RATIO)
    for index, other in enumerate(others):
        if other.limit is not None:
            targets[f"latency: {other.label} pair median / floor"] = (median(samples[index]) / floor, other.limit)
    if reference is not None:
        ratio = median(samples["ecs"]) / median(samples[reference])
        targets["latency: --plugin pair / console script pair"] = (ratio, MAX_PLUGIN_TO_CONSOLE_SCRIPT_RATIO)
    targets["memory: peak RSS of one ADD (MB)"] = (max(rss["ecs"]), max(rss["floor"]) + MAX_ADD_RSS_ABOVE_FLOOR_MB)


def storm(plugin: Plugin, others: list[Plugin], floor_env: Env, width: int, rounds: int, targets: Targets) -> None:
    """Start *width* processes at once, *rounds* times, interleaving the rows."""
    floor_argv = [sys.executable, "-I", "-c", FLOOR_CODE]
    # (row name, plugin, command); the floor runs no plugin.
    rows_of: list[tuple[str, Plugin | None, str]] = [(f"floor x{width}: python -I -c '{FLOOR_CODE}'", None, "")]
    for runner in [plugin] + others:
        for verb in ("ADD", "DEL"):
            rows_of.append((f"{runner.label or 'ecs-ipam'} {verb} x{width}", runner, verb))
    walls: dict[str, list[float]] = {name: [] for name, _, _ in rows_of}
    each: dict[str, list[float]] = {name: [] for name, _, _ in rows_of}
    failed = {name: 0 for name, _, _ in rows_of}
    distinct: dict[str, list[int]] = {name: [] for name, _, _ in rows_of}
    for round_ in range(rounds):
        for name, target, command in rows_of:
            began = time.perf_counter()
            if target is None:
                started = [start(floor_argv, floor_env, b"") for _ in range(width)]
            else:
                started = [target.start(command, f"storm-{round_}-{i}") for i in range(width)]
            outcomes = [finish(s) for s in started]
            walls[name].append(time.perf_counter() - began)
            each[name].extend(ms(o.seconds) for o in outcomes)
            failed[name] += sum(o.code != 0 for o in outcomes)
            if command == "ADD":
                distinct[name].append(
                    len({ip.get("address") for o in outcomes if o.code == 0 for ip in o.json().get("ips", [])})
                )
    floor_wall = median(walls[rows_of[0][0]])
    rows = []
    for name, target, command in rows_of:
        wall = median(walls[name])
        rows.append(
            [
                name,
                ms(wall),
                wall / floor_wall,
                median(each[name]),
                max(each[name]),
                failed[name],
                min(distinct[name]) if distinct[name] else "",
            ]
        )
        if target is plugin:
            targets[f"storm x{width}: failed {command}s"] = (failed[name], 0)
            if width == TARGET_STORM_WIDTH:
                targets[f"storm x{width}: ecs-ipam {command} wall / floor wall"] = (wall / floor_wall, MAX_STORM_RATIO)
            if command == "ADD":
                targets[f"storm x{width}: ADDs without a distinct address"] = (width - min(distinct[name]), 0)
    table(
        f"{width}-way parallel storm, one database, median of {rounds} interleaved rounds (ms)",
        ["storm", "wall", "/floor", "median process", "max process", "failures", "distinct addresses (min)"],
        rows,
    )


def window_ratio(seconds: list[float]) -> tuple[int, float, float, float, float]:
    """Compare the last window of up to 1,000 allocations with the first.

    :return: (window, first window's total ms, last window's total ms, ratio of the
        totals, ratio of the medians: less sensitive to a burst of load elsewhere).
    """
    window = max(1, min(1000, len(seconds) // 4))
    first, last = seconds[:window], seconds[-window:]
    return window, ms(sum(first)), ms(sum(last)), sum(last) / sum(first), median(last) / median(first)


def fill_cli(plugin: Plugin, rows: list[list[object]]) -> None:
    seconds = []
    n = 0
    while True:
        outcome = plugin.call("ADD", f"fill-{n}")
        if outcome.code != 0:
            if outcome.json().get("code") == 102:  # the pool is exhausted: filled
                break
            checked(outcome, "ecs-ipam ADD while filling")
        seconds.append(outcome.seconds)
        n += 1
    window, first, last, ratio, median_ratio = window_ratio(seconds)
    rows.append([f"CLI {plugin.subnet}", n, window, first, last, ratio, median_ratio, ms(median(seconds))])


def api_conf(owner: str, family: str, subnet: str) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "ipam": {"id": owner, family: subnet}}


def add_one(ipam: IPAM, owner: str, family: str, subnet: str) -> float | None:
    """Time one ADD of *owner* through the API; None when the pool is exhausted."""
    from ecs_ipam.errors import PoolExhaustedError

    began = time.perf_counter()
    try:
        ipam.add(api_conf(owner, family, subnet), f"container-{owner}", "eth0")
    except PoolExhaustedError:
        return None
    return time.perf_counter() - began


def fill_api(ipam: IPAM, subnet: str, family: str, count: int) -> tuple[list[float], list[str]]:
    """Allocate *count* addresses (fewer if the pool runs out); return timings and ids."""
    seconds: list[float] = []
    owners: list[str] = []
    while len(owners) < count:
        owner = f"fill-{len(owners)}"
        took = add_one(ipam, owner, family, subnet)
        if took is None:
            break
        seconds.append(took)
        owners.append(owner)
    return seconds, owners


def timed_delete(ipam: IPAM, owner: str, family: str, subnet: str) -> float:
    began = time.perf_counter()
    released = ipam.delete(api_conf(owner, family, subnet))
    seconds = time.perf_counter() - began
    if not released:
        raise BenchError(f"DEL of {owner} in {subnet} released nothing")
    return seconds


def pool_capacity(subnet: str) -> int:
    """How many addresses the plugin hands out in *subnet*: no network, broadcast, gateway."""
    import netaddr

    network = netaddr.IPNetwork(subnet)
    return network.size - (3 if network.version == 4 else 2)


def api_sections(workdir: str, params: dict[str, Any], fill_rows: list[list[object]], targets: Targets) -> None:
    del_rows = []
    for family, subnet, count in (
        ("ipv4-subnet", params["api_subnet"], None),
        ("ipv6-subnet", params["v6_subnet"], params["v6_count"]),
    ):
        fill_row, del_row = api_pool(workdir, family, subnet, count, params["del_count"], targets)
        fill_rows.append(fill_row)
        del_rows.append(del_row)
    table(
        "DEL by id (median ms) and the worst walk",
        ["pool", "few in use", "full", "full/few", "ADD after early release, full (ms)"],
        del_rows,
    )


def api_pool(
    workdir: str, family: str, subnet: str, count: int | None, samples: int, targets: Targets
) -> tuple[list[object], list[object]]:
    """Fill *subnet* (all of it when *count* is None) through the API, timing the last
    window against a fresh pool's first, then DEL by id in both; return the two rows."""
    from ecs_ipam import IPAM

    total = pool_capacity(subnet) if count is None else count
    window = max(samples, min(1000, total // 4))
    with (
        IPAM(os.path.join(workdir, f"few-{family}.db")) as few,
        IPAM(os.path.join(workdir, f"full-{family}.db")) as full,
    ):
        seconds, owners = fill_api(full, subnet, family, total - window)
        first, last, few_owners = fill_windows(few, full, owners, family, subnet, window)
        if count is None and add_one(full, "one-too-many", family, subnet) is not None:
            raise BenchError(f"{subnet} still had room after {total} allocations")
        walk = worst_walk(full, owners, family, subnet) if count is None else ""
        # DEL by id, alternating between the pools for the same reason.
        spread = owners[:: max(1, len(owners) // samples)][:samples]
        few_seconds: list[float] = []
        full_seconds: list[float] = []
        for few_owner, full_owner in zip(few_owners, spread):
            few_seconds.append(timed_delete(few, few_owner, family, subnet))
            full_seconds.append(timed_delete(full, full_owner, family, subnet))
    ratio = sum(last) / sum(first)
    targets[f"fill: API {subnet} last/first window"] = (ratio, MAX_FILL_RATIO)
    del_ratio = median(full_seconds) / median(few_seconds)
    targets[f"DEL by id: full/few in use {subnet}"] = (del_ratio, MAX_DEL_RATIO)
    fill_row: list[object] = [
        f"API {subnet}",
        total,
        window,
        ms(sum(first)),
        ms(sum(last)),
        ratio,
        median(last) / median(first),
        ms(median(seconds + last)),
    ]
    del_row: list[object] = [
        f"API {subnet}: {window} vs {len(owners)} in use",
        ms(median(few_seconds)),
        ms(median(full_seconds)),
        del_ratio,
        walk,
    ]
    return fill_row, del_row


def fill_windows(
    few: IPAM, full: IPAM, owners: list[str], family: str, subnet: str, window: int
) -> tuple[list[float], list[float], list[str]]:
    """Time *window* ADDs in the fresh pool *few* and in the nearly full *full*, alternately,
    so that a burst of load elsewhere on the machine, or of fsync latency, falls on both
    alike; *owners* (of *full*) grows by the new ones.  Return both timings and *few*'s owners."""
    first: list[float] = []
    last: list[float] = []
    few_owners: list[str] = []
    for n in range(window):
        few_owners.append(f"first-{n}")
        owners.append(f"last-{n}")
        took_first = add_one(few, few_owners[-1], family, subnet)
        took_last = add_one(full, owners[-1], family, subnet)
        if took_last is None or took_first is None:
            raise BenchError(f"{subnet} ran out of addresses before the last window was filled")
        first.append(took_first)
        last.append(took_last)
    return first, last, few_owners


def worst_walk(full: IPAM, owners: list[str], family: str, subnet: str) -> float:
    """ms of the worst ADD: DEL moves the pointer back to an early address, and the next
    ADD steps over every used address after it, round to that one."""
    timed_delete(full, owners[len(owners) // 100], family, subnet)
    took = add_one(full, "walk", family, subnet)
    if took is None:
        raise BenchError(f"{subnet} had no room for an ADD after a DEL")
    return ms(took)


def pools_section(databases: list[tuple[str, str]], pools: int, samples: int) -> None:
    """DEL by id in a database of one pool against one of *pools* pools.

    A DEL by id looks the id up in every pool bucket of the database (the Go plugin
    releases an id in its whole database), so its cost grows with the number of pools,
    by one index lookup each.  ADD and DEL alternate between the two databases.
    """
    from ecs_ipam import IPAM

    task_pool = "169.254.172.0/22"
    rows = []
    for label, where in databases:
        seconds: dict[int, list[float]] = {1: [], pools: []}
        with IPAM(f"{where}-1") as one, IPAM(f"{where}-{pools}") as many:
            # The other pools each hold a few leases of their own.
            for n in range(pools - 1):
                for owner in range(3):
                    many.add(api_conf(f"other-{owner}", "ipv4-subnet", f"10.{n}.0.0/24"), "c", "eth0")
            for n in range(samples):
                for count, ipam in ((1, one), (pools, many)):
                    task = f"task-{n}"
                    ipam.add(api_conf(task, "ipv4-subnet", task_pool), f"container-{n}", "eth0")
                    seconds[count].append(timed_delete(ipam, task, "ipv4-subnet", task_pool))
        one_ms, many_ms = ms(median(seconds[1])), ms(median(seconds[pools]))
        rows.append([label, one_ms, many_ms, many_ms / one_ms, (many_ms - one_ms) / (pools - 1) * 1000])
    table(
        f"DEL by id, 1 pool vs {pools} pools in the database (median ms of {samples}, through the API)",
        ["store", "1 pool", f"{pools} pools", "ratio", "us per extra pool"],
        rows,
    )


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI (well under a minute)")
    parser.add_argument("--check", action="store_true", help="exit 2 when a target is missed")
    parser.add_argument("--runs", type=int, help="latency samples per row")
    parser.add_argument("--storm", type=int, help="processes in the parallel storm")
    parser.add_argument("--plugin", help="the plugin's command line (default: the ecs-ipam console script)")
    parser.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="PATH",
        help="another ecs-ipam plugin binary (the Go original, say) to time side by side; repeatable",
    )
    parser.add_argument("--dir", help="where the databases go (default: a new temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument(
        "--pools-etcd", metavar="URL", help="also run the pools section on this etcd (etcd://HOST:PORT)"
    )
    parser.add_argument("--only", help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--etcd", action="store_true", help="the etcd benchmark instead (tools/bench_etcd.py)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.etcd:
        from bench_etcd import main as etcd_main

        return etcd_main(["--smoke"] if args.smoke else [])
    params: dict[str, Any] = dict(SMOKE if args.smoke else FULL)
    sections = SECTIONS if args.only is None else args.only.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f"bench: unknown sections {', '.join(unknown)}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if args.runs:
        params["runs"] = args.runs
    if args.storm:
        params["storm"] = [args.storm]
    for path in args.peer:
        if not os.access(path, os.X_OK):
            print(f"bench: --peer {path}: not an executable file", file=sys.stderr)
            return 2
    try:
        import ecs_ipam  # noqa: F401 - the API sections use the installed package if there is one
    except ImportError:
        sys.path.insert(0, REPO_ROOT)
    argv_plugin, extra_env, label = plugin_command(args.plugin)
    workdir = args.dir or tempfile.mkdtemp(prefix="ecs-ipam-bench-")
    os.makedirs(workdir, exist_ok=True)
    base_env = child_environment(extra_env)
    floor_env = child_environment({})
    print(f"# ecs-ipam benchmark{' (smoke sizes)' if args.smoke else ''}")
    print(
        f"python {sys.version.split()[0]} at {sys.executable}; {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f}; databases in {workdir}"
    )
    targets: dict[str, tuple[float, float]] = {}
    try:
        has_host_local = os.access(HOST_LOCAL, os.X_OK)

        def others(name: str) -> list[Plugin]:
            found: list[Plugin] = [
                Peer(
                    [os.path.abspath(path)],
                    floor_env,
                    workdir,
                    f"{name}-peer{n}",
                    f"10.{40 + n}.0.0/22",
                    os.path.basename(path),
                )
                for n, path in enumerate(args.peer)
            ]
            if has_host_local:
                found.append(HostLocal(base_env, workdir, f"{name}-host-local", "10.30.0.0/22"))
            return found

        if "phases" in sections:
            phases(Plugin(argv_plugin, base_env, workdir, "phases", "10.13.0.0/22"), floor_env, params["phase_runs"])
        if "latency" in sections:
            plugin = Plugin(argv_plugin, base_env, workdir, "latency", "10.10.0.0/22", label)
            beside = []
            if args.plugin:  # the bundle, say: the console script is timed beside it, for the ratio
                console_argv, console_env, console_label = plugin_command(None)
                console = child_environment(console_env)
                beside = [Plugin(console_argv, console, workdir, "latency-console", "10.12.0.0/22", console_label)]
            reference = 0 if beside else None
            isolated = isolated_plugin(base_env, workdir, "latency-isolated", "10.14.0.0/22")
            latency(plugin, [*beside, isolated, *others("latency")], floor_env, params["runs"], targets, reference)
        if "storm" in sections:
            storm_plugin = Plugin(argv_plugin, base_env, workdir, "storm", "10.11.0.0/22", "ecs-ipam")
            for width in params["storm"]:
                storm(storm_plugin, others("storm"), floor_env, width, params["storm_rounds"], targets)
        fill_rows: list[list[object]] = []
        if "cli" in sections:
            fill_cli(Plugin(argv_plugin, base_env, workdir, "fill-cli", params["cli_subnet"]), fill_rows)
        if "api" in sections:
            # Write back what earlier sections left dirty, or the first commits here wait
            # for it in their fsync and the first window of the fill looks slow.
            os.sync()
            api_sections(workdir, params, fill_rows, targets)
        if "pools" in sections:
            stores = [("LMDB", os.path.join(workdir, "pools"))]
            if args.pools_etcd:
                stores.append(("etcd", f"{args.pools_etcd.rstrip('/')}/bench-pools-{os.getpid()}"))
            pools_section(stores, params["pools"], params["pool_samples"])
        if fill_rows:
            table(
                "Filling a pool (ms per window of allocations)",
                [
                    "pool",
                    "allocations",
                    "window",
                    "first window",
                    "last window",
                    "last/first",
                    "last/first medians",
                    "median op",
                ],
                fill_rows,
            )
    except BenchError as error:
        print(f"\nbench: FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)
    missed = 0
    rows = []
    for name, (value, limit) in targets.items():
        met = value <= limit
        missed += not met
        rows.append([name, value, f"<= {limit:g}", "met" if met else "MISSED"])
    table(
        "Targets of issue #5, #12 and #26" + (" (smoke sizes: indicative only)" if args.smoke else ""),
        ["target", "measured", "limit", ""],
        rows,
    )
    return 2 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
