"""tools/migrate_boltdb.py: what it prints, what it writes, and when it refuses."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shutil
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

    assert capsys.readouterr().err == f"migrate_boltdb.py: {message.format(path=path)}\n"
    assert os.listdir(tmp_path) == ([] if content is None else ["eni-ipam.db"])


def test_waits_for_the_go_plugin_then_gives_up(tmp_path, capsys):
    path = bolt_copy(tmp_path)
    with open(path, "rb") as go_plugin:
        fcntl.flock(go_plugin, fcntl.LOCK_EX)
        assert migrate_tool.main([str(path), "--timeout", "0.2"]) == 1

    assert re.fullmatch(
        rf"migrate_boltdb.py: bolt database {re.escape(str(path))} is locked by another process "
        r"\(a running Go plugin, or a migration in progress\); gave up after 0.2s\n",
        capsys.readouterr().err,
    )
    assert os.listdir(tmp_path) == ["eni-ipam.db"]


def test_the_messages_about_bolt_files_name_this_tool(tmp_path, capsys):
    path = bolt_copy(tmp_path)
    tool = "tools/migrate_boltdb.py"
    assert (ROOT / tool).is_file()

    assert load_tool("dump_db").main(["--db", str(path)]) == 1
    assert tool in capsys.readouterr().err

    with pytest.raises(NotADatabaseError) as raised:
        kv.open_store(str(path))
    assert tool in str(raised.value)
