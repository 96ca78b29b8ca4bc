"""The self-contained bundle (tools/build_bundle.py), run where the ECS agent runs it.

The agent's container holds its plugins, ``/tmp``, ``/data`` and ``/log``, and no libc, no
shell and no Python.  Each test here builds such a root: a directory holding only the
unpacked bundle, ``/tmp``, ``/proc`` (mounted), ``/dev/null``, ``/dev/zero`` and
``/dev/urandom`` (bound from the host), ``/data`` and ``/log``, and runs the bundle in it
with ``chroot`` (root only).  The bundle is built once per session.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "tools" / "build_bundle.py"
PLUGINS = "/amazon-ecs-cni-plugins"
# The agent's own bridge plugin where the project's shared files sit beside the clone, else
# Debian's reference bridge (dynamic: the root then gets its loader and libc too).
ECS_BRIDGE = ROOT.parent / "shared" / "go-original" / "ecs-bridge-2026.01"
DEBIAN_BRIDGE = Path("/usr/lib/cni/bridge")
EPOCH = 1700000000
V4 = "169.254.172.0/22"
V6 = "fd00:ec2::172:0/112"
RELEASE_ENV = {"CNI_CONTAINERID": "", "CNI_NETNS": "/host/proc//ns/net", "CNI_IFNAME": "ecs-eth0"}
AGENT_ROOT_ENTRIES = {PLUGINS[1:], "tmp", "proc", "dev", "data", "log"}


def build(out: Path) -> Path:
    done = subprocess.run(
        [sys.executable, str(BUILD), "--out", str(out)],
        env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.splitlines()[-1])


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    """The archive, built once for the session."""
    return build(tmp_path_factory.mktemp("dist"))


def unpack(archive: Path, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(directory)], check=True)


def ipam(owner: str, **extra: object) -> dict:
    return {"type": "ecs-ipam", "id": owner, "ipv4-subnet": V4, "ipv4-routes": [{"dst": "169.254.170.2/32"}], **extra}


def netconf(owner: str, version: str = "0.3.0", **extra: object) -> dict:
    return {"cniVersion": version, "name": "ecs", "type": "ecs-ipam", "ipam": ipam(owner, **extra)}


class EmptyRoot:
    """A root like the agent's container.  Mounts and bind mounts are undone by close()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounts: list[Path] = []
        for name in ("tmp", "proc", "dev", "data", "log"):
            (path / name).mkdir(parents=True)
        self.mount(["-t", "proc", "proc"], path / "proc")
        for device in ("null", "zero", "urandom"):
            self.bind(Path("/dev") / device, path / "dev" / device)

    def mount(self, args: list[str], target: Path) -> None:
        subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
        self.mounts.append(target)

    def bind(self, source: Path, target: Path) -> None:
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        self.mount(["--bind", str(source)], target)

    def close(self) -> None:
        for target in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)
        self.mounts.clear()

    def run(self, program: str, *args: str, env: dict | None = None, stdin: object = "") -> subprocess.CompletedProcess:
        """*program* (a path inside the root) run with nothing but *env*."""
        text = stdin if isinstance(stdin, str) else json.dumps(stdin)
        return subprocess.run(
            [CHROOT, str(self.path), program, *args],
            input=text,
            env=env or {},
            capture_output=True,
            text=True,
            timeout=60,
        )


CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


@pytest.fixture
def empty_root(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chroot and mounts need root")
    root = EmptyRoot(tmp_path / "root")
    try:
        yield root
    finally:
        root.close()


@pytest.fixture
def agent_root(empty_root, bundle) -> EmptyRoot:
    """The agent's root, with the bundle unpacked into its plugin directory."""
    unpack(bundle, empty_root.path / PLUGINS[1:])
    assert set(os.listdir(empty_root.path)) == AGENT_ROOT_ENTRIES
    return empty_root


def plugin_env(command: str, **extra: str) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/t1", "CNI_IFNAME": "eth0"}
    return {**env, "CNI_PATH": PLUGINS, **extra}


def outside(*args: str, env: dict[str, str], stdin: object = "") -> subprocess.CompletedProcess:
    """The same call to the checkout's plugin, on this host."""
    text = stdin if isinstance(stdin, str) else json.dumps(stdin)
    return subprocess.run(
        [sys.executable, "-I", "-c", "import sys; from ecs_ipam.cni import main; sys.exit(main())", *args],
        input=text,
        env={**env, "PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def elf_interpreter(path: Path) -> bool:
    """Whether the ELF file names a dynamic loader (has a PT_INTERP program header)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, f"{path}: not a 64-bit little-endian ELF"
    phoff = int.from_bytes(data[32:40], "little")
    size, count = int.from_bytes(data[54:56], "little"), int.from_bytes(data[56:58], "little")
    return any(int.from_bytes(data[phoff + i * size : phoff + i * size + 4], "little") == 3 for i in range(count))


# --- the archive --------------------------------------------------------------------------


def test_archive_layout_names_and_checksum(bundle):
    assert re.fullmatch(r"ecs-ipam-\d+\.\d+\.\d+-linux-[a-z0-9_]+\.tar\.gz", bundle.name)
    with tarfile.open(bundle) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert {name.split("/")[0] for name in names} == {"ecs-ipam", "ecs-ipamctl", "ecs-ipam.d"}
    assert all((m.uid, m.gid, m.mtime) == (0, 0, EPOCH) for m in members)
    modes = {m.name: m.mode for m in members}
    for name in ("ecs-ipam", "ecs-ipamctl", "ecs-ipam.d/bin/python3"):
        assert modes[name] == 0o755, name
    # Compiled at build time, unchecked-hash: nothing is compiled (or even checked) at a call.
    assert not [n for n in names if n.endswith(".py")]
    pycs = [m for m in members if m.name.endswith(".pyc")]
    assert "ecs-ipam.d/lib/" in pycs[0].name and len(pycs) > 50
    with tarfile.open(bundle) as tar:
        for member in pycs:
            flags = int.from_bytes(tar.extractfile(member).read(8)[4:8], "little")
            assert flags == 0b01, member.name
        licences = tar.extractfile("ecs-ipam.d/LICENSES").read().decode()
    for component in ("ecs-ipam", "CPython", "lmdb", "msgpack", "netaddr", "libc.so.6", "libssl.so.3"):
        assert re.search(rf"^{re.escape(component)}\b.*: ", licences, re.MULTILINE), component
    digest = subprocess.run(["sha256sum", bundle.name], cwd=bundle.parent, capture_output=True, text=True).stdout
    assert (bundle.parent / "SHA256SUMS").read_text() == digest


def test_launchers_are_static_and_need_no_loader(bundle, tmp_path):
    unpack(bundle, tmp_path)
    for name in ("ecs-ipam", "ecs-ipamctl"):
        assert not elf_interpreter(tmp_path / name), f"{name} names a dynamic loader"
    assert elf_interpreter(tmp_path / "ecs-ipam.d" / "bin" / "python3")


def test_a_broken_bundle_is_a_cni_internal_error(bundle, tmp_path):
    """The launcher's own failure: a CNI error object the agent can parse, code 199 (not
    100, "address in use"), with the path in it escaped (a folder may hold quotes)."""
    folder = tmp_path / 'odd "name" \\ here'
    unpack(bundle, folder)
    for loader in (folder / "ecs-ipam.d" / "lib").glob("ld-linux*"):
        loader.unlink()
    done = subprocess.run([str(folder / "ecs-ipam")], input="", capture_output=True, text=True, timeout=30)
    assert done.returncode == 127, done
    error = json.loads(done.stdout)
    assert error["code"] == 199, error
    assert f"cannot run {folder}/ecs-ipam.d/lib/ld-linux" in error["msg"], error
    assert "No such file or directory" in error["msg"], error


def test_the_same_checkout_gives_the_same_bytes(bundle, tmp_path):
    again = build(tmp_path / "again")
    assert again.name == bundle.name
    assert again.read_bytes() == bundle.read_bytes()
    assert (tmp_path / "again" / "SHA256SUMS").read_text() == (bundle.parent / "SHA256SUMS").read_text()


# --- an empty root ------------------------------------------------------------------------


def test_every_command_runs_in_the_agents_empty_root(agent_root, bundle, tmp_path):
    plugin, ctl = f"{PLUGINS}/ecs-ipam", f"{PLUGINS}/ecs-ipamctl"
    listing_before = sorted(str(p.relative_to(agent_root.path)) for p in (agent_root.path / PLUGINS[1:]).rglob("*"))

    for flag in ("--version", "--capabilities"):
        inside = agent_root.run(plugin, flag)
        assert (inside.returncode, inside.stderr) == (0, ""), inside
        # The same answer as the checkout's plugin; "dirty" may differ (a file changed since the build).
        reference = outside(flag, env={}).stdout
        assert inside.stdout.replace('"dirty":true', '"dirty":false') == reference.replace(
            '"dirty":true', '"dirty":false'
        )
    version = agent_root.run(plugin, env=plugin_env("VERSION"))
    assert version.returncode == 0 and "1.1.0" in json.loads(version.stdout)["supportedVersions"]

    dual = netconf("/var/run/netns/t1", **{"ipv6-subnet": V6})
    added = agent_root.run(plugin, env=plugin_env("ADD"), stdin=dual)
    assert (added.returncode, added.stderr) == (0, ""), added.stdout
    assert [ip["address"] for ip in json.loads(added.stdout)["ips"]] == ["169.254.172.2/22", "fd00:ec2::172:2/112"]

    v11 = {**dual, "cniVersion": "1.1.0"}
    checked = agent_root.run(plugin, env=plugin_env("CHECK"), stdin={**v11, "prevResult": json.loads(added.stdout)})
    status = agent_root.run(plugin, env=plugin_env("STATUS"), stdin=v11)
    assert [(checked.returncode, checked.stdout), (status.returncode, status.stdout)] == [(0, ""), (0, "")]

    leases = agent_root.run(ctl, "leases", "--json")
    assert leases.returncode == 0, leases.stderr
    assert {lease["address"] for lease in json.loads(leases.stdout)} == {"169.254.172.2", "fd00:ec2::172:2"}
    usage = agent_root.run(ctl, "usage", "--prometheus")
    assert 'ecs_ipam_pool_allocated_addresses{subnet="169.254.172.0/22"} 1' in usage.stdout

    # GC with no valid attachment releases the lease; a second ADD and the agent's DEL.
    gc = agent_root.run(plugin, env=plugin_env("GC"), stdin={**v11, "cni.dev/valid-attachments": []})
    assert (gc.returncode, gc.stdout) == (0, ""), gc.stdout
    assert json.loads(agent_root.run(ctl, "leases", "--json").stdout) == []
    again = agent_root.run(plugin, env=plugin_env("ADD"), stdin=dual)
    assert again.returncode == 0, again.stdout
    released = agent_root.run(plugin, env={"CNI_COMMAND": "DEL", **RELEASE_ENV}, stdin=dual)
    assert (released.returncode, released.stdout, released.stderr) == (0, "", "")

    assert sorted(os.listdir(agent_root.path / "data")) == ["eni-ipam.db", "eni-ipam.db-lock"]
    log = (agent_root.path / "log" / "ecs-cni-ipam-plugin.log").read_text()
    assert "ADD id='/var/run/netns/t1'" in log and "DEL id='/var/run/netns/t1' released" in log
    # Nothing was unpacked, compiled or cached beside the plugins.
    listing_after = sorted(str(p.relative_to(agent_root.path)) for p in (agent_root.path / PLUGINS[1:]).rglob("*"))
    assert listing_after == listing_before


BAD_INPUTS = [
    ("ADD", "{not json", {}),
    ("ADD", {"cniVersion": "0.3.0", "name": "ecs", "ipam": {"type": "ecs-ipam", "id": "x", "ipv4-subnet": ""}}, {}),
    ("ADD", {**netconf("x"), "cniVersion": "9.9.9"}, {}),
    ("ADD", netconf("x", **{"ipv4-address": "10.9.9.9/24"}), {}),
    ("ADD", netconf("x"), {"CNI_CONTAINERID": ""}),
    ("DEL", {"cniVersion": "0.3.0", "name": "ecs", "ipam": {"type": "ecs-ipam", "ipv4-subnet": V4}}, {}),
    ("CHECK", netconf("x"), {}),
    ("FROB", netconf("x"), {}),
]


@pytest.mark.parametrize(
    ("command", "stdin", "env"), BAD_INPUTS, ids=[f"{c}-{n}" for n, (c, _, _) in enumerate(BAD_INPUTS)]
)
def test_bad_input_gets_the_same_cni_error_inside_as_outside(agent_root, tmp_path, command, stdin, env):
    inside = agent_root.run(f"{PLUGINS}/ecs-ipam", env=plugin_env(command, **env), stdin=stdin)
    here = tmp_path / "outside"
    here.mkdir()
    paths = {"IPAM_DB_PATH": str(here / "eni-ipam.db"), "ECS_CNI_LOG_FILE": str(here / "log")}
    reference = outside(env=plugin_env(command, **env, **paths), stdin=stdin)
    assert reference.returncode != 0 and json.loads(reference.stdout)["code"], reference
    assert (inside.returncode, inside.stdout, inside.stderr) == (reference.returncode, reference.stdout, "")
    if (agent_root.path / "data" / "eni-ipam.db").exists():
        listed = agent_root.run(f"{PLUGINS}/ecs-ipamctl", "leases", "--json")
        assert json.loads(listed.stdout) == []


def test_an_etcd_pool_from_the_empty_root(agent_root, etcd):
    prefix = f"bundle-{secrets.token_hex(4)}"
    env = {"IPAM_DB_PATH": f"{etcd.url}/{prefix}"}
    added = agent_root.run(f"{PLUGINS}/ecs-ipam", env=plugin_env("ADD", **env), stdin=netconf("task-e"))
    assert (added.returncode, added.stderr) == (0, ""), added.stdout
    assert json.loads(added.stdout)["ips"][0]["address"] == "169.254.172.2/22"
    assert any(key.startswith(f"{prefix}/d/") for key in etcd.keys(prefix))
    leases = agent_root.run(f"{PLUGINS}/ecs-ipamctl", "--db", env["IPAM_DB_PATH"], "leases", "--json")
    assert [lease["id"] for lease in json.loads(leases.stdout)] == ["task-e"]
    released = agent_root.run(
        f"{PLUGINS}/ecs-ipam", env={"CNI_COMMAND": "DEL", **RELEASE_ENV, **env}, stdin=netconf("task-e")
    )
    assert (released.returncode, released.stdout) == (0, "")
    assert not os.listdir(agent_root.path / "data")


def test_a_tls_etcd_pool_from_the_empty_root(agent_root, tmp_path):
    """ssl in the bundle: its libssl and libcrypto, and PEM files from a folder in the root."""
    from certs import OPENSSL, CertificateAuthority
    from etcd_server import ETCD, EtcdServer, ServerTLS

    if ETCD is None or OPENSSL is None:
        pytest.skip("needs etcd and openssl (Debian: etcd-server, openssl)")
    ca = CertificateAuthority(tmp_path / "ca")
    server_cert = ca.issue("server", "/CN=etcd test server", sans=["IP:127.0.0.1"], server=True)
    client = ca.issue("client", "/O=ecs-ipam/OU=client")
    pki = agent_root.path / "tmp" / "pki"
    pki.mkdir()
    for source, name in ((ca.cert, "ca.pem"), (client.cert, "client.pem"), (client.key, "client.key")):
        shutil.copy(source, pki / name)
    server = EtcdServer(tmp_path / "etcd", tls=ServerTLS(ca.cert, server_cert.cert, server_cert.key, *client))
    server.start()
    try:
        env = {
            "IPAM_DB_PATH": f"{server.url}/bundle",
            "IPAM_ETCD_CACERT": "/tmp/pki/ca.pem",
            "IPAM_ETCD_CERT": "/tmp/pki/client.pem",
            "IPAM_ETCD_KEY": "/tmp/pki/client.key",
        }
        assert env["IPAM_DB_PATH"].startswith("etcds://")
        added = agent_root.run(f"{PLUGINS}/ecs-ipam", env=plugin_env("ADD", **env), stdin=netconf("task-tls"))
        assert (added.returncode, added.stderr) == (0, ""), added.stdout
        assert json.loads(added.stdout)["ips"][0]["address"] == "169.254.172.2/22"
        untrusted = {**env, "IPAM_ETCD_CACERT": "/tmp/pki/client.pem"}
        refused = agent_root.run(f"{PLUGINS}/ecs-ipam", env=plugin_env("ADD", **untrusted), stdin=netconf("other"))
        assert json.loads(refused.stdout)["code"] == 5 and "not trusted" in refused.stdout, refused.stdout
    finally:
        server.stop()


# --- relocatable --------------------------------------------------------------------------


def test_runs_from_another_directory_and_through_symlinks(empty_root, bundle):
    real = empty_root.path / "ecs" / "cni"
    unpack(bundle, real)
    (empty_root.path / "plugins").symlink_to("ecs/cni")  # a symlinked plugin directory
    (empty_root.path / "bin").mkdir()
    (empty_root.path / "bin" / "ecs-ipam").symlink_to("/ecs/cni/ecs-ipam")  # a symlinked executable
    env = {**plugin_env("ADD"), "CNI_PATH": "/plugins"}
    for n, program in enumerate(("/ecs/cni/ecs-ipam", "/plugins/ecs-ipam", "/bin/ecs-ipam")):
        done = empty_root.run(program, env=env, stdin=netconf(f"task-{n}"))
        assert (done.returncode, done.stderr) == (0, ""), (program, done.stdout)
        assert json.loads(done.stdout)["ips"][0]["address"] == f"169.254.172.{2 + n}/22"
    listed = empty_root.run("/plugins/ecs-ipamctl", "leases", "--json")
    assert sorted(lease["id"] for lease in json.loads(listed.stdout)) == ["task-0", "task-1", "task-2"]


def test_runs_from_a_temporary_host_folder(bundle, tmp_path):
    unpack(bundle, tmp_path / "real")
    (tmp_path / "linked").symlink_to("real")
    env = {
        **plugin_env("ADD"),
        "IPAM_DB_PATH": str(tmp_path / "eni-ipam.db"),
        "ECS_CNI_LOG_FILE": str(tmp_path / "log"),
        # Whatever the host has there must not matter: the bundle is isolated (-I -S).
        "PYTHONPATH": "/nonexistent",
        "PYTHONHOME": "/nonexistent",
        "LD_LIBRARY_PATH": "/nonexistent",
    }
    done = subprocess.run(
        [str(tmp_path / "linked" / "ecs-ipam")],
        input=json.dumps(netconf("host-task")),
        env=env,
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert json.loads(done.stdout)["ips"][0]["address"] == "169.254.172.2/22"


def test_python_starts_isolated_without_site_from_the_bundle_alone(bundle, tmp_path):
    """The process the launcher becomes: the bundled loader, libraries and interpreter,
    with -I -S and the console script's entry point (issue #26 relies on these flags)."""
    unpack(bundle, tmp_path / "plugins")
    private = tmp_path / "plugins" / "ecs-ipam.d"
    env = {**plugin_env("ADD"), "IPAM_DB_PATH": str(tmp_path / "db"), "ECS_CNI_LOG_FILE": str(tmp_path / "log")}
    # The plugin waits for its stdin: time to read what it was started as.
    process = subprocess.Popen([str(tmp_path / "plugins" / "ecs-ipam")], stdin=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            argv = Path(f"/proc/{process.pid}/cmdline").read_text().split("\0")[:-1]
            if "-c" in argv or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        maps = Path(f"/proc/{process.pid}/maps").read_text()
    finally:
        process.communicate(json.dumps(netconf("t")), timeout=60)
    assert argv == [
        f"{private}/lib/{Path(argv[0]).name}",
        "--inhibit-cache",
        "--library-path",
        f"{private}/lib",
        f"{private}/bin/python3",
        "-I",
        "-S",
        "-c",
        "import sys; from ecs_ipam.entry import run; sys.exit(run())",
    ]
    assert argv[0].startswith(f"{private}/lib/ld-")
    libraries = {line.split()[-1] for line in maps.splitlines() if ".so" in line.split()[-1]}
    assert libraries and all(path.startswith(f"{private}/") for path in libraries), libraries
    assert process.returncode == 0


def test_runs_without_proc(empty_root, bundle):
    """No /proc/self/exe: the launcher resolves the path the kernel was given."""
    unpack(bundle, empty_root.path / "ecs" / "cni")
    (empty_root.path / "plugins").symlink_to("ecs/cni")
    empty_root.close()  # unmounts /proc (and the devices)
    assert not os.listdir(empty_root.path / "proc")
    done = empty_root.run("/plugins/ecs-ipam", env=plugin_env("ADD"), stdin=netconf("no-proc"))
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert json.loads(done.stdout)["ips"][0]["address"] == "169.254.172.2/22"


# --- the agent's sequence -----------------------------------------------------------------


def install_bridge(root: EmptyRoot) -> tuple[str, dict]:
    """The bridge plugin in the root's plugin directory: its name and network config."""
    plugins = root.path / PLUGINS[1:]
    if ECS_BRIDGE.is_file():
        shutil.copy2(ECS_BRIDGE, plugins / "ecs-bridge")
        return "ecs-bridge", {"type": "ecs-bridge", "name": "ecs-bridge", "mtu": 1500}
    # Debian's bridge is dynamically linked: give the root the loader and libraries it names.
    for line in subprocess.run(
        ["ldd", str(DEBIAN_BRIDGE)], capture_output=True, text=True, check=True
    ).stdout.splitlines():
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/"):
            target = root.path / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(path), target)
    shutil.copy2(DEBIAN_BRIDGE, plugins / "bridge")
    return "bridge", {"type": "bridge", "name": "ecs-bridge", "ipMasq": False}


def test_the_agents_sequence_bridge_add_then_release_by_id(agent_root):
    if not (ECS_BRIDGE.is_file() or DEBIAN_BRIDGE.is_file()):
        pytest.fail(f"neither {ECS_BRIDGE} nor {DEBIAN_BRIDGE} (Debian: containernetworking-plugins) is there")
    suffix = secrets.token_hex(4)
    namespace, bridge = f"ecsipam-bundle-{suffix}", f"ecsbb{suffix}"
    subprocess.run(["ip", "netns", "add", namespace], check=True, capture_output=True)
    try:
        netns = f"/var/run/netns/{namespace}"
        agent_root.bind(Path(netns), agent_root.path / netns.lstrip("/"))
        name, conf = install_bridge(agent_root)
        owner = netns  # the newer agent path: the task's netns path is the id
        stdin = {"cniVersion": "0.3.0", **conf, "bridge": bridge, "ipam": ipam(owner)}
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "container-id", "CNI_NETNS": netns, "CNI_IFNAME": "eth0"}
        added = agent_root.run(f"{PLUGINS}/{name}", env={**env, "CNI_PATH": PLUGINS}, stdin=stdin)
        assert added.returncode == 0, added.stdout + added.stderr
        assert [ip["address"] for ip in json.loads(added.stdout)["ips"]] == ["169.254.172.2/22"]
        shown = subprocess.run(["ip", "-n", namespace, "-4", "addr", "show", "eth0"], capture_output=True, text=True)
        assert "169.254.172.2/22" in shown.stdout, shown

        # The release: straight to ecs-ipam, by id, no container id, a netns that is gone.
        release = {"cniVersion": "0.3.0", "name": "ecs-ipam", "type": "ecs-ipam", "ipam": ipam(owner)}
        released = agent_root.run(f"{PLUGINS}/ecs-ipam", env={"CNI_COMMAND": "DEL", **RELEASE_ENV}, stdin=release)
        assert (released.returncode, released.stdout, released.stderr) == (0, "", "")
        assert json.loads(agent_root.run(f"{PLUGINS}/ecs-ipamctl", "leases", "--json").stdout) == []
    finally:
        agent_root.close()
        subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)


# --- the README's steps, the Containerfile, the bench row ---------------------------------

TESTED_BLOCK = "<!-- tests/test_bundle.py runs this block as it is written -->\n```sh\n"


def readme_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Installing for the ECS agent")
    return readme[start : readme.index("\n## ", start + 1)]


def readme_blocks() -> list[str]:
    """The shell blocks of "Installing for the ECS agent" that this file runs as written."""
    parts = readme_section().split(TESTED_BLOCK)[1:]
    return [part.split("```\n")[0] for part in parts]


def run_as_written(block: str, var_lib: Path, cwd: Path) -> subprocess.CompletedProcess:
    """*block* run by bash in a mount namespace of its own, where /var/lib is *var_lib*."""
    script = 'mount --bind "$1" /var/lib && cd "$2" && exec bash -euo pipefail -c "$3"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "-", str(var_lib), str(cwd), block],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_readme_host_folder_steps_as_written(empty_root, bundle, tmp_path):
    install, roll_back = readme_blocks()
    # The host folder as "docker cp" leaves it: the agent's plugins, the Go ecs-ipam among them.
    var_lib = tmp_path / "var-lib"
    folder = var_lib / "ecs" / "cni-plugins"
    folder.mkdir(parents=True)
    go_plugin = b"\x7fELF the Go plugin"
    (folder / "ecs-ipam").write_bytes(go_plugin)
    (folder / "ecs-bridge").write_bytes(b"\x7fELF the agent's bridge")
    checkout = tmp_path / "checkout"
    shutil.copytree(bundle.parent, checkout / "dist")

    done = run_as_written(install, var_lib, checkout)
    assert done.returncode == 0, done.stderr
    assert f"{bundle.name}: OK" in done.stdout
    assert (folder / "ecs-ipam.go").read_bytes() == go_plugin
    assert sorted(os.listdir(folder)) == ["ecs-bridge", "ecs-ipam", "ecs-ipam.d", "ecs-ipam.go", "ecs-ipamctl"]

    # The agent's container, with the folder where the README's options put it.
    options = re.search(
        r"--volume=/var/lib/ecs/cni-plugins:(\S+):ro --env=ECS_CNI_PLUGINS_PATH=(\S+)", readme_section()
    )
    assert options, "the README gives no --volume and ECS_CNI_PLUGINS_PATH for the host folder"
    mounted, plugins_path = options.groups()
    assert mounted == plugins_path
    empty_root.bind(folder, empty_root.path / plugins_path.lstrip("/"))
    added = empty_root.run(
        f"{plugins_path}/ecs-ipam", env={**plugin_env("ADD"), "CNI_PATH": plugins_path}, stdin=netconf("t")
    )
    assert (added.returncode, added.stderr) == (0, ""), added.stdout
    listed = empty_root.run(f"{plugins_path}/ecs-ipamctl", "leases", "--json")
    assert [lease["id"] for lease in json.loads(listed.stdout)] == ["t"]

    done = run_as_written(roll_back, var_lib, checkout)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(folder)) == ["ecs-bridge", "ecs-ipam"]
    assert (folder / "ecs-ipam").read_bytes() == go_plugin


def containerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of each line of the Containerfile."""
    lines = [line for line in (ROOT / "Containerfile").read_text().splitlines() if line and not line.startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


def test_the_containerfile_unpacks_the_archive_over_the_agents_plugins(bundle, tmp_path):
    from ecs_ipam import __version__

    steps = containerfile()
    assert [instruction for instruction, _ in steps] == ["ARG", "FROM", "ARG", "ADD"]
    agent_image = steps[0][1].split("=", 1)
    assert agent_image[0] == "AGENT_IMAGE" and steps[1][1] == "${AGENT_IMAGE}"
    assert steps[2][1] == "BUNDLE"  # no default: the archive is named at build time
    source, destination = steps[3][1].split()
    assert (source, destination) == ("${BUNDLE}", f"{PLUGINS}/")
    # The example names the archive build_bundle.py writes by default (dist/, this version).
    example = re.search(r"--build-arg BUNDLE=(\S+)", (ROOT / "Containerfile").read_text()).group(1)
    machine = bundle.name.rsplit("-", 1)[1].split(".")[0]
    assert example.replace("x86_64", machine) == f"dist/{bundle.name}"
    assert f"ecs-ipam-{__version__}-" in example
    assert example in readme_section()
    # What ADD does with a local tar.gz: unpack it into the directory; the launchers land
    # where the agent looks for its IPAM plugin, their private directory beside them.
    image = tmp_path / destination.strip("/")
    unpack(bundle, image)
    for name in ("ecs-ipam", "ecs-ipamctl"):
        assert os.access(image / name, os.X_OK)
    assert (image / "ecs-ipam.d" / "bin" / "python3").is_file()


def test_the_bench_row_for_the_bundle(bundle, tmp_path):
    unpack(bundle, tmp_path / "bundle")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench.py"), "--smoke", "--only", "latency", "--runs", "2"]
        + ["--plugin", str(tmp_path / "bundle" / "ecs-ipam"), "--dir", str(tmp_path / "bench")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"^\s*ecs-ipam ADD\+DEL: {re.escape(str(tmp_path))}/bundle/ecs-ipam\s", done.stdout, re.M)
    assert re.search(r"^\s*latency: --plugin pair / console script pair\s+[0-9.]+\s", done.stdout, re.M), done.stdout
