"""The plugin process ends with os._exit, skipping the interpreter's teardown: nothing it
wrote may be lost (stdout to a pipe or a file, the log, the database), and the exit code
is main()'s.  main() called in-process still returns."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from ecs_ipam.cni import main
from ecs_ipam.kv import open_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBNET = "169.254.172.0/22"

# The two process entries, and a check that teardown really is skipped: an atexit
# handler that writes to stderr (the interpreter's teardown would run it).
ENTRIES = {
    "python -m ecs_ipam": ["-m", "ecs_ipam"],
    "console script (ecs_ipam.entry:run)": [
        "-c",
        "import atexit, sys; atexit.register(lambda: sys.stderr.write('teardown ran'))\n"
        "from ecs_ipam.entry import run\nrun()",
    ],
}


def conf(owner: str, **ipam: object) -> bytes:
    return json.dumps(
        {"cniVersion": "1.0.0", "name": "n", "ipam": {"id": owner, "ipv4-subnet": SUBNET, **ipam}}
    ).encode()


def environ(tmp_path, command: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "PYTHON"))}
    env.update(
        CNI_COMMAND=command,
        CNI_CONTAINERID="container-1",
        CNI_NETNS="/var/run/netns/x",
        CNI_IFNAME="eth0",
        IPAM_DB_PATH=str(tmp_path / "ipam.db"),
        ECS_CNI_LOG_FILE=str(tmp_path / "plugin.log"),
        PYTHONPATH=ROOT,
    )
    return env


def run_entry(tmp_path, entry: str, command: str, stdin: bytes, stdout_to: str) -> tuple[int, bytes, bytes]:
    """Run one plugin process with its stdout on a pipe or in a regular file."""
    argv = [sys.executable, *ENTRIES[entry]]
    env = environ(tmp_path, command)
    if stdout_to == "pipe":
        done = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=60)
        return done.returncode, done.stdout, done.stderr
    out_path = tmp_path / f"stdout-{command}"
    with open(out_path, "wb") as out:
        done = subprocess.run(argv, input=stdin, stdout=out, stderr=subprocess.PIPE, env=env, timeout=60)
    return done.returncode, out_path.read_bytes(), done.stderr


def leases(tmp_path) -> dict[str, bytes]:
    with open_store(str(tmp_path / "ipam.db"), bucket=f"{SUBNET[:-3]}/22", read_only=True) as store:
        return {pair.key: pair.value for pair in store.list("")}


@pytest.mark.parametrize("stdout_to", ["pipe", "file"])
@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_nothing_written_is_lost_at_the_fast_exit(tmp_path, entry, stdout_to):
    # A long id makes a long result and log line: more than one small write's worth.
    owner = "task-" + "é" * 200
    code, out, err = run_entry(tmp_path, entry, "ADD", conf(owner), stdout_to)
    assert code == 0, err
    assert b"teardown ran" not in err  # the process did end without teardown
    assert out.endswith(b"}\n") and out.count(b"\n") == 1
    result = json.loads(out)
    assert result["ips"][0]["address"] == "169.254.172.2/22"
    # The lease is on disk for the next process (committed before the exit).
    assert "169.254.172.2" in leases(tmp_path)
    log = (tmp_path / "plugin.log").read_text()
    assert f"ADD id={owner!r}" in log and log.endswith("\n")

    code, out, err = run_entry(tmp_path, entry, "DEL", conf(owner), stdout_to)
    assert (code, out) == (0, b""), err
    assert "169.254.172.2" not in leases(tmp_path)
    assert (tmp_path / "plugin.log").read_text().count("\n") == 2


@pytest.mark.parametrize("stdout_to", ["pipe", "file"])
@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_an_error_object_and_its_exit_code_survive_the_fast_exit(tmp_path, entry, stdout_to):
    code, out, err = run_entry(tmp_path, entry, "ADD", conf("task-1", **{"ipv4-gateway": "10.0.0.1"}), stdout_to)
    assert code == 1, err
    error = json.loads(out)
    assert error["code"] == 7 and "gateway" in error["msg"].lower(), error
    assert "failed: code=7" in (tmp_path / "plugin.log").read_text()


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_usage_errors_reach_stderr_with_code_2(tmp_path, entry):
    argv = [sys.executable, *ENTRIES[entry], "--bogus"]
    done = subprocess.run(argv, capture_output=True, env=environ(tmp_path, "ADD"), timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(b"usage: ecs-ipam")


def test_main_in_process_returns_and_leaves_the_collector_alone(tmp_path):
    import gc

    assert gc.isenabled()
    out = io.StringIO()
    code = main([], environ(tmp_path, "ADD"), io.BytesIO(conf("in-process")), out)
    assert code == 0 and json.loads(out.getvalue())["ips"]
    assert gc.isenabled()
