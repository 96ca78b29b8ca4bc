"""The ECS agent's call sequences, replayed against ``python -m ecs_ipam`` processes.

Classic path: cniVersion 0.3.0, one IPv4 /22, the credentials route, id = the task ENI's
MAC address; ADD comes through the bridge plugin (same stdin, the container's env), the
release is a DEL sent straight to the IPAM plugin with an empty container id and a netns
path that does not exist.  Newer path: dual stack, id = the task's netns path and the
constant container id ``container-id``, plus the daemon bridge's fixed addresses.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from ecs_ipam import kv
from ecs_ipam.cni import main

ROOT = Path(__file__).resolve().parent.parent

V4_SUBNET = "169.254.172.0/22"
V6_SUBNET = "fd00:ec2::172:0/112"
CREDENTIALS_ROUTE = {"dst": "169.254.170.2/32"}

# What the agent sets for its release DEL (the netns path is deliberately bogus).
RELEASE_ENV = {"CNI_CONTAINERID": "", "CNI_NETNS": "/host/proc//ns/net", "CNI_IFNAME": "ecs-eth0"}


def classic_ipam(mac: str, v4_subnet: str = V4_SUBNET) -> dict:
    return {
        "type": "ecs-ipam",
        "id": mac,
        "cniVersion": "0.3.0",
        "ipv4-subnet": v4_subnet,
        "ipv4-routes": [CREDENTIALS_ROUTE, {"dst": "169.254.170.0/20", "gw": "169.254.172.1"}],
    }


def newer_ipam(netns: str, **fixed: str) -> dict:
    ipam = {
        "type": "ecs-ipam",
        "id": netns,
        "cniVersion": "0.3.0",
        "ipv4-subnet": V4_SUBNET,
        "ipv4-routes": [CREDENTIALS_ROUTE],
        "ipv6-subnet": V6_SUBNET,
        "connectedSubnetMaskSizeIPv4": 22,
    }
    ipam.update({key.replace("_", "-"): value for key, value in fixed.items()})
    return ipam


def bridge_config(ipam: dict) -> dict:
    """The bridge plugin's config; it execs the IPAM plugin with this very stdin."""
    return {
        "type": "ecs-bridge",
        "cniVersion": "0.3.0",
        "name": "ecs-bridge",
        "bridge": "ecs-bridge",
        "mtu": 1500,
        "ipam": ipam,
    }


def ipam_config(ipam: dict) -> dict:
    """The config of the agent's release DEL, sent to the IPAM plugin itself."""
    return {"type": "ecs-ipam", "cniVersion": "0.3.0", "name": "ecs-ipam", "ipam": ipam}


class Host:
    """One host's IPAM database and log, and the plugin run as the agent runs it."""

    def __init__(self, directory: Path) -> None:
        self.db = str(directory / "eni-ipam.db")
        self.log = str(directory / "ecs-cni-ipam-plugin.log")
        self.cwd = directory

    def call(self, command: str, stdin: dict, env: dict) -> subprocess.CompletedProcess:
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(ROOT),
            "CNI_COMMAND": command,
            "CNI_PATH": "/amazon-ecs-cni-plugins",
            "IPAM_DB_PATH": self.db,
            "IPAM_DB_CONNECTION_TIMEOUT": "5s",
            "ECS_CNI_LOG_FILE": self.log,
            "ECS_CNI_LOGLEVEL": "debug",
            **env,
        }
        return subprocess.run(
            [sys.executable, "-m", "ecs_ipam"],
            input=json.dumps(stdin).encode(),
            env=environ,
            cwd=self.cwd,
            capture_output=True,
            timeout=30,
        )

    def add(self, ipam: dict, container_id: str, netns: str, ifname: str = "eth0") -> dict:
        done = self.call(
            "ADD", bridge_config(ipam), {"CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname}
        )
        assert (done.returncode, done.stderr) == (0, b""), done.stdout
        return json.loads(done.stdout)

    def add_fails(self, ipam: dict, container_id: str, netns: str) -> dict:
        done = self.call(
            "ADD", bridge_config(ipam), {"CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": "eth0"}
        )
        assert (done.returncode, done.stderr) == (1, b"")
        return json.loads(done.stdout)

    def release(self, ipam: dict) -> None:
        done = self.call("DEL", ipam_config(ipam), RELEASE_ENV)
        assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")

    def holders(self, bucket: str) -> dict[str, str]:
        """address -> owner id of every address held in *bucket* (gateway included)."""
        with kv.open_store(self.db, bucket, read_only=True) as store:
            pairs = store.list()
        return {
            pair.key: msgpack.unpackb(pair.value, raw=False)["id"]
            for pair in pairs
            if not pair.key.startswith(("id/", "id#", "lastKnown"))
        }


@pytest.fixture
def host(tmp_path) -> Host:
    return Host(tmp_path)


def addresses(result: dict) -> list[str]:
    return [ip["address"] for ip in result["ips"]]


def mac(n: int) -> str:
    return f"0a:58:a9:fe:{n >> 8 & 255:02x}:{n & 255:02x}"


def docker_id(n: int) -> str:
    return f"{n:064x}"


# --- classic path -------------------------------------------------------------------------


def test_classic_add_for_several_tasks(host):
    results = [host.add(classic_ipam(mac(n)), docker_id(n), f"/proc/{1000 + n}/ns/net") for n in range(1, 4)]
    assert results[0] == {
        "cniVersion": "0.3.0",
        "ips": [{"version": "4", "address": "169.254.172.2/22", "gateway": "169.254.172.1"}],
        "routes": [{"dst": "169.254.170.2/32"}, {"dst": "169.254.170.0/20", "gw": "169.254.172.1"}],
        "dns": {},
    }
    assert [addresses(result) for result in results] == [
        ["169.254.172.2/22"],
        ["169.254.172.3/22"],
        ["169.254.172.4/22"],
    ]
    assert host.holders(V4_SUBNET) == {
        "169.254.172.1": "GateWay",
        "169.254.172.2": mac(1),
        "169.254.172.3": mac(2),
        "169.254.172.4": mac(3),
    }
    # The ADD came with the container's env: GC could match it later.
    with kv.open_store(host.db, V4_SUBNET, read_only=True) as store:
        record = msgpack.unpackb(store.get("169.254.172.3").value, raw=False)
    assert (record["container_id"], record["ifname"]) == (docker_id(2), "eth0")


def test_classic_release_repeat_and_reuse(host):
    for n in range(1, 5):
        host.add(classic_ipam(mac(n)), docker_id(n), f"/proc/{1000 + n}/ns/net")  # .2 .3 .4 .5

    host.release(classic_ipam(mac(2)))  # frees .3
    assert "169.254.172.3" not in host.holders(V4_SUBNET)
    before = Path(host.db).read_bytes()
    # The agent retries a release it is unsure about; the repeats change nothing.
    host.release(classic_ipam(mac(2)))
    host.release(classic_ipam(mac(2)))
    assert Path(host.db).read_bytes() == before

    # A new task: the walk continues after the released .3, and .4 and .5 are held.
    result = host.add(classic_ipam(mac(5)), docker_id(5), "/proc/1005/ns/net")
    assert addresses(result) == ["169.254.172.6/22"]
    # The released ENI's MAC may come back with a new task; it gets a fresh address.
    result = host.add(classic_ipam(mac(2)), docker_id(6), "/proc/1006/ns/net")
    assert addresses(result) == ["169.254.172.7/22"]
    held = host.holders(V4_SUBNET)
    assert sorted(held.values()) == sorted(["GateWay", mac(1), mac(2), mac(3), mac(4), mac(5)])
    assert len(set(held)) == len(held)


def test_classic_release_of_an_unknown_task_succeeds(host):
    # Before any ADD: no database yet, and none is created.
    host.release(classic_ipam(mac(9)))
    assert not os.path.exists(host.db)
    host.add(classic_ipam(mac(1)), docker_id(1), "/proc/1001/ns/net")
    host.release(classic_ipam(mac(9)))
    assert host.holders(V4_SUBNET)["169.254.172.2"] == mac(1)


def test_classic_add_twice_for_the_same_eni_is_refused(host):
    host.add(classic_ipam(mac(1)), docker_id(1), "/proc/1001/ns/net")
    before = Path(host.db).read_bytes()
    error = host.add_fails(classic_ipam(mac(1)), docker_id(1), "/proc/1001/ns/net")
    assert error["code"] == 101 and error["cniVersion"] == "0.3.0"
    assert error["msg"].startswith("id already exists")
    assert Path(host.db).read_bytes() == before


# --- newer path ---------------------------------------------------------------------------

DAEMON_NETNS = "/var/run/netns/ecs-daemon"
DAEMON_FIXED = {"ipv4_address": "169.254.172.2/32", "ipv6_address": "fd00:ec2::172:2/128"}


def task_netns(n: int) -> str:
    return f"/var/run/netns/task-{n}"


def test_newer_path_daemon_then_tasks(host):
    daemon = host.add(newer_ipam(DAEMON_NETNS, **DAEMON_FIXED), "container-id", DAEMON_NETNS)
    assert daemon == {
        "cniVersion": "0.3.0",
        "ips": [
            {"version": "4", "address": "169.254.172.2/32", "gateway": "169.254.172.1"},
            {"version": "6", "address": "fd00:ec2::172:2/128", "gateway": "fd00:ec2::172:1"},
        ],
        "routes": [{"dst": "169.254.170.2/32"}],
        "dns": {},
    }
    tasks = [host.add(newer_ipam(task_netns(n)), "container-id", task_netns(n)) for n in range(1, 4)]
    # The walk skips the daemon's fixed addresses.
    assert [addresses(result) for result in tasks] == [
        ["169.254.172.3/22", "fd00:ec2::172:3/112"],
        ["169.254.172.4/22", "fd00:ec2::172:4/112"],
        ["169.254.172.5/22", "fd00:ec2::172:5/112"],
    ]

    host.release(newer_ipam(task_netns(2)))
    host.release(newer_ipam(task_netns(2)))
    assert host.holders(V4_SUBNET) == {
        "169.254.172.1": "GateWay",
        "169.254.172.2": DAEMON_NETNS,
        "169.254.172.3": task_netns(1),
        "169.254.172.5": task_netns(3),
    }
    assert host.holders(V6_SUBNET) == {
        "fd00:ec2::172:1": "GateWayV6",
        "fd00:ec2::172:2": DAEMON_NETNS,
        "fd00:ec2::172:3": task_netns(1),
        "fd00:ec2::172:5": task_netns(3),
    }

    # The same constant container id for every task does not make them one owner.
    again = host.add(newer_ipam(task_netns(4)), "container-id", task_netns(4))
    assert addresses(again) == ["169.254.172.6/22", "fd00:ec2::172:6/112"]
    reused = host.add(newer_ipam(task_netns(2)), "container-id", task_netns(2))
    assert addresses(reused) == ["169.254.172.7/22", "fd00:ec2::172:7/112"]


def test_newer_path_daemon_addresses_are_claimed_once(host):
    host.add(newer_ipam(DAEMON_NETNS, **DAEMON_FIXED), "container-id", DAEMON_NETNS)
    # An agent restart that re-creates the daemon namespace under another path.
    error = host.add_fails(newer_ipam("/var/run/netns/ecs-daemon-2", **DAEMON_FIXED), "container-id", "/x")
    assert error["code"] == 100
    assert host.holders(V4_SUBNET)["169.254.172.2"] == DAEMON_NETNS
    assert host.holders(V6_SUBNET)["fd00:ec2::172:2"] == DAEMON_NETNS
    # Releasing the daemon by its id gives both fixed addresses back.
    host.release(newer_ipam(DAEMON_NETNS))
    assert set(host.holders(V4_SUBNET)) == {"169.254.172.1"}
    assert set(host.holders(V6_SUBNET)) == {"fd00:ec2::172:1"}
    host.add(newer_ipam("/var/run/netns/ecs-daemon-2", **DAEMON_FIXED), "container-id", "/x")


def test_newer_path_release_by_the_daemons_fixed_addresses(host):
    host.add(newer_ipam(DAEMON_NETNS, **DAEMON_FIXED), "container-id", DAEMON_NETNS)
    host.add(newer_ipam(task_netns(1)), "container-id", task_netns(1))
    release = newer_ipam("", **DAEMON_FIXED)
    del release["id"]
    host.release(release)
    assert host.holders(V4_SUBNET) == {"169.254.172.1": "GateWay", "169.254.172.3": task_netns(1)}
    assert host.holders(V6_SUBNET) == {"fd00:ec2::172:1": "GateWayV6", "fd00:ec2::172:3": task_netns(1)}


def test_both_paths_share_one_database(host):
    # A host moving from the classic to the newer agent keeps its file.
    host.add(classic_ipam(mac(1)), docker_id(1), "/proc/1001/ns/net")
    result = host.add(newer_ipam(task_netns(1)), "container-id", task_netns(1))
    assert addresses(result) == ["169.254.172.3/22", "fd00:ec2::172:2/112"]
    host.release(classic_ipam(mac(1)))
    host.release(newer_ipam(task_netns(1)))
    assert set(host.holders(V4_SUBNET)) == {"169.254.172.1"}


# --- churn: released addresses never leak -------------------------------------------------


def in_process(host: Host, command: str, stdin: dict, env: dict) -> tuple[int, str]:
    out = io.StringIO()
    environ = {"CNI_COMMAND": command, "IPAM_DB_PATH": host.db, "ECS_CNI_LOG_FILE": host.log, **env}
    code = main([], environ, io.StringIO(json.dumps(stdin)), out)
    return code, out.getvalue()


def churn(host: Host, subnet: str, cycles: int, running: int) -> set[str]:
    """Start and stop tasks as the agent does, *running* at a time; return addresses seen."""
    seen = set()
    live: list[int] = []
    for n in range(cycles):
        code, out = in_process(
            host,
            "ADD",
            bridge_config(classic_ipam(mac(n), subnet)),
            {"CNI_CONTAINERID": docker_id(n), "CNI_NETNS": f"/proc/{n}/ns/net", "CNI_IFNAME": "eth0"},
        )
        assert code == 0, out
        seen.update(addresses(json.loads(out)))
        live.append(n)
        if len(live) > running:
            gone = live.pop(0)
            code, out = in_process(host, "DEL", ipam_config(classic_ipam(mac(gone), subnet)), RELEASE_ENV)
            assert (code, out) == (0, "")
    return seen


def test_churn_wraps_a_small_subnet_without_leaking(host):
    # 13 usable addresses, 5 tasks at a time, 40 tasks: the walk wraps three times.
    seen = churn(host, "10.9.0.0/28", cycles=40, running=5)
    assert seen == {f"10.9.0.{n}/28" for n in range(2, 15)}
    assert len(host.holders("10.9.0.0/28")) == 1 + 5


@pytest.mark.slow
def test_churn_through_the_agents_subnet_twice(host):
    seen = churn(host, V4_SUBNET, cycles=2 * 1021 + 10, running=20)
    assert len(seen) == 1021
    assert len(host.holders(V4_SUBNET)) == 1 + 20
