"""The CI=true hook of tests/ci_skips.py, run on a probe file by a pytest of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))

PROBE = """
import pytest

def test_without_root():
    pytest.skip("needs root")

@pytest.mark.skipif(True, reason="etcd is not installed")
def test_without_etcd():
    pass

def test_that_does_not_apply():
    pytest.skip("this backend implements watch")

@pytest.mark.xfail(strict=True, reason="a known limit")
def test_known_limit():
    assert False

def test_plain():
    pass
"""


def outcomes(tmp_path, ci: str | None) -> dict[str, str]:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = TESTS
    if ci is not None:
        env["CI"] = ci
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "ci_skips", "-p", "no:cacheprovider", "-q", "-rA", "test_probe.py"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    ran = re.findall(r"^(PASSED|FAILED|ERROR|XFAIL) test_probe\.py::(\w+)", done.stdout, re.MULTILINE)
    skipped = re.findall(r"^SKIPPED \[1\] test_probe\.py:\d+: (.*)$", done.stdout, re.MULTILINE)
    found = {name: word for word, name in ran}
    found.update((reason, "SKIPPED") for reason in skipped)
    return found


@pytest.mark.parametrize("ci", [None, "false", "1"])
def test_outside_ci_a_skip_stays_a_skip(tmp_path, ci):
    assert outcomes(tmp_path, ci) == {
        "needs root": "SKIPPED",
        "etcd is not installed": "SKIPPED",
        "this backend implements watch": "SKIPPED",
        "test_known_limit": "XFAIL",
        "test_plain": "PASSED",
    }


def test_under_ci_a_missing_prerequisite_fails(tmp_path):
    assert outcomes(tmp_path, "true") == {
        "test_without_root": "FAILED",
        "test_without_etcd": "ERROR",  # a skipif mark: the setup fails
        "this backend implements watch": "SKIPPED",
        "test_known_limit": "XFAIL",
        "test_plain": "PASSED",
    }
