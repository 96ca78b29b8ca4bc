"""A reachable, readable prefix that nothing was written under is an empty pool: the
operator tools list no bucket and no lease, and exit 0 (the README's last check of the
secure setup runs on such a prefix)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from etcd_server import ETCD, NOT_INSTALLED, free_port

pytestmark = pytest.mark.skipif(ETCD is None, reason=NOT_INSTALLED)
ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CNI_", "IPAM_", "ECS_CNI_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["ECS_CNI_LOG_FILE"] = os.devnull
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


def test_the_tools_show_an_empty_prefix_as_an_empty_pool(etcd):
    url = f"{etcd.url}/fresh-{uuid.uuid4().hex}"
    assert run("tools/dump_db.py", "--db", url) == (0, "", "")
    code, out, err = run("tools/dump_db.py", "--db", url, "--json")
    assert (code, json.loads(out), err) == (0, {"buckets": []}, "")
    code, out, err = run("-m", "ecs_ipam.ctl", "--db", url, "leases", "--json")
    assert (code, json.loads(out), err) == (0, [], "")
    code, out, err = run("-m", "ecs_ipam.ctl", "--db", url, "usage")
    assert (code, err) == (0, "")
    # Nothing was written by looking.
    assert etcd.keys(url.rpartition("/")[2]) == []


def test_an_unreachable_prefix_is_still_an_error():
    url = f"etcd://127.0.0.1:{free_port()}/fresh"
    code, out, err = run("tools/dump_db.py", "--db", url)
    assert (code, out) == (1, "")
    assert "unavailable" in err
