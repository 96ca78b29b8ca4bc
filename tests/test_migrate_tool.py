"""tools/migrate_boltdb.py: what it prints, what it writes, and when it refuses."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from ecs_ipam import kv
from ecs_ipam.errors import NotADatabaseError
from ecs_ipam.pool_store import LEGACY_BUCKET, decode

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "boltdb"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


migrate_tool = load_tool("migrate_boltdb")


def entries(name: str) -> dict[str, str]:
    return json.loads((FIXTURES / f"{name}.expected.json").read_text())["entries"]


def bolt_copy(tmp_path: Path, name: str = "ecs-agent-classic-2019") -> Path:
    path = tmp_path / "eni-ipam.db"
    shutil.copyfile(FIXTURES / f"{name}.db", path)
    return path


def pair_lines(pairs: dict[str, str]) -> list[str]:
    return [f"key={key} - value={value}" for key, value in pairs.items()]


def legacy_pairs(path: Path) -> dict[str, str]:
    with kv.open_store(str(path), LEGACY_BUCKET, read_only=True) as store:
        return {pair.key: decode(pair.value) for pair in store.list()}


def test_in_place_prints_every_pair_moved_and_keeps_the_bolt_file(tmp_path, capsys):
    name = "ecs-agent-dualstack-2026"
    path = bolt_copy(tmp_path, name)

    assert migrate_tool.main([str(path)]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out == pair_lines(entries(name)) + [
        f"migrated 28 pairs into {path} (bucket go-plugin-IPAM); the bolt file is kept as {path}.bolt"
    ]
    assert legacy_pairs(path) == entries(name)
    assert Path(f"{path}.bolt").read_bytes() == (FIXTURES / f"{name}.db").read_bytes()


def test_source_defaults_to_ipam_db_path(tmp_path, capsys, monkeypatch):
    path = bolt_copy(tmp_path)
    monkeypatch.setenv("IPAM_DB_PATH", str(path))

    assert migrate_tool.main([]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"migrated 32 pairs into {path} ")


def test_an_already_migrated_database_is_left_alone(tmp_path, capsys):
    path = bolt_copy(tmp_path)
    migrate_tool.main([str(path)])
    capsys.readouterr()
    database = path.read_bytes()

    assert migrate_tool.main([str(path)]) == 0

    assert capsys.readouterr().out == f"{path} is already an ecs-ipam LMDB database; nothing to migrate\n"
    assert path.read_bytes() == database


def test_dry_run_prints_what_would_move(tmp_path, capsys):
    path = bolt_copy(tmp_path)

    assert migrate_tool.main([str(path), "--dry-run"]) == 0

    assert capsys.readouterr().out.splitlines() == pair_lines(entries("ecs-agent-classic-2019")) + [
        f"would migrate 32 pairs from {path} into {path} in place "
        f"(the bolt file kept as {path}.bolt); nothing was written"
    ]
    assert os.listdir(tmp_path) == ["eni-ipam.db"]


def test_into_another_database_leaves_the_source_as_it_is(tmp_path, capsys):
    path = bolt_copy(tmp_path)
    dest = tmp_path / "new.db"

    assert migrate_tool.main([str(path), "--db", str(dest)]) == 0
    assert migrate_tool.main([str(path), "--db", str(dest)]) == 0  # the same pairs again: harmless

    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"migrated 32 pairs from {path} into {dest} (bucket go-plugin-IPAM); {path} is unchanged"
    assert path.read_bytes() == (FIXTURES / "ecs-agent-classic-2019.db").read_bytes()
    assert legacy_pairs(dest) == entries("ecs-agent-classic-2019")


def test_a_destination_that_disagrees_gets_nothing(tmp_path, capsys):
    path = bolt_copy(tmp_path)
    dest = tmp_path / "new.db"
    with kv.open_store(str(dest), LEGACY_BUCKET) as store:
        store.put("169.254.172.5", msgpack.packb("somebody-else"))

    assert migrate_tool.main([str(path), "--db", str(dest)]) == 1

    err = capsys.readouterr().err
    assert "169.254.172.5='somebody-else' in bucket go-plugin-IPAM, not '0a:00:00:00:00:03'" in err
    assert "nothing was copied" in err
    assert legacy_pairs(dest) == {"169.254.172.5": "somebody-else"}


def test_a_destination_whose_subnet_holds_an_address_otherwise_gets_nothing(tmp_path, capsys):
    path = bolt_copy(tmp_path, "ecs-agent-dualstack-2026")
    dest = tmp_path / "new.db"
    with kv.open_store(str(dest), "fd00:ec2::172:0/112") as store:
        store.put("fd00:ec2::172:a", msgpack.packb({"id": "live-task"}))
        store.put("fd00:ec2::172:1", msgpack.packb({"id": "GateWayV6"}))

    assert migrate_tool.main([str(path), "--db", str(dest), "--dry-run"]) == 1
    assert migrate_tool.main([str(path), "--db", str(dest)]) == 1

    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert all(
        "fd00:ec2::172:a is held by 'live-task' in bucket fd00:ec2::172:0/112, not '/var/run/netns/task8'" in line
        for line in err
    )
    assert "fd00:ec2::172:1 " not in err[1]  # both say gateway: no conflict
    assert LEGACY_BUCKET not in kv.list_buckets(str(dest))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no file at {path}"),
        (b"\0" * 8192, "{path} is not a bolt database of the Go plugin"),
    ],
)
def test_refuses_what_is_no_bolt_file(tmp_path, capsys, content, message):
    path = tmp_path / "eni-ipam.db"
    if content is not None:
        path.write_bytes(content)

    assert migrate_tool.main([str(path)]) == 1

    assert capsys.readouterr().err == f"migrate_boltdb.py: error: {message.format(path=path)}\n"
    assert os.listdir(tmp_path) == ([] if content is None else ["eni-ipam.db"])


def test_waits_for_the_go_plugin_then_gives_up(tmp_path, capsys):
    path = bolt_copy(tmp_path)
    with open(path, "rb") as go_plugin:
        fcntl.flock(go_plugin, fcntl.LOCK_EX)
        assert migrate_tool.main([str(path), "--timeout", "0.2"]) == 1

    assert re.fullmatch(
        rf"migrate_boltdb.py: error: bolt database {re.escape(str(path))} is locked by another process "
        r"\(a running Go plugin, or a migration in progress\); gave up after 0.2s\n",
        capsys.readouterr().err,
    )
    assert os.listdir(tmp_path) == ["eni-ipam.db"]


def test_the_messages_about_bolt_files_name_the_installed_command(tmp_path, capsys):
    path = bolt_copy(tmp_path)
    command = "ecs-ipamctl migrate"

    assert load_tool("dump_db").main(["--db", str(path)]) == 1
    assert command in capsys.readouterr().err
    assert ctl(["--db", str(path), "usage"])[0] == 1

    with pytest.raises(NotADatabaseError) as raised:
        kv.open_store(str(path))
    assert command in str(raised.value)


# --- the installed command, the log line, the backups ---------------------------------------


def ctl(argv: list[str], environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``ecs-ipamctl ARGV`` as a process, as an installed user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IPAM_", "ECS_CNI_"))}
    env.update(environ or {}, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "ecs_ipam.ctl", *argv], capture_output=True, text=True, env=env, timeout=60
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("argv", [["migrate", "{path}"], ["--db", "{path}", "migrate"], ["migrate", "--db", "{path}"]])
def test_ecs_ipamctl_migrate_does_what_the_tool_does(tmp_path, argv):
    name = "ecs-agent-dualstack-2026"
    path = bolt_copy(tmp_path, name)
    log = tmp_path / "plugin.log"

    code, out, err = ctl([arg.format(path=path) for arg in argv], {"ECS_CNI_LOG_FILE": str(log)})

    summary = f"migrated 28 pairs into {path} (bucket go-plugin-IPAM); the bolt file is kept as {path}.bolt"
    assert (code, err) == (0, "")
    assert out.splitlines() == pair_lines(entries(name)) + [summary]
    assert legacy_pairs(path) == entries(name)
    assert log.read_text().splitlines()[-1].endswith(f"[info] pid={log_pid(log)} ecs-ipamctl {summary}")


def log_pid(log: Path) -> str:
    return re.search(r"pid=(\d+)", log.read_text().splitlines()[-1]).group(1)


def test_ecs_ipamctl_migrate_into_another_database_and_dry_run(tmp_path):
    path = bolt_copy(tmp_path)
    dest = tmp_path / "new.db"

    code, out, _ = ctl(["migrate", str(path), "--db", str(dest), "--dry-run"])
    assert (code, out.splitlines()[-1]) == (0, f"would migrate 32 pairs from {path} into {dest}; nothing was written")
    assert not dest.exists()
    code, out, _ = ctl(["--db", str(dest), "migrate", str(path)])
    assert (code, out.splitlines()[-1]) == (
        0,
        f"migrated 32 pairs from {path} into {dest} (bucket go-plugin-IPAM); {path} is unchanged",
    )
    assert legacy_pairs(dest) == entries("ecs-agent-classic-2019")


def test_the_tool_is_a_script_of_the_checkout(tmp_path):
    path = bolt_copy(tmp_path)
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "migrate_boltdb.py"), str(path), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[-1].startswith("would migrate 32 pairs from ")


def test_a_second_migration_keeps_the_first_backup(tmp_path, capsys):
    # A rollback puts the bolt file back; upgrading again must not lose the older backup.
    path = bolt_copy(tmp_path)
    assert migrate_tool.main([str(path)]) == 0
    first_backup = Path(f"{path}.bolt").read_bytes()
    shutil.copyfile(FIXTURES / "ecs-agent-dualstack-2026.db", path)
    capsys.readouterr()

    assert migrate_tool.main([str(path), "--dry-run"]) == 0
    assert (
        capsys.readouterr().out.splitlines()[-1].endswith(f"(the bolt file kept as {path}.bolt.1); nothing was written")
    )
    assert migrate_tool.main([str(path)]) == 0

    assert capsys.readouterr().out.splitlines()[-1] == (
        f"migrated 28 pairs into {path} (bucket go-plugin-IPAM); the bolt file is kept as {path}.bolt.1"
    )
    assert Path(f"{path}.bolt").read_bytes() == first_backup
    assert Path(f"{path}.bolt.1").read_bytes() == (FIXTURES / "ecs-agent-dualstack-2026.db").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["eni-ipam.db", "eni-ipam.db.bolt", "eni-ipam.db.bolt.1"]


def test_the_plugin_logs_its_migration_and_the_backup(tmp_path):
    path = bolt_copy(tmp_path)
    Path(f"{path}.bolt").write_bytes(b"an older backup")
    log = tmp_path / "plugin.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "IPAM_", "ECS_CNI_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        CNI_COMMAND="DEL",
        IPAM_DB_PATH=str(path),
        ECS_CNI_LOG_FILE=str(log),
    )
    netconf = {"cniVersion": "0.3.0", "name": "n", "ipam": {"id": "nobody", "ipv4-subnet": "169.254.172.0/22"}}
    done = subprocess.run(
        [sys.executable, "-m", "ecs_ipam"], input=json.dumps(netconf), capture_output=True, text=True, env=env
    )
    assert (done.returncode, done.stdout) == (0, "")

    lines = [line.split(" ", 3)[3] for line in log.read_text().splitlines()]
    assert lines[0] == (
        f"migrated 32 pairs into {path} (bucket go-plugin-IPAM); the bolt file is kept as {path}.bolt.1"
    )
    assert Path(f"{path}.bolt").read_bytes() == b"an older backup"
    assert Path(f"{path}.bolt.1").read_bytes() == (FIXTURES / "ecs-agent-classic-2019.db").read_bytes()
