"""tools/dump_db.py against real LMDB files laid out as the plugin writes them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from ecs_ipam import kv
from ecs_ipam.config import DEFAULT_DB_PATH

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "dump_db.py"
BOLT_FIXTURE = ROOT / "tests" / "fixtures" / "boltdb" / "ecs-agent-classic-2019.db"

_spec = importlib.util.spec_from_file_location("dump_db", TOOL)
dump_db = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dump_db)

V4 = "169.254.172.0/22"
V6 = "fd00:ec2::172:0/112"


def record(owner: str, container_id: str | None = None, ifname: str | None = None) -> bytes:
    return msgpack.packb({"id": owner, "container_id": container_id, "ifname": ifname, "allocated_at": 1767225600.5})


def text(value: str) -> bytes:
    return msgpack.packb(value)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """A database holding two tasks, one of them dual stack, as the plugin records them."""
    path = str(tmp_path / "eni-ipam.db")
    with kv.open_store(path, V4) as store, store.transaction() as tx:
        tx.put("169.254.172.1", record("GateWay"))
        tx.put("169.254.172.2", record("task-a", "c-a", "eth0"))
        tx.put("169.254.172.3", record("task-b", "c-b", "eth0"))
        tx.put("lastKnownIP", text("169.254.172.3"))
        tx.put("id/task-a", text("169.254.172.2"))
        tx.put("id/task-b", text("169.254.172.3"))
        v6 = tx.bucket(V6)
        v6.put("fd00:ec2::172:1", record("GateWayV6"))
        v6.put("fd00:ec2::172:2", record("task-a", "c-a", "eth0"))
        v6.put("lastKnownIPv6", text("fd00:ec2::172:2"))
        v6.put("id/task-a", text("fd00:ec2::172:2"))
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = dump_db.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_lists_buckets_with_entry_counts(capsys, db_path):
    assert run(capsys, "--db", db_path) == (
        0,
        "169.254.172.0/22     6 entries\nfd00:ec2::172:0/112  4 entries\n",
        "",
    )


def test_bucket_lines_show_owner_ids_and_addresses(capsys, db_path):
    code, out, err = run(capsys, "--db", db_path, "--bucket", V4)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "key=169.254.172.1 - value=GateWay",
        "key=169.254.172.2 - value=task-a",
        "key=169.254.172.3 - value=task-b",
        "key=id/task-a - value=169.254.172.2",
        "key=id/task-b - value=169.254.172.3",
        "key=lastKnownIP - value=169.254.172.3",
    ]


def test_v6_bucket_lines(capsys, db_path):
    code, out, _ = run(capsys, "--db", db_path, "--bucket", V6)
    assert code == 0
    assert out.splitlines() == [
        "key=fd00:ec2::172:1 - value=GateWayV6",
        "key=fd00:ec2::172:2 - value=task-a",
        "key=id/task-a - value=fd00:ec2::172:2",
        "key=lastKnownIPv6 - value=fd00:ec2::172:2",
    ]


def test_json_bucket_holds_decoded_records_and_indexes(capsys, db_path):
    code, out, err = run(capsys, "--db", db_path, "--bucket", V6, "--json")
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert set(document) == {"bucket", "entries"}
    assert document["bucket"] == V6
    with kv.open_store(db_path, V6, read_only=True) as store:
        stored = {pair.key: pair.last_index for pair in store.list()}
    assert [e["key"] for e in document["entries"]] == sorted(stored)
    for entry in document["entries"]:
        assert set(entry) == {"key", "value", "last_index"}
        assert entry["last_index"] == stored[entry["key"]]
    by_key = {e["key"]: e["value"] for e in document["entries"]}
    assert by_key["fd00:ec2::172:2"] == {
        "id": "task-a",
        "container_id": "c-a",
        "ifname": "eth0",
        "allocated_at": 1767225600.5,
    }
    assert by_key["fd00:ec2::172:1"]["id"] == "GateWayV6"
    assert by_key["lastKnownIPv6"] == "fd00:ec2::172:2"


def test_json_bucket_list(capsys, db_path):
    code, out, _ = run(capsys, "--db", db_path, "--json")
    assert code == 0
    assert json.loads(out) == {"buckets": [{"name": V4, "entries": 6}, {"name": V6, "entries": 4}]}


@pytest.fixture
def odd_db(tmp_path: Path) -> str:
    """A bucket some other agent filled with values that are not address records."""
    path = str(tmp_path / "odd.db")
    with kv.open_store(path, "agent") as store, store.transaction() as tx:
        tx.put("binary", msgpack.packb(b"\x00\x01", use_bin_type=True))
        tx.put("map", msgpack.packb({"owner": "x"}))
        tx.put("number", msgpack.packb(7))
        tx.put("one", b"")  # not msgpack: an empty value
        tx.put("raw", b"\xc1\xff")  # not msgpack: 0xc1 is never used
        tx.put("text", msgpack.packb("plain"))
    return path


def test_values_that_are_not_records_print_as_text_or_repr(capsys, odd_db):
    code, out, _ = run(capsys, "--db", odd_db, "--bucket", "agent")
    assert code == 0
    assert out.splitlines() == [
        "key=binary - value=b'\\x00\\x01'",
        "key=map - value={'owner': 'x'}",
        "key=number - value=7",
        "key=one - value=b''",
        "key=raw - value=b'\\xc1\\xff'",
        "key=text - value=plain",
    ]


def test_json_gives_undecodable_values_as_flagged_base64(capsys, odd_db):
    code, out, _ = run(capsys, "--db", odd_db, "--bucket", "agent", "--json")
    assert code == 0
    entries = {e["key"]: e for e in json.loads(out)["entries"]}
    assert entries["raw"]["value"] == "wf8="
    assert entries["raw"]["value_encoding"] == "base64"
    assert entries["one"]["value"] == ""
    assert entries["one"]["value_encoding"] == "base64"
    assert entries["binary"]["value"] == "AAE="
    assert entries["number"]["value"] == 7
    assert entries["map"]["value"] == {"owner": "x"}
    assert "value_encoding" not in entries["text"]


def test_database_without_buckets_lists_nothing(capsys, tmp_path):
    path = str(tmp_path / "empty.db")
    kv.open_store(path).close()
    assert run(capsys, "--db", path) == (0, "", "")
    assert run(capsys, "--db", path, "--json") == (0, '{\n  "buckets": []\n}\n', "")


def test_missing_database_is_an_error_and_creates_nothing(capsys, tmp_path):
    path = tmp_path / "absent.db"
    for argv in (["--db", str(path)], ["--db", str(path), "--bucket", V4, "--json"]):
        assert run(capsys, *argv) == (1, "", f"dump_db.py: error: no database at {path}\n")
    assert list(tmp_path.iterdir()) == []


def test_missing_bucket_is_an_error(capsys, db_path):
    assert run(capsys, "--db", db_path, "--bucket", "10.0.0.0/24") == (
        1,
        "",
        f"dump_db.py: error: no bucket '10.0.0.0/24' in {db_path} (buckets: {V4}, {V6})\n",
    )


def test_bolt_file_of_the_go_plugin_points_to_the_migration(capsys, tmp_path):
    path = tmp_path / "eni-ipam.db"
    shutil.copyfile(BOLT_FIXTURE, path)
    before = path.read_bytes()
    for argv in (["--db", str(path)], ["--db", str(path), "--bucket", "IPAM"]):
        code, out, err = run(capsys, *argv)
        assert (code, out) == (1, "")
        assert err == (
            f"dump_db.py: error: {path} is a bolt database of the Go ecs-ipam plugin, not LMDB; "
            "convert it with ecs-ipamctl migrate\n"
        )
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eni-ipam.db"]


def test_directory_is_an_error(capsys, tmp_path):
    assert run(capsys, "--db", str(tmp_path)) == (
        1,
        "",
        f"dump_db.py: error: database path {tmp_path} is a directory\n",
    )


def test_bad_arguments_exit_2(capsys):
    assert dump_db.main(["--bucket"]) == 2
    assert "--bucket: expected one argument" in capsys.readouterr().err


def test_database_path_defaults_to_ipam_db_path(capsys, monkeypatch, db_path):
    monkeypatch.setenv("IPAM_DB_PATH", db_path)
    code, out, _ = run(capsys, "--bucket", V6)
    assert code == 0
    assert out.splitlines()[0] == "key=fd00:ec2::172:1 - value=GateWayV6"


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_without_ipam_db_path_the_plugin_default_is_read(capsys, monkeypatch, tmp_path, blank):
    # A blank path means the default, as for the plugin (one settings reader).  The default
    # and its host side are moved into tmp_path: this machine may hold a real database there.
    from ecs_ipam import config

    assert DEFAULT_DB_PATH == "/data/eni-ipam.db"
    default, host = str(tmp_path / "data" / "eni-ipam.db"), str(tmp_path / "host" / "eni-ipam.db")
    monkeypatch.setattr(config, "DEFAULT_DB_PATH", default)
    monkeypatch.setattr(config, "HOST_FOLDERS", ((str(tmp_path / "data"), str(tmp_path / "host")),))
    if blank is None:
        monkeypatch.delenv("IPAM_DB_PATH", raising=False)
    else:
        monkeypatch.setenv("IPAM_DB_PATH", blank)
    code, _, err = run(capsys)
    assert (code, err) == (
        1,
        f"dump_db.py: error: no database at {default}, nor at {host} (its host side); "
        "name the database with --db or IPAM_DB_PATH\n",
    )


HOLD_WRITE = """
import sys
import msgpack
from ecs_ipam import kv

with kv.open_store(sys.argv[1], sys.argv[2]) as store, store.transaction() as tx:
    tx.put("169.254.172.9", msgpack.packb({"id": "task-new"}))
    tx.put("lastKnownIP", msgpack.packb("169.254.172.9"))
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_lists_while_another_process_holds_a_write_transaction(capsys, db_path, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE, db_path, V4],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert writer.stdout.readline() == "holding\n"
        committed = [
            "key=169.254.172.1 - value=GateWay",
            "key=169.254.172.2 - value=task-a",
            "key=169.254.172.3 - value=task-b",
            "key=id/task-a - value=169.254.172.2",
            "key=id/task-b - value=169.254.172.3",
            "key=lastKnownIP - value=169.254.172.3",
        ]
        # As a script, from another directory: it must neither wait for the writer nor
        # see its uncommitted pairs.
        listing = subprocess.run(
            [sys.executable, str(TOOL), "--db", db_path, "--bucket", V4],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        assert (listing.returncode, listing.stderr) == (0, "")
        assert listing.stdout.splitlines() == committed
        code, out, _ = run(capsys, "--db", db_path, "--bucket", V4)
        assert (code, out.splitlines()) == (0, committed)
    finally:
        writer.communicate("\n", timeout=30)
    assert writer.returncode == 0
    code, out, _ = run(capsys, "--db", db_path, "--bucket", V4)
    assert code == 0
    assert "key=169.254.172.9 - value=task-new" in out.splitlines()
    assert "key=lastKnownIP - value=169.254.172.9" in out.splitlines()


@pytest.mark.parametrize("argv", [["--bucket", V4], [], ["--bucket", V6, "--json"]])
def test_ecs_ipamctl_dump_prints_what_the_tool_prints(capsys, db_path, argv):
    tool = run(capsys, "--db", db_path, *argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IPAM_", "ECS_CNI_"))}
    for command in (["--db", db_path, "dump", *argv], ["dump", "--db", db_path, *argv]):
        done = subprocess.run(
            [sys.executable, "-m", "ecs_ipam.ctl", *command],
            capture_output=True,
            text=True,
            env=dict(env, PYTHONPATH=str(ROOT)),
            timeout=60,
        )
        assert (done.returncode, done.stdout, done.stderr) == tool
    assert tool[0] == 0 and tool[1]
