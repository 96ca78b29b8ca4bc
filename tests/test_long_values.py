"""A huge bad value is quoted in an error message only up to a sensible length.

Every value a caller controls (the configuration on stdin, the environment, ids recorded
in the database) is tried at 1 MB: the error object stays short, keeps its code, and so
does the line in the log.
"""

from __future__ import annotations

import io
import json

import pytest

from ecs_ipam.cni import main
from ecs_ipam.config import MAX_FIELD_BYTES

MB = 1 << 20
HUGE = "x" * MB
SUBNET = "10.0.0.0/24"
LIMIT = 400  # characters of a whole error object


def environment(tmp_path, command: str, **overrides: str) -> dict:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/x",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/x",
        "IPAM_DB_PATH": str(tmp_path / "ipam.db"),
        "ECS_CNI_LOG_FILE": str(tmp_path / "plugin.log"),
    }
    env.update(overrides)
    return env


def run(tmp_path, command: str, stdin: object, **env: str) -> tuple[int, str]:
    out = io.StringIO()
    raw = stdin if isinstance(stdin, str) else json.dumps(stdin)
    code = main([], environment(tmp_path, command, **env), io.BytesIO(raw.encode("utf-8", "surrogatepass")), out)
    return code, out.getvalue()


def netconf(version: str = "0.3.0", **ipam: object) -> dict:
    return {"cniVersion": version, "name": "n", "ipam": {"type": "ecs-ipam", **ipam}}


def assert_short_error(tmp_path, code: int, output: str, expected_code: int) -> dict:
    assert code == 1
    assert len(output) < LIMIT, output[:LIMIT]
    error = json.loads(output)
    assert error["code"] == expected_code
    log = tmp_path / "plugin.log"
    if log.exists():
        errors = [line for line in log.read_text().splitlines() if "[error]" in line]
        assert errors and len(errors[-1]) < LIMIT + 100
    return error


@pytest.mark.parametrize(
    "conf, expected_code",
    [
        ({"cniVersion": "9" * MB, "name": "n", "ipam": {"ipv4-subnet": SUBNET}}, 1),
        ({"cniVersion": ["9" * MB], "name": "n", "ipam": {"ipv4-subnet": SUBNET}}, 7),
        (netconf(**{"ipv4-subnet": "1" * MB}), 7),
        (netconf(**{"ipv4-subnet": "10.0.0.0/" + "2" * MB}), 7),
        (netconf(**{"ipv4-subnet": SUBNET, "ipv4-address": HUGE}), 7),
        (netconf(**{"ipv4-subnet": SUBNET, "ipv4-gateway": HUGE}), 7),
        (netconf(**{"ipv4-subnet": SUBNET, "ipv4-routes": [{"dst": HUGE}]}), 7),
        (netconf(**{"ipv4-subnet": SUBNET, "ipv4-routes": [{"dst": "0.0.0.0/0", "gw": HUGE}]}), 7),
        (netconf(**{"ipv4-subnet": SUBNET, "ipv4-routes": HUGE}), 7),
        (netconf(**{"ipv6-subnet": HUGE}), 7),
        (netconf(**{"ipv4-subnet": SUBNET, "id": [HUGE]}), 7),
        (netconf(**{"ipv4-subnet": SUBNET, "id": HUGE}), 7),
        (netconf(**{"ipv4-subnet": SUBNET, "id": "\ud800" + HUGE}), 7),
        ({"cniVersion": "0.3.0", "ipam": HUGE}, 7),
        ([HUGE], 7),
    ],
)
def test_a_huge_value_in_the_configuration(tmp_path, conf, expected_code):
    code, output = run(tmp_path, "ADD", conf)
    assert_short_error(tmp_path, code, output, expected_code)
    assert not (tmp_path / "ipam.db").exists()


def test_a_huge_value_that_is_not_json(tmp_path):
    code, output = run(tmp_path, "ADD", "{" + HUGE)
    assert_short_error(tmp_path, code, output, 6)


@pytest.mark.parametrize(
    "variable, value, expected_code",
    [
        ("CNI_COMMAND", HUGE, 4),
        ("IPAM_DB_CONNECTION_TIMEOUT", "5" * MB, 4),
        ("IPAM_DB_CONNECTION_TIMEOUT", HUGE, 4),
        ("IPAM_DB_PATH", "/" + HUGE, 4),
        ("CNI_CONTAINERID", "\udcff" + HUGE, 4),
    ],
)
def test_a_huge_environment_variable(tmp_path, variable, value, expected_code):
    code, output = run(tmp_path, "ADD", netconf(**{"ipv4-subnet": SUBNET}), **{variable: value})
    assert_short_error(tmp_path, code, output, expected_code)


def test_a_huge_id_in_the_messages_about_it(tmp_path):
    owner = "task-" + "x" * (MAX_FIELD_BYTES - 5)  # the longest id accepted
    assert run(tmp_path, "ADD", netconf(**{"ipv4-subnet": SUBNET, "id": owner}))[0] == 0  # 10.0.0.2
    # The same id again: "id already exists".
    error = assert_short_error(tmp_path, *run(tmp_path, "ADD", netconf(**{"ipv4-subnet": SUBNET, "id": owner})), 101)
    assert error["msg"].startswith("id already exists: 'task-xxx") and "..." in error["msg"]
    # Its address, asked for by another: the holder is named, briefly.
    conf = netconf(**{"ipv4-subnet": SUBNET, "id": "b", "ipv4-address": "10.0.0.2/24"})
    assert_short_error(tmp_path, *run(tmp_path, "ADD", conf), 100)
    # Its address, as another config's gateway.
    conf = netconf(**{"ipv4-subnet": SUBNET, "id": "c", "ipv4-gateway": "10.0.0.2"})
    assert_short_error(tmp_path, *run(tmp_path, "ADD", conf), 100)
    # CHECK of a huge id that holds nothing, and of one whose address differs.
    conf = netconf("0.4.0", **{"ipv4-subnet": SUBNET, "id": "other-" + owner[6:]})
    assert_short_error(tmp_path, *run(tmp_path, "CHECK", conf), 103)
    conf = netconf("0.4.0", **{"ipv4-subnet": SUBNET, "id": owner})
    conf["prevResult"] = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.9/24"}]}
    assert_short_error(tmp_path, *run(tmp_path, "CHECK", conf), 103)
