"""Real runtime clients drive ecs-ipam with ``"owner": "attachment"``: no id anywhere.

* ``cnitool``: a client in the shape of the CNI project's cnitool (``tests/cnitool/``),
  built at test time against the libcni source Debian ships (package
  golang-github-appc-cni-dev) with Debian's Go, once per session, in GOPATH mode (nothing
  is downloaded).  It runs Debian's bridge plugin in real network namespaces, which execs
  ecs-ipam from CNI_PATH.
* podman, with its CNI network backend, running a container from an image imported at
  test time (one static binary, built with the same Go).

Needs root, iproute2, containernetworking-plugins, golang-go and golang-github-appc-cni-dev
(and podman for its test); each is skipped with the reason where a part is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ecs_ipam import kv
from ecs_ipam.pool_store import decode

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = Path("/usr/lib/cni/bridge")
GOPATH = Path("/usr/share/gocode")
LIBCNI = GOPATH / "src/github.com/containernetworking/cni/libcni"
SUBNET = "10.89.0.0/24"
PODMAN_SUBNET = "10.88.0.0/16"  # the README's podman list


def run(*args: str, env: dict | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def go_build(source: Path, output: Path, static: bool = False) -> None:
    """Build *source* with Debian's Go against Debian's Go sources, offline."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(output.parent),
        "GO111MODULE": "off",  # GOPATH mode: imports come from /usr/share/gocode only
        "GOPATH": str(GOPATH),
        "GOCACHE": str(output.parent / "go-cache"),
        "GOFLAGS": "",
        "GOPROXY": "off",
        "CGO_ENABLED": "0" if static else os.environ.get("CGO_ENABLED", "1"),
    }
    run("go", "build", "-o", str(output), str(source), env=env, timeout=600)


@pytest.fixture(scope="session")
def go_tools(tmp_path_factory) -> Path:
    """A directory with ``cnitool`` and ``idle`` (a static container payload), built once."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("go") is None:
        pytest.skip("go is missing (Debian package golang-go)")
    if not LIBCNI.is_dir():
        pytest.skip(f"{LIBCNI} is missing (Debian package golang-github-appc-cni-dev)")
    if not BRIDGE.is_file():
        pytest.skip(f"{BRIDGE} is missing (Debian package containernetworking-plugins)")
    if shutil.which("ip") is None:
        pytest.skip("ip is missing (Debian package iproute2)")
    directory = tmp_path_factory.mktemp("go-tools")
    go_build(ROOT / "tests/cnitool/main.go", directory / "cnitool")
    go_build(ROOT / "tests/cnitool/idle/main.go", directory / "idle", static=True)
    return directory


@pytest.fixture
def cni_bin(tmp_path: Path) -> Path:
    """A CNI_PATH directory with Debian's bridge and this project's ecs-ipam."""
    directory = tmp_path / "cni-bin"
    directory.mkdir()
    for plugin in ("bridge", "portmap", "firewall"):
        (directory / plugin).symlink_to(BRIDGE.parent / plugin)
    wrapper = directory / "ecs-ipam"
    wrapper.write_text(
        f"#!/bin/sh\nPYTHONPATH='{ROOT}'${{PYTHONPATH:+:$PYTHONPATH}} exec '{sys.executable}' -m ecs_ipam \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return directory


def conflist(name: str, bridge: str) -> dict:
    """A runtime's network list: Debian's bridge, with ecs-ipam keyed by the attachment."""
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "ipam": {
                    "type": "ecs-ipam",
                    "owner": "attachment",
                    "ipv4-subnet": SUBNET,
                    "ipv4-routes": [{"dst": "0.0.0.0/0"}],
                },
            }
        ],
    }


EXAMPLES = {
    "podman": ROOT / "examples/podman-ecs-ipam.conflist",
    "containerd": ROOT / "examples/containerd-ecs-ipam.conflist",
}


def example_list(runtime: str, name: str, bridge: str) -> dict:
    """The README's network list for *runtime*, under a network and bridge name of this run."""
    if shutil.which("iptables") is None:
        pytest.skip("iptables is missing (Debian package iptables): the README's lists masquerade")
    document = json.loads(EXAMPLES[runtime].read_text())
    document["name"] = name
    document["plugins"][0]["bridge"] = bridge
    return document


def test_the_readme_shows_the_example_lists():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Other container runtimes", 1)[1].split("\n## ", 1)[0]
    shown = [json.loads(block.split("```", 1)[0]) for block in section.split("```json\n")[1:]]
    assert shown == [json.loads(EXAMPLES["podman"].read_text()), json.loads(EXAMPLES["containerd"].read_text())]


def container_id(netns: str) -> str:
    """The container id cnitool derives from a netns path."""
    return "cnitool-" + hashlib.sha512(netns.encode()).hexdigest()[:20]


def leases(db: Path | str, subnet: str = SUBNET) -> dict[str, str]:
    """address -> container id of every lease of *subnet*; and no index entry left over.

    :param db: an LMDB file, or an etcd URL.
    """
    if isinstance(db, Path) and not db.exists():
        return {}
    with kv.open_store(str(db), subnet, read_only=True) as store:
        pairs = {pair.key: decode(pair.value) for pair in store.list()}
    held = {
        key: value["container_id"]
        for key, value in pairs.items()
        if isinstance(value, dict) and value.get("owner") == "attachment"
    }
    index = {key for key in pairs if key.startswith(("at/", "at#"))}
    assert len(index) == len(held), pairs
    return held


class Runtime:
    """cnitool, its network list, CNI_PATH and a database, plus the namespaces it made."""

    def __init__(self, tools: Path, cni_bin: Path, tmp_path: Path) -> None:
        suffix = secrets.token_hex(4)
        self.name, self.bridge = f"ecsipam-{suffix}", f"ecsbr{suffix}"
        self.cnitool = tools / "cnitool"
        self.db: Path | str = tmp_path / "ipam.db"  # or an etcd URL
        confdir = tmp_path / "net.d"
        confdir.mkdir()
        (confdir / f"{self.name}.conflist").write_text(json.dumps(conflist(self.name, self.bridge)))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NETCONFPATH": str(confdir),
            "CNI_PATH": str(cni_bin),
            "CNI_CACHE_DIR": str(tmp_path / "cni-cache"),
            "IPAM_DB_PATH": str(self.db),
            "ECS_CNI_LOG_FILE": str(tmp_path / "ecs-ipam.log"),
        }
        self.namespaces: list[str] = []

    def namespace(self) -> str:
        name = f"{self.name}-{len(self.namespaces)}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        return f"/var/run/netns/{name}"

    def __call__(self, command: str, *args: str, network: str | None = None) -> subprocess.CompletedProcess:
        return run(str(self.cnitool), command, network or self.name, *args, env=self.env)

    def add_list(self, document: dict) -> None:
        (Path(self.env["NETCONFPATH"]) / f"{document['name']}.conflist").write_text(json.dumps(document))

    def address_in(self, netns: str) -> str:
        shown = run("ip", "-n", Path(netns).name, "-j", "-4", "addr", "show", "eth0").stdout
        return "{local}/{prefixlen}".format(**json.loads(shown)[0]["addr_info"][0])

    def close(self) -> None:
        for name in self.namespaces:
            run("ip", "netns", "del", name, check=False)
        run("ip", "link", "del", self.bridge, check=False)


@pytest.fixture
def runtime(go_tools, cni_bin, tmp_path):
    runtime = Runtime(go_tools, cni_bin, tmp_path)
    try:
        yield runtime
    finally:
        runtime.close()


def test_cnitool_add_check_del_for_three_namespaces_leaves_nothing(runtime):
    netns = [runtime.namespace() for _ in range(3)]
    results = [json.loads(runtime("add", path).stdout) for path in netns]
    assert [result["ips"][0]["address"] for result in results] == ["10.89.0.2/24", "10.89.0.3/24", "10.89.0.4/24"]
    # The bridge configured each namespace from ecs-ipam's answer.
    assert [runtime.address_in(path) for path in netns] == ["10.89.0.2/24", "10.89.0.3/24", "10.89.0.4/24"]
    assert leases(runtime.db) == {
        "10.89.0.2": container_id(netns[0]),
        "10.89.0.3": container_id(netns[1]),
        "10.89.0.4": container_id(netns[2]),
    }
    for path in netns:
        runtime("check", path)  # libcni sends the cached result as prevResult
    for path in netns:
        runtime("del", path)
    assert leases(runtime.db) == {}
    for path in netns:
        runtime("del", path)  # a repeated DEL succeeds
    # The runtime's next containers get addresses again, after the released ones.
    again = json.loads(runtime("add", runtime.namespace()).stdout)
    assert again["ips"][0]["address"] == "10.89.0.5/24"


def test_cnitool_on_etcd(runtime, etcd):
    """The same runtime with its pool on etcd: add, check and del of three namespaces."""
    runtime.db = f"{etcd.url}/cnitool-{secrets.token_hex(4)}"
    runtime.env["IPAM_DB_PATH"] = runtime.db
    netns = [runtime.namespace() for _ in range(3)]
    for path in netns:
        runtime("add", path)
    assert sorted(leases(runtime.db).values()) == sorted(container_id(path) for path in netns)
    for path in netns:
        runtime("check", path)
        runtime("del", path)
    assert leases(runtime.db) == {}


def test_cnitool_with_the_readme_containerd_list_dual_stack(runtime):
    """containerd runs plugins through libcni as cnitool does: the README's list, dual stack,
    with portmap after the bridge."""
    suffix = secrets.token_hex(4)
    network, bridge = f"ecsipam-k8s-{suffix}", f"ecsk8s{suffix}"
    runtime.add_list(example_list("containerd", network, bridge))
    netns = [runtime.namespace() for _ in range(2)]
    for path in netns:
        run("ip", "netns", "exec", Path(path).name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", check=False)
    try:
        results = [json.loads(runtime("add", path, network=network).stdout) for path in netns]
        assert [[ip["address"] for ip in result["ips"]] for result in results] == [
            ["10.22.0.2/16", "fd00:22::2/64"],
            ["10.22.0.3/16", "fd00:22::3/64"],
        ]
        for path in netns:
            runtime("check", path, network=network)
            runtime("del", path, network=network)
        with kv.open_store(str(runtime.db), "10.22.0.0/16", read_only=True) as store:
            assert [pair.key for pair in store.list()] == ["10.22.0.1", "lastKnownIP"]
        with kv.open_store(str(runtime.db), "fd00:22::/64", read_only=True) as store:
            assert [pair.key for pair in store.list()] == ["fd00:22::1", "lastKnownIPv6"]
    finally:
        run("ip", "link", "del", bridge, check=False)


def test_cnitool_del_after_the_namespace_is_gone(runtime):
    netns = runtime.namespace()
    runtime("add", netns)
    run("ip", "netns", "del", Path(netns).name)
    runtime("del", netns)
    assert leases(runtime.db) == {}


def test_cnitool_gc_keeps_exactly_the_valid_attachments(runtime):
    netns = [runtime.namespace() for _ in range(3)]
    for path in netns:
        runtime("add", path)
    keep = [netns[0], netns[2]]
    runtime("gc", *(f"{container_id(path)}/eth0" for path in keep))
    assert leases(runtime.db) == {"10.89.0.2": container_id(netns[0]), "10.89.0.4": container_id(netns[2])}
    runtime("check", netns[0])
    assert run(str(runtime.cnitool), "check", runtime.name, netns[1], env=runtime.env, check=False).returncode == 1
    for path in netns:
        runtime("del", path)
    assert leases(runtime.db) == {}


# --- podman -------------------------------------------------------------------------------------


class Podman:
    """podman with its CNI backend, all its state in a temporary directory: storage (vfs),
    network lists, CNI_PATH (Debian's bridge and ecs-ipam) and an image of one static binary."""

    def __init__(self, tools: Path, cni_bin: Path, tmp_path: Path) -> None:
        suffix = secrets.token_hex(4)
        self.network, self.bridge, self.image = (
            f"ecsipam-{suffix}",
            f"ecspod{suffix}",
            f"localhost/ecsipam-idle:{suffix}",
        )
        self.db, self.log = tmp_path / "ipam.db", tmp_path / "ecs-ipam.log"
        # podman refuses a run directory longer than 50 characters.
        self.runroot = Path(tempfile.mkdtemp(prefix="ecsipam-"))
        netdir = tmp_path / "net.d"
        netdir.mkdir()
        (netdir / f"{self.network}.conflist").write_text(json.dumps(example_list("podman", self.network, self.bridge)))
        conf = tmp_path / "containers.conf"
        conf.write_text(
            "[network]\n"
            'network_backend = "cni"\n'
            f"cni_plugin_dirs = [{json.dumps(str(cni_bin))}]\n"
            f"network_config_dir = {json.dumps(str(netdir))}\n"
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
        )
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp_path),
            "CONTAINERS_CONF": str(conf),
            "IPAM_DB_PATH": str(self.db),
            "ECS_CNI_LOG_FILE": str(self.log),
        }
        self.base = [
            "podman",
            "--root",
            str(tmp_path / "root"),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "vfs",
            "--network-config-dir",
            str(netdir),
        ]
        backend = self("info", "--format", "{{.Host.NetworkBackend}}", check=False)
        if backend.returncode or backend.stdout.strip() != "cni":
            shutil.rmtree(self.runroot, ignore_errors=True)
            pytest.skip(f"podman has no CNI network backend here: {backend.stdout.strip()} {backend.stderr.strip()}")
        image = tmp_path / "image"
        image.mkdir()
        shutil.copy(tools / "idle", image / "idle")
        run("tar", "-C", str(image), "-cf", str(tmp_path / "image.tar"), "idle")
        self("import", "--change", 'CMD ["/idle"]', str(tmp_path / "image.tar"), self.image)

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(*self.base, *args, env=self.env, check=check)

    def run_container(self, *args: str) -> subprocess.CompletedProcess:
        return self("run", "--network", self.network, *args, check=False)

    def calls(self) -> list[tuple[str, str, str]]:
        """(command, attachment, addresses) of every ADD and DEL ecs-ipam logged."""
        found = []
        for line in self.log.read_text().splitlines() if self.log.exists() else []:
            words = line.split()
            if len(words) > 4 and words[3] in ("ADD", "DEL") and words[4].startswith("attachment="):
                found.append((words[3], words[4].removeprefix("attachment="), " ".join(words[5:])))
        return found

    def close(self) -> None:
        self("rm", "--all", "--force", "--time", "0", check=False)
        run("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.runroot, ignore_errors=True)


@pytest.fixture
def podman(go_tools, cni_bin, tmp_path):
    if shutil.which("podman") is None:
        pytest.skip("podman is missing (Debian package podman)")
    if shutil.which("iptables") is None:
        pytest.skip("iptables is missing (Debian package iptables): the README's podman list masquerades")
    podman = Podman(go_tools, cni_bin, tmp_path)  # may skip: then nothing is left to close
    try:
        yield podman
    finally:
        podman.close()


def test_podman_sets_up_and_tears_down_through_ecs_ipam(podman):
    """podman's own CNI calls: an ADD per container keyed by its attachment, and the DEL of
    its teardown releases it, whether or not the OCI runtime can start the container here."""
    for _ in range(3):
        podman.run_container("--rm", podman.image)
    calls = podman.calls()
    adds = [(who, what) for command, who, what in calls if command == "ADD"]
    assert [what for _, what in adds] == ["-> 10.88.0.2/16", "-> 10.88.0.3/16", "-> 10.88.0.4/16"], calls
    for who, what in adds:
        container, ifname = who.split("/")
        assert len(container.strip("'")) == 64 and ifname == "'eth0'"  # podman's container id
        # podman may tear a network down more than once: one DEL releases, any other finds nothing.
        deletes = [what for command, whom, what in calls if command == "DEL" and whom == who]
        address = what.split()[1].split("/")[0]
        assert deletes.count(f"released ['{address}']") == 1, calls
        assert set(deletes) <= {f"released ['{address}']", "released nothing"}, calls
    assert leases(podman.db, PODMAN_SUBNET) == {}


def test_podman_container_holds_its_address_until_removed(podman):
    started = [podman.run_container("--detach", podman.image, "/idle", "wait") for _ in range(2)]
    if any(done.returncode for done in started):
        reason = next(done.stderr.strip() for done in started if done.returncode)
        pytest.skip(f"the OCI runtime cannot start a container here: {reason}")
    ids = [done.stdout.strip() for done in started]
    assert sorted(leases(podman.db, PODMAN_SUBNET).values()) == sorted(ids)
    shown = podman("logs", ids[1]).stdout.split()
    assert shown == ["10.88.0.3/16"]
    podman("rm", "--force", "--time", "0", ids[0])
    assert list(leases(podman.db, PODMAN_SUBNET).values()) == [ids[1]]
    podman("rm", "--force", "--time", "0", ids[1])
    assert leases(podman.db, PODMAN_SUBNET) == {}
