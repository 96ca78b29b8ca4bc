"""What an ADD or DEL process imports: nothing heavy beyond lmdb, msgpack, netaddr and json.

The plugin is a new process per container, so every module its entry point pulls in is
paid at every container start.  These tests are not timed: they run ``python -m
ecs_ipam``'s entry point in a fresh interpreter that records every import, and check

* that no module on the forbidden list is loaded beyond what the third-party floor
  (``import lmdb, msgpack, netaddr, json``) loads by itself, and
* that no ecs_ipam module imports one of them itself (netaddr happens to load
  ``dataclasses`` and ``ipaddress`` today; the plugin must not depend on that).

And, from the import list of a real, unrecorded process (``-X importtime``), that a warm
ADD or DEL loads nothing beyond what it needs: _json, lmdb, a few C modules, and its own
modules on the way to the database.  In particular not netaddr (the fast path of
ecs_ipam.addr reads a valid configuration without it), nor json (ecs_ipam.jsonfast calls
_json directly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FORBIDDEN = (
    "importlib.metadata",
    "pkg_resources",
    "argparse",
    "logging",
    "dataclasses",
    "hashlib",
    "ipaddress",
    "threading",
    "subprocess",
    "ecs_ipam.boltdb",
    "ecs_ipam.migrate",
    "ecs_ipam.kv.etcd",
    "ecs_ipam.kv.etcd.store",
    "ssl",
)
# Our own optional parts: never loaded by an ADD or DEL, whatever the floor does.
NEVER = ("ecs_ipam.boltdb", "ecs_ipam.migrate", "ecs_ipam.kv.etcd", "ecs_ipam.kv.etcd.store", "ssl")

FLOOR = "import json, sys; import lmdb, msgpack, netaddr; print(json.dumps(sorted(sys.modules)))"

# Runs `python -m ecs_ipam` (its __main__ module, as runpy does) with every import
# statement and import_module call recorded, then prints what it saw as JSON.
RECORDER = r"""
import builtins, importlib, importlib.util, io, json, os, runpy, sys

seen = []
real_import = builtins.__import__
real_import_module = importlib.import_module

def importer_of(globals_):
    name = (globals_ or {}).get("__name__") or ""
    return name if name == "ecs_ipam" or name.startswith("ecs_ipam.") or name == "__main__" else None

def targets(name, globals_, fromlist, level):
    if level:
        name = importlib.util.resolve_name("." * level + name, (globals_ or {}).get("__package__") or "")
    return [name] + [f"{name}.{item}" for item in fromlist or () if item != "*"]

def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
    who = importer_of(globals)
    if who:
        seen.extend([who, target] for target in targets(name, globals, fromlist, level))
    return real_import(name, globals, locals, fromlist, level)

def recording_import_module(name, package=None):
    who = importer_of(sys._getframe(1).f_globals)
    if who:
        seen.append([who, importlib.util.resolve_name(name, package) if name.startswith(".") else name])
    return real_import_module(name, package)

def exit_to_recorder(code):
    raise SystemExit(code)  # the entry ends the process with os._exit, before the report

builtins.__import__ = recording_import
importlib.import_module = recording_import_module
os._exit = exit_to_recorder

args = json.loads(sys.argv[1])
sys.argv = ["ecs-ipam"]  # CNI passes no arguments
sys.path.insert(0, args["root"])
os.environ.update(args["environ"])
sys.stdin = io.TextIOWrapper(io.BytesIO(args["stdin"].encode()))
captured = io.StringIO()
real_stdout, sys.stdout = sys.stdout, captured
try:
    runpy.run_module("ecs_ipam", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exit_:
    code = exit_.code
sys.stdout = real_stdout
print(json.dumps({"code": code, "output": captured.getvalue(), "modules": sorted(sys.modules), "imports": seen}))
"""


def python(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PYTHON"))}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def floor_modules() -> set[str]:
    return set(json.loads(python("-c", FLOOR)))


def startup_netconf(owner: str, **ipam: str) -> dict:
    """The agent's task network configuration for *owner*; *ipam* adds fields."""
    return {
        "cniVersion": "1.0.0",
        "name": "startup",
        "type": "ecs-ipam",
        "ipam": {
            "type": "ecs-ipam",
            "id": owner,
            "ipv4-subnet": "169.254.172.0/22",
            **ipam,
            "ipv4-routes": [{"dst": "169.254.170.2/32"}],
        },
    }


def startup_environ(tmp_path, command: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "container-1",
        "CNI_NETNS": "/var/run/netns/x",
        "CNI_IFNAME": "eth0",
        "IPAM_DB_PATH": str(tmp_path / "ipam.db"),
        "ECS_CNI_LOG_FILE": str(tmp_path / "plugin.log"),
    }


def run_command(tmp_path, command: str, owner: str = "task-startup") -> dict:
    netconf = startup_netconf(owner)
    environ = startup_environ(tmp_path, command)
    args = {"root": REPO_ROOT, "environ": environ, "stdin": json.dumps(netconf)}
    report = json.loads(python("-c", RECORDER, json.dumps(args)))
    assert report["code"] == 0, report["output"]
    return report


def assert_lean(report: dict, floor_modules: set[str]) -> None:
    loaded = set(report["modules"])
    beyond_floor = sorted(name for name in FORBIDDEN if name in loaded and name not in floor_modules)
    assert beyond_floor == [], f"loaded by the plugin and not by the floor: {beyond_floor}"
    never = sorted(name for name in NEVER if name in loaded)
    assert never == [], f"optional parts loaded: {never}"
    own = sorted({f"{who} imports {target}" for who, target in report["imports"] if target in FORBIDDEN})
    assert own == [], "; ".join(own)


def test_add_imports_nothing_heavy(tmp_path, floor_modules):
    report = run_command(tmp_path, "ADD")
    assert json.loads(report["output"])["ips"][0]["address"] == "169.254.172.2/22"
    assert_lean(report, floor_modules)


def test_del_imports_nothing_heavy(tmp_path, floor_modules):
    run_command(tmp_path, "ADD")
    report = run_command(tmp_path, "DEL")
    assert report["output"] == ""
    assert_lean(report, floor_modules)


def test_the_recorder_sees_an_import_made_by_the_plugin(tmp_path):
    # The checks above are worth something only if the recorder sees the plugin's own
    # imports: an id too long for a key is hashed, and only then is hashlib imported.
    report = run_command(tmp_path, "ADD", owner="x" * 600)
    assert ["ecs_ipam.pool_store", "hashlib"] in report["imports"]


# --- the whole import list of a real process ------------------------------------------------

# What an ADD or DEL needs to import, run as a floor process of its own: the JSON codec,
# the store, the C modules the store and the record fast path call, and __future__ (every
# module's "from __future__ import annotations").  Whatever these pull in themselves is
# the floor's, not the plugin's doing.
NEEDED = "import __future__, _json, gc, lmdb, struct, fcntl, errno, operator, io"
# The plugin's own modules on the warm path.
OWN = {
    "ecs_ipam",
    "ecs_ipam.cni",
    "ecs_ipam.entry",
    "ecs_ipam.jsonfast",
    "ecs_ipam.config",
    "ecs_ipam.addr",
    "ecs_ipam.errors",
    "ecs_ipam.log",
    "ecs_ipam.ipam",
    "ecs_ipam.allocator",
    "ecs_ipam.pool_store",
    "ecs_ipam.results",
    "ecs_ipam.kv",
    "ecs_ipam.kv.base",
    "ecs_ipam.kv.lmdb_store",
    "ecs_ipam.kv.lmdb_handles",
    "ecs_ipam.kv.dbfile",
    "ecs_ipam.kv.codec",
    "ecs_ipam.filelock",
    "ecs_ipam.minipack",
}
# Never on the warm path, whatever the floor above loads: the address library of record
# (the fast path reads a valid configuration), msgpack (ecs_ipam.minipack packs and reads
# the plugin's own records; msgpack loads datetime), and modules that cost milliseconds for
# nothing the plugin does (typing: annotations only; socket: enum and selectors on top of
# _socket, which an IPv4 pool does not need either; random: only a process that waits for
# the lock needs jitter; contextlib: two context managers are written out instead; json:
# re, enum and functools at import, where ecs_ipam.jsonfast calls _json; collections:
# kv.KVPair is written out).
NOT_WARM = (
    "json",
    "re",
    "enum",
    "functools",
    "collections",
    "netaddr",
    "msgpack",
    "datetime",
    "typing",
    "contextlib",
    "socket",
    "_socket",
    "random",
    "hashlib",
    "ipaddress",
    "dataclasses",
    "inspect",
    "pathlib",
    "tempfile",
    "importlib.metadata",
    "importlib.resources",
    "ecs_ipam.legacy",
)

ENTRY = "from ecs_ipam.entry import run; run()"


def imported_by(code: str, environ: dict | None = None, stdin: str = "") -> list[str]:
    """The modules a fresh ``python -c code`` imports, in order, from its -X importtime report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PYTHON"))}
    env.update(environ or {}, PYTHONPATH=REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    names = [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    return [name for name in names if name != "package"]  # the report's own header line


def warm_call(tmp_path, command: str) -> list[str]:
    """Import list of one *command* process on a database that already serves the pool."""
    netconf = startup_netconf(f"warm-{command}", **{"ipv4-gateway": "169.254.172.1"})
    environ = dict(startup_environ(tmp_path, command), IPAM_DB_CONNECTION_TIMEOUT="5s")
    if command == "DEL":
        imported_by(ENTRY, dict(environ, CNI_COMMAND="ADD"), json.dumps(netconf))
    else:
        warm = dict(netconf, ipam=dict(netconf["ipam"], id="warm-up"))
        imported_by(ENTRY, environ, json.dumps(warm))
    return imported_by(ENTRY, environ, json.dumps(netconf))


@pytest.mark.parametrize("command", ["ADD", "DEL"])
def test_a_warm_call_imports_only_what_it_needs(tmp_path, command):
    modules = warm_call(tmp_path, command)
    floor = set(imported_by(NEEDED))
    unneeded = [name for name in modules if name not in floor and name not in OWN]
    # Less whatever the interpreter's start-up imports (an editable install's path hook...).
    bare = set(imported_by("pass"))
    forbidden = [name for name in modules if (name.split(".")[0] in NOT_WARM or name in NOT_WARM) and name not in bare]
    listing = "\n  ".join(modules)
    assert unneeded == [] and forbidden == [], (
        f"a warm {command} imports {unneeded + forbidden}; its whole import list:\n  {listing}"
    )


def test_the_import_list_is_the_real_one(tmp_path):
    # The check above is worth something only if the list shows a lazy import when it
    # happens: a config the fast path refuses is judged by netaddr, imported just then.
    environ = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c",
        "CNI_NETNS": "/x",
        "CNI_IFNAME": "eth0",
        "IPAM_DB_PATH": str(tmp_path / "ipam.db"),
        "ECS_CNI_LOG_FILE": str(tmp_path / "plugin.log"),
    }
    netconf = {
        "cniVersion": "1.0.0",
        "ipam": {"id": "x", "ipv4-subnet": "169.254.172.0/22", "ipv4-gateway": "169.254.172.01"},
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PYTHON"))}
    env.update(environ, PYTHONPATH=REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", ENTRY],
        input=json.dumps(netconf),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1 and json.loads(done.stdout)["code"] == 7, done.stdout
    assert "is not a valid IP address" in json.loads(done.stdout)["msg"]
    assert any(
        line.rsplit("|", 1)[1].strip() == "netaddr"
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    )
