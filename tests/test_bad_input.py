"""Bad input: every rejected command prints one CNI error object and changes nothing.

Hypothesis builds invocations that are each wrong in a known way (a broken field, a bad
environment, bytes that are not JSON, or a request the database's state refuses) and
runs them through the plugin's entry point in this process, which is fast enough for
hundreds of examples; a handful run as real processes.  Each must answer with exit code
1 and exactly one JSON error object whose code is the one the CNI specification (or the
README, for codes of 100 and up) gives for that kind of mistake, show no traceback
anywhere, and leave the database byte for byte as it was, or absent if it was.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecs_ipam import cni
from ecs_ipam.config import SUPPORTED_VERSIONS
from plugin import AGENT_NETNS, V6_SUBNET, files_snapshot, netconf, run_plugin

# The seeded database: one dual-stack task, one task on a fixed address, and a /30 pool
# whose only free address is taken.
HELD_ID = "task-held"
HELD_V4 = "169.254.172.2"
FIXED_ID = "task-fixed"
FIXED_V4 = "169.254.172.9/32"
FULL_SUBNET = "10.99.0.0/30"
FULL_ID = "task-full"

# Addresses of the pools that are no host address: network, gateway, broadcast.
V4_NOT_HOSTS = ["169.254.172.0/22", "169.254.172.1/22", "169.254.175.255/22"]
V6_NOT_HOSTS = ["fd00:ec2::172:0/112", "fd00:ec2::172:1/112"]

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
MINIMUM_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

INCOMPATIBLE_VERSION, INVALID_ENVIRONMENT, DECODE_FAILURE, INVALID_CONFIG = 1, 4, 6, 7
ADDRESS_IN_USE, ID_ALREADY_ALLOCATED, POOL_EXHAUSTED, RESERVATION_MISMATCH = 100, 101, 102, 103
NOT_AVAILABLE = 50


@dataclass
class Invocation:
    """One plugin run and the error codes it may answer with."""

    command: str
    conf: object
    codes: set[int]
    env: dict[str, str | None] = field(default_factory=dict)
    stdin: bytes | None = None  # raw bytes instead of the JSON of conf
    needs_state: bool = False  # rejected only because of what the seeded database holds

    def stdin_bytes(self) -> bytes:
        if self.stdin is not None:
            return self.stdin
        return json.dumps(self.conf).encode("utf-8", "surrogatepass")


def version_key(version: str) -> tuple[int, ...]:
    return tuple(map(int, version.split(".")))


def too_old(command: str, version: str) -> bool:
    minimum = MINIMUM_VERSION.get(command)
    return minimum is not None and version_key(version) < version_key(minimum)


def full_conf(owner_id: str | None, version: str) -> dict:
    """A valid dual-stack configuration, as the newer ECS agent sends it."""
    return netconf(
        owner_id,
        cni_version=version,
        ipv6_subnet=V6_SUBNET,
        ipv4_routes=[{"dst": "169.254.170.2/32"}],
        ipv6_routes=[{"dst": "fd00:ec2::172:2/128"}],
    )


# --- values that are wrong by construction ------------------------------------------------------

huge = st.sampled_from([5_000, 200_000, 1_000_000]).map(lambda n: "1" * n)
wrong_types = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.lists(st.integers(), min_size=1, max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), min_size=1, max_size=3),
)
# Text that cannot be an address: it has a character no address has.
not_address_text = st.one_of(
    st.text(max_size=40).map(lambda text: text + "g"),
    st.sampled_from(
        [
            "1.2.3",
            "1.2.3.4.5",
            "256.0.0.1",
            "010.0.0.1",
            "１６９.254.172.2",
            " 169.254.172.2",
            "169.254.172.2\n",
            "fd00::ec2::1",
            "::g",
            "169.254.172.2%eth0",
            "0x1.2.3.4",
        ]
    ),
    huge,
)
bad_prefixes = st.one_of(
    st.sampled_from(["", "-1", "+22", " 22", "22 ", "0x16", "٢٢", "22.0", "1e1", "0022"]),
    st.integers(129, 10**9).map(str),
    st.text(max_size=8).filter(lambda text: not re.fullmatch(r"[0-9]{1,3}", text)),
)


def malformed_cidrs(version: int):
    """CIDR-looking text that is not a CIDR of this family."""
    good_address = "169.254.172.0" if version == 4 else "fd00:ec2::172:0"
    other_family = "fd00:ec2::172:0/112" if version == 4 else "169.254.172.0/22"
    too_long = st.integers(33 if version == 4 else 129, 999).map(lambda n: f"{good_address}/{n}")
    return st.one_of(
        st.text(min_size=1, max_size=40).filter(lambda text: "/" not in text),
        not_address_text.map(lambda text: text + "/22"),
        bad_prefixes.map(lambda prefix: f"{good_address}/{prefix}"),
        too_long,
        st.just(other_family),
        huge.map(lambda text: f"{good_address}/22{text}"),
        st.sampled_from([f"{good_address}/22/22", f"{good_address}/22/../../etc", "IPAM", "../" * 20]),
    )


def v4_outside_pool():
    pool = range(0xA9FEAC00, 0xA9FEB000)
    return (
        st.integers(0, 2**32 - 1)
        .filter(lambda n: n not in pool)
        .map(lambda n: ".".join(str((n >> shift) & 255) for shift in (24, 16, 8, 0)))
    )


def bad_routes(version: int):
    good_dst = "169.254.170.2/32" if version == 4 else "fd00:ec2::172:2/128"
    return st.one_of(
        st.one_of(wrong_types.filter(lambda value: not isinstance(value, list)), st.text(min_size=1)),
        st.lists(st.one_of(st.integers(), st.text(), st.lists(st.integers())), min_size=1, max_size=2),
        st.just([{}]),
        st.just([{"gw": "169.254.172.1"}]),
        malformed_cidrs(version).map(lambda dst: [{"dst": dst}]),
        not_address_text.map(lambda gw: [{"dst": good_dst, "gw": gw}]),
        wrong_types.map(lambda dst: [{"dst": dst}]),
    )


def broken_fields():
    """``(ipam field, bad value)``: any one of them makes every command fail with code 7."""
    v4_cidr, v6_cidr = malformed_cidrs(4), malformed_cidrs(6)
    return st.one_of(
        st.tuples(st.just("id"), wrong_types),
        st.tuples(st.just("id"), st.sampled_from(["\ud800", "task-\udcff", "\udfff-\ud800"])),
        st.tuples(st.sampled_from(["ipv4-subnet", "ipv4-address"]), wrong_types),
        st.tuples(st.sampled_from(["ipv6-subnet", "ipv6-address", "ipv4-gateway", "ipv6-gateway"]), wrong_types),
        st.tuples(st.just("ipv4-subnet"), v4_cidr),
        st.tuples(st.just("ipv4-subnet"), st.sampled_from(["169.254.172.0/31", "169.254.172.0/32"])),
        st.tuples(st.just("ipv6-subnet"), v6_cidr),
        st.tuples(st.just("ipv6-subnet"), st.sampled_from(["fd00:ec2::172:0/127", "fd00:ec2::172:0/128"])),
        st.tuples(st.just("ipv4-address"), v4_cidr),
        st.tuples(st.just("ipv4-address"), st.sampled_from(V4_NOT_HOSTS)),
        st.tuples(st.just("ipv4-address"), v4_outside_pool().map(lambda ip: ip + "/22")),
        st.tuples(st.just("ipv4-address"), st.just("169.254.172.2")),  # no prefix
        st.tuples(st.just("ipv6-address"), v6_cidr),
        st.tuples(st.just("ipv6-address"), st.sampled_from(V6_NOT_HOSTS + ["fd00:ec3::2/112", "::1/128"])),
        st.tuples(st.just("ipv4-gateway"), not_address_text),
        st.tuples(st.just("ipv4-gateway"), v4_outside_pool()),
        st.tuples(st.just("ipv4-gateway"), st.sampled_from(["169.254.172.0", "169.254.175.255", "169.254.172.1/22"])),
        st.tuples(st.just("ipv6-gateway"), st.sampled_from(["fd00:ec2::172:0", "fd00:ec3::1", "169.254.172.1"])),
        st.tuples(st.just("ipv6-gateway"), not_address_text),
        st.tuples(st.just("ipv4-routes"), bad_routes(4)),
        st.tuples(st.just("ipv6-routes"), bad_routes(6)),
        st.tuples(st.just("ipv6-routes"), st.just([{"dst": "169.254.170.2/32"}])),
    )


# A Go duration, leniently: whatever Go might accept is left out of the invalid ones.
_GO_DURATION = re.compile(r"[-+]?(?:[0-9.]+(?:ns|us|µs|μs|ms|s|m|h))+|[-+]?0")


@st.composite
def broken_configurations(draw) -> Invocation:
    """A valid configuration with one to three fields broken."""
    command = draw(st.sampled_from(COMMANDS))
    version = draw(st.sampled_from(SUPPORTED_VERSIONS))
    conf = full_conf("task-new", version)
    for name, value in draw(st.lists(broken_fields(), min_size=1, max_size=3)):
        conf["ipam"][name] = value
    codes = {INVALID_CONFIG} | ({INCOMPATIBLE_VERSION} if too_old(command, version) else set())
    return Invocation(command, conf, codes)


@st.composite
def structural_mistakes(draw) -> Invocation:
    """Mistakes in the shape of the configuration rather than in one of its values."""
    command = draw(st.sampled_from(COMMANDS))
    version = draw(st.sampled_from(SUPPORTED_VERSIONS))
    old = {INCOMPATIBLE_VERSION} if too_old(command, version) else set()
    conf = full_conf("task-new", version)
    kind = draw(st.sampled_from(["no ipam", "ipam type", "no subnet", "orphan field", "version type", "version"]))
    if kind == "no ipam":
        del conf["ipam"]
    elif kind == "ipam type":
        conf["ipam"] = draw(st.one_of(wrong_types.filter(lambda v: not isinstance(v, dict)), st.text(), st.none()))
    elif kind == "no subnet":
        for name in ("ipv4", "ipv6"):
            for suffix in ("subnet", "address", "gateway", "routes"):
                conf["ipam"].pop(f"{name}-{suffix}", None)
        conf["ipam"][draw(st.sampled_from(["ipv4-subnet", "ipv6-subnet"]))] = draw(st.sampled_from([None, ""]))
    elif kind == "orphan field":
        # An address, gateway or route for a family whose subnet is missing.
        family = draw(st.sampled_from(["ipv4", "ipv6"]))
        orphan = draw(st.sampled_from(["address", "gateway", "routes"]))
        other = {"ipv4": "ipv6", "ipv6": "ipv4"}[family]
        value = (
            conf["ipam"].get(f"{family}-{orphan}")
            or {
                "ipv4": {"address": "169.254.172.5/22", "gateway": "169.254.172.1"},
                "ipv6": {"address": "fd00:ec2::172:5/112", "gateway": "fd00:ec2::172:1"},
            }[family][orphan]
        )
        conf["ipam"] = {
            "id": "task-new",
            f"{other}-subnet": conf["ipam"][f"{other}-subnet"],
            f"{family}-{orphan}": value,
        }
    elif kind == "version type":
        conf["cniVersion"] = draw(wrong_types)
        return Invocation(command, conf, {INVALID_CONFIG})
    else:
        # An empty (or null) cniVersion means 0.1.0, as in libcni.
        conf["cniVersion"] = draw(
            st.one_of(st.text(min_size=1, max_size=20), huge).filter(lambda v: v not in SUPPORTED_VERSIONS)
        )
        return Invocation(command, conf, {INCOMPATIBLE_VERSION})
    return Invocation(command, conf, {INVALID_CONFIG} | old)


@st.composite
def undecodable_stdin(draw) -> Invocation:
    """Whatever is on stdin is not one JSON document (or not an object)."""
    command = draw(st.sampled_from(COMMANDS))

    def not_json(raw: bytes) -> bool:
        try:
            json.loads(raw)
        except (ValueError, RecursionError):
            return True
        return False

    raw = draw(
        st.one_of(
            st.sampled_from([b"", b"  \n", b"\xff\xfe\x00{", b"{", b'{"ipam": }', b"[" * 100_000, b'{"a":' * 100_000]),
            st.binary(max_size=200).filter(not_json),
            st.text(max_size=200).map(lambda text: text.encode("utf-8")).filter(not_json),
        )
    )
    return Invocation(command, None, {DECODE_FAILURE}, stdin=raw)


@st.composite
def json_but_not_an_object(draw) -> Invocation:
    command = draw(st.sampled_from(COMMANDS))
    value = draw(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.lists(st.integers(), max_size=3))
    )
    return Invocation(command, None, {INVALID_CONFIG}, stdin=json.dumps(value).encode())


@st.composite
def bad_environments(draw) -> Invocation:
    """A valid configuration with a wrong, missing or undecodable variable."""
    command = draw(st.sampled_from(COMMANDS))
    conf = full_conf(draw(st.sampled_from(["task-new", HELD_ID])), "1.1.0")
    kind = draw(st.sampled_from(["command", "required", "timeout", "not utf-8"]))
    if kind == "command":
        value = draw(
            st.one_of(st.none(), st.just(""), st.text(max_size=20).filter(lambda v: v not in COMMANDS + ("VERSION",)))
        )
        env = {"CNI_COMMAND": value}
    elif kind == "required":
        command = draw(st.sampled_from(["ADD", "CHECK"]))
        names = ["CNI_CONTAINERID", "CNI_IFNAME"] + (["CNI_NETNS"] if command == "ADD" else [])
        env = {draw(st.sampled_from(names)): draw(st.sampled_from([None, ""]))}
    elif kind == "timeout":
        # A blank setting means the default, as in the original plugin.
        value = draw(
            st.one_of(st.text(min_size=1, max_size=20), huge).filter(
                lambda v: v.strip() and not _GO_DURATION.fullmatch(v)
            )
        )
        env = {"IPAM_DB_CONNECTION_TIMEOUT": value}
    else:
        # os.environ hands bytes that are not UTF-8 over as lone surrogates.  ADD records
        # the container id and interface name; no command can open such a path.
        name = draw(st.sampled_from(["CNI_CONTAINERID", "CNI_IFNAME", "IPAM_DB_PATH"]))
        if name == "IPAM_DB_PATH":
            env = {"IPAM_DB_PATH+": "\udcff"}  # appended to the database path
        else:
            command, env = "ADD", {name: "c-\udcff"}
    return Invocation(command, conf, {INVALID_ENVIRONMENT}, env=env)


@st.composite
def refused_by_state(draw) -> Invocation:
    """A valid request that the seeded database's contents refuse."""
    version = draw(st.sampled_from(SUPPORTED_VERSIONS))
    kind = draw(
        st.sampled_from(
            [
                "id held",
                "fixed held",
                "gateway held",
                "pool full",
                "check",
                "check moved",
                "old",
                "gc list",
                "del nothing named",
            ]
        )
    )
    if kind == "id held":
        return Invocation("ADD", full_conf(HELD_ID, version), {ID_ALREADY_ALLOCATED}, needs_state=True)
    if kind == "fixed held":
        return Invocation(
            "ADD", netconf("task-new", cni_version=version, ipv4_address=FIXED_V4), {ADDRESS_IN_USE}, needs_state=True
        )
    if kind == "gateway held":
        conf = netconf("task-new", cni_version=version, ipv4_gateway=HELD_V4)
        return Invocation("ADD", conf, {ADDRESS_IN_USE}, needs_state=True)
    if kind == "pool full":
        command = draw(st.sampled_from(["ADD", "STATUS"]))
        conf = netconf("task-new", cni_version="1.1.0" if command == "STATUS" else version, ipv4_subnet=FULL_SUBNET)
        return Invocation(command, conf, {POOL_EXHAUSTED if command == "ADD" else NOT_AVAILABLE}, needs_state=True)
    if kind == "check":
        version = draw(st.sampled_from(["0.4.0", "1.0.0", "1.1.0"]))
        return Invocation("CHECK", full_conf("task-new", version), {RESERVATION_MISMATCH}, needs_state=True)
    if kind == "check moved":
        conf = {
            **netconf(HELD_ID, cni_version="1.0.0"),
            "prevResult": {
                "cniVersion": "1.0.0",
                "ips": [{"address": "169.254.172.77/22", "gateway": "169.254.172.1"}],
            },
        }
        return Invocation("CHECK", conf, {RESERVATION_MISMATCH}, needs_state=True)
    if kind == "old":
        command = draw(st.sampled_from(["CHECK", "GC", "STATUS"]))
        version = draw(st.sampled_from([v for v in SUPPORTED_VERSIONS if too_old(command, v)]))
        return Invocation(command, full_conf(HELD_ID, version), {INCOMPATIBLE_VERSION})
    if kind == "gc list":
        conf = full_conf(None, "1.1.0")
        conf["cni.dev/valid-attachments"] = draw(
            st.one_of(st.just("not a list"), st.just([{"containerID": 1, "ifname": "eth0"}]), st.just(["c-1"]))
        )
        if draw(st.booleans()):
            conf.pop("cni.dev/valid-attachments")
        return Invocation("GC", conf, {INVALID_CONFIG})
    conf = full_conf(draw(st.sampled_from([None, ""])), version)
    return Invocation("DEL", conf, {INVALID_CONFIG})


any_bad_invocation = st.one_of(
    broken_configurations(),
    structural_mistakes(),
    undecodable_stdin(),
    json_but_not_an_object(),
    bad_environments(),
    refused_by_state(),
)


# --- running them -------------------------------------------------------------------------------


@dataclass
class Database:
    directory: str
    path: str
    log_path: str


def environment(invocation: Invocation, db: Database) -> dict[str, str]:
    env = {
        "CNI_COMMAND": invocation.command,
        "CNI_CONTAINERID": "container-1",
        "CNI_NETNS": AGENT_NETNS,
        "CNI_IFNAME": "eth0",
        "IPAM_DB_PATH": db.path,
        "ECS_CNI_LOG_FILE": db.log_path,
        "ECS_CNI_LOGLEVEL": "debug",
    }
    for name, value in invocation.env.items():
        if name.endswith("+"):
            env[name[:-1]] += value
        elif value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_in_process(invocation: Invocation, db: Database) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = cni.main(
            argv=[], environ=environment(invocation, db), stdin=io.BytesIO(invocation.stdin_bytes()), stdout=stdout
        )
    return code, stdout.getvalue(), stderr.getvalue()


def check_error_object(stdout: str, codes: set[int]) -> dict:
    assert stdout.endswith("\n") and stdout.count("\n") == 1, stdout[:1000]
    error = json.loads(stdout)
    assert isinstance(error, dict)
    assert set(error) <= {"cniVersion", "code", "msg", "details"}
    assert error["code"] in codes, error
    assert error["cniVersion"] in SUPPORTED_VERSIONS
    assert isinstance(error["msg"], str) and error["msg"]
    return error


def seed(db: Database) -> None:
    def add(conf: dict) -> None:
        code, stdout, _ = run_in_process(Invocation("ADD", conf, set()), db)
        assert code == 0, stdout

    add(full_conf(HELD_ID, "0.3.0"))
    add(netconf(FIXED_ID, ipv4_address=FIXED_V4))
    add(netconf(FULL_ID, ipv4_subnet=FULL_SUBNET))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Database:
    directory = tmp_path_factory.mktemp("seeded")
    db = Database(str(directory / "data"), str(directory / "data" / "eni-ipam.db"), str(directory / "plugin.log"))
    os.mkdir(db.directory)
    seed(db)
    return db


@pytest.fixture(scope="module")
def absent(tmp_path_factory) -> Database:
    directory = tmp_path_factory.mktemp("absent")
    db = Database(str(directory / "data"), str(directory / "data" / "eni-ipam.db"), str(directory / "plugin.log"))
    os.mkdir(db.directory)
    return db


def check_rejected_without_trace(invocation: Invocation, db: Database) -> None:
    before = files_snapshot(db.directory)
    log_size = os.path.getsize(db.log_path) if os.path.exists(db.log_path) else 0
    code, stdout, stderr = run_in_process(invocation, db)
    check_error_object(stdout, invocation.codes)
    assert code == 1
    assert stderr == ""
    with open(db.log_path, "rb") as log:
        log.seek(log_size)
        assert b"Traceback" not in log.read()
    assert files_snapshot(db.directory) == before


SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


@settings(max_examples=400, **SETTINGS)
@given(invocation=any_bad_invocation)
def test_bad_input_is_rejected_and_changes_nothing(seeded, invocation):
    check_rejected_without_trace(invocation, seeded)


@settings(max_examples=150, **SETTINGS)
@given(invocation=any_bad_invocation.filter(lambda invocation: not invocation.needs_state))
def test_bad_input_creates_no_database(absent, invocation):
    check_rejected_without_trace(invocation, absent)
    assert os.listdir(absent.directory) == []


@pytest.mark.slow
@settings(max_examples=6000, **SETTINGS)
@given(invocation=any_bad_invocation)
def test_much_bad_input_is_rejected_and_changes_nothing(seeded, invocation):
    check_rejected_without_trace(invocation, seeded)


# --- as real processes --------------------------------------------------------------------------

AS_PROCESSES = [
    ("empty stdin", b"", {}, DECODE_FAILURE),
    ("not UTF-8", b"\xff\xfe{\x00", {}, DECODE_FAILURE),
    ("deeply nested", b"[" * 200_000, {}, DECODE_FAILURE),
    ("id of the wrong type", netconf(12345), {}, INVALID_CONFIG),
    ("huge subnet", netconf("task-new", ipv4_subnet="169.254.172.0/22" + "9" * 1_000_000), {}, INVALID_CONFIG),
    ("unknown version", netconf("task-new", cni_version="9.9.9"), {}, INCOMPATIBLE_VERSION),
    ("no CNI_COMMAND", netconf("task-new"), {"CNI_COMMAND": None}, INVALID_ENVIRONMENT),
    ("no CNI_IFNAME", netconf("task-new"), {"CNI_IFNAME": None}, INVALID_ENVIRONMENT),
    ("container id not UTF-8", netconf("task-new"), {"CNI_CONTAINERID": b"c-\xff"}, INVALID_ENVIRONMENT),
    ("timeout not a duration", netconf("task-new"), {"IPAM_DB_CONNECTION_TIMEOUT": "5 seconds"}, INVALID_ENVIRONMENT),
    ("id already holds", netconf(HELD_ID), {}, ID_ALREADY_ALLOCATED),
]


@pytest.mark.parametrize(
    ("conf", "env", "code"), [case[1:] for case in AS_PROCESSES], ids=[case[0] for case in AS_PROCESSES]
)
def test_bad_input_to_the_plugin_process(tmp_path, conf, env, code):
    db = Database(str(tmp_path / "data"), str(tmp_path / "data" / "eni-ipam.db"), str(tmp_path / "plugin.log"))
    os.mkdir(db.directory)
    seed(db)
    before = files_snapshot(db.directory)
    returncode, error, stderr = run_plugin(
        "ADD", conf, {"ECS_CNI_LOG_FILE": db.log_path, "ECS_CNI_LOGLEVEL": "debug", **env}, db.path
    )
    assert (returncode, error["code"], stderr) == (1, code, "")
    check_error_object(json.dumps(error) + "\n", {code})
    with open(db.log_path, "rb") as log:
        assert b"Traceback" not in log.read()
    assert files_snapshot(db.directory) == before
