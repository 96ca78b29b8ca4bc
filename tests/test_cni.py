"""The CNI entry point, called as ``main(argv, environ, stdin, stdout)``."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import time

import pytest

import ecs_ipam
from ecs_ipam import ipam as core
from ecs_ipam.cni import main

SUBNET = {"ipv4-subnet": "10.0.0.0/24"}


class Plugin:
    """Runs the plugin in-process against one database and one log file."""

    def __init__(self, directory) -> None:
        self.db = str(directory / "ipam.db")
        self.log = str(directory / "plugin.log")

    def run(self, command: str, stdin: object = "", argv: list[str] | None = None, **overrides: str):
        environ = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "container-1",
            "CNI_NETNS": "/var/run/netns/ns-1",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin",
            "IPAM_DB_PATH": self.db,
            "ECS_CNI_LOG_FILE": self.log,
        }
        environ.update(overrides)
        environ = {name: value for name, value in environ.items() if value is not None}
        if isinstance(stdin, dict):
            stdin = json.dumps(stdin)
        stream = io.BytesIO(stdin) if isinstance(stdin, bytes) else io.StringIO(stdin)
        out = io.StringIO()
        code = main(argv or [], environ, stream, out)
        return code, out.getvalue()

    def ok(self, command: str, stdin: object = "", **overrides: str) -> dict | None:
        code, out = self.run(command, stdin, **overrides)
        assert code == 0, out
        return json.loads(out) if out else None

    def error(self, command: str, stdin: object = "", **overrides: str) -> dict:
        code, out = self.run(command, stdin, **overrides)
        assert code == 1, out
        assert out.endswith("\n") and out.count("\n") == 1, out
        assert "Traceback" not in out
        error = json.loads(out)
        assert set(error) <= {"cniVersion", "code", "msg", "details"}
        assert {"cniVersion", "code", "msg"} <= set(error)
        return error

    def db_digest(self) -> str | None:
        if not os.path.exists(self.db):
            return None
        with open(self.db, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def plugin(tmp_path):
    return Plugin(tmp_path)


def netconf(version: str = "0.3.0", **ipam: object) -> dict:
    return {"cniVersion": version, "name": "ecs", "type": "ecs-bridge", "ipam": {"type": "ecs-ipam", **ipam}}


# --- every command ---------------------------------------------------------------------------


def test_add(plugin):
    out = plugin.run("ADD", netconf(id="a", **SUBNET, **{"ipv4-routes": [{"dst": "169.254.170.2/32"}]}))
    assert out == (
        0,
        '{"cniVersion":"0.3.0","ips":[{"version":"4","address":"10.0.0.2/24","gateway":"10.0.0.1"}],'
        '"routes":[{"dst":"169.254.170.2/32"}],"dns":{}}\n',
    )


def test_add_puts_ipv4_first_whatever_the_order_of_the_keys(plugin):
    result = plugin.ok("ADD", netconf("1.0.0", id="a", **{"ipv6-subnet": "fd00::/64", "ipv4-subnet": "10.0.0.0/24"}))
    assert [ip["address"] for ip in result["ips"]] == ["10.0.0.2/24", "fd00::2/64"]


def test_stdin_may_be_bytes_or_text(plugin):
    assert plugin.ok("ADD", json.dumps(netconf(id="a", **SUBNET)).encode())["ips"][0]["address"] == "10.0.0.2/24"
    assert plugin.ok("ADD", json.dumps(netconf(id="b", **SUBNET)))["ips"][0]["address"] == "10.0.0.3/24"


def test_del_prints_nothing(plugin):
    plugin.ok("ADD", netconf(id="a", **SUBNET))
    assert plugin.run("DEL", netconf(id="a", **SUBNET)) == (0, "")
    assert plugin.run("DEL", netconf(id="a", **SUBNET)) == (0, "")


def test_check_prints_nothing(plugin):
    plugin.ok("ADD", netconf("0.4.0", id="a", **SUBNET))
    assert plugin.run("CHECK", netconf("0.4.0", id="a", **SUBNET)) == (0, "")
    plugin.ok("DEL", netconf("0.4.0", id="a", **SUBNET))
    assert plugin.error("CHECK", netconf("0.4.0", id="a", **SUBNET)) == {
        "cniVersion": "0.4.0",
        "code": 103,
        "msg": "id 'a' holds no address in 10.0.0.0/24",
    }


def test_gc_prints_nothing(plugin):
    plugin.ok("ADD", netconf("1.1.0", id="a", **SUBNET), CNI_CONTAINERID="c1")
    plugin.ok("ADD", netconf("1.1.0", id="b", **SUBNET), CNI_CONTAINERID="c2")
    gc = netconf("1.1.0", **SUBNET) | {"cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth0"}]}
    assert plugin.run("GC", gc, CNI_CONTAINERID=None, CNI_NETNS=None, CNI_IFNAME=None) == (0, "")
    assert plugin.run("CHECK", netconf("1.1.0", id="b", **SUBNET)) == (0, "")
    assert plugin.error("CHECK", netconf("1.1.0", id="a", **SUBNET))["code"] == 103


def test_status(plugin):
    small = {"ipv4-subnet": "10.0.0.0/30"}
    assert plugin.run("STATUS", netconf("1.1.0", **small)) == (0, "")
    plugin.ok("ADD", netconf("1.1.0", id="a", **small))
    assert plugin.error("STATUS", netconf("1.1.0", **small)) == {
        "cniVersion": "1.1.0",
        "code": 50,
        "msg": "no free address left in 10.0.0.0/30",
    }
    assert plugin.error("ADD", netconf("1.1.0", id="b", **small))["code"] == 102


def test_version(plugin):
    assert plugin.ok("VERSION", "", CNI_CONTAINERID=None) == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


# --- flags -----------------------------------------------------------------------------------


def test_version_flag(plugin):
    code, out = plugin.run("", argv=["--version"])
    assert code == 0
    info = json.loads(out)
    assert list(info) == ["version", "dirty", "gitShortHash"]
    assert info["version"] == ecs_ipam.__version__
    assert isinstance(info["dirty"], bool) and isinstance(info["gitShortHash"], str)


def test_capabilities_flag(plugin):
    assert plugin.run("", argv=["--capabilities"]) == (0, '{"capabilities":["awsvpc-network-mode"]}\n')


@pytest.mark.parametrize("argv", [["--help"], ["--version", "--capabilities"], ["ADD"]])
def test_unknown_flags(plugin, argv, capsys):
    assert plugin.run("ADD", netconf(id="a", **SUBNET), argv=argv) == (2, "")
    assert "usage" in capsys.readouterr().err
    assert plugin.db_digest() is None


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, stdin, overrides, expected",
    [
        ("ADD", "", {}, {"cniVersion": "1.1.0", "code": 6, "msg": "no network configuration on stdin"}),
        ("ADD", b"\xff\xfe", {}, {"cniVersion": "1.1.0", "code": 6}),
        ("ADD", "{not json", {}, {"cniVersion": "1.1.0", "code": 6}),
        ("ADD", "[1, 2]", {}, {"cniVersion": "1.1.0", "code": 7}),
        (
            "ADD",
            "",
            {"CNI_COMMAND": "FROB"},
            {
                "cniVersion": "1.1.0",
                "code": 4,
                "msg": "CNI_COMMAND 'FROB' is not one of ADD, DEL, CHECK, GC, STATUS, VERSION",
            },
        ),
        (
            "ADD",
            netconf(id="a", **SUBNET),
            {"CNI_COMMAND": None},
            {"cniVersion": "1.1.0", "code": 4, "msg": "CNI_COMMAND is not set"},
        ),
        (
            "ADD",
            netconf(id="a", **SUBNET),
            {"CNI_NETNS": ""},
            {"cniVersion": "1.1.0", "code": 4, "msg": "CNI_NETNS is required for ADD"},
        ),
        (
            "ADD",
            netconf(id="a", **SUBNET),
            {"IPAM_DB_CONNECTION_TIMEOUT": "5"},
            {
                "cniVersion": "1.1.0",
                "code": 4,
                "msg": "IPAM_DB_CONNECTION_TIMEOUT '5' is not a duration such as 5s, 500ms or 1m30s",
            },
        ),
        (
            "ADD",
            netconf("0.5.0", id="a", **SUBNET),
            {},
            {
                "cniVersion": "1.1.0",
                "code": 1,
                "msg": "incompatible CNI version 0.5.0; supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0",
            },
        ),
        (
            "ADD",
            netconf("0.2.0", id="a"),
            {},
            {"cniVersion": "0.2.0", "code": 7, "msg": "ipam.ipv4-subnet or ipam.ipv6-subnet is required"},
        ),
        (
            "ADD",
            netconf("1.0.0", id=5, **SUBNET),
            {},
            {"cniVersion": "1.0.0", "code": 7, "msg": "ipam.id must be a string, got 5"},
        ),
        (
            "DEL",
            netconf("0.3.0", **SUBNET),
            {},
            {
                "cniVersion": "0.3.0",
                "code": 7,
                "msg": "ip address (ipv4 or ipv6) and id can not all be empty for deletion",
            },
        ),
        (
            "CHECK",
            netconf("0.3.0", id="a", **SUBNET),
            {},
            {"cniVersion": "0.3.0", "code": 1, "msg": "CHECK needs cniVersion 0.4.0 or later, got 0.3.0"},
        ),
        (
            "GC",
            netconf("1.1.0", **SUBNET),
            {},
            {"cniVersion": "1.1.0", "code": 7, "msg": "cni.dev/valid-attachments is required for GC"},
        ),
    ],
)
def test_error_objects(plugin, command, stdin, overrides, expected):
    error = plugin.error(command, stdin, **overrides)
    if "msg" not in expected:
        error.pop("msg")
    assert error == expected


def test_stdin_that_cannot_be_read(plugin):
    class Broken(io.RawIOBase):
        def read(self, size=-1):
            raise OSError("Input/output error")

    out = io.StringIO()
    code = main(
        [],
        {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "c",
            "CNI_NETNS": "/n",
            "CNI_IFNAME": "e",
            "ECS_CNI_LOG_FILE": plugin.log,
        },
        Broken(),
        out,
    )
    assert code == 1
    assert json.loads(out.getvalue())["code"] == 6


@pytest.mark.parametrize("function", ["add", "delete", "check", "gc", "status"])
def test_unexpected_exception_is_code_199_without_traceback(plugin, monkeypatch, function):
    plugin.ok("ADD", netconf("1.1.0", id="a", **SUBNET))

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(core, function, explode)
    command = {"add": "ADD", "delete": "DEL", "check": "CHECK", "gc": "GC", "status": "STATUS"}[function]
    stdin = netconf("1.1.0", id="b", **SUBNET) | {"cni.dev/valid-attachments": []}
    assert plugin.error(command, stdin) == {
        "cniVersion": "1.1.0",
        "code": 199,
        "msg": "internal error: RuntimeError: boom",
    }
    with open(plugin.log) as f:
        log = f.read()
    assert f"{command} failed unexpectedly" in log and "Traceback" in log and "RuntimeError: boom" in log


def test_database_path_that_is_a_directory(plugin, tmp_path):
    directory = tmp_path / "a-directory"
    directory.mkdir()
    error = plugin.error("ADD", netconf(id="a", **SUBNET), IPAM_DB_PATH=str(directory))
    assert error == {"cniVersion": "0.3.0", "code": 5, "msg": f"database path {directory} is a directory"}
    assert os.listdir(directory) == []


def test_database_busy_beyond_the_timeout(plugin):
    plugin.ok("ADD", netconf(id="a", **SUBNET))
    with open(plugin.db, "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.monotonic()
        error = plugin.error("ADD", netconf(id="b", **SUBNET), IPAM_DB_CONNECTION_TIMEOUT="300ms")
        waited = time.monotonic() - started
    assert error["code"] == 11
    assert 0.25 <= waited < 3
    assert plugin.ok("ADD", netconf(id="b", **SUBNET))["ips"][0]["address"] == "10.0.0.3/24"


# --- a rejected command changes nothing -------------------------------------------------------


@pytest.mark.parametrize(
    "command, stdin, overrides",
    [
        ("ADD", netconf(id="a", **SUBNET), {}),  # id already holds an address
        ("ADD", netconf(id="b", **SUBNET, **{"ipv4-address": "10.0.0.2/24"}), {}),
        ("ADD", netconf(id="b", **{"ipv4-subnet": "10.0.0.0/30"}), {}),  # exhausted
        ("ADD", netconf(id="b", **SUBNET, **{"ipv6-subnet": "fd00::/127"}), {}),
        ("ADD", netconf("0.9.9", id="b", **SUBNET), {}),
        ("ADD", netconf(id="b", **SUBNET), {"CNI_IFNAME": ""}),
        ("ADD", netconf(id="b", **SUBNET), {"IPAM_DB_CONNECTION_TIMEOUT": "-1s"}),
        ("ADD", "{", {}),
        ("DEL", netconf(**SUBNET), {}),
        ("CHECK", netconf("0.4.0", id="b", **SUBNET), {}),
        ("CHECK", netconf("0.3.0", id="a", **SUBNET), {}),
        ("GC", netconf("1.0.0", **SUBNET) | {"cni.dev/valid-attachments": []}, {}),
        ("STATUS", netconf("1.1.0", **{"ipv4-subnet": "10.0.0.0/30"}), {}),
    ],
)
def test_rejected_command_leaves_the_database_unchanged(plugin, command, stdin, overrides):
    plugin.ok("ADD", netconf(id="a", **SUBNET))
    # 10.0.0.0/30 lies inside the /24, whose gateway and lease of a fill it: one address space.
    before = plugin.db_digest()
    plugin.error(command, stdin, **overrides)
    assert plugin.db_digest() == before


def test_commands_that_find_no_database_create_none(plugin, tmp_path):
    plugin.ok(
        "DEL", netconf(id="a", **SUBNET), CNI_CONTAINERID="", CNI_NETNS="/host/proc//ns/net", CNI_IFNAME="ecs-eth0"
    )
    plugin.ok("STATUS", netconf("1.1.0", **SUBNET))
    plugin.ok("GC", netconf("1.1.0", **SUBNET) | {"cni.dev/valid-attachments": []})
    plugin.error("CHECK", netconf("1.1.0", id="a", **SUBNET))
    assert plugin.db_digest() is None
    assert not os.path.exists(plugin.db + "-lock")


# --- logging ---------------------------------------------------------------------------------


def test_log_lines(plugin):
    plugin.ok("ADD", netconf(id="a", **SUBNET))
    plugin.ok("DEL", netconf(id="a", **SUBNET))
    plugin.error("ADD", netconf(id="a"))
    with open(plugin.log) as f:
        lines = f.read().splitlines()
    assert len(lines) == 3
    assert "[info]" in lines[0] and "ADD id='a' container='container-1' -> 10.0.0.2/24" in lines[0]
    assert "[info]" in lines[1] and "DEL id='a' released ['10.0.0.2']" in lines[1]
    assert "[error]" in lines[2] and "ADD failed: code=7 ipam.ipv4-subnet or ipam.ipv6-subnet is required" in lines[2]
    assert all(f"pid={os.getpid()}" in line for line in lines)


def test_error_lines_name_the_command_id_container_and_interface(plugin):
    plugin.ok("ADD", netconf(id="a", **{"ipv4-subnet": "10.0.0.0/30"}))
    plugin.error("ADD", netconf(id="b", **{"ipv4-subnet": "10.0.0.0/30"}), CNI_CONTAINERID="c-2", CNI_IFNAME="eth1")
    plugin.error("DEL", netconf(), CNI_CONTAINERID="", CNI_IFNAME="ecs-eth0")  # no id, no address
    plugin.error("ADD", "{not json", CNI_CONTAINERID="c-4")
    with open(plugin.log) as f:
        errors = [line for line in f.read().splitlines() if "[error]" in line]
    assert len(errors) == 3
    assert errors[0].endswith(
        "ADD failed: code=102 failed to find available ip addresses in the subnet 10.0.0.0/30 "
        "(id='b' container='c-2' ifname='eth1')"
    )
    assert errors[1].endswith("(id=anonymous container='' ifname='ecs-eth0')")
    assert "DEL failed: code=7 " in errors[1]
    assert errors[2].endswith("(id=anonymous container='c-4' ifname='eth0')")


def test_debug_level_adds_what_each_command_was_given_and_took(plugin):
    conf = netconf(id="a", **SUBNET)
    plugin.ok("ADD", conf)
    with open(plugin.log) as f:
        assert "[debug]" not in f.read()  # info, the default
    plugin.ok("DEL", conf, ECS_CNI_LOGLEVEL="debug")
    plugin.ok("ADD", conf, ECS_CNI_LOGLEVEL="DEBUG")
    with open(plugin.log) as f:
        lines = f.read().splitlines()[1:]
    assert [line.split("] ", 1)[0].rsplit("[", 1)[1] for line in lines] == ["debug", "info", "debug"] * 2
    assert lines[0].endswith(
        "DEL id='a' container='container-1' ifname='eth0' netns='/var/run/netns/ns-1' cniVersion=0.3.0 "
        f"pools=['10.0.0.0/24'] db={plugin.db!r}"
    )
    assert " DEL done in " in lines[2] and lines[2].endswith(" ms")


def test_log_level(plugin):
    plugin.ok("ADD", netconf(id="a", **SUBNET), ECS_CNI_LOGLEVEL="error")
    assert not os.path.exists(plugin.log)
    plugin.error("ADD", netconf(id="a", **SUBNET), ECS_CNI_LOGLEVEL="ERROR")
    with open(plugin.log) as f:
        assert "[error]" in f.read()
    os.remove(plugin.log)
    plugin.error("ADD", netconf(id="a", **SUBNET), ECS_CNI_LOGLEVEL="off")
    assert not os.path.exists(plugin.log)


@pytest.mark.parametrize("where", ["directory", "missing-directory", "device"])
def test_unwritable_log_changes_nothing(tmp_path, where):
    log = {
        "directory": str(tmp_path),
        "missing-directory": str(tmp_path / "missing" / "plugin.log"),
        "device": "/dev/full",
    }[where]
    outputs = []
    for name, log_file in (("logged", None), ("unlogged", log)):
        directory = tmp_path / name
        directory.mkdir()
        plugin = Plugin(directory)
        overrides = {} if log_file is None else {"ECS_CNI_LOG_FILE": log_file}
        outputs.append(
            [
                plugin.run("ADD", netconf(id="a", **SUBNET), **overrides),
                plugin.run("ADD", netconf(id="a", **SUBNET), **overrides),
                plugin.run("DEL", netconf(id="a", **SUBNET), **overrides),
                plugin.run("ADD", "{", **overrides),
                plugin.run("VERSION", "", **overrides),
            ]
        )
    logged, unlogged = outputs
    assert unlogged == logged
    assert [code for code, _ in logged] == [0, 1, 0, 1, 0]
    assert not os.path.exists(tmp_path / "missing")
