#!/usr/bin/env python3
"""Run the same seeded random ADD/DEL sequences against two IPAM plugins and compare answers.

    python tools/compare_plugins.py --reference PATH [--plugin CMD] [--seeds N] [--ops N]
                                    [--first-seed S] [--kinds v4,v6,dual] [--record FILE]
    python tools/compare_plugins.py --replay FILE [--plugin CMD]

The reference is any ecs-ipam-compatible plugin executable, such as a build of the Go
original; the plugin under test is this checkout's ecs-ipam (run in this process, which is
fast), or any command given with ``--plugin``.  Each sequence runs against a fresh database
per plugin, in a temporary directory.

Sequences mix named ids, anonymous ADDs (no id, or ``""``), fixed addresses with and
without ids, DEL by id, DEL by address, and a few invalid requests (:data:`MIX`), in pools
small enough that exhaustion and wrap-around happen, some written with host bits
(``10.0.0.5/29``: the default gateway is the written address + 1).  Sequence kinds: ``v4``, ``v6`` and ``dual``; the
IPv6 kinds run only when the reference answers an IPv6 ADD.  The next operation is drawn
from the seed and what the reference has answered so far, so a sequence is reproducible
for a given reference, and ``--record`` saves sequences and the reference's answers, which
``--replay`` (and the test suite) runs again without the reference.

Answers are compared by meaning: success or failure, then the addresses, gateways and
routes, or the class of the error (the Go plugin reports nearly every error as code 100 and
prints its JSON indented, without cniVersion).  A difference listed in DIFFERENCES (also in
the README, "Differences from the Go plugin") is counted by name; any other is a mismatch,
printed, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TextIO

if __name__ == "__main__" and not __package__:
    # Run as a script from a checkout: use the package of the same tree, installed or not.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import netaddr

PROG = "compare_plugins.py"
# A decoded JSON object: a configuration, an answer, a recorded operation.
JSON = dict[str, Any]
TRANSCRIPT_FORMAT = 1

# Intentional differences: name -> (what differs, the test that pins ecs-ipam's side).
DIFFERENCES = {
    "del-not-held": (
        "a DEL of an id or address that holds nothing succeeds (the Go plugin fails it)",
        "tests/test_ipam.py::test_del_is_idempotent",
    ),
    "fixed-is-gateway": (
        "a fixed address equal to the gateway is an invalid configuration, code 7 (the Go "
        "plugin reports the address as in use)",
        'tests/test_config.py ("is the gateway address")',
    ),
    "error-codes": (
        "error codes and messages: the CNI code of each condition and a message naming the "
        "field (the Go plugin: code 100 for all but version errors); compared by meaning",
        "tests/test_config.py, tests/test_cni.py",
    ),
    "del-id-and-other-address": (
        "a DEL naming an id and a fixed address releases the address only if that id holds "
        "it (the Go plugin releases the address whoever holds it); not generated",
        "tests/test_ipam.py::test_del_with_id_does_not_release_another_ids_fixed_address",
    ),
    "dual-stack-all-or-nothing": (
        "a dual-stack ADD whose IPv6 claim fails claims nothing (the Go plugin keeps the IPv4 "
        "address); not generated: dual sequences keep the two pools in step",
        "tests/test_ipam.py::test_dual_stack_claims_neither_when_ipv6_is_exhausted",
    ),
    "v6-fixed-id-exists": (
        "an ADD of a fixed IPv6 address for an id that already holds an IPv6 address fails "
        'with "id already exists", as it does for IPv4 (the Go plugin 2026.01 checks only '
        "IPv4, so the id then holds two); not generated",
        "tests/test_compare_transcripts.py::test_a_fixed_ipv6_address_for_an_id_that_holds_one",
    ),
    "dual-stack-fixed-under-an-id": (
        "a dual-stack ADD of fixed addresses under an id claims both (the Go plugin 2026.01 "
        'always fails it with "id already exists", finding the IPv4 address it has just '
        "claimed, and keeps that one); not generated",
        "tests/test_ipam.py::test_dual_stack_fixed_pair_under_one_id",
    ),
    "several-subnets": (
        'several subnets share one database (the Go plugin fails with "id: GateWay: '
        'ipstore: id already exists"); not generated: one subnet per family and sequence',
        "tests/test_ipam.py::test_two_subnets_in_one_database_with_the_same_id",
    ),
    "host-bits-gateway": (
        "a subnet written with host bits whose default gateway (the written address + 1) is the "
        "IPv4 broadcast address or lies past the subnet is an invalid configuration, code 7 "
        "(the Go plugin answers that gateway)",
        "tests/test_host_bits.py::test_an_unusable_default_gateway_is_refused",
    ),
    "cni-versions": (
        "every CNI version from 0.1.0 to 1.1.0 is answered (the Go plugin: 0.3.0 only); sequences use 0.3.0",
        "tests/test_results.py",
    ),
}


# --- running a plugin ---------------------------------------------------------------------


class Answer(NamedTuple):
    """What a plugin printed for one command: exit status and the JSON object (or None)."""

    rc: int
    output: JSON | None


# Runs one operation (with its "command" and "conf") in a database directory.
Runner = Callable[[JSON, str], Answer]


def plugin_environment(command: str, db_path: str, log_file: str, cni_path: str) -> JSON:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("CNI_", "IPAM_", "ECS_CNI_"))}
    env.update(
        CNI_COMMAND=command,
        CNI_CONTAINERID="compare-container",
        CNI_NETNS="/var/run/netns/compare",
        CNI_IFNAME="eth0",
        CNI_PATH=cni_path,
        IPAM_DB_PATH=db_path,
        ECS_CNI_LOG_FILE=log_file,
    )
    return env


def _parse(stdout: bytes | str) -> JSON | None:
    text = stdout.decode("utf-8", "replace") if isinstance(stdout, bytes) else stdout
    if not text.strip():
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return {"unparsable": text[:200]}
    return document if isinstance(document, dict) else {"unparsable": text[:200]}


class ProcessPlugin:
    """A plugin executable (a path, or a command line), run once per command."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.name = " ".join(argv)

    def run(self, command: str, conf: JSON, directory: str) -> Answer:
        env = plugin_environment(
            command,
            os.path.join(directory, "ipam.db"),
            os.path.join(directory, "plugin.log"),
            os.path.dirname(os.path.abspath(self.argv[0])),
        )
        proc = subprocess.run(self.argv, input=json.dumps(conf).encode(), capture_output=True, env=env, timeout=60)
        return Answer(proc.returncode, _parse(proc.stdout))


class InProcessPlugin:
    """This checkout's ecs-ipam, called through its CNI entry point in this process."""

    name = "ecs-ipam (in-process)"

    def run(self, command: str, conf: JSON, directory: str) -> Answer:
        from ecs_ipam.cni import main

        env = plugin_environment(
            command, os.path.join(directory, "ipam.db"), os.path.join(directory, "plugin.log"), directory
        )
        stdout = io.StringIO()
        rc = main([], env, io.BytesIO(json.dumps(conf).encode()), stdout)
        return Answer(rc, _parse(stdout.getvalue()))


# --- answers, by meaning --------------------------------------------------------------------

# The Go plugin's messages, by the condition they report.
_GO_MESSAGES = (
    ("id already exists", "id-exists"),
    ("Previous K/V pair exists", "address-in-use"),
    ("already been used", "address-in-use"),
    ("failed to find available ip", "exhausted"),
    ("failed to find available IPv6 addresses", "exhausted"),
    ("all the ip addresses are used", "exhausted"),
    ("no ip address associated with the given id", "not-held"),
    ("ip does not existed in the db", "not-held"),
    ("can not all be empty for deletion", "invalid-config"),
    ("can not both be empty for deletion", "invalid-config"),
    ("invalid CIDR address", "invalid-config"),
    ("reserved by default", "invalid-config"),
    ("is not within the subnet", "invalid-config"),
    ("is the network address", "invalid-config"),
    ("no available ip in the subnet", "invalid-config"),
    ("subnet is required", "invalid-config"),
    ("at least one subnet (ipv4 or ipv6) is required", "invalid-config"),
    ("failed to load netconf", "invalid-config"),
)
_CODES = {
    1: "version",
    4: "environment",
    5: "io",
    6: "decode",
    7: "invalid-config",
    11: "try-again",
    100: "address-in-use",
    101: "id-exists",
    102: "exhausted",
}


def error_class(output: JSON | None) -> str:
    """The condition an error object reports, whichever plugin printed it."""
    if not isinstance(output, dict) or "code" not in output:
        return "no-error-object"
    code, msg = output.get("code"), str(output.get("msg", ""))
    if code == 1:
        return "version"
    if code == 100 and "cniVersion" not in output:
        # The Go plugin: one code for everything, so the message says what happened.
        for text, condition in _GO_MESSAGES:
            if text in msg:
                return condition
        return f"other: {msg[:80]}"
    return _CODES.get(code, f"code {code}") if isinstance(code, int) else f"code {code}"


def normalised(answer: Answer) -> JSON:
    """An answer reduced to what it means: success with addresses and routes, or an error class."""
    if answer.rc != 0:
        return {"ok": False, "error": error_class(answer.output)}
    output = answer.output or {}
    ips = [(ip.get("address"), ip.get("gateway")) for ip in output.get("ips", [])]
    routes = sorted((r.get("dst"), r.get("gw") or None) for r in output.get("routes") or [])
    return {"ok": True, "ips": ips, "routes": routes}


def compare(op: JSON, reference: Answer, candidate: Answer) -> tuple[str, str]:
    """``("same" | "intentional" | "mismatch", detail)`` for one operation."""
    ref, cand = normalised(reference), normalised(candidate)
    if ref == cand:
        return "same", ""
    if not ref["ok"] and ref["error"] == "not-held" and cand["ok"] and op["command"] == "DEL":
        return "intentional", "del-not-held"
    if not cand["ok"] and cand["error"] == "invalid-config" and unusable_default_gateway(op["conf"]["ipam"]):
        return "intentional", "host-bits-gateway"
    if (
        not ref["ok"]
        and not cand["ok"]
        and ref["error"] == "address-in-use"
        and cand["error"] == "invalid-config"
        and op.get("fixed_is_gateway")
    ):
        return "intentional", "fixed-is-gateway"
    return "mismatch", f"reference {ref} / plugin {cand}"


def unusable_default_gateway(ipam: JSON) -> bool:
    """Whether a pool of *ipam* takes the default gateway, and the Go plugin's (the address
    written in the subnet + 1) is the IPv4 broadcast address or lies past the subnet."""
    for version, family in ((4, "ipv4"), (6, "ipv6")):
        if ipam.get(f"{family}-gateway") or not isinstance(ipam.get(f"{family}-subnet"), str):
            continue
        try:
            written = netaddr.IPNetwork(ipam[f"{family}-subnet"])
        except (netaddr.AddrFormatError, ValueError, TypeError):
            continue
        gateway = int(written.ip) + 1
        if gateway > written.last or (version == 4 and gateway == written.last):
            return True
    return False


def answer_json(answer: Answer) -> JSON:
    """An answer as recorded in a transcript: only what comparing needs."""
    recorded: JSON = {"rc": answer.rc}
    output = answer.output or {}
    if answer.rc != 0:
        recorded.update({k: output[k] for k in ("code", "msg", "cniVersion") if k in output})
    elif output:
        recorded["ips"] = [{"address": ip.get("address"), "gateway": ip.get("gateway")} for ip in output.get("ips", [])]
        if output.get("routes"):
            recorded["routes"] = output["routes"]
    return recorded


def answer_from_json(recorded: JSON) -> Answer:
    output = {k: v for k, v in recorded.items() if k != "rc"}
    return Answer(recorded["rc"], output or None)


# --- sequences ------------------------------------------------------------------------------

KINDS = ("v4", "v6", "dual")


def pool_layout(kind: str, rng: random.Random) -> JSON:
    """The ipam keys every operation of a sequence shares, and how the pools are laid out."""
    layout: JSON = {"families": {"v4": (4,), "v6": (6,), "dual": (4, 6)}[kind]}
    # Small pools: a /29 has 5 task addresses, a /27 29.  Exhaustion and wrap-around happen.
    # Dual: both pools have 15 addresses after the network address; IPv4's last one is its
    # broadcast address, so IPv6's last one is held for the whole sequence by a pin (see
    # setup_ops).  The pools then stay in step: offset k is free in one exactly when it is
    # free in the other, and an IPv6 claim fails only when the IPv4 one does.
    prefixes = {4: 28, 6: 124} if kind == "dual" else {4: rng.choice((29, 28, 27)), 6: rng.choice((125, 124, 123))}
    base = {4: f"10.{rng.randrange(256)}.{rng.randrange(16) * 16}.0", 6: f"fd00:{rng.randrange(65536):x}::"}
    ipam: JSON = {"type": "ecs-ipam"}
    explicit_gateway = not (rng.random() < 0.7 or kind == "dual")
    first = layout["families"][0]
    host_bits = _host_bits(kind, 2 ** ((32 if first == 4 else 128) - prefixes[first]), rng)
    # The Go plugin's default gateway is the address written in the subnet + 1.
    gateway_offset = 2 if explicit_gateway else host_bits + 1
    for version in layout["families"]:
        family = "ipv4" if version == 4 else "ipv6"
        subnet = netaddr.IPNetwork(f"{base[version]}/{prefixes[version]}").cidr
        ipam[f"{family}-subnet"] = f"{netaddr.IPAddress(subnet.first + host_bits, version)}/{subnet.prefixlen}"
        if explicit_gateway:
            ipam[f"{family}-gateway"] = str(netaddr.IPAddress(subnet.first + gateway_offset, version))
        elif rng.random() < 0.2:
            ipam[f"{family}-gateway"] = ""
        if rng.random() < 0.5:
            route = {"dst": "169.254.170.2/32"} if version == 4 else {"dst": "fd00:ec2::/64"}
            if rng.random() < 0.3:
                route["gw"] = str(netaddr.IPAddress(subnet.first + gateway_offset, version))
            ipam[f"{family}-routes"] = [route]
    layout["ipam"] = ipam
    layout["gateway_offset"] = gateway_offset
    return layout


def _host_bits(kind: str, size: int, rng: random.Random) -> int:
    """The offset of the address written in the subnet: 0 (none) in most sequences.

    Some write host bits whose default gateway is usable; a few (not dual: its pin holds
    the IPv6 pool's last address) write those whose default gateway the Go plugin answers
    although no task could use it, the IPv4 broadcast address or one past the subnet
    (see "host-bits-gateway").
    """
    roll = rng.random()
    if roll < 0.6:
        return 0
    if roll < 0.94 or kind == "dual":
        return rng.randrange(1, size - 2)
    return rng.choice((size - 2, size - 1)) if kind == "v4" else size - 1


def _subnets(layout: JSON) -> dict[int, netaddr.IPNetwork]:
    return {
        version: netaddr.IPNetwork(layout["ipam"]["ipv4-subnet" if version == 4 else "ipv6-subnet"])
        for version in layout["families"]
    }


def setup_ops(kind: str, layout: JSON) -> list[JSON]:
    if kind != "dual":
        return []
    v6 = _subnets(layout)[6]
    pin = {
        "type": "ecs-ipam",
        "id": "pin",
        "ipv6-subnet": str(v6),
        "ipv6-address": f"{netaddr.IPAddress(v6.last, 6)}/{v6.prefixlen}",
    }
    return [{"command": "ADD", "conf": {"cniVersion": "0.3.0", "name": "compare", "ipam": pin}}]


class Model:
    """What the reference holds, as its answers say: address -> owner ("" = anonymous)."""

    def __init__(self) -> None:
        self.held: dict[str, str] = {}

    def apply(self, op: JSON, answer: Answer) -> None:
        if answer.rc != 0:
            return
        ipam = op["conf"]["ipam"]
        owner = ipam.get("id") or ""
        if op["command"] == "ADD":
            for ip in (answer.output or {}).get("ips", []):
                # A malformed answer is reported by the comparison.
                with contextlib.suppress(netaddr.AddrFormatError, KeyError, TypeError, ValueError):
                    self.held[str(netaddr.IPNetwork(ip["address"]).ip)] = owner
            return
        fixed = [str(netaddr.IPNetwork(ipam[k]).ip) for k in ("ipv4-address", "ipv6-address") if ipam.get(k)]
        if fixed:
            for address in fixed:
                self.held.pop(address, None)
        else:
            for address in [a for a, o in self.held.items() if o == owner]:
                del self.held[address]


class Draw:
    """What an operation generator draws from: the sequence's state, and the op it builds.

    A generator fills ``ipam`` (a copy of the sequence's shared keys) and returns the
    command, or None when it does not apply now (the draw then falls to an invalid request).
    """

    def __init__(self, rng: random.Random, layout: JSON, model: Model, ids: list[str]) -> None:
        self.rng = rng
        self.ids = ids
        self.model = model
        self.subnets = _subnets(layout)
        self.families = layout["families"]
        self.gateway_offset = layout["gateway_offset"]
        self.ipam: JSON = dict(layout["ipam"])
        self.fixed_is_gateway = False
        first = self.families[0]
        self.held = [a for a in model.held if netaddr.IPAddress(a).version == first]
        self.named = sorted({o for o in model.held.values() if o and o != "pin"})

    def host_offset(self) -> int:
        size = self.subnets[self.families[0]].size
        return self.rng.randrange(1, size - 1 if self.families[0] == 4 else size)

    def fixed(self, offset: int) -> None:
        """Ask for the address at *offset* in every pool (the pools of a dual sequence stay in step)."""
        for version in self.families:
            subnet = self.subnets[version]
            family = "ipv4" if version == 4 else "ipv6"
            self.ipam[f"{family}-address"] = f"{netaddr.IPAddress(subnet.first + offset, version)}/{subnet.prefixlen}"
        self.fixed_is_gateway = offset == self.gateway_offset


def add_by_id(d: Draw) -> str:
    d.ipam["id"] = d.rng.choice(d.ids)
    return "ADD"


def add_anonymous(d: Draw) -> str:
    if d.rng.random() < 0.5:
        d.ipam["id"] = ""
    return "ADD"


def add_fixed(d: Draw) -> str:
    d.fixed(d.host_offset())
    if d.fixed_is_gateway and d.rng.random() < 0.8:
        d.fixed(d.gateway_offset + 1)
    choice = d.rng.random()
    if choice < 0.5:
        d.ipam["id"] = d.rng.choice(d.ids)
        if 6 in d.families and (len(d.families) == 2 or d.ipam["id"] in d.named):
            del d.ipam["id"]  # see "v6-fixed-id-exists" and "dual-stack-fixed-under-an-id"
    elif choice < 0.75:
        d.ipam["id"] = ""
    return "ADD"


def del_by_id(d: Draw) -> str:
    d.ipam["id"] = d.rng.choice(d.named) if d.named and d.rng.random() < 0.8 else d.rng.choice(d.ids)
    return "DEL"


def del_by_address(d: Draw) -> str:
    if d.held and d.rng.random() < 0.8:
        first = netaddr.IPAddress(d.rng.choice(d.held))
        offset = int(first) - d.subnets[d.families[0]].first
    else:
        offset = d.host_offset()
    if offset == d.gateway_offset:
        offset += 1  # releasing the gateway is refused by one plugin and done by the other
    d.fixed(offset)
    if d.rng.random() < 0.3:
        d.ipam["id"] = ""
    return "DEL"


def del_by_id_and_its_address(d: Draw) -> str | None:
    # Only the id that holds the address (see "del-id-and-other-address").
    if not d.named:
        return None
    owner = d.rng.choice(d.named)
    version = d.families[0]
    address = next(a for a, o in d.model.held.items() if o == owner and netaddr.IPAddress(a).version == version)
    d.ipam["id"] = owner
    d.fixed(int(netaddr.IPAddress(address)) - d.subnets[version].first)
    return "DEL"


def invalid_request(d: Draw) -> str:
    command, mistake = d.rng.choice(("ADD", "DEL")), d.rng.randrange(4)
    version = d.families[0]
    family = "ipv4" if version == 4 else "ipv6"
    subnet = d.subnets[version]
    if mistake == 0:  # neither id nor address
        d.ipam.pop("id", None)
        if d.rng.random() < 0.5:
            d.ipam["id"] = ""
        command = "DEL"
    elif mistake == 1:
        d.ipam[f"{family}-address"] = ""
    elif mistake == 2:
        d.ipam[f"{family}-address"] = f"{netaddr.IPAddress(subnet.first, version)}/{subnet.prefixlen}"
    else:
        outside = netaddr.IPAddress(subnet.last + 1 + d.rng.randrange(100), version)
        d.ipam[f"{family}-address"] = f"{outside}/{subnet.prefixlen}"
    if command == "ADD" or d.rng.random() < 0.5:
        d.ipam.setdefault("id", d.rng.choice(d.ids))
    return command


# The mix of a sequence: (weight, generator).  What is left of 1.0 goes to invalid requests,
# as does a draw whose generator does not apply at that point.
MIX: tuple[tuple[float, Callable[[Draw], str | None]], ...] = (
    (0.25, add_by_id),
    (0.15, add_anonymous),
    (0.10, add_fixed),
    (0.20, del_by_id),
    (0.18, del_by_address),
    (0.07, del_by_id_and_its_address),
)


def next_op(rng: random.Random, layout: JSON, model: Model, ids: list[str]) -> JSON:
    """One operation, drawn from *rng* and what the reference holds now."""
    draw = Draw(rng, layout, model, ids)
    roll, bound = rng.random(), 0.0
    generate: Callable[[Draw], str | None] = invalid_request
    for weight, candidate in MIX:
        bound += weight
        if roll < bound:
            generate = candidate
            break
    command = generate(draw) or invalid_request(draw)
    op: JSON = {"command": command, "conf": {"cniVersion": "0.3.0", "name": "compare", "ipam": draw.ipam}}
    if draw.fixed_is_gateway:
        op["fixed_is_gateway"] = True
    return op


# --- running sequences ------------------------------------------------------------------------


class Tally(NamedTuple):
    seed: int
    kind: str
    ops: int
    same: int
    intentional: dict[str, int]
    mismatches: list[JSON]


def run_sequence(
    seed: int,
    kind: str,
    ops: int,
    reference: Runner | None,
    candidate: Runner,
    recorded: list[JSON] | None = None,
) -> tuple[Tally, list[JSON]]:
    """Run one sequence against both plugins; return the tally and the transcript of it.

    :param reference: ``(op, directory) -> Answer``; when *recorded* is given it is
        ignored and the recorded answers stand in for it.
    """
    rng = random.Random(f"{seed}-{kind}")
    layout = pool_layout(kind, rng)
    ids = [f"task-{i}" for i in range(max(4, _subnets(layout)[layout["families"][0]].size // 2))]
    model = Model()
    same, mismatches = 0, []
    transcript: list[JSON] = []
    intentional: dict[str, int] = {}
    with (
        tempfile.TemporaryDirectory(prefix="compare-ref-") as ref_dir,
        tempfile.TemporaryDirectory(prefix="compare-plugin-") as cand_dir,
    ):
        if recorded is not None:
            steps = ((_op_of(entry), answer_from_json(entry["answer"])) for entry in recorded)
        else:
            assert reference is not None, "a reference is needed when nothing was recorded"
            live = itertools.chain(setup_ops(kind, layout), (next_op(rng, layout, model, ids) for _ in range(ops)))
            steps = ((op, reference(op, ref_dir)) for op in live)
        for op, ref_answer in steps:
            cand_answer = candidate(op, cand_dir)
            # Before the next live op is drawn: it depends on what the reference holds.
            model.apply(op, ref_answer)
            verdict, detail = compare(op, ref_answer, cand_answer)
            if verdict == "same":
                same += 1
            elif verdict == "intentional":
                intentional[detail] = intentional.get(detail, 0) + 1
            else:
                mismatches.append({"index": len(transcript), "op": op, "detail": detail})
            transcript.append({**op, "answer": answer_json(ref_answer)})
    return Tally(seed, kind, len(transcript), same, intentional, mismatches), transcript


def _op_of(entry: JSON) -> JSON:
    return {k: v for k, v in entry.items() if k != "answer"}


def compact(sequence_ops: list[JSON]) -> JSON:
    """Recorded operations with the ipam keys they share written once: ``{"base", "ops"}``."""
    counts: dict[str, int] = {}
    for op in sequence_ops:
        for key, value in op["conf"]["ipam"].items():
            token = json.dumps([key, value])
            counts[token] = counts.get(token, 0) + 1
    base = dict(json.loads(t) for t, n in counts.items() if n * 2 > len(sequence_ops))
    ops = []
    for op in sequence_ops:
        ipam = op["conf"]["ipam"]
        delta = {k: v for k, v in ipam.items() if base.get(k, object()) != v}
        delta.update({k: None for k in base if k not in ipam})
        entry = {"command": op["command"], "ipam": delta, "answer": op["answer"]}
        if op.get("fixed_is_gateway"):
            entry["fixed_is_gateway"] = True
        ops.append(entry)
    return {"base": base, "ops": ops}


def expand(recorded: JSON) -> list[JSON]:
    """The operations of a :func:`compact` record, each with its whole configuration."""
    ops = []
    for entry in recorded["ops"]:
        ipam = {k: v for k, v in {**recorded["base"], **entry["ipam"]}.items() if v is not None}
        op = {
            "command": entry["command"],
            "conf": {"cniVersion": "0.3.0", "name": "compare", "ipam": ipam},
            "answer": entry["answer"],
        }
        if entry.get("fixed_is_gateway"):
            op["fixed_is_gateway"] = True
        ops.append(op)
    return ops


def supports_ipv6(plugin: ProcessPlugin) -> bool:
    """Whether *plugin* answers an IPv6-only ADD with an IPv6 address."""
    conf = {
        "cniVersion": "0.3.0",
        "name": "probe",
        "ipam": {"type": "ecs-ipam", "id": "probe", "ipv6-subnet": "fd00::/120"},
    }
    with tempfile.TemporaryDirectory(prefix="compare-probe-") as directory:
        answer = plugin.run("ADD", conf, directory)
    return answer.rc == 0 and any(":" in ip.get("address", "") for ip in (answer.output or {}).get("ips", []))


def print_report(tallies: list[Tally], out: TextIO | None = None, show: int = 10) -> int:
    """Print the summary table and the mismatches; return the number of mismatches."""
    out = sys.stdout if out is None else out
    print(f"{'seed':>6} {'kind':<5} {'ops':>6} {'same':>6} {'intentional':>12} {'mismatch':>9}", file=out)
    totals: dict[str, int] = {}
    mismatches = 0
    for t in tallies:
        print(
            f"{t.seed:>6} {t.kind:<5} {t.ops:>6} {t.same:>6} {sum(t.intentional.values()):>12} {len(t.mismatches):>9}",
            file=out,
        )
        for name, count in t.intentional.items():
            totals[name] = totals.get(name, 0) + count
        mismatches += len(t.mismatches)
    print(
        f"{'total':>6} {'':<5} {sum(t.ops for t in tallies):>6} {sum(t.same for t in tallies):>6} "
        f"{sum(totals.values()):>12} {mismatches:>9}",
        file=out,
    )
    for name, count in sorted(totals.items()):
        print(f"  intentional {name}: {count}  ({DIFFERENCES[name][0]})", file=out)
    shown = 0
    for t in tallies:
        for m in t.mismatches:
            if shown < show:
                print(
                    f"MISMATCH seed {t.seed} {t.kind} op {m['index']}: {m['op']['command']} "
                    f"{json.dumps(m['op']['conf']['ipam'])}: {m['detail']}",
                    file=out,
                )
            shown += 1
    if shown > show:
        print(f"... and {shown - show} more mismatches", file=out)
    print(f"{mismatches} unexplained mismatches", file=out)
    return mismatches


def replay(transcript: JSON, candidate: Runner) -> list[Tally]:
    """Run a recorded transcript's sequences against *candidate*; return the tallies."""
    if transcript.get("format") != TRANSCRIPT_FORMAT:
        raise ValueError(f"unknown transcript format {transcript.get('format')!r}")
    return [
        run_sequence(s["seed"], s["kind"], 0, None, candidate, recorded=expand(s))[0] for s in transcript["sequences"]
    ]


def write_transcript(path: str, reference_name: str, sequences: list[JSON]) -> None:
    """Save :func:`compact` sequences (each with its ``seed`` and ``kind``) for ``--replay``."""
    with open(path, "w", encoding="utf-8") as f:
        # One sequence, then one operation per line: small, and readable in a diff.
        f.write(f'{{"format": {TRANSCRIPT_FORMAT}, "reference": {json.dumps(reference_name)}, "sequences": [\n')
        for i, sequence in enumerate(sequences):
            head = {k: v for k, v in sequence.items() if k != "ops"}
            f.write(json.dumps(head)[:-1] + ', "ops": [\n')
            f.write(",\n".join(json.dumps(op, separators=(",", ":")) for op in sequence["ops"]))
            f.write("\n]}" + ("," if i < len(sequences) - 1 else "") + "\n")
        f.write("]}\n")


def _runner(plugin: ProcessPlugin | InProcessPlugin) -> Runner:
    return lambda op, directory: plugin.run(op["command"], op["conf"], directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", help="the other plugin's executable (e.g. a build of the Go original)")
    parser.add_argument(
        "--plugin", help="the plugin under test, as a command line (default: this checkout's ecs-ipam, in-process)"
    )
    parser.add_argument("--seeds", type=int, default=10, help="sequences per kind (default 10)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--ops", type=int, default=1000, help="operations per sequence (default 1000)")
    parser.add_argument(
        "--kinds",
        default="auto",
        help="comma-separated from v4,v6,dual; auto: v4, plus v6 and dual when the reference supports IPv6",
    )
    parser.add_argument("--record", metavar="FILE", help="save the sequences and the reference's answers as JSON")
    parser.add_argument("--replay", metavar="FILE", help="compare against a recorded transcript instead of a reference")
    parser.add_argument("--show", type=int, default=10, help="mismatches to print in full (default 10)")
    parser.add_argument("--list-differences", action="store_true", help="print the intentional differences and exit")
    args = parser.parse_args(argv)

    if args.list_differences:
        for name, (what, test) in DIFFERENCES.items():
            print(f"{name}: {what}\n    pinned by {test}")
        return 0
    candidate = _runner(ProcessPlugin(args.plugin.split()) if args.plugin else InProcessPlugin())
    if args.replay:
        with open(args.replay, encoding="utf-8") as f:
            return 1 if print_report(replay(json.load(f), candidate), show=args.show) else 0
    if not args.reference:
        parser.error("--reference or --replay is required")
    reference_plugin = ProcessPlugin([os.path.abspath(args.reference)])
    if args.kinds == "auto":
        kinds = list(KINDS) if supports_ipv6(reference_plugin) else ["v4"]
    else:
        kinds = [k for k in args.kinds.split(",") if k]
        unknown = set(kinds) - set(KINDS)
        if unknown:
            parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    reference = _runner(reference_plugin)
    tallies, sequences = [], []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for kind in kinds:
            tally, transcript = run_sequence(seed, kind, args.ops, reference, candidate)
            tallies.append(tally)
            sequences.append({"seed": seed, "kind": kind, **compact(transcript)})
    if args.record:
        write_transcript(args.record, os.path.basename(args.reference), sequences)
    return 1 if print_report(tallies, show=args.show) else 0


if __name__ == "__main__":
    sys.exit(main())
