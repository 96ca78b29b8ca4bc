"""CNI results in every version's shape, exactly as printed."""

from __future__ import annotations

import io
import json

import netaddr
import pytest

from ecs_ipam.cni import main
from ecs_ipam.config import SUPPORTED_VERSIONS, parse_netconf
from ecs_ipam.results import format_result, result_addresses

DUAL_STACK = {
    "id": "task",
    "ipv6-subnet": "fd00:ec2::172:0/112",
    "ipv6-routes": [{"dst": "fd00:ec2::254/128"}, {"dst": "::/0", "gw": "fd00:ec2::172:1"}],
    "ipv4-subnet": "169.254.172.0/22",
    "ipv4-routes": [{"dst": "169.254.170.2/32"}, {"dst": "10.0.0.0/8", "gw": "169.254.172.1"}],
}


def dual_stack_result(version: str) -> str:
    conf = parse_netconf({"cniVersion": version, "ipam": DUAL_STACK})
    allocations = [
        (conf.pools[0], netaddr.IPNetwork("169.254.172.5/22")),
        (conf.pools[1], netaddr.IPNetwork("fd00:ec2::172:5/112")),
    ]
    return json.dumps(format_result(conf.cni_version, allocations))


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
def test_legacy_shape(version):
    assert dual_stack_result(version) == (
        f'{{"cniVersion": "{version}", '
        '"ip4": {"ip": "169.254.172.5/22", "gateway": "169.254.172.1", '
        '"routes": [{"dst": "169.254.170.2/32"}, {"dst": "10.0.0.0/8", "gw": "169.254.172.1"}]}, '
        '"ip6": {"ip": "fd00:ec2::172:5/112", "gateway": "fd00:ec2::172:1", '
        '"routes": [{"dst": "fd00:ec2::254/128"}, {"dst": "::/0", "gw": "fd00:ec2::172:1"}]}, '
        '"dns": {}}'
    )


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_ips_with_version(version):
    assert dual_stack_result(version) == (
        f'{{"cniVersion": "{version}", "ips": ['
        '{"version": "4", "address": "169.254.172.5/22", "gateway": "169.254.172.1"}, '
        '{"version": "6", "address": "fd00:ec2::172:5/112", "gateway": "fd00:ec2::172:1"}], '
        '"routes": [{"dst": "169.254.170.2/32"}, {"dst": "10.0.0.0/8", "gw": "169.254.172.1"}, '
        '{"dst": "fd00:ec2::254/128"}, {"dst": "::/0", "gw": "fd00:ec2::172:1"}], '
        '"dns": {}}'
    )


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_ips_without_version(version):
    assert dual_stack_result(version) == (
        f'{{"cniVersion": "{version}", "ips": ['
        '{"address": "169.254.172.5/22", "gateway": "169.254.172.1"}, '
        '{"address": "fd00:ec2::172:5/112", "gateway": "fd00:ec2::172:1"}], '
        '"routes": [{"dst": "169.254.170.2/32"}, {"dst": "10.0.0.0/8", "gw": "169.254.172.1"}, '
        '{"dst": "fd00:ec2::254/128"}, {"dst": "::/0", "gw": "fd00:ec2::172:1"}], '
        '"dns": {}}'
    )


def test_single_family_has_no_other_family():
    conf = parse_netconf({"cniVersion": "0.2.0", "ipam": {"ipv6-subnet": "fd00::/64"}})
    result = format_result("0.2.0", [(conf.pools[0], netaddr.IPNetwork("fd00::2/64"))])
    assert result == {"cniVersion": "0.2.0", "ip6": {"ip": "fd00::2/64", "gateway": "fd00::1", "routes": []}, "dns": {}}
    conf = parse_netconf({"cniVersion": "0.3.0", "ipam": {"ipv4-subnet": "10.0.0.0/24"}})
    result = format_result("0.3.0", [(conf.pools[0], netaddr.IPNetwork("10.0.0.2/24"))])
    assert result == {
        "cniVersion": "0.3.0",
        "ips": [{"version": "4", "address": "10.0.0.2/24", "gateway": "10.0.0.1"}],
        "routes": [],
        "dns": {},
    }


def test_routes_are_copied_as_written():
    # Not normalised: the agent's consumers compare them as text.
    conf = parse_netconf(
        {
            "cniVersion": "1.0.0",
            "ipam": {"ipv4-subnet": "10.0.0.0/24", "ipv4-routes": [{"dst": "10.1.2.3/8", "gw": "10.0.0.1"}]},
        }
    )
    result = format_result("1.0.0", [(conf.pools[0], netaddr.IPNetwork("10.0.0.2/24"))])
    assert result["routes"] == [{"dst": "10.1.2.3/8", "gw": "10.0.0.1"}]


@pytest.mark.parametrize(
    "result, expected",
    [
        ({"ips": [{"address": "10.0.0.2/24"}, {"version": "6", "address": "fd00::2/64"}]}, ["10.0.0.2", "fd00::2"]),
        ({"ip4": {"ip": "10.0.0.2/24"}, "ip6": {"ip": "fd00::2/64"}}, ["10.0.0.2", "fd00::2"]),
        ({"ips": [{"address": "garbage"}, "x", {"address": 5}, {}]}, []),
        ({"ips": "x", "ip4": "y"}, []),
        ({}, []),
    ],
)
def test_addresses_of_a_previous_result(result, expected):
    assert [str(ip) for ip in result_addresses(result)] == expected


# --- VERSION ------------------------------------------------------------------------------


def version_output(stdin: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main([], {"CNI_COMMAND": "VERSION", "ECS_CNI_LOG_FILE": "/dev/null"}, io.StringIO(stdin), out)
    return code, out.getvalue()


@pytest.mark.parametrize("stdin", ["", "\n", "  "])
def test_version_without_stdin(stdin):
    assert version_output(stdin) == (
        0,
        '{"cniVersion":"1.1.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}\n',
    )


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_version_with_stdin(version):
    code, out = version_output(json.dumps({"cniVersion": version}))
    assert code == 0
    assert json.loads(out) == {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_version_with_an_unknown_version():
    code, out = version_output('{"cniVersion": "9.9.9"}')
    assert code == 1
    assert json.loads(out)["code"] == 1
