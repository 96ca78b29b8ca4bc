"""The bucket of pairs migrated from the Go plugin goes once its last pair moved out.

Moving the last pair (adoption by the first command of its subnet, a DEL by id, or
``ecs-ipamctl release``) drops ``go-plugin-IPAM`` in the same transaction, so that
``ecs-ipamctl dump`` stops listing an empty bucket.  On LMDB with a real migration of a
Go fixture database and a second process holding the store open across the drop; on
LMDB and on a real etcd through the embedded API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ecs_ipam import IPAM, kv
from ecs_ipam.pool_store import LEGACY_BUCKET, encode
from plugin import netconf, run_plugin

ROOT = Path(__file__).resolve().parents[1]
BOLT_FIXTURE = ROOT / "tests" / "fixtures" / "boltdb" / "ecs-agent-classic-2019.db"
SUBNET = "169.254.172.0/22"


def dump(db: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IPAM_", "ECS_CNI_"))}
    done = subprocess.run(
        [sys.executable, "-m", "ecs_ipam.ctl", "--db", db, "dump"],
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(ROOT)),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


HOLDER = """
    import sys
    from ecs_ipam.kv.lmdb_store import LMDBStore

    # An embedded user holding the store (and its handle of the legacy bucket) open.
    with LMDBStore(sys.argv[1], "go-plugin-IPAM") as store:
        for command in sys.stdin:
            print(len(store.list()), store.buckets(), flush=True)
"""


def test_a_migrated_database_loses_the_legacy_bucket_with_its_last_pair(tmp_path):
    db = tmp_path / "eni-ipam.db"
    shutil.copyfile(BOLT_FIXTURE, db)
    # A STATUS of another subnet migrates the file and adopts nothing: the pairs wait.
    assert run_plugin("STATUS", netconf(None, cni_version="1.1.0", ipv4_subnet="10.9.0.0/24"), db_path=db)[0] == 0
    assert f"{LEGACY_BUCKET}  " in dump(str(db))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        holder.stdin.write("\n")
        holder.stdin.flush()
        waiting, names = holder.stdout.readline().split(" ", 1)
        assert int(waiting) > 0 and LEGACY_BUCKET in names

        code, _, stderr = run_plugin("ADD", netconf("task-new", ipv4_subnet=SUBNET), db_path=db)
        assert code == 0, stderr

        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == f"0 [{SUBNET!r}]"
    finally:
        holder.communicate(timeout=30)
    assert holder.returncode == 0
    listing = dump(str(db))
    assert LEGACY_BUCKET not in listing
    assert SUBNET in listing
    assert kv.list_buckets(str(db)) == [SUBNET]


def waiting_pairs(db: str, pairs: dict[str, str]) -> None:
    with kv.open_store(db, LEGACY_BUCKET) as store, store.transaction() as tx:
        for key, owner in pairs.items():
            tx.put(key, encode(owner))


def conf(owner_id: str, subnet: str) -> dict:
    return {"cniVersion": "0.3.0", "name": "task", "ipam": {"type": "ecs-ipam", "id": owner_id, "ipv4-subnet": subnet}}


def test_adoption_drops_the_bucket_only_with_its_last_pair(lmdb_or_etcd):
    db = lmdb_or_etcd
    entries = json.loads(BOLT_FIXTURE.with_suffix(".expected.json").read_text())["entries"]
    waiting_pairs(db, {**entries, "10.9.0.5": "elsewhere"})
    with IPAM(db) as ipam:
        ipam.add(conf("task-new", SUBNET), "c", "eth0")
        assert LEGACY_BUCKET in kv.list_buckets(db)
        ipam.add(conf("task-there", "10.9.0.0/24"), "c2", "eth0")
    assert LEGACY_BUCKET not in kv.list_buckets(db)
    assert LEGACY_BUCKET not in dump(db)


def test_a_del_releasing_the_last_waiting_pair_drops_the_bucket(lmdb_or_etcd):
    db = lmdb_or_etcd
    waiting_pairs(db, {"10.9.0.5": "task", "6fd00:9::5": "task", "10.9.0.6": "other"})
    with IPAM(db) as ipam:
        assert ipam.delete(conf("task", "10.0.0.0/24")) == ["10.9.0.5", "fd00:9::5"]
        assert LEGACY_BUCKET in kv.list_buckets(db)
        assert ipam.delete(conf("other", "10.0.0.0/24")) == ["10.9.0.6"]
    assert LEGACY_BUCKET not in kv.list_buckets(db)
    assert LEGACY_BUCKET not in dump(db)


def test_a_del_that_leaves_a_gateway_waiting_keeps_the_bucket(lmdb_or_etcd):
    db = lmdb_or_etcd
    waiting_pairs(db, {"10.9.0.5": "task", "10.9.0.1": "GateWay"})
    with IPAM(db) as ipam:
        assert ipam.delete(conf("task", "10.0.0.0/24")) == ["10.9.0.5"]
    assert LEGACY_BUCKET in kv.list_buckets(db)


@pytest.mark.parametrize("selection", [["--id", "task"], ["--address", "10.9.0.5"]])
def test_ecs_ipamctl_release_of_the_last_waiting_pair_drops_the_bucket(lmdb_or_etcd, selection):
    db = lmdb_or_etcd
    waiting_pairs(db, {"10.9.0.5": "task"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IPAM_", "ECS_CNI_"))}
    done = subprocess.run(
        [sys.executable, "-m", "ecs_ipam.ctl", "--db", db, "release", *selection],
        capture_output=True,
        text=True,
        env=dict(env, PYTHONPATH=str(ROOT)),
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert LEGACY_BUCKET not in kv.list_buckets(db)
