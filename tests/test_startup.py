"""What an ADD or DEL process imports: nothing heavy beyond lmdb, msgpack, netaddr and json.

The plugin is a new process per container, so every module its entry point pulls in is
paid at every container start.  These tests are not timed: they run ``python -m
ecs_ipam``'s entry point in a fresh interpreter that records every import, and check

* that no module on the forbidden list is loaded beyond what the third-party floor
  (``import lmdb, msgpack, netaddr, json``) loads by itself, and
* that no ecs_ipam module imports one of them itself (netaddr happens to load
  ``dataclasses`` and ``ipaddress`` today; the plugin must not depend on that).
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

builtins.__import__ = recording_import
importlib.import_module = recording_import_module

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


def run_command(tmp_path, command: str, owner: str = "task-startup") -> dict:
    netconf = {
        "cniVersion": "1.0.0", "name": "startup", "type": "ecs-ipam",
        "ipam": {"type": "ecs-ipam", "id": owner, "ipv4-subnet": "169.254.172.0/22",
                 "ipv4-routes": [{"dst": "169.254.170.2/32"}]},
    }
    environ = {
        "CNI_COMMAND": command, "CNI_CONTAINERID": "container-1", "CNI_NETNS": "/var/run/netns/x",
        "CNI_IFNAME": "eth0", "IPAM_DB_PATH": str(tmp_path / "ipam.db"),
        "ECS_CNI_LOG_FILE": str(tmp_path / "plugin.log"),
    }
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
    assert ["ecs_ipam.allocator", "hashlib"] in report["imports"]
