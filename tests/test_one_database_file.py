"""One database file, one lock: every name that reaches the file serializes on the same lock.

A symlink or a ``..`` path resolves to the real file, whose ``-lock`` file they share; a
hard link or a single file mounted on its own would get a lock file of its own, and is
refused with code 5 naming both places.  Real processes, real files.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecs_ipam import kv
from ecs_ipam.errors import DatabaseAliasError
from ecs_ipam.migrate import migrate_in_place
from plugin import (
    ROOT,
    check_records,
    files_snapshot,
    finish_all,
    netconf,
    plugin_environment,
    read_buckets,
    result_ips,
    run_plugin,
    start_together,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "boltdb"
SUBNET = "10.90.0.0/24"


def names_of_one_file(tmp_path: Path) -> tuple[Path, list[str]]:
    """A database directory, and three names of its file: real, symlink, ``..`` through a symlinked directory."""
    data = tmp_path / "data"
    data.mkdir()
    real = data / "eni-ipam.db"
    (tmp_path / "link.db").symlink_to(real)
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias-dir").symlink_to(data)
    # ../ after a symlinked directory leads to the target's parent, as the kernel resolves it.
    dotdot = tmp_path / "alias-dir" / ".." / "data" / "eni-ipam.db"
    plain_dotdot = tmp_path / "sub" / ".." / "data" / "eni-ipam.db"
    return real, [str(real), str(tmp_path / "link.db"), str(dotdot), str(plain_dotdot)]


def test_a_storm_through_three_names_hands_out_distinct_addresses(tmp_path):
    real, names = names_of_one_file(tmp_path)
    count = 72
    runs = [
        (
            "ADD",
            netconf(f"task-{n:03d}", ipv4_subnet=SUBNET),
            {"IPAM_DB_PATH": names[n % len(names)], "IPAM_DB_CONNECTION_TIMEOUT": "60s", "CNI_CONTAINERID": f"c-{n}"},
        )
        for n in range(count)
    ]
    plugins = start_together(runs, real)
    outcomes = finish_all(plugins, timeout=180)
    handed = {}
    for n, (code, result, stderr) in enumerate(outcomes):
        assert code == 0, (n, result, stderr)
        handed[f"task-{n:03d}"] = result_ips(result)[0]
    assert len(set(handed.values())) == count
    assert check_records(real) == {SUBNET: handed}
    # One lock file, beside the real file; nothing beside the other names.
    assert sorted(os.listdir(real.parent)) == ["eni-ipam.db", "eni-ipam.db-lock"]
    assert sorted(os.listdir(tmp_path)) == ["alias-dir", "data", "link.db", "sub"]


def test_a_relative_path_is_relative_to_the_working_directory(tmp_path):
    (tmp_path / "data").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "ecs_ipam"],
        input=json.dumps(netconf("a", ipv4_subnet=SUBNET)).encode(),
        capture_output=True,
        env=plugin_environment("ADD", "data/eni-ipam.db"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done
    assert sorted(os.listdir(tmp_path / "data")) == ["eni-ipam.db", "eni-ipam.db-lock"]
    assert check_records(tmp_path / "data" / "eni-ipam.db") == {SUBNET: {"a": "10.90.0.2"}}


def test_the_writer_lock_is_the_data_file_itself(tmp_path):
    # As bolt's: a Go plugin that flocks the file, or a writer through any other name,
    # holds back writers through every name.
    real, names = names_of_one_file(tmp_path)
    code, result, _ = run_plugin("ADD", netconf("a", ipv4_subnet=SUBNET), db_path=real)
    assert code == 0, result
    with open(names[1], "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        code, error, _ = run_plugin(
            "ADD",
            netconf("b", ipv4_subnet=SUBNET),
            db_path=names[2],
            env_overrides={"IPAM_DB_CONNECTION_TIMEOUT": "300ms"},
        )
        waited = time.monotonic() - started
    assert (code, error["code"]) == (1, 11)
    assert error["msg"] == f"database {names[2]} is locked by another writer; gave up after 0.3s"
    assert waited >= 0.25


# --- names LMDB cannot share a lock file through -----------------------------------------------


def test_a_hard_link_is_refused_through_either_name(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    real = data / "eni-ipam.db"
    code, result, _ = run_plugin("ADD", netconf("a", ipv4_subnet=SUBNET), db_path=real)
    assert code == 0, result
    other = tmp_path / "elsewhere"
    other.mkdir()
    os.link(real, data / "second.db")
    os.link(real, other / "third.db")
    before = files_snapshot(tmp_path)

    for path, also in [
        (real, f"{data / 'second.db'}"),
        (data / "second.db", f"{real}"),
        (other / "third.db", f"{real}, {data / 'second.db'}"),
    ]:
        for command, conf in [("ADD", netconf("b", ipv4_subnet=SUBNET)), ("DEL", netconf("a", ipv4_subnet=SUBNET))]:
            code, error, stderr = run_plugin(command, conf, db_path=path)
            assert (code, error["code"], stderr) == (1, 5, ""), error
            assert error["msg"].startswith(f"database {path} has 3 hard links (also ")
            if path.parent == data:
                assert f"(also {also});" in error["msg"]
            else:
                assert "(also a name in another directory);" in error["msg"]
            assert "remove the extra links and use one path" in error["msg"]
    assert files_snapshot(tmp_path) == before
    with pytest.raises(DatabaseAliasError):
        kv.open_store(str(other / "third.db"), read_only=True)

    # Once the extra names are gone, the database serves again, with what it held.
    os.unlink(data / "second.db")
    os.unlink(other / "third.db")
    code, result, _ = run_plugin("ADD", netconf("b", ipv4_subnet=SUBNET), db_path=real)
    assert code == 0 and result_ips(result) == ["10.90.0.3"], result
    assert check_records(real) == {SUBNET: {"a": "10.90.0.2", "b": "10.90.0.3"}}


def test_a_hard_link_is_refused_by_the_dump_tool(tmp_path):
    real = tmp_path / "eni-ipam.db"
    code, _, _ = run_plugin("ADD", netconf("a", ipv4_subnet=SUBNET), db_path=real)
    assert code == 0
    os.link(real, tmp_path / "second.db")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "dump_db.py"), "--db", str(real)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert f"database {real} has 2 hard links (also {tmp_path / 'second.db'})" in done.stderr + done.stdout


_MOUNT_SCRIPT = r"""
set -e
mount --make-rprivate /
mount --bind "$REAL" "$TARGET"
"$PYTHON" -m ecs_ipam <"$CONF"
"""


def _unshare_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a private mount namespace (unshare -m)"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "needs unshare and mount (util-linux)"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        return f"unshare -m is not permitted here: {probe.stderr.decode(errors='replace').strip()}"
    return None


@pytest.mark.parametrize(
    "other_filesystem, without_proc",
    [(False, False), (True, False), (True, True)],
    ids=["same-filesystem", "tmpfs", "tmpfs-without-proc"],
)
def test_a_single_file_mounted_on_its_own_is_refused(tmp_path, other_filesystem, without_proc):
    reason = _unshare_available()
    if reason:
        pytest.skip(reason)
    host = tmp_path / "host"
    host.mkdir()
    real = host / "eni-ipam.db"
    code, result, _ = run_plugin("ADD", netconf("a", ipv4_subnet=SUBNET), db_path=real)
    assert code == 0, result
    container = tmp_path / "container"
    container.mkdir()
    target = container / "eni-ipam.db"
    target.touch()
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps(netconf("b", ipv4_subnet=SUBNET)))
    script = _MOUNT_SCRIPT
    if other_filesystem:
        # The container's directory on a file system of its own, as an overlay root is.
        script = script.replace(
            'mount --bind "$REAL"', 'mount -t tmpfs none "$DIR"\ntouch "$TARGET"\nmount --bind "$REAL"'
        )
    if without_proc:
        # An empty /proc: no mount ids, so the device numbers must decide (and the message
        # cannot name the mount's source).
        script = script.replace('"$PYTHON" -m', 'mount -t tmpfs none /proc\n"$PYTHON" -m')
    env = {
        **os.environ,
        "REAL": str(real),
        "TARGET": str(target),
        "DIR": str(container),
        "CONF": str(conf),
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT),
        "IPAM_DB_PATH": str(target),
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c",
        "CNI_NETNS": "/x",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(ROOT),
        "ECS_CNI_LOG_FILE": os.devnull,
    }
    before = files_snapshot(host)
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, env=env, cwd=ROOT)
    error = json.loads(done.stdout)
    assert (done.returncode, error["code"]) == (1, 5), (error, done.stderr)
    if without_proc:
        assert error["msg"].startswith(f"database {target} is a single file mounted from another place;"), error
    else:
        # The message names the mount's source: the host file, as a path within its file system.
        assert error["msg"].startswith(f"database {target} is a single file mounted from /"), error
        assert "host/eni-ipam.db on " in error["msg"]
    assert error["msg"].endswith("mount the directory that holds the database instead")
    assert files_snapshot(host) == before
    assert not (container / "eni-ipam.db-lock").exists()
    assert check_records(real) == {SUBNET: {"a": "10.90.0.2"}}


# --- migration through a symlink ----------------------------------------------------------------


def test_a_bolt_file_reached_through_a_symlink_is_migrated_beside_the_real_file(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    real = data / "eni-ipam.db"
    shutil.copyfile(FIXTURES / "ecs-agent-classic-2019.db", real)
    original = real.read_bytes()
    link = tmp_path / "link.db"
    link.symlink_to(real)

    code, result, stderr = run_plugin("ADD", netconf("new-task", ipv4_subnet="169.254.172.0/22"), db_path=link)
    assert code == 0, (result, stderr)

    assert link.is_symlink() and os.readlink(link) == str(real)
    assert (data / "eni-ipam.db.bolt").read_bytes() == original
    assert sorted(os.listdir(data)) == ["eni-ipam.db", "eni-ipam.db-lock", "eni-ipam.db.bolt"]
    assert sorted(os.listdir(tmp_path)) == ["data", "link.db"]
    # Both names now lead to the one LMDB database, which holds the new lease.
    held = check_records(real)["169.254.172.0/22"]
    assert held["new-task"] == result_ips(result)[0]
    assert read_buckets(link) == read_buckets(real)
    # A second command through the real name finds it migrated: nothing is migrated twice.
    code, again, _ = run_plugin("ADD", netconf("second", ipv4_subnet="169.254.172.0/22"), db_path=real)
    assert code == 0 and result_ips(again) != result_ips(result)
    assert (data / "eni-ipam.db.bolt").read_bytes() == original


def test_a_hard_linked_bolt_file_is_not_migrated(tmp_path):
    real = tmp_path / "eni-ipam.db"
    shutil.copyfile(FIXTURES / "ecs-agent-classic-2019.db", real)
    os.link(real, tmp_path / "operator-copy.db")
    before = files_snapshot(tmp_path)

    with pytest.raises(DatabaseAliasError, match="has 2 hard links"):
        migrate_in_place(str(real), timeout=5)
    code, error, _ = run_plugin("ADD", netconf("a", ipv4_subnet="169.254.172.0/22"), db_path=real)
    assert (code, error["code"]) == (1, 5)
    assert f"also {tmp_path / 'operator-copy.db'}" in error["msg"]
    assert files_snapshot(tmp_path) == before


def test_without_proc_the_device_number_decides(tmp_path, monkeypatch):
    # Where /proc/self/fdinfo says nothing, a file on its directory's device is served.
    from ecs_ipam.kv import dbfile

    monkeypatch.setattr(dbfile, "_mount_id", lambda fd: None)
    path = tmp_path / "eni-ipam.db"
    with kv.open_store(str(path)) as store:
        store.put("k", b"v")
    with kv.open_store(str(path), read_only=True) as store:
        assert store.get("k").value == b"v"
