"""The plugin as a process: ``python -m ecs_ipam`` and, when installed, ``ecs-ipam``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ecs_ipam

ROOT = Path(__file__).resolve().parent.parent


# The script installed beside this interpreter (a venv run as v/bin/python -m pytest), or on PATH.
SCRIPT = shutil.which("ecs-ipam", path=os.path.dirname(sys.executable)) or shutil.which("ecs-ipam")
# Every test runs through ``python -m``; through the console script too when one is
# installed (a fresh install into a venv is tested by test_packaging, as a slow test).
PROGRAMS = {"module": [sys.executable, "-m", "ecs_ipam"]}
if SCRIPT is not None:
    PROGRAMS["script"] = [SCRIPT]


@pytest.fixture(params=list(PROGRAMS))
def program(request) -> list[str]:
    return PROGRAMS[request.param]


@pytest.mark.skipif(SCRIPT is None, reason="the ecs-ipam console script is not installed")
def test_console_script_is_this_plugin():
    done = subprocess.run([SCRIPT, "--capabilities"], capture_output=True, timeout=30)
    assert done.returncode == 0
    assert json.loads(done.stdout) == {"capabilities": ["awsvpc-network-mode"]}


@pytest.fixture
def run(program, tmp_path):
    db = str(tmp_path / "ipam.db")
    log = str(tmp_path / "plugin.log")

    def run_plugin(command: str | None, stdin: object = b"", *args: str, **overrides):
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "CNI_CONTAINERID": "container-1",
            "CNI_NETNS": "/var/run/netns/ns-1",
            "CNI_IFNAME": "eth0",
            "IPAM_DB_PATH": db,
            "ECS_CNI_LOG_FILE": log,
        }
        if command is not None:
            environ["CNI_COMMAND"] = command
        environ.update(overrides)
        environ = {name: value for name, value in environ.items() if value is not None}
        if isinstance(stdin, dict):
            stdin = json.dumps(stdin).encode()
        return subprocess.run(
            [*program, *args],
            input=stdin,
            env=environ,
            cwd=tmp_path,
            capture_output=True,
            timeout=30,
        )

    run_plugin.db = db
    run_plugin.log = log
    return run_plugin


def netconf(version: str = "0.3.0", **ipam: object) -> dict:
    return {"cniVersion": version, "name": "ecs", "ipam": {"type": "ecs-ipam", **ipam}}


def one_json_line(done: subprocess.CompletedProcess) -> dict:
    text = done.stdout.decode()
    assert text.endswith("\n") and text.count("\n") == 1, text
    return json.loads(text)


def test_add_and_del(run):
    conf = netconf(id="a", **{"ipv4-subnet": "10.0.0.0/24", "ipv4-routes": [{"dst": "169.254.170.2/32"}]})
    done = run("ADD", conf)
    assert (done.returncode, done.stderr) == (0, b"")
    assert one_json_line(done) == {
        "cniVersion": "0.3.0",
        "ips": [{"version": "4", "address": "10.0.0.2/24", "gateway": "10.0.0.1"}],
        "routes": [{"dst": "169.254.170.2/32"}],
        "dns": {},
    }
    done = run("DEL", conf)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    assert os.path.exists(run.db) and os.path.exists(run.log)


def test_version_command_without_stdin(run):
    done = run("VERSION", None, CNI_CONTAINERID=None, CNI_NETNS=None, CNI_IFNAME=None)
    assert done.returncode == 0
    assert one_json_line(done)["supportedVersions"][-1] == "1.1.0"


def test_version_flag(run):
    done = run(None, b"", "--version")
    assert (done.returncode, done.stderr) == (0, b"")
    info = one_json_line(done)
    assert list(info) == ["version", "dirty", "gitShortHash"]
    assert info["version"] == ecs_ipam.__version__


def test_capabilities_flag(run):
    done = run(None, b"", "--capabilities")
    assert (done.returncode, done.stderr) == (0, b"")
    assert one_json_line(done) == {"capabilities": ["awsvpc-network-mode"]}


def test_unknown_flag(run):
    done = run("ADD", netconf(id="a", **{"ipv4-subnet": "10.0.0.0/24"}), "--frobnicate")
    assert done.returncode == 2
    assert done.stdout == b""
    assert b"usage" in done.stderr
    assert not os.path.exists(run.db)


@pytest.mark.parametrize(
    "command, stdin, overrides, code",
    [
        ("ADD", b"", {}, 6),
        ("ADD", b"{", {}, 6),
        ("ADD", b"\xff", {}, 6),
        (None, b"{}", {}, 4),
        ("FROB", b"", {}, 4),
        ("ADD", netconf(id="a"), {}, 7),
        ("ADD", netconf("0.0.1", id="a", **{"ipv4-subnet": "10.0.0.0/24"}), {}, 1),
        ("ADD", netconf(id="a", **{"ipv4-subnet": "10.0.0.0/24"}), {"CNI_CONTAINERID": None}, 4),
        ("ADD", netconf(id="a", **{"ipv4-subnet": "10.0.0.0/24"}), {"IPAM_DB_CONNECTION_TIMEOUT": "5 s"}, 4),
        # Undecodable bytes in the environment reach Python as lone surrogates.
        ("ADD", netconf(id="a", **{"ipv4-subnet": "10.0.0.0/24"}), {"CNI_CONTAINERID": b"c\xff"}, 4),
        ("ADD", b'{"cniVersion": "0.3.0", "ipam": {"id": "a\\udc80", "ipv4-subnet": "10.0.0.0/24"}}', {}, 7),
        ("DEL", netconf(**{"ipv4-subnet": "10.0.0.0/24"}), {}, 7),
    ],
)
def test_errors_are_json_on_stdout_and_nothing_else(run, command, stdin, overrides, code):
    done = run(command, stdin, **overrides)
    assert done.returncode == 1
    assert done.stderr == b""
    error = one_json_line(done)
    assert error["code"] == code
    assert {"cniVersion", "code", "msg"} <= set(error)
    assert not os.path.exists(run.db)


def test_database_path_that_is_a_directory(run, tmp_path):
    done = run("ADD", netconf(id="a", **{"ipv4-subnet": "10.0.0.0/24"}), IPAM_DB_PATH=str(tmp_path))
    assert (done.returncode, done.stderr) == (1, b"")
    assert one_json_line(done)["code"] == 5


def test_unwritable_log(run, tmp_path):
    done = run("ADD", netconf(id="a", **{"ipv4-subnet": "10.0.0.0/24"}), ECS_CNI_LOG_FILE=str(tmp_path))
    assert (done.returncode, done.stderr) == (0, b"")
    assert one_json_line(done)["ips"][0]["address"] == "10.0.0.2/24"
    done = run("ADD", b"{", ECS_CNI_LOG_FILE=str(tmp_path / "missing" / "x.log"))
    assert (done.returncode, done.stderr) == (1, b"")
    assert one_json_line(done)["code"] == 6


def test_stdin_closed(run, program, tmp_path):
    done = subprocess.run(
        program,
        stdin=subprocess.DEVNULL,
        env={"PYTHONPATH": str(ROOT), "CNI_COMMAND": "DEL", "IPAM_DB_PATH": run.db, "ECS_CNI_LOG_FILE": run.log},
        capture_output=True,
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (1, b"")
    assert one_json_line(done)["code"] == 6
