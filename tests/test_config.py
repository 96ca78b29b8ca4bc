"""Network configuration and environment validation: what is accepted, and the exact
message and CNI code of what is not."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecs_ipam.config import (
    DEFAULT_DB_PATH,
    DEFAULT_LOG_FILE,
    DEFAULT_TIMEOUT,
    Attachment,
    Route,
    Settings,
    host_path,
    log_settings,
    operator_settings,
    parse_environment,
    parse_go_duration,
    parse_netconf,
)
from ecs_ipam.errors import (
    INCOMPATIBLE_VERSION,
    INVALID_ENVIRONMENT,
    INVALID_NETWORK_CONFIG,
    IncompatibleVersionError,
    InvalidConfigError,
    InvalidEnvironmentError,
)


def netconf(version: str | None = "0.3.0", **ipam: object) -> dict:
    """A network configuration; ipam keys are spelled with ``_`` for ``-``."""
    conf: dict = {"name": "ecs", "type": "ecs-bridge"}
    if version is not None:
        conf["cniVersion"] = version
    conf["ipam"] = {"type": "ecs-ipam", **{key.replace("_", "-"): value for key, value in ipam.items()}}
    return conf


def rejected(data: dict) -> InvalidConfigError:
    with pytest.raises(InvalidConfigError) as caught:
        parse_netconf(data)
    assert caught.value.code == INVALID_NETWORK_CONFIG == 7
    return caught.value


# --- families ---------------------------------------------------------------------------


def test_both_families_are_parsed_ipv4_first():
    conf = parse_netconf(netconf(id="task", ipv6_subnet="fd00:ec2::172:0/112", ipv4_subnet="169.254.172.0/22"))
    assert [pool.version for pool in conf.pools] == [4, 6]
    v4, v6 = conf.pools
    assert (str(v4.subnet), str(v4.gateway), v4.bucket) == ("169.254.172.0/22", "169.254.172.1", "169.254.172.0/22")
    assert (str(v6.subnet), str(v6.gateway), v6.bucket) == (
        "fd00:ec2::172:0/112",
        "fd00:ec2::172:1",
        "fd00:ec2::172:0/112",
    )
    assert conf.owner_id == "task"
    assert conf.cni_version == "0.3.0"


@pytest.mark.parametrize(
    "ipam, version, bucket",
    [
        ({"ipv4_subnet": "10.0.0.0/24"}, 4, "10.0.0.0/24"),
        ({"ipv6_subnet": "fd00::/64"}, 6, "fd00::/64"),
        # The bucket is the canonical CIDR, whatever host bits the config carries.
        ({"ipv4_subnet": "10.0.0.77/24"}, 4, "10.0.0.0/24"),
        ({"ipv6_subnet": "FD00:0:0:0::5/64"}, 6, "fd00::/64"),
        ({"ipv4_subnet": None, "ipv6_subnet": "fd00::/64"}, 6, "fd00::/64"),
    ],
)
def test_single_family(ipam, version, bucket):
    conf = parse_netconf(netconf(id="x", **ipam))
    assert [(pool.version, pool.bucket) for pool in conf.pools] == [(version, bucket)]


@pytest.mark.parametrize("ipam", [{}, {"ipv4_subnet": None, "ipv6_subnet": None}])
def test_a_subnet_is_required(ipam):
    error = rejected(netconf(id="x", **ipam))
    assert error.msg == "ipam.ipv4-subnet or ipam.ipv6-subnet is required"


# Checked against the Go plugin (2026.01): each of these is "invalid CIDR address: ".
@pytest.mark.parametrize(
    "ipam, field",
    [
        ({"ipv4_subnet": ""}, "ipv4-subnet"),
        ({"ipv4_subnet": "", "ipv6_subnet": "fd00::/64"}, "ipv4-subnet"),
        ({"ipv4_subnet": "10.0.0.0/24", "ipv6_subnet": ""}, "ipv6-subnet"),
        ({"ipv4_subnet": "10.0.0.0/24", "ipv4_address": ""}, "ipv4-address"),
        ({"ipv6_subnet": "fd00::/64", "ipv6_address": ""}, "ipv6-address"),
        # Also when the family has no subnet at all.
        ({"ipv6_subnet": "fd00::/64", "ipv4_address": ""}, "ipv4-address"),
        ({"ipv4_subnet": "10.0.0.0/24", "ipv6_address": ""}, "ipv6-address"),
    ],
)
@pytest.mark.parametrize("owner", [{"id": "x"}, {}])
def test_an_empty_subnet_or_address_is_an_error(ipam, field, owner):
    error = rejected(netconf(**owner, **ipam))
    assert error.msg == f"ipam.{field} '' is not in CIDR notation (address/prefix)"


@pytest.mark.parametrize(
    "ipam", [{"ipv4_gateway": ""}, {"ipv6_gateway": ""}, {"ipv6_gateway": "", "ipv6_subnet": "fd00::/64"}]
)
def test_an_empty_gateway_is_the_default(ipam):
    conf = parse_netconf(netconf(ipv4_subnet="10.0.0.0/24", **ipam))
    assert str(conf.pools[0].gateway) == "10.0.0.1"


@pytest.mark.parametrize("owner", [{}, {"id": ""}, {"id": None}])
def test_no_id_is_anonymous(owner):
    assert parse_netconf(netconf(ipv4_subnet="10.0.0.0/24", **owner)).owner_id is None


@pytest.mark.parametrize(
    "ipam, message",
    [
        (
            {"ipv4_address": "10.0.0.2/24", "ipv6_subnet": "fd00::/64"},
            "ipam.ipv4-address is set but ipam.ipv4-subnet is missing",
        ),
        (
            {"ipv4_gateway": "10.0.0.1", "ipv6_subnet": "fd00::/64"},
            "ipam.ipv4-gateway is set but ipam.ipv4-subnet is missing",
        ),
        (
            {"ipv6_routes": [{"dst": "::/0"}], "ipv4_subnet": "10.0.0.0/24"},
            "ipam.ipv6-routes is set but ipam.ipv6-subnet is missing",
        ),
    ],
)
def test_family_settings_without_their_subnet(ipam, message):
    assert rejected(netconf(id="x", **ipam)).msg == message


# --- prefix limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, subnet, accepted",
    [
        ("ipv4", "10.0.0.0/8", True),
        ("ipv4", "169.254.172.0/22", True),
        ("ipv4", "10.0.0.0/30", True),
        ("ipv4", "10.0.0.0/31", False),
        ("ipv4", "10.0.0.0/32", False),
        ("ipv6", "fd00::/64", True),
        ("ipv6", "fd00::/126", True),
        ("ipv6", "fd00::/127", False),
        ("ipv6", "fd00::/128", False),
    ],
)
def test_prefix_limits(family, subnet, accepted):
    data = netconf(id="x", **{f"{family}_subnet": subnet})
    if accepted:
        assert str(parse_netconf(data).pools[0].subnet) == subnet
    else:
        assert "no available ip in the subnet" in rejected(data).msg


def test_prefix_limit_messages_are_pinned():
    assert rejected(netconf(id="x", ipv4_subnet="10.0.0.0/31")).msg == (
        "ipam.ipv4-subnet 10.0.0.0/31: no available ip in the subnet (prefix longer than /30)"
    )
    assert rejected(netconf(id="x", ipv6_subnet="fd00::/127")).msg == (
        "ipam.ipv6-subnet fd00::/127: no available ip in the subnet (prefix longer than /126)"
    )


# --- fixed addresses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "ipam, message",
    [
        (
            {"ipv4_subnet": "10.0.0.0/24", "ipv4_address": "10.0.1.5/24"},
            "ipam.ipv4-address 10.0.1.5 is not in subnet 10.0.0.0/24",
        ),
        (
            {"ipv4_subnet": "10.0.0.0/24", "ipv4_address": "10.0.0.0/24"},
            "ipam.ipv4-address 10.0.0.0 is the network address of 10.0.0.0/24",
        ),
        (
            {"ipv4_subnet": "10.0.0.0/24", "ipv4_address": "10.0.0.255/24"},
            "ipam.ipv4-address 10.0.0.255 is the broadcast address of 10.0.0.0/24",
        ),
        (
            {"ipv4_subnet": "10.0.0.0/24", "ipv4_address": "10.0.0.1/24"},
            "ipam.ipv4-address 10.0.0.1/24 is the gateway address",
        ),
        (
            {"ipv4_subnet": "10.0.0.0/24", "ipv4_gateway": "10.0.0.9", "ipv4_address": "10.0.0.9/32"},
            "ipam.ipv4-address 10.0.0.9/32 is the gateway address",
        ),
        (
            {"ipv6_subnet": "fd00::/64", "ipv6_address": "fd00:1::5/64"},
            "ipam.ipv6-address fd00:1::5 is not in subnet fd00::/64",
        ),
        (
            {"ipv6_subnet": "fd00::/64", "ipv6_address": "fd00::/64"},
            "ipam.ipv6-address fd00:: is the network address of fd00::/64",
        ),
        (
            {"ipv6_subnet": "fd00::/64", "ipv6_address": "fd00::1/128"},
            "ipam.ipv6-address fd00::1/128 is the gateway address",
        ),
        (
            {"ipv4_subnet": "10.0.0.0/24", "ipv4_address": "10.0.0.9"},
            "ipam.ipv4-address '10.0.0.9' is not in CIDR notation (address/prefix)",
        ),
        (
            {"ipv4_subnet": "10.0.0.0/24", "ipv4_address": "fd00::9/64"},
            "ipam.ipv4-address 'fd00::9' is not an IPv4 address",
        ),
        (
            {"ipv4_subnet": "10.0.0.0/24", "ipv4_address": "10.0.0.9/33"},
            "ipam.ipv4-address '10.0.0.9/33' has an invalid prefix length",
        ),
    ],
)
def test_fixed_address_rules(ipam, message):
    assert rejected(netconf(id="x", **ipam)).msg == message


def test_ipv6_has_no_broadcast_address():
    conf = parse_netconf(netconf(id="x", ipv6_subnet="fd00::/126", ipv6_address="fd00::3/126"))
    assert str(conf.pools[0].fixed_address) == "fd00::3/126"


def test_fixed_address_keeps_its_own_prefix():
    conf = parse_netconf(
        netconf(
            id="daemon",
            ipv4_subnet="169.254.172.0/22",
            ipv4_address="169.254.172.2/32",
            ipv6_subnet="fd00:ec2::172:0/112",
            ipv6_address="fd00:ec2::172:2/128",
        )
    )
    v4, v6 = conf.pools
    assert (str(v4.fixed_address), v4.subnet.prefixlen) == ("169.254.172.2/32", 22)
    assert (str(v6.fixed_address), v6.subnet.prefixlen) == ("fd00:ec2::172:2/128", 112)


# --- gateways -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ipam, gateway",
    [
        ({"ipv4_subnet": "169.254.172.0/22"}, "169.254.172.1"),
        ({"ipv4_subnet": "10.0.0.0/30"}, "10.0.0.1"),
        ({"ipv4_subnet": "10.0.0.0/24", "ipv4_gateway": ""}, "10.0.0.1"),
        ({"ipv4_subnet": "10.0.0.0/24", "ipv4_gateway": None}, "10.0.0.1"),
        ({"ipv4_subnet": "10.0.0.0/24", "ipv4_gateway": "10.0.0.254"}, "10.0.0.254"),
        ({"ipv4_subnet": "10.0.0.0/24", "ipv4_gateway": "10.0.0.128"}, "10.0.0.128"),
        ({"ipv6_subnet": "fd00:ec2::172:0/112"}, "fd00:ec2::172:1"),
        # IPv6 has no broadcast address: the last address may be the gateway.
        ({"ipv6_subnet": "fd00::/126", "ipv6_gateway": "fd00::3"}, "fd00::3"),
    ],
)
def test_gateway_default_and_explicit(ipam, gateway):
    assert str(parse_netconf(netconf(id="x", **ipam)).pools[0].gateway) == gateway


@pytest.mark.parametrize(
    "ipam, message",
    [
        (
            {"ipv4_subnet": "10.0.0.0/24", "ipv4_gateway": "10.0.1.1"},
            "ipam.ipv4-gateway 10.0.1.1 is not in subnet 10.0.0.0/24",
        ),
        (
            {"ipv4_subnet": "10.0.0.0/24", "ipv4_gateway": "10.0.0.0"},
            "ipam.ipv4-gateway 10.0.0.0 is the network address of 10.0.0.0/24",
        ),
        (
            {"ipv4_subnet": "10.0.0.0/24", "ipv4_gateway": "10.0.0.255"},
            "ipam.ipv4-gateway 10.0.0.255 is the broadcast address of 10.0.0.0/24",
        ),
        (
            {"ipv4_subnet": "10.0.0.0/24", "ipv4_gateway": "10.0.0.1/24"},
            "ipam.ipv4-gateway '10.0.0.1/24' is not a valid IP address",
        ),
        ({"ipv4_subnet": "10.0.0.0/24", "ipv4_gateway": "10.1"}, "ipam.ipv4-gateway '10.1' is not a valid IP address"),
        (
            {"ipv4_subnet": "10.0.0.0/24", "ipv4_gateway": "fd00::1"},
            "ipam.ipv4-gateway 'fd00::1' is not an IPv4 address",
        ),
        (
            {"ipv6_subnet": "fd00::/64", "ipv6_gateway": "fd00::"},
            "ipam.ipv6-gateway fd00:: is the network address of fd00::/64",
        ),
        (
            {"ipv6_subnet": "fd00::/64", "ipv6_gateway": "10.0.0.1"},
            "ipam.ipv6-gateway '10.0.0.1' is not an IPv6 address",
        ),
    ],
)
def test_gateway_rules(ipam, message):
    assert rejected(netconf(id="x", **ipam)).msg == message


# --- routes -------------------------------------------------------------------------------


def test_routes_are_kept_as_configured():
    conf = parse_netconf(
        netconf(
            id="x",
            ipv4_subnet="169.254.172.0/22",
            ipv4_routes=[
                {"dst": "169.254.170.2/32"},
                {"dst": "0.0.0.0/0", "gw": "169.254.172.1"},
                {"dst": "10.9.0.0/16", "gw": ""},
                {"dst": "10.8.0.0/16", "gw": None, "extra": "ignored"},
            ],
            ipv6_subnet="fd00::/64",
            ipv6_routes=[{"dst": "::/0", "gw": "fd00::1"}],
        )
    )
    assert conf.pools[0].routes == (
        Route("169.254.170.2/32"),
        Route("0.0.0.0/0", "169.254.172.1"),
        Route("10.9.0.0/16"),
        Route("10.8.0.0/16"),
    )
    assert conf.pools[1].routes == (Route("::/0", "fd00::1"),)
    assert [route.to_json() for route in conf.pools[0].routes[:2]] == [
        {"dst": "169.254.170.2/32"},
        {"dst": "0.0.0.0/0", "gw": "169.254.172.1"},
    ]


@pytest.mark.parametrize("routes", [None, []])
def test_no_routes(routes):
    assert parse_netconf(netconf(id="x", ipv4_subnet="10.0.0.0/24", ipv4_routes=routes)).pools[0].routes == ()


@pytest.mark.parametrize(
    "family, routes, message",
    [
        ("ipv4", [{"dst": "fd00::/64"}], "ipam.ipv4-routes[0].dst 'fd00::' is not an IPv4 address"),
        (
            "ipv4",
            [{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.0/8", "gw": "fd00::1"}],
            "ipam.ipv4-routes[1].gw 'fd00::1' is not an IPv4 address",
        ),
        ("ipv6", [{"dst": "0.0.0.0/0"}], "ipam.ipv6-routes[0].dst '0.0.0.0' is not an IPv6 address"),
        (
            "ipv4",
            [{"dst": "169.254.170.2"}],
            "ipam.ipv4-routes[0].dst '169.254.170.2' is not in CIDR notation (address/prefix)",
        ),
        ("ipv4", [{"dst": "nonsense/8"}], "ipam.ipv4-routes[0].dst 'nonsense' is not a valid IP address"),
        ("ipv4", [{"gw": "10.0.0.1"}], "ipam.ipv4-routes[0].dst must be a string in CIDR notation, got None"),
        (
            "ipv4",
            [{"dst": "10.0.0.0/8", "gw": "10.0.0.1/8"}],
            "ipam.ipv4-routes[0].gw '10.0.0.1/8' is not a valid IP address",
        ),
        ("ipv4", ["10.0.0.0/8"], "ipam.ipv4-routes[0] must be an object, got '10.0.0.0/8'"),
    ],
)
def test_malformed_routes(family, routes, message):
    subnet = "10.0.0.0/24" if family == "ipv4" else "fd00::/64"
    data = netconf(id="x", **{f"{family}_subnet": subnet, f"{family}_routes": routes})
    assert rejected(data).msg == message


# --- wrong types --------------------------------------------------------------------------

BAD_VALUES = {"number": 5, "list": ["10.0.0.0/24"], "object": {"ip": "10.0.0.2"}, "bool": True}


# Falsy values that are valid where they are put: no routes, no attachments, an empty
# previous result.
VALID_FALSY = [
    ("ipv4-routes", []),
    ("ipv6-routes", []),
    ("/cni.dev/valid-attachments", []),
    ("/cni.dev/attachments", []),
    ("/prevResult", {}),
]


@pytest.mark.parametrize("value", [0, [], {}, False, 0.0])
def test_falsy_wrong_types_are_not_taken_for_absent(value):
    for where, field, _ in TYPED_FIELDS:
        if any(
            where == valid_where and type(value) is type(valid) and value == valid for valid_where, valid in VALID_FALSY
        ):
            continue
        error = rejected(_with_bad_value(where, value))
        # The field itself, or the first thing missing inside it ({} as a route).
        assert error.msg.startswith(field), (where, error.msg)


# (where the bad value goes, the field the message must name, which bad values apply)
TYPED_FIELDS = [
    ("id", "ipam.id", ("number", "list", "object", "bool")),
    ("ipv4-subnet", "ipam.ipv4-subnet", ("number", "list", "object", "bool")),
    ("ipv6-subnet", "ipam.ipv6-subnet", ("number", "list", "object", "bool")),
    ("ipv4-address", "ipam.ipv4-address", ("number", "list", "object", "bool")),
    ("ipv6-address", "ipam.ipv6-address", ("number", "list", "object", "bool")),
    ("ipv4-gateway", "ipam.ipv4-gateway", ("number", "list", "object", "bool")),
    ("ipv6-gateway", "ipam.ipv6-gateway", ("number", "list", "object", "bool")),
    ("ipv4-routes", "ipam.ipv4-routes", ("number", "object", "bool")),
    ("ipv6-routes", "ipam.ipv6-routes", ("number", "object", "bool")),
    ("ipv4-routes[0]", "ipam.ipv4-routes[0]", ("number", "list", "bool")),
    ("ipv4-routes[0].dst", "ipam.ipv4-routes[0].dst", ("number", "list", "object", "bool")),
    ("ipv4-routes[0].gw", "ipam.ipv4-routes[0].gw", ("number", "list", "object", "bool")),
    ("/ipam", "ipam", ("number", "list", "bool")),
    ("/cniVersion", "cniVersion", ("number", "list", "object", "bool")),
    ("/prevResult", "prevResult", ("number", "list", "bool")),
    ("/cni.dev/valid-attachments", "cni.dev/valid-attachments", ("number", "object", "bool")),
    ("/cni.dev/attachments", "cni.dev/attachments", ("number", "object", "bool")),
]


def _with_bad_value(where: str, value: object) -> dict:
    data = netconf(
        "1.1.0",
        id="x",
        ipv4_subnet="10.0.0.0/24",
        ipv6_subnet="fd00::/64",
        ipv4_routes=[{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}],
    )
    if where.startswith("/"):
        data[where[1:]] = value
    elif where == "ipv4-routes[0]":
        data["ipam"]["ipv4-routes"][0] = value
    elif where.startswith("ipv4-routes[0]."):
        data["ipam"]["ipv4-routes"][0][where.rpartition(".")[2]] = value
    else:
        data["ipam"][where] = value
    return data


@pytest.mark.parametrize(
    "where, field, kind",
    [(where, field, kind) for where, field, kinds in TYPED_FIELDS for kind in kinds],
)
def test_wrong_type_names_the_field(where, field, kind):
    error = rejected(_with_bad_value(where, BAD_VALUES[kind]))
    assert error.msg.startswith(field + " "), error.msg


@pytest.mark.parametrize(
    "data, field",
    [
        ({"cniVersion": "0.3.0", "ipam": None}, "ipam"),
        ({"cniVersion": "0.3.0"}, "ipam"),
        (netconf(id="x", ipv4_subnet="10.0.0.0/24", ipv4_routes=[None]), "ipam.ipv4-routes[0]"),
        (netconf(id="x", ipv4_subnet="10.0.0.0/24", ipv4_routes=[{"dst": None}]), "ipam.ipv4-routes[0].dst"),
        (
            {"cniVersion": "1.1.0", "ipam": {"ipv4-subnet": "10.0.0.0/24"}, "cni.dev/valid-attachments": None},
            "cni.dev/valid-attachments",
        ),
    ],
)
def test_null_where_a_value_is_required(data, field):
    assert rejected(data).msg.startswith(field + " ")


def test_null_optional_fields_mean_absent():
    conf = parse_netconf(
        netconf(
            id=None,
            ipv4_subnet="10.0.0.0/24",
            ipv4_address=None,
            ipv4_gateway=None,
            ipv4_routes=None,
            ipv6_subnet=None,
            ipv6_address=None,
        )
        | {"prevResult": None}
    )
    (pool,) = conf.pools
    assert (conf.owner_id, pool.fixed_address, str(pool.gateway), pool.routes) == (None, None, "10.0.0.1", ())
    assert (conf.prev_result, conf.valid_attachments) == (None, None)


@pytest.mark.parametrize("data", [None, [], "ipam", 5])
def test_configuration_must_be_an_object(data):
    error = rejected(data)
    assert error.msg.startswith("network configuration must be a JSON object")


def test_bad_attachment_entries():
    base = {"cniVersion": "1.1.0", "ipam": {"ipv4-subnet": "10.0.0.0/24"}}
    assert rejected(base | {"cni.dev/valid-attachments": [{"containerID": "c"}]}).msg.startswith(
        "cni.dev/valid-attachments[0] needs string containerID and ifname"
    )
    assert rejected(base | {"cni.dev/valid-attachments": ["c"]}).msg == (
        "cni.dev/valid-attachments[0] must be an object, got 'c'"
    )


def test_attachments_under_either_name():
    base = {"cniVersion": "1.1.0", "ipam": {"ipv4-subnet": "10.0.0.0/24"}}
    item = [{"containerID": "c1", "ifname": "eth0", "extra": 1}]
    for field in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        assert parse_netconf(base | {field: item}).valid_attachments == (Attachment("c1", "eth0"),)
    assert parse_netconf(base | {"cni.dev/valid-attachments": []}).valid_attachments == ()


# --- ids ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, owner",
    [
        ("0a:1b:2c:3d:4e:5f", "0a:1b:2c:3d:4e:5f"),
        ("/var/run/netns/task-1", "/var/run/netns/task-1"),
        ("tâche-ü-日本", "tâche-ü-日本"),
        ("x" * 2000, "x" * 2000),
        ("", None),
        (None, None),
    ],
)
def test_ids(raw, owner):
    assert parse_netconf(netconf(id=raw, ipv4_subnet="10.0.0.0/24")).owner_id == owner


def test_id_that_is_not_unicode_text_is_rejected():
    # JSON can carry a lone surrogate ("\ud800"); it cannot be stored as text.
    error = rejected(netconf(id="task\ud800", ipv4_subnet="10.0.0.0/24"))
    assert error.msg == "ipam.id 'task\\ud800' is not valid unicode text"


# --- unknown keys, versions ---------------------------------------------------------------


def test_unknown_keys_are_ignored():
    data = netconf(
        id="x",
        ipv4_subnet="169.254.172.0/22",
        connectedSubnetMaskSizeIPv4=24,
        somethingNew={"nested": [1, 2]},
    )
    data.update({"bridge": "ecs-br0", "ipMasq": False, "mtu": 9001, "args": {"x": 1}})
    conf = parse_netconf(data)
    assert [pool.bucket for pool in conf.pools] == ["169.254.172.0/22"]


@pytest.mark.parametrize("version", [None, "", "absent"])
def test_missing_cni_version_means_0_1_0(version):
    # libcni's decoder: an empty (or null, or absent) cniVersion is 0.1.0.
    data = netconf(None, id="x", ipv4_subnet="10.0.0.0/24")
    if version != "absent":
        data["cniVersion"] = version
    assert parse_netconf(data).cni_version == "0.1.0"


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_supported_versions(version):
    assert parse_netconf(netconf(version, id="x", ipv4_subnet="10.0.0.0/24")).cni_version == version


@pytest.mark.parametrize("version", ["0.5.0", "2.0.0", "1.1", " ", "v1.0.0", "0.3.0 "])
def test_unknown_version_is_code_1(version):
    with pytest.raises(IncompatibleVersionError) as caught:
        parse_netconf(netconf(version, id="x", ipv4_subnet="10.0.0.0/24"))
    assert caught.value.code == INCOMPATIBLE_VERSION == 1
    assert caught.value.msg == (
        f"incompatible CNI version {version}; supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
    )


def test_prev_result_is_kept():
    previous = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.2/24"}]}
    conf = parse_netconf(netconf("0.4.0", id="x", ipv4_subnet="10.0.0.0/24") | {"prevResult": previous})
    assert conf.prev_result == previous


# --- Go durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("5s", 5.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("2h", 7200.0),
        ("1h1m1s", 3661.0),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("1000000ns", 0.001),
    ],
)
def test_go_durations(text, seconds):
    assert parse_go_duration(text, "IPAM_DB_CONNECTION_TIMEOUT") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "s", "-1s", "5 s", "", "5sec", "1.5.5s", "ms", "00", " 5s", "5S"])
def test_bad_go_durations_are_code_4(text):
    with pytest.raises(InvalidEnvironmentError) as caught:
        parse_go_duration(text, "IPAM_DB_CONNECTION_TIMEOUT")
    assert caught.value.code == INVALID_ENVIRONMENT == 4
    assert caught.value.msg.startswith("IPAM_DB_CONNECTION_TIMEOUT ")


def test_bad_duration_message_is_pinned():
    with pytest.raises(
        InvalidEnvironmentError, match=r"^IPAM_DB_CONNECTION_TIMEOUT '5' is not a duration such as 5s, 500ms or 1m30s$"
    ):
        parse_go_duration("5", "IPAM_DB_CONNECTION_TIMEOUT")


# --- environment --------------------------------------------------------------------------

ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/proc/1/ns/net", "CNI_IFNAME": "eth0"}


def env_rejected(environ: dict) -> InvalidEnvironmentError:
    with pytest.raises(InvalidEnvironmentError) as caught:
        parse_environment(environ)
    assert caught.value.code == INVALID_ENVIRONMENT == 4
    return caught.value


def test_environment_defaults():
    env = parse_environment(ADD_ENV)
    assert (env.command, env.container_id, env.netns, env.ifname) == ("ADD", "abc", "/proc/1/ns/net", "eth0")
    settings = env.settings
    assert settings == Settings.from_environ(ADD_ENV)
    assert (settings.db_path, settings.timeout, settings.log_file, settings.log_level) == (
        DEFAULT_DB_PATH,
        DEFAULT_TIMEOUT,
        DEFAULT_LOG_FILE,
        "info",
    )
    assert (DEFAULT_DB_PATH, DEFAULT_TIMEOUT, DEFAULT_LOG_FILE) == (
        "/data/eni-ipam.db",
        5.0,
        "/log/ecs-cni-ipam-plugin.log",
    )


def test_environment_settings():
    env = parse_environment(
        ADD_ENV
        | {
            "IPAM_DB_PATH": "/tmp/x.db",
            "IPAM_DB_CONNECTION_TIMEOUT": "1m30s",
            "ECS_CNI_LOG_FILE": "/tmp/x.log",
            "ECS_CNI_LOGLEVEL": "DEBUG",
        }
    )
    settings = env.settings
    assert (settings.db_path, settings.timeout, settings.log_file, settings.log_level) == (
        "/tmp/x.db",
        90.0,
        "/tmp/x.log",
        "debug",
    )


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_settings_mean_the_defaults(blank):
    # As the original: a variable that is set but blank is the same as an unset one.
    settings = Settings.from_environ(
        {
            "IPAM_DB_PATH": blank,
            "IPAM_DB_CONNECTION_TIMEOUT": blank,
            "ECS_CNI_LOG_FILE": blank,
            "ECS_CNI_LOGLEVEL": blank,
        }
    )
    assert settings == Settings(DEFAULT_DB_PATH, DEFAULT_TIMEOUT, DEFAULT_LOG_FILE, "info")
    assert log_settings({"ECS_CNI_LOG_FILE": blank}) == (DEFAULT_LOG_FILE, "info")


@pytest.mark.parametrize("text", ["5", "s", "-1s", "5 s"])
def test_bad_timeout_in_environment(text):
    error = env_rejected(ADD_ENV | {"IPAM_DB_CONNECTION_TIMEOUT": text})
    assert error.msg == f"IPAM_DB_CONNECTION_TIMEOUT {text!r} is not a duration such as 5s, 500ms or 1m30s"


def test_missing_command():
    assert env_rejected({}).msg == "CNI_COMMAND is not set"
    assert env_rejected({"CNI_COMMAND": ""}).msg == "CNI_COMMAND is not set"


def test_unknown_command():
    assert env_rejected({"CNI_COMMAND": "FROB"}).msg == (
        "CNI_COMMAND 'FROB' is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"
    )
    # Commands are case-sensitive in CNI.
    env_rejected(ADD_ENV | {"CNI_COMMAND": "add"})


@pytest.mark.parametrize("name", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_add_needs_container_netns_ifname(name, how):
    environ = dict(ADD_ENV)
    if how == "unset":
        del environ[name]
    else:
        environ[name] = ""
    assert env_rejected(environ).msg == f"{name} is required for ADD"


def test_check_needs_container_and_ifname():
    check = ADD_ENV | {"CNI_COMMAND": "CHECK"}
    assert parse_environment(check | {"CNI_NETNS": ""}).command == "CHECK"
    assert env_rejected(check | {"CNI_CONTAINERID": ""}).msg == "CNI_CONTAINERID is required for CHECK"
    assert env_rejected(check | {"CNI_IFNAME": ""}).msg == "CNI_IFNAME is required for CHECK"


@pytest.mark.parametrize("command", ["DEL", "GC", "STATUS", "VERSION"])
def test_commands_that_need_no_container(command):
    env = parse_environment({"CNI_COMMAND": command})
    assert (env.command, env.container_id, env.netns, env.ifname) == (command, "", "", "")


def test_del_as_the_agent_sends_it():
    env = parse_environment(
        {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "", "CNI_NETNS": "/host/proc//ns/net", "CNI_IFNAME": "ecs-eth0"}
    )
    assert (env.container_id, env.netns, env.ifname) == ("", "/host/proc//ns/net", "ecs-eth0")


@pytest.mark.parametrize("name", ["CNI_CONTAINERID", "CNI_IFNAME"])
def test_add_refuses_names_that_are_not_text(name):
    # os.environ hands undecodable bytes over as lone surrogates; they cannot be recorded.
    error = env_rejected(ADD_ENV | {name: "abc\udcff"})
    assert error.msg == f"{name} 'abc\\udcff' is not valid unicode text"


# --- the operator tools' settings ----------------------------------------------------------

HOST_DB, HOST_LOG = "/var/lib/ecs/data/eni-ipam.db", "/var/log/ecs/ecs-cni-ipam-plugin.log"


def only(*paths: str):
    return lambda path: path in paths


def test_host_paths_of_the_agents_mounts():
    assert (host_path(DEFAULT_DB_PATH), host_path(DEFAULT_LOG_FILE)) == (HOST_DB, HOST_LOG)
    assert host_path("/database/x.db") == "/database/x.db"


def test_an_operator_tool_uses_the_container_paths_where_they_exist():
    settings, notes = operator_settings({}, only(DEFAULT_DB_PATH, HOST_DB, "/log", "/var/log/ecs"))
    assert (settings, notes) == (Settings.from_environ({}), {})


def test_on_the_host_an_operator_tool_finds_the_agents_files():
    settings, notes = operator_settings({}, only(HOST_DB, "/var/log/ecs"))
    assert (settings.db_path, settings.log_file) == (HOST_DB, HOST_LOG)
    assert notes == {
        "database": f"using {HOST_DB} (no /data/eni-ipam.db here)",
        "log": f"logging to {HOST_LOG} (no /log here)",
    }


def test_with_neither_path_an_operator_tool_keeps_the_default():
    settings, notes = operator_settings({}, only())
    assert settings == Settings.from_environ({})
    assert notes == {"no database": f"no database at /data/eni-ipam.db, nor at {HOST_DB} (its host side)"}


@pytest.mark.parametrize("environ", [{"IPAM_DB_PATH": DEFAULT_DB_PATH}, {"IPAM_DB_PATH": "/x.db"}])
def test_a_named_database_is_never_replaced(environ):
    settings, notes = operator_settings(environ, only(HOST_DB))
    assert (settings.db_path, notes) == (environ["IPAM_DB_PATH"], {})
    settings, notes = operator_settings({}, only(HOST_DB), db_option="/y.db")
    assert (settings.db_path, notes) == ("/y.db", {})


def test_a_named_log_is_never_replaced():
    settings, notes = operator_settings({"ECS_CNI_LOG_FILE": "/tmp/l.log"}, only(DEFAULT_DB_PATH, "/var/log/ecs"))
    assert (settings.log_file, notes) == ("/tmp/l.log", {})


def test_the_plugin_itself_never_falls_back():
    # The container's view is the only one the plugin has: its settings are the defaults.
    assert parse_environment(ADD_ENV).settings == Settings(DEFAULT_DB_PATH, DEFAULT_TIMEOUT, DEFAULT_LOG_FILE, "info")


_GO_DURATION_PART = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")


def _duration_by_grammar(text: str) -> float | None:
    """The duration grammar as a regular expression: the oracle for the hand-written scanner."""
    if text == "0":
        return 0.0
    position, total = 0, 0.0
    while position < len(text):
        match = _GO_DURATION_PART.match(text, position)
        if not match or match.group(1) in ("", "."):
            return None
        total += float(match.group(1)) * {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6}.get(
            match.group(2), {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}.get(match.group(2), 0.0)
        )
        position = match.end()
    return total if text and total <= 9223372036.0 else None


@settings(max_examples=3000)
@given(st.text(alphabet="0123456789.nsuµμmhS -x", max_size=24))
def test_the_duration_scanner_accepts_what_the_grammar_accepts(text):
    expected = _duration_by_grammar(text)
    try:
        seconds = parse_go_duration(text, "IPAM_DB_CONNECTION_TIMEOUT")
    except InvalidEnvironmentError:
        assert expected is None, text
    else:
        assert seconds == expected, text
