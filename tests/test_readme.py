"""The README's operator sections, run as written.

A README command is a promise: these tests take the commands of "Upgrading from the Go
plugin", "Inspecting the database", "Finding and fixing a leak", the textfile collector and
"A secure setup, step by step" out of the README's fenced code blocks and run them, and
compare what they print with the output shown beside them.

They run on a host of their own: private mount and PID namespaces (``unshare``) in which
``/var/lib``, ``/var/log`` and ``/run/netns`` are empty tmpfs mounts, so the commands use the
agent's host paths (``/var/lib/ecs/data/eni-ipam.db``, ``/var/log/ecs``) and task names
(``/var/run/netns/task0``) literally, on real files, with real network namespaces, and leave
nothing behind.  Only what stands for a real machine is substituted: etcd's host names, and
folders outside those mounts (``/etc/ecs-ipam``, ``/etc/systemd/system``).

In an expected output, a line ``…`` stands for any number of lines; ages (``3d4h``, ``12s``),
log time stamps and pids are compared by shape, and runs of spaces as one.  To see what the
commands print (to update the README after a change of output), set ``SHOW_README_RUN`` to a
file name: the operator's day writes each command and its output there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FIXTURES = ROOT / "tests" / "fixtures" / "boltdb"
BIN = os.path.dirname(sys.executable)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces and ip netns need root"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is not installed"),
    pytest.mark.skipif(
        shutil.which("ip") is None, reason="iproute2 is not installed (Debian: apt-get install iproute2)"
    ),
]


# --- reading the README ----------------------------------------------------------------------


class Block(NamedTuple):
    info: str  # the fence's language: console, sh, ini, or ""
    body: str


class Step(NamedTuple):
    command: str
    expected: list[str] | None  # None: a command whose output is not shown


def section(title: str) -> str:
    """The text under the heading *title*, up to the next heading of the same or a higher level
    (a ``#`` line inside a code block is no heading)."""
    lines = README.read_text(encoding="utf-8").splitlines(keepends=True)
    start, level, fenced = None, 0, False
    for number, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"(#+) (.*)\n", line)
        if heading and start is None and heading.group(2) == title:
            start, level = number + 1, len(heading.group(1))
        elif heading and start is not None and len(heading.group(1)) <= level:
            return "".join(lines[start:number])
    assert start is not None, f"README has no section {title!r}"
    return "".join(lines[start:])


def blocks(title: str, info: str | None = None) -> list[Block]:
    """The fenced code blocks of a section, in order (fences inside list items too)."""
    found = [
        Block(m.group(2), textwrap.dedent(m.group(3)))
        for m in re.finditer(r"^( *)```(\w*)\n(.*?)^\1```$", section(title), re.M | re.S)
    ]
    return [block for block in found if info is None or block.info == info]


def console_steps(block: Block) -> list[Step]:
    """``$ command`` lines (continued by a trailing backslash) and the output shown under each."""
    steps: list[Step] = []
    lines = block.body.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        assert line.startswith("$ "), f"output without a command: {line!r}"
        command = [line[2:]]
        while command[-1].endswith("\\"):
            index += 1
            command.append(lines[index])
        index += 1
        expected = []
        while index < len(lines) and not lines[index].startswith("$ "):
            expected.append(lines[index])
            index += 1
        steps.append(Step("\n".join(command), expected))
    return steps


# --- comparing ---------------------------------------------------------------------------------

_AGE = re.compile(r"(?<![\w.:/-])[0-9]+[dhms](?:[0-9]+[hms])?(?![\w.:/-])")
_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")


def shape(line: str) -> str:
    line = _STAMP.sub("TIME", line)
    line = re.sub(r"pid=[0-9]+", "pid=PID", line)
    line = _AGE.sub("AGE", line)
    return " ".join(line.split())


def matches(expected: list[str], actual: list[str]) -> bool:
    if not expected:
        return not actual
    if expected[0].strip() == "…":
        return any(matches(expected[1:], actual[skip:]) for skip in range(len(actual) + 1))
    return bool(actual) and shape(expected[0]) == shape(actual[0]) and matches(expected[1:], actual[1:])


def assert_printed(step: Step, output: str) -> None:
    actual = output.splitlines()
    assert step.expected is None or matches(step.expected, actual), (
        f"README: $ {step.command}\n" + "\n".join(step.expected or []) + "\n--- but it printed:\n" + "\n".join(actual)
    )


# --- a host of its own ---------------------------------------------------------------------------

HOST_PREPARATION = """
set -u
for folder in /var/lib /var/log /run/netns; do
    mkdir -p "$folder" && mount -t tmpfs ecs-ipam-readme "$folder" || exit 97
done
mkdir -p /var/lib/ecs/data /var/log/ecs
"""


# A private mount namespace, and a PID namespace whose first process is the script's bash:
# when it ends, however it ends, the kernel ends every process it started (an etcd too).
UNSHARE = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc"]


class Host:
    """Runs a list of shell snippets in one bash, in a private mount namespace, and keeps
    each snippet's output (stdout and stderr, as a terminal shows them) and exit status."""

    def __init__(self, tmp_path: Path, network: bool = False) -> None:
        if os.path.exists("/data") or os.path.exists("/log"):
            pytest.skip("this machine has the agent's container folders /data or /log")
        self.tmp_path = tmp_path
        self.network = network  # a network namespace of its own too (only loopback)
        self.snippets: list[str] = []

    def add(self, snippet: str) -> int:
        self.snippets.append(snippet)
        return len(self.snippets) - 1

    def run(self, environ: dict[str, str] | None = None) -> list[tuple[int, str]]:
        marker = "@@ecs-ipam-readme@@"
        script = [HOST_PREPARATION]
        for snippet in self.snippets:
            script.append(f"{{\n{snippet}\n}} 2>&1\nprintf '\\n{marker} %s\\n' $?")
        path = self.tmp_path / "host.sh"
        path.write_text("\n".join(script))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "IPAM_", "ECS_CNI_", "ETCDCTL_"))}
        env.update(environ or {}, PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", PYTHONPATH=str(ROOT))
        done = subprocess.run(
            [*UNSHARE, *(["--net"] if self.network else []), "bash", str(path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.tmp_path,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        parts = re.split(rf"\n{marker} ([0-9]+)\n", done.stdout)
        assert len(parts) == 2 * len(self.snippets) + 1, done.stdout + done.stderr
        return [(int(parts[2 * i + 1]), parts[2 * i]) for i in range(len(self.snippets))]


def plugin(command: str, task: str, db: str = "/var/lib/ecs/data/eni-ipam.db") -> str:
    """The agent running the plugin in its container (/data and /log are the host's folders)."""
    netconf = {
        "cniVersion": "0.3.0",
        "name": "ecs-bridge",
        "type": "ecs-bridge",
        "ipam": {
            "type": "ecs-ipam",
            "id": f"/var/run/netns/{task}",
            "ipv4-subnet": "169.254.172.0/22",
            "ipv6-subnet": "fd00:ec2::172:0/112",
            "ipv4-routes": [{"dst": "169.254.170.2/32"}],
        },
    }
    return (
        f"printf '%s' {shlex.quote(json.dumps(netconf))} | CNI_COMMAND={command} CNI_CONTAINERID=container-id "
        f"CNI_NETNS=/var/run/netns/{task} CNI_IFNAME=eth0 IPAM_DB_PATH={db} "
        f"ECS_CNI_LOG_FILE=/var/log/ecs/ecs-cni-ipam-plugin.log {shlex.quote(sys.executable)} -m ecs_ipam "
        ">/dev/null || echo failed"
    )


# --- an operator's day: upgrade, watch, fix a leak, roll back ---------------------------------

UPGRADE = "Upgrading from the Go plugin"
LEAK = "Finding and fixing a leak"
# Tasks of the Go plugin's database (tests/fixtures/boltdb) whose network namespace still
# exists when the host is upgraded: task13 and task14 are gone, their release failed.
RUNNING = ["task0", "task1", "task4", "task5", "task6", "task8", "task9", "task10", "task11", "task12"]


def test_an_operators_day_as_the_readme_tells_it(tmp_path):
    host = Host(tmp_path)
    checks: list[tuple[int, Step]] = []

    def readme(steps: list[Step]) -> None:
        checks.extend((host.add(step.command), step) for step in steps)

    host.add(
        f"cp {FIXTURES / 'ecs-agent-dualstack-2026.db'} /var/lib/ecs/data/eni-ipam.db && "
        + " && ".join(f"ip netns add {task}" for task in RUNNING)
    )
    upgrade = blocks(UPGRADE, "console")
    readme(console_steps(upgrade[0]))  # migrate --dry-run, migrate
    readme(console_steps(upgrade[1]))  # usage: the leases wait for their subnet
    # The agent starts task15 and task16; task16 stops, and its release fails.
    host.add(
        f"ip netns add task15 && {plugin('ADD', 'task15')} && ip netns add task16 && {plugin('ADD', 'task16')} "
        "&& ip netns del task16"
    )
    readme(console_steps(upgrade[2]))  # usage: the pool
    for block in blocks(LEAK, "console"):
        readme(console_steps(block))
    readme(console_steps(upgrade[3]))  # leases: what the Go plugin would not know about
    (rollback,) = blocks(UPGRADE, "sh")
    rolled_back = host.add(rollback.body)
    state = host.add("ls /var/lib/ecs/data && head -c 16 /var/lib/ecs/data/eni-ipam.db | od -An -tx1 | tr -d ' \\n'")
    host.add(" && ".join(f"ip netns del {task}" for task in [*RUNNING, "task15"]))

    results = host.run()

    if os.environ.get("SHOW_README_RUN"):
        with open(os.environ["SHOW_README_RUN"], "w") as f:
            for index, step in checks:
                f.write(f"$ {step.command}\n{results[index][1]}")
    for index, step in checks:
        status, output = results[index]
        assert status == 0, f"$ {step.command}\nexited {status}:\n{output}"
        assert_printed(step, output)
    assert results[rolled_back] == (0, "")
    listing = results[state][1].split()
    assert listing[:-1] == ["eni-ipam.db", "eni-ipam.lmdb"], listing
    assert listing[-1] == (FIXTURES / "ecs-agent-dualstack-2026.db").read_bytes()[:16].hex()


def test_inspecting_the_database_shows_what_the_readme_shows(tmp_path):
    host = Host(tmp_path)
    host.add(f"ip netns add task-a && {plugin('ADD', 'task-a')} && ip netns del task-a")
    steps = [step for block in blocks("Inspecting the database", "console") for step in console_steps(block)]
    indexes = [host.add(step.command) for step in steps]
    results = host.run()
    assert results[0] == (0, "")
    for index, step in zip(indexes, steps):
        status, output = results[index]
        assert status == 0, output
        assert_printed(step, output)


# --- the textfile collector -------------------------------------------------------------------

TEXTFILE = "Pool usage in Prometheus (node_exporter's textfile collector)"
INSTALLED = "/usr/local/bin/ecs-ipamctl"  # where the README's cron line and unit find it


def cron_command(line: str) -> str:
    """The command of an /etc/cron.d line: after five schedule fields and the user."""
    fields = line.split(None, 6)
    assert len(fields) == 7 and fields[5] == "root", line
    return fields[6]


def test_the_textfile_recipe_writes_what_usage_prints_and_a_failure_keeps_the_last_file(tmp_path):
    (mkdir,) = blocks(TEXTFILE, "sh")
    (cron,) = [block for block in blocks(TEXTFILE, "") if block.body.startswith("* ")]
    service = next(block for block in blocks(TEXTFILE, "ini") if block.body.startswith("# /etc/systemd/system/"))
    exec_start = re.search(r"^ExecStart=(.*)$", service.body, re.M).group(1)
    command = cron_command(cron.body.strip()).replace(INSTALLED, "ecs-ipamctl")
    assert exec_start.replace(INSTALLED, "ecs-ipamctl") == command, "the timer and cron run different commands"
    prom = "/var/lib/node_exporter/textfile/ecs_ipam.prom"
    assert prom in command

    host = Host(tmp_path)
    host.add(plugin("ADD", "task-a"))
    steps = {
        "mkdir": host.add(mkdir.body),
        "first": host.add(f"{command} && cat {prom}"),
        "usage": host.add("ecs-ipamctl --db /var/lib/ecs/data/eni-ipam.db usage --prometheus"),
        "moved": host.add("mv /var/lib/ecs/data/eni-ipam.db /var/lib/ecs/data/elsewhere.db"),
        "failed": host.add(command),
        "after": host.add(f"ls -A /var/lib/node_exporter/textfile && stat -c %a {prom} && cat {prom}"),
    }
    results = host.run()

    assert results[steps["mkdir"]] == (0, "")
    first, usage = results[steps["first"]], results[steps["usage"]]
    assert first == usage and usage[0] == 0
    assert 'ecs_ipam_pool_allocated_addresses{subnet="169.254.172.0/22"} 1' in usage[1]
    status, output = results[steps["failed"]]
    assert status == 1 and "no database at /var/lib/ecs/data/eni-ipam.db" in output
    assert results[steps["after"]] == (0, f"ecs_ipam.prom\n644\n{usage[1]}")


def unit_files(tmp_path: Path) -> list[Path]:
    """The README's systemd units, each written to the file its first line names (in *tmp_path*)."""
    files = []
    for block in blocks(TEXTFILE, "ini"):
        first, _, body = block.body.partition("\n")
        name = re.fullmatch(r"# /etc/systemd/system/(ecs-ipam-usage\.(?:service|timer))", first)
        assert name, f"a unit block must start with the file it goes to: {first!r}"
        path = tmp_path / name.group(1)
        path.write_text(body.replace(INSTALLED, os.path.join(BIN, "ecs-ipamctl")))
        files.append(path)
    return files


UNIT_KEYS = {
    "Unit": {"Description"},
    "Service": {"Type", "ExecStart"},
    "Timer": {"OnBootSec", "OnUnitActiveSec"},
    "Install": {"WantedBy"},
}


def test_the_systemd_units_are_two_valid_files(tmp_path):
    files = unit_files(tmp_path)
    assert sorted(path.name for path in files) == ["ecs-ipam-usage.service", "ecs-ipam-usage.timer"]
    if shutil.which("systemd-analyze"):
        done = subprocess.run(
            ["systemd-analyze", "verify", *map(str, files)], capture_output=True, text=True, timeout=60
        )
        complaints = [line for line in done.stderr.splitlines() if "ecs-ipam-usage" in line]
        assert (done.returncode, complaints) == (0, []), done.stderr
    # And parsed here, which systemd-analyze does not make fail on an unknown key.
    import configparser

    for path in files:
        unit = configparser.ConfigParser(interpolation=None, strict=True)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read_string(path.read_text())
        for name in unit.sections():
            assert set(unit[name]) <= UNIT_KEYS[name], (path.name, name, set(unit[name]))
    service, timer = sorted(files)
    assert "Type=oneshot" in service.read_text() and "WantedBy=timers.target" in timer.read_text()


# --- the secure etcd pool ---------------------------------------------------------------------

SECURE = "A secure setup, step by step"
PLACEHOLDER_HOSTS = ("etcd-a.example.internal", "etcd-b.example.internal", "etcd-c.example.internal")
PASSWORDS = {"root": "root-secret", "ecs-ipam": "ecs-ipam-secret"}


def commands(block: Block) -> list[str]:
    """The commands of an sh block, a line continued by a trailing backslash joined to the next."""
    joined = re.sub(r"\\\n\s*", " ", block.body)
    # A trailing "  # comment" is the operator's note, not part of the command.
    return [re.sub(r"\s+#\s.*$", "", line) for line in joined.splitlines() if line.strip()]


def answering_prompts(command: str) -> str:
    """*command* with the passwords etcdctl asks for on its stdin, as the operator types them."""
    added = re.fullmatch(r"etcdctl user add (\S+)", command)
    if added:
        password = PASSWORDS[added.group(1)]
        return f"printf '%s\\n%s\\n' {password} {password} | {command}"
    if "--user root" in command:
        return f"printf '%s\\n' {PASSWORDS['root']} | {command}"
    return command


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed (Debian: apt-get install etcd-server)")
@pytest.mark.skipif(
    shutil.which("etcdctl") is None, reason="etcdctl is not installed (Debian: apt-get install etcd-client)"
)
@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl is not installed (Debian: apt-get install openssl)"
)
@pytest.mark.parametrize("reached_by", ["name", "address"])
def test_the_secure_setup_works_as_written(tmp_path, reached_by):
    certificates, start, admin, install, environment = blocks(SECURE, "sh")
    client_files = tmp_path / "etc-ecs-ipam"

    def substituted(text: str) -> str:
        # A network namespace of its own: port 2379 is free, and the one member is on loopback.
        host = "localhost" if reached_by == "name" else "127.0.0.1"
        if reached_by == "address":
            assert "subjectAltName=DNS:%s" in text or "DNS:" not in text
            text = text.replace("subjectAltName=DNS:%s", "subjectAltName=IP:%s")
        for placeholder in PLACEHOLDER_HOSTS:
            text = text.replace(placeholder, host)
        text = text.replace("IPAM_ETCD_PASSWORD=…", f"IPAM_ETCD_PASSWORD={PASSWORDS['ecs-ipam']}")
        return text.replace("/etc/ecs-ipam", str(client_files))

    host = Host(tmp_path, network=True)
    host.add("ip link set lo up && mkdir -m 0700 pki && cd pki")  # the private directory
    made = host.add(substituted(certificates.body))
    (etcd,) = commands(start)
    host.add(f"{substituted(etcd)} > etcd.log 2>&1 &\nETCD_PID=$!")
    host.add(
        "for i in $(seq 150); do "
        f"etcdctl --endpoints {substituted('https://etcd-a.example.internal:2379')} --cacert ca.pem "
        "--cert admin.pem --key admin.key endpoint health >/dev/null 2>&1 && break; sleep 0.2; done; "
        "[ $i -lt 150 ] || { cat etcd.log; false; }"
    )
    steps = [substituted(command) for command in commands(admin)]
    setup = host.add(" && ".join(answering_prompts(command) for command in steps))
    installed = host.add(
        " && ".join(substituted(command) for command in commands(install))
        + f" && stat -c '%a %n' {client_files} {client_files}/*"
    )
    *exports, check = commands(environment)
    checked = host.add(" && ".join(substituted(line) for line in [*exports, check]))
    # One task's address, and the check again: the pool's buckets, reached through TLS and the user.
    exported = " && ".join(substituted(line) for line in exports)
    url = '"$IPAM_DB_PATH"'
    added = host.add(f"{exported} && {plugin('ADD', 'task-a', db=url)}")
    listed = host.add(f"{exported} && {substituted(check)}")
    host.add('kill "$ETCD_PID"; wait "$ETCD_PID"; true')

    results = host.run()

    assert results[made][0] == 0, results[made][1]
    assert results[setup][0] == 0, results[setup][1]
    assert "Authentication Enabled" in results[setup][1]
    assert "[ecs-ipam/, ecs-ipam0) (prefix ecs-ipam/)" in results[setup][1], results[setup][1]
    modes = [f"700 {client_files}"] + [
        f"600 {client_files}/{name}" for name in ("ca.pem", "ecs-ipam.key", "ecs-ipam.pem")
    ]
    assert results[installed] == (0, "\n".join(modes) + "\n")
    assert results[checked] == (0, ""), results[checked][1]
    assert results[added] == (0, "")
    status, output = results[listed]
    assert status == 0, output
    assert output.splitlines() == ["169.254.172.0/22     4 entries", "fd00:ec2::172:0/112  4 entries"]
