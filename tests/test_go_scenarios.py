"""The Go plugin's own test scenarios (plugins/ipam: config, commands and integration tests of
aws/amazon-ecs-cni-plugins), rewritten as black-box steps through the CNI entry point.

Each scenario is a list of steps on one fresh database: a command, the ``ipam`` keys of
its configuration, and what the Go plugin answers, as an outcome: ``ok`` with the
address, gateway and routes, or the CNI code ecs-ipam gives that condition (the Go plugin
says 100 for all of them; see README, "error-codes").  Where ecs-ipam differs on purpose
the step says so and names the difference.
"""

from __future__ import annotations

import io
import json
import os

import pytest

from ecs_ipam.cni import main

ROUTE = [{"dst": "192.168.2.3/32"}]
S24 = {"ipv4-subnet": "10.0.0.0/24"}
S29 = {"ipv4-subnet": "10.0.0.0/29"}
INTEG = {"ipv4-subnet": "10.0.0.0/24", "ipv4-gateway": "10.0.0.8", "ipv4-routes": ROUTE, "timeout": "5s"}


def ok(address: str, gateway: str, routes: list | None = None) -> dict:
    return {"ok": True, "ips": [(address, gateway)], "routes": routes or []}


def code(n: int) -> dict:
    return {"ok": False, "code": n}


SCENARIOS = {
    # config_test.go
    "invalid ipv4-address: no fourth octet": [("ADD", {**S24, "ipv4-address": "10.0.0"}, code(7))],
    "invalid ipv4-address: no prefix": [("ADD", {**S24, "ipv4-address": "10.0.0.1"}, code(7))],
    "valid ipv4-address": [("ADD", {**S24, "ipv4-address": "10.0.0.2/24"}, ok("10.0.0.2/24", "10.0.0.1"))],
    "empty ipv4-address": [("ADD", {**S24, "ipv4-address": ""}, code(7))],
    "ip not in subnet": [("ADD", {**S24, "ipv4-gateway": "10.0.0.1", "ipv4-address": "10.0.1.2/24"}, code(7))],
    "gateway not in subnet": [("ADD", {**S24, "ipv4-gateway": "10.0.1.1", "ipv4-address": "10.0.0.2/24"}, code(7))],
    "ip is the network address": [("ADD", {**S24, "ipv4-gateway": "10.0.0.1", "ipv4-address": "10.0.0.0/24"}, code(7))],
    "ip is the broadcast address": [
        ("ADD", {**S24, "ipv4-gateway": "10.0.0.1", "ipv4-address": "10.0.0.255/24"}, code(7))
    ],
    "gateway is the network address": [
        ("ADD", {**S24, "ipv4-gateway": "10.0.0.0", "ipv4-address": "10.0.0.2/24"}, code(7))
    ],
    "gateway is a broadcast address outside": [
        ("ADD", {**S24, "ipv4-gateway": "10.0.1.255", "ipv4-address": "10.0.0.2/24"}, code(7))
    ],
    "no subnet": [("ADD", {"ipv4-gateway": "10.0.0.1", "ipv4-address": "10.0.0.2/24"}, code(7))],
    "default gateway": [("ADD", {**S24, "ipv4-address": "10.0.0.2/24"}, ok("10.0.0.2/24", "10.0.0.1"))],
    "ipv4 happy path": [
        (
            "ADD",
            {
                "ipv4-address": "10.0.0.2/16",
                "ipv4-subnet": "10.0.0.0/16",
                "ipv4-gateway": "10.0.0.8",
                "ipv4-routes": ROUTE,
            },
            ok("10.0.0.2/16", "10.0.0.8", ROUTE),
        )
    ],
    "network and broadcast of a /29": [
        ("ADD", {**S29, "ipv4-address": "10.0.0.0/29"}, code(7)),
        ("ADD", {**S29, "ipv4-address": "10.0.0.7/29"}, code(7)),
        ("ADD", {**S29, "ipv4-address": "10.0.0.2/29"}, ok("10.0.0.2/29", "10.0.0.1")),
    ],
    # commands_test.go
    "specific ipv4 address": [("ADD", {**S29, "ipv4-address": "10.0.0.3/29"}, ok("10.0.0.3/29", "10.0.0.1"))],
    "next ipv4 after the last known": [
        ("ADD", {**S29, "ipv4-address": "10.0.0.3/29"}, ok("10.0.0.3/29", "10.0.0.1")),
        ("ADD", S29, ok("10.0.0.4/29", "10.0.0.1")),
    ],
    "used ipv4 address": [
        ("ADD", {**S29, "ipv4-address": "10.0.0.3/29"}, ok("10.0.0.3/29", "10.0.0.1")),
        ("ADD", {**S29, "ipv4-address": "10.0.0.3/29"}, code(100)),
    ],
    "subnet used up": [
        *[("ADD", S29, ok(f"10.0.0.{n}/29", "10.0.0.1")) for n in range(2, 7)],
        ("ADD", S29, code(102)),
    ],
    "gateway shared by many containers": [
        ("ADD", {**S29, "id": "a"}, ok("10.0.0.2/29", "10.0.0.1")),
        ("ADD", {**S29, "id": "b"}, ok("10.0.0.3/29", "10.0.0.1")),
    ],
    "gateway used by a container": [
        ("ADD", {**S29, "ipv4-address": "10.0.0.2/29"}, ok("10.0.0.2/29", "10.0.0.1")),
        ("ADD", {**S29, "ipv4-gateway": "10.0.0.2"}, code(100)),
    ],
    "one address per ADD": [("ADD", S29, ok("10.0.0.2/29", "10.0.0.1"))],
    "ipv6 address for the ipv4 family": [("ADD", {**S29, "ipv4-address": "2001:db8::2:1/60"}, code(7))],
    "used ip with an explicit gateway": [
        ("ADD", {**S29, "ipv4-address": "10.0.0.3/29", "ipv4-gateway": "10.0.0.1"}, ok("10.0.0.3/29", "10.0.0.1")),
        ("ADD", {**S29, "ipv4-address": "10.0.0.3/29", "ipv4-gateway": "10.0.0.1"}, code(100)),
    ],
    "del by address": [
        ("ADD", {**S29, "ipv4-address": "10.0.0.2/29"}, ok("10.0.0.2/29", "10.0.0.1")),
        ("DEL", {**S29, "ipv4-address": "10.0.0.2/29"}, {"ok": True}),
        ("ADD", S29, ok("10.0.0.3/29", "10.0.0.1")),  # the walk goes on after the released address
    ],
    "del by id": [
        ("ADD", {**S29, "id": "TestDelByID"}, ok("10.0.0.2/29", "10.0.0.1")),
        ("ADD", S29, ok("10.0.0.3/29", "10.0.0.1")),
        ("DEL", {**S29, "id": "TestDelByID"}, {"ok": True}),
        ("ADD", S29, ok("10.0.0.4/29", "10.0.0.1")),
    ],
    "del without id and address": [
        ("DEL", S29, code(7)),
        ("DEL", {**S29, "id": ""}, code(7)),
    ],
    # ipam_integ_test.go
    "get an existing ip": [
        ("ADD", {**INTEG, "ipv4-address": "10.0.0.2/24"}, ok("10.0.0.2/24", "10.0.0.8", ROUTE)),
        ("ADD", {**INTEG, "ipv4-address": "10.0.0.2/24"}, code(100)),
    ],
    "get an available ipv4": [("ADD", INTEG, ok("10.0.0.1/24", "10.0.0.8", ROUTE))],
    "del then add the same fixed address": [
        # The Go plugin fails this first DEL; see README, "del-not-held".
        ("DEL", {**INTEG, "ipv4-address": "10.0.0.3/24"}, {"ok": True, "differs": "del-not-held"}),
        ("ADD", {**INTEG, "ipv4-address": "10.0.0.3/24"}, ok("10.0.0.3/24", "10.0.0.8", ROUTE)),
        ("ADD", {**INTEG, "ipv4-address": "10.0.0.3/24"}, code(100)),
        ("DEL", {**INTEG, "ipv4-address": "10.0.0.3/24"}, {"ok": True}),
        ("ADD", {**INTEG, "ipv4-address": "10.0.0.3/24"}, ok("10.0.0.3/24", "10.0.0.8", ROUTE)),
    ],
    "del by id, then the walk goes on": [
        ("ADD", {**INTEG, "id": "TestDelByID"}, ok("10.0.0.1/24", "10.0.0.8", ROUTE)),
        ("ADD", {**INTEG, "id": "TestDelByID"}, code(101)),
        ("DEL", {**INTEG, "id": "TestDelByID"}, {"ok": True}),
        ("ADD", {**INTEG, "id": "TestDelByID"}, ok("10.0.0.2/24", "10.0.0.8", ROUTE)),
    ],
}


def outcome(rc: int, output: str) -> dict:
    document = json.loads(output) if output.strip() else {}
    if rc != 0:
        return {"ok": False, "code": document.get("code")}
    if not document:
        return {"ok": True}
    return {
        "ok": True,
        "ips": [(ip["address"], ip.get("gateway")) for ip in document["ips"]],
        "routes": document.get("routes", []),
    }


@pytest.mark.parametrize("name", SCENARIOS)
def test_go_scenario(tmp_path, name):
    for index, (command, ipam, expected) in enumerate(SCENARIOS[name]):
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "c1",
            "CNI_NETNS": "/x",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/x",
            "IPAM_DB_PATH": str(tmp_path / "ipam.db"),
            "ECS_CNI_LOG_FILE": os.devnull,
        }
        conf = {"cniVersion": "0.3.0", "name": "testnet", "ipam": {"type": "ipam", **ipam}}
        out = io.StringIO()
        rc = main([], env, io.BytesIO(json.dumps(conf).encode()), out)
        wanted = {k: v for k, v in expected.items() if k != "differs"}
        assert outcome(rc, out.getvalue()) == wanted, (name, index, out.getvalue())


def test_an_invalid_cni_version_fails_the_add(tmp_path):
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c",
        "CNI_NETNS": "/x",
        "CNI_IFNAME": "eth0",
        "IPAM_DB_PATH": str(tmp_path / "ipam.db"),
        "ECS_CNI_LOG_FILE": os.devnull,
    }
    conf = {"cniVersion": "invalid", "name": "testnet", "ipam": {"type": "ipam", **S29, "ipv4-address": "10.0.0.2/29"}}
    out = io.StringIO()
    assert main([], env, io.BytesIO(json.dumps(conf).encode()), out) == 1
    assert json.loads(out.getvalue())["code"] == 1
    assert not (tmp_path / "ipam.db").exists()


def test_the_database_is_at_ipam_db_path(tmp_path):
    path = tmp_path / "elsewhere" / "test.db"
    path.parent.mkdir()
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c",
        "CNI_NETNS": "/x",
        "CNI_IFNAME": "eth0",
        "IPAM_DB_PATH": str(path),
        "ECS_CNI_LOG_FILE": os.devnull,
    }
    conf = {"cniVersion": "0.3.0", "name": "testnet", "ipam": {"type": "ipam", **S29}}
    assert main([], env, io.BytesIO(json.dumps(conf).encode()), io.StringIO()) == 0
    assert path.exists()
