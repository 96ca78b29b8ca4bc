"""End to end, as on an ECS host: the reference bridge plugin execs ecs-ipam from CNI_PATH
and configures a real veth in a real network namespace from its result; the agent then
releases the addresses with a DEL sent straight to ecs-ipam.

Needs root, iproute2 and Debian's containernetworking-plugins; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecs_ipam import kv

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = Path("/usr/lib/cni/bridge")
DUMP_DB = ROOT / "tools" / "dump_db.py"

V4 = "169.254.172.0/22"
V6 = "fd00:ec2::172:0/112"
# What the ECS agent sends when it releases a task's addresses (it has no netns by then).
AGENT_RELEASE_ENV = {"CNI_CONTAINERID": "", "CNI_NETNS": "/host/proc//ns/net", "CNI_IFNAME": "ecs-eth0"}
AGENT_TIMEOUT = 5.0


def command(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done


@pytest.fixture
def sandbox():
    """A fresh network namespace and the name of a bridge; both removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    if not BRIDGE.is_file():
        pytest.skip(f"{BRIDGE} is missing (Debian package containernetworking-plugins)")
    suffix = secrets.token_hex(4)
    namespace, bridge = f"ecsipam-test-{suffix}", f"ecsbr{suffix}"
    try:
        added = command("ip", "netns", "add", namespace, check=False)
    except FileNotFoundError:
        pytest.skip("ip is missing (Debian package iproute2)")
    if added.returncode:
        pytest.skip(f"ip netns add failed: {added.stderr.strip()}")
    try:
        # A namespace may start with IPv6 disabled, depending on the host's defaults.
        for scope in ("all", "default"):
            command(
                "ip", "netns", "exec", namespace, "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=0", check=False
            )
        yield namespace, bridge
    finally:
        command("ip", "netns", "del", namespace, check=False)
        if command("ip", "link", "show", bridge, check=False).returncode == 0:
            command("ip", "link", "del", bridge, check=False)


@pytest.fixture
def cni_bin(tmp_path: Path) -> Path:
    """A CNI_PATH directory with the bridge plugin and this project's ecs-ipam."""
    directory = tmp_path / "cni-bin"
    directory.mkdir()
    (directory / "bridge").symlink_to(BRIDGE)
    console_script = Path(sys.executable).parent / "ecs-ipam"
    if console_script.is_file():
        (directory / "ecs-ipam").symlink_to(console_script)
    else:
        # Not installed: run the checkout's entry point with this interpreter.
        wrapper = directory / "ecs-ipam"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"PYTHONPATH='{ROOT}'${{PYTHONPATH:+:$PYTHONPATH}} exec '{sys.executable}' -c "
            "'import sys; from ecs_ipam.cni import main; sys.exit(main())' \"$@\"\n"
        )
        wrapper.chmod(0o755)
    return directory


class Host:
    """One simulated ECS host: a database, a log, the plugins and a task namespace."""

    def __init__(self, tmp_path: Path, cni_bin: Path, namespace: str, bridge: str, cni_version: str):
        self.db = tmp_path / "eni-ipam.db"
        self.log = tmp_path / "ecs-ipam.log"
        self.cni_bin = cni_bin
        self.namespace = namespace
        self.netns_path = f"/var/run/netns/{namespace}"
        # The newer agent path uses the task's netns path as the owner id.
        self.owner = self.netns_path
        self.ipam = {
            "type": "ecs-ipam",
            "id": self.owner,
            "ipv4-subnet": V4,
            "ipv4-routes": [{"dst": "169.254.170.2/32"}],
            "ipv6-subnet": V6,
        }
        self.bridge_conf = {
            "cniVersion": cni_version,
            "name": "ecs-e2e",
            "type": "bridge",
            "bridge": bridge,
            "ipMasq": False,
            "ipam": self.ipam,
        }

    def env(self, **overrides: str) -> dict[str, str]:
        env = dict(
            os.environ,
            CNI_CONTAINERID=f"container-{self.namespace}",
            CNI_NETNS=self.netns_path,
            CNI_IFNAME="eth0",
            CNI_PATH=str(self.cni_bin),
            IPAM_DB_PATH=str(self.db),
            ECS_CNI_LOG_FILE=str(self.log),
        )
        env.update(overrides)
        return env

    def run(self, plugin: str, conf: dict, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.cni_bin / plugin)],
            input=json.dumps(conf),
            capture_output=True,
            text=True,
            env=self.env(**env),
            timeout=60,
        )

    def explain(self, done: subprocess.CompletedProcess) -> str:
        log = self.log.read_text() if self.log.exists() else "(no log)"
        return f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}\nplugin log:\n{log}"

    def bridge_add(self) -> dict:
        done = self.run("bridge", self.bridge_conf, CNI_COMMAND="ADD")
        assert done.returncode == 0, self.explain(done)
        return json.loads(done.stdout)

    def bridge_del(self, prev_result: dict) -> None:
        conf = dict(self.bridge_conf)
        if tuple(map(int, conf["cniVersion"].split("."))) >= (0, 4, 0):
            # As libcni does from 0.4.0 on: DEL carries what ADD returned.
            conf["prevResult"] = prev_result
        done = self.run("bridge", conf, CNI_COMMAND="DEL")
        assert done.returncode == 0, self.explain(done)
        assert done.stdout == ""

    def agent_release(self) -> float:
        """The agent's direct DEL by id; return how long it took."""
        conf = {"cniVersion": "0.3.0", "name": "ecs-ipam", "type": "ecs-ipam", "ipam": self.ipam}
        started = time.monotonic()
        done = self.run("ecs-ipam", conf, CNI_COMMAND="DEL", **AGENT_RELEASE_ENV)
        elapsed = time.monotonic() - started
        assert done.returncode == 0, self.explain(done)
        assert done.stdout == ""
        return elapsed

    def addresses(self) -> set[tuple[str, str, int]]:
        links = json.loads(command("ip", "-n", self.namespace, "-j", "addr", "show", "dev", "eth0").stdout)
        return {(info["family"], info["local"], info["prefixlen"]) for link in links for info in link["addr_info"]}

    def routes(self, family: str) -> list[dict]:
        return json.loads(command("ip", "-n", self.namespace, "-j", family, "route", "show").stdout)

    def dump(self, bucket: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, str(DUMP_DB), "--db", str(self.db), "--bucket", bucket],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    def held_by_owner(self) -> list[str]:
        """Every key that still names the owner, in either subnet's bucket."""
        held = []
        with kv.open_store(str(self.db), V4, read_only=True) as store:
            for bucket in (V4, V6):
                for line in self.dump(bucket):
                    if line.endswith(f" - value={self.owner}"):
                        held.append(f"{bucket}: {line}")
                if store.bucket(bucket).exists(f"id/{self.owner}"):
                    held.append(f"{bucket}: id/{self.owner}")
        return held

    def assert_configured(self, result: dict, v4: str, v6: str) -> None:
        assert sorted(ip["address"] for ip in result["ips"]) == sorted([f"{v4}/22", f"{v6}/112"])
        assert {"dst": "169.254.170.2/32"} in result["routes"]
        assert ("inet", v4, 22) in self.addresses()
        assert ("inet6", v6, 112) in self.addresses()
        assert {(r["dst"], r.get("gateway"), r.get("dev")) for r in self.routes("-4")} >= {
            ("169.254.170.2", "169.254.172.1", "eth0"),
            (V4, None, "eth0"),
        }
        assert (V6, "eth0") in {(r["dst"], r.get("dev")) for r in self.routes("-6")}
        assert f"key={v4} - value={self.owner}" in self.dump(V4)
        assert f"key={v6} - value={self.owner}" in self.dump(V6)
        # Each bucket holds the address record and the id index entry.
        assert len(self.held_by_owner()) == 4

    def eth0_exists(self) -> bool:
        return command("ip", "-n", self.namespace, "link", "show", "eth0", check=False).returncode == 0


@pytest.mark.parametrize("cni_version", ["0.3.0", "1.0.0"])
def test_bridge_add_del_then_agent_release(cni_version, sandbox, cni_bin, tmp_path):
    namespace, bridge = sandbox
    host = Host(tmp_path, cni_bin, namespace, bridge, cni_version)

    result = host.bridge_add()
    assert result["cniVersion"] == cni_version
    host.assert_configured(result, "169.254.172.2", "fd00:ec2::172:2")

    host.bridge_del(result)
    assert not host.eth0_exists()
    assert host.held_by_owner() == []

    # The agent releases after the bridge DEL: nothing is left, and that is a success.
    assert host.agent_release() < AGENT_TIMEOUT
    assert host.held_by_owner() == []


def test_agent_release_frees_what_bridge_add_allocated(sandbox, cni_bin, tmp_path):
    namespace, bridge = sandbox
    host = Host(tmp_path, cni_bin, namespace, bridge, "0.3.0")

    first = host.bridge_add()
    host.assert_configured(first, "169.254.172.2", "fd00:ec2::172:2")
    host.bridge_del(first)

    # The walk goes on after the released address, as the Go plugin's does.
    second = host.bridge_add()
    host.assert_configured(second, "169.254.172.3", "fd00:ec2::172:3")

    # The agent's usual order: its own release while the interface still exists...
    assert host.agent_release() < AGENT_TIMEOUT
    assert host.held_by_owner() == []
    assert host.eth0_exists()
    # ...and the bridge DEL afterwards still tears the interface down.
    host.bridge_del(second)
    assert not host.eth0_exists()
    assert host.held_by_owner() == []
