"""Answer-for-answer parity with the Go plugin, from recorded transcripts.

tests/fixtures/transcripts holds sequences that tools/compare_plugins.py ran against builds
of the Go original (2026.01 with IPv4, IPv6 and dual-stack pools; 2019.06, IPv4 only),
with the original's answers.  Replaying them against ecs-ipam, through the tool's own
comparison, needs no Go binary.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys

import pytest

from ecs_ipam.errors import IdAlreadyAllocatedError
from ecs_ipam.ipam import IPAM
from tests.plugin import ROOT

TRANSCRIPTS = sorted((ROOT / "tests" / "fixtures" / "transcripts").glob("*.json"))
_spec = importlib.util.spec_from_file_location("compare_plugins", ROOT / "tools" / "compare_plugins.py")
compare_plugins = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_plugins)


def load(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def in_process():
    return compare_plugins._runner(compare_plugins.InProcessPlugin())


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=lambda p: p.stem)
def test_replayed_transcript_has_no_unexplained_mismatch(path):
    tallies = compare_plugins.replay(load(path), in_process())
    mismatches = [(t.seed, t.kind, m) for t in tallies for m in t.mismatches]
    assert mismatches == []
    assert sum(t.same for t in tallies) > 0.8 * sum(t.ops for t in tallies)
    assert set().union(*(t.intentional for t in tallies)) <= set(compare_plugins.DIFFERENCES)


def test_transcripts_cover_anonymous_fixed_and_dual_stack_sequences():
    seen = set()
    for path in TRANSCRIPTS:
        for sequence in load(path)["sequences"]:
            seen.add(sequence["kind"])
            for op in compare_plugins.expand(sequence):
                ipam, ok = op["conf"]["ipam"], op["answer"]["rc"] == 0
                fixed = "ipv4-address" in ipam or "ipv6-address" in ipam
                named = bool(ipam.get("id"))
                seen.add((op["command"], "named" if named else "anonymous", "fixed" if fixed else "walk", ok))
    assert {"v4", "v6", "dual"} <= seen
    for command, owner, how in [
        ("ADD", "anonymous", "walk"),
        ("ADD", "anonymous", "fixed"),
        ("ADD", "named", "walk"),
        ("ADD", "named", "fixed"),
        ("DEL", "named", "walk"),
        ("DEL", "anonymous", "fixed"),
        ("DEL", "named", "fixed"),
    ]:
        assert (command, owner, how, True) in seen, (command, owner, how)
    # Exhaustion and refusals happened too.
    assert ("ADD", "named", "walk", False) in seen and ("ADD", "anonymous", "walk", False) in seen


def test_a_changed_answer_is_reported_as_a_mismatch():
    transcript = load(TRANSCRIPTS[0])
    sequence = copy.deepcopy(transcript["sequences"][0])
    ops = sequence["ops"]
    index = next(i for i, op in enumerate(ops) if op["command"] == "ADD" and op["answer"]["rc"] == 0)
    ops[index]["answer"]["ips"][0]["gateway"] = "192.0.2.1"
    tallies = compare_plugins.replay({**transcript, "sequences": [sequence]}, in_process())
    assert [m["index"] for m in tallies[0].mismatches][:1] == [index]


def test_a_plugin_that_refuses_everything_is_reported():
    refusing = lambda op, directory: compare_plugins.Answer(1, {"cniVersion": "0.3.0", "code": 7, "msg": "no"})  # noqa: E731
    tallies = compare_plugins.replay(load(TRANSCRIPTS[0]), refusing)
    assert sum(len(t.mismatches) for t in tallies) > 10


@pytest.mark.parametrize(
    "output, condition",
    [
        ({"code": 100, "msg": "getIPV4AddressFromDB commands: ... ipstore: id already exists"}, "id-exists"),
        (
            {
                "code": 100,
                "msg": "getIPV4Address commands: failed to mark this ip 10.0.0.9/24 as used: "
                "Previous K/V pair exists, cannot complete Atomic operation",
            },
            "address-in-use",
        ),
        (
            {"code": 100, "msg": "... getAvailableIPv6 ipstore: failed to find available IPv6 addresses in the subnet"},
            "exhausted",
        ),
        ({"code": 100, "msg": "release ipstore: ip does not existed in the db: 10.0.0.9"}, "not-held"),
        (
            {"code": 100, "msg": "loadIPAMConfig config: failed to load netconf, {}: invalid CIDR address: "},
            "invalid-config",
        ),
        ({"code": 1, "msg": "incompatible CNI versions"}, "version"),
        ({"cniVersion": "0.3.0", "code": 100, "msg": "address 10.0.0.9 is already held by 'a'"}, "address-in-use"),
        ({"cniVersion": "0.3.0", "code": 101, "msg": "id already exists"}, "id-exists"),
        ({"cniVersion": "0.3.0", "code": 102, "msg": "failed to find"}, "exhausted"),
        ({"cniVersion": "0.3.0", "code": 7, "msg": "ipam.ipv4-address '' is not in CIDR notation"}, "invalid-config"),
    ],
)
def test_errors_are_compared_by_meaning(output, condition):
    assert compare_plugins.error_class(output) == condition


def test_every_intentional_difference_is_in_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Differences from the Go plugin", 1)[1].split("\n## ", 1)[0]
    for name in compare_plugins.DIFFERENCES:
        assert f"`{name}`" in section, name


def test_a_fixed_ipv6_address_for_an_id_that_holds_one(tmp_path):
    # "v6-fixed-id-exists": refused, as for IPv4; the Go plugin 2026.01 hands it out.
    conf = {"cniVersion": "0.3.0", "ipam": {"id": "a", "ipv6-subnet": "fd00::/125"}}
    with IPAM(str(tmp_path / "ipam.db")) as ipam:
        ipam.add(conf)
        with pytest.raises(IdAlreadyAllocatedError):
            ipam.add({**conf, "ipam": {**conf["ipam"], "ipv6-address": "fd00::5/125"}})


def test_the_tool_runs_a_plugin_process_against_a_transcript(tmp_path, capsys):
    transcript = load(TRANSCRIPTS[0])
    sequence = transcript["sequences"][0]
    short = {**transcript, "sequences": [{**sequence, "ops": sequence["ops"][:15]}]}
    path = tmp_path / "short.json"
    path.write_text(json.dumps(short), encoding="utf-8")
    plugin = f"{sys.executable} -m ecs_ipam"
    assert compare_plugins.main(["--replay", str(path), "--plugin", plugin]) == 0
    assert "0 unexplained mismatches" in capsys.readouterr().out


def test_transcripts_cover_subnets_written_with_host_bits():
    import netaddr

    seen = set()
    for path in TRANSCRIPTS:
        for sequence in load(path)["sequences"]:
            for op in compare_plugins.expand(sequence):
                ipam = op["conf"]["ipam"]
                for family in ("ipv4", "ipv6"):
                    written = ipam.get(f"{family}-subnet")
                    if not written or str(netaddr.IPNetwork(written).cidr) == written:
                        continue
                    if ipam.get(f"{family}-gateway"):
                        gateway = "given"
                    else:
                        gateway = "unusable" if compare_plugins.unusable_default_gateway(ipam) else "default"
                    seen.add((sequence["kind"], family, gateway, op["command"], op["answer"]["rc"] == 0))
    for kind, family in [("v4", "ipv4"), ("v6", "ipv6"), ("dual", "ipv4"), ("dual", "ipv6")]:
        for command in ("ADD", "DEL"):
            assert (kind, family, "default", command, True) in seen, (kind, family, command)
    for kind, family in [("v4", "ipv4"), ("v6", "ipv6")]:
        assert (kind, family, "given", "ADD", True) in seen
        # The Go plugin answers these; ecs-ipam refuses them ("host-bits-gateway").
        assert (kind, family, "unusable", "ADD", True) in seen
