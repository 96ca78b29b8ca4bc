"""tools/bench_etcd.py (``bench.py --etcd``) runs at smoke sizes and prints every table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from etcd_server import ETCD, NOT_INSTALLED

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(ETCD is None, reason=NOT_INSTALLED)
def test_the_etcd_bench_prints_its_tables():
    done = subprocess.run(
        [sys.executable, "tools/bench.py", "--etcd", "--smoke"], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    assert done.returncode == 0, done.stderr
    for title in ("Txn calls per ADD", "hosts sharing one pool", "first member frozen", "One ADD process, ms"):
        assert title in done.stdout, done.stdout
    assert "Traceback" not in done.stderr
