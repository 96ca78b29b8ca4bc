"""tools/bench.py runs end to end on tiny sizes, and says so in its exit code.

Benchmarks are not tests: nothing here checks a timing.  The smoke run keeps the default
test run quick (a few seconds); the full-size run with ``--check`` is opt-in (``-m slow``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "bench.py")


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    return subprocess.run([sys.executable, BENCH, *args], capture_output=True, text=True, env=env, timeout=timeout)


def measured(output: str, target: str) -> float:
    match = re.search(rf"^\s*{re.escape(target)}\s+([0-9.]+)\s", output, re.MULTILINE)
    assert match, f"no row {target!r} in:\n{output}"
    return float(match.group(1))


def test_smoke_run_prints_every_section_and_exits_0(tmp_path):
    done = bench("--smoke", "--runs", "2", "--storm", "4", "--dir", str(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for title in (
        "Phases of one call",
        "Process latency",
        "4-way parallel storm",
        "DEL by id",
        "Filling a pool",
        "Targets of issue #5",
    ):
        assert f"## {title}" in out, out
    assert re.search(r"^\s*ecs-ipam ADD\+DEL: ", out, re.MULTILINE), out
    assert re.search(r"^\s*CLI 10\.20\.0\.0/28\s+13\s", out, re.MULTILINE), out  # the /28 filled: 14 hosts - gateway
    assert measured(out, "storm x4: failed ADDs") == 0
    assert 0 < measured(out, "memory: peak RSS of one ADD (MB)") < 1000
    assert measured(out, "latency: ecs-ipam pair median / floor") > 0


def test_a_failing_plugin_makes_the_run_fail(tmp_path):
    done = bench("--smoke", "--runs", "1", "--plugin", "false", "--dir", str(tmp_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "bench: FAILED: ecs-ipam ADD failed with exit code 1" in done.stderr


@pytest.mark.slow
def test_full_run_meets_the_targets(tmp_path):
    done = bench("--check", "--dir", str(tmp_path), timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
