"""Under CI (``CI=true``), a skipped test is a failed one: a skip there hides a missing
prerequisite (root, ``ip netns``, a tmpfs mount, etcd, openssl, an installed script...)
that ``.ci/run`` is meant to install, and a green run would prove less than it says.

Skips that are no missing prerequisite, where the test does not apply to the case at all,
are allowed by their exact reason below. Expected failures (``xfail``) are not skips.
tests/conftest.py installs the hook; tests/test_ci_skips.py runs it on a probe.
"""

from __future__ import annotations

import os

import pytest

NOT_PREREQUISITES = (
    # The store contract suite's checks of an unsupported call, on a backend that has it.
    "this backend implements watch",
    "this backend implements locks",
)
# Skips whose reason carries what the machine said, allowed by their start. A sandbox whose
# kernel settings keep an OCI runtime from starting any container is no package .ci/run can
# install; podman's own ADD and DEL through ecs-ipam are still run without a container.
NOT_PREREQUISITE_STARTS = ("the OCI runtime cannot start a container here: ",)


def _reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):  # (path, line, "Skipped: reason")
        return report.longrepr[2].removeprefix("Skipped: ")
    return str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _reason(report)
    if reason in NOT_PREREQUISITES or reason.startswith(NOT_PREREQUISITE_STARTS):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, where every prerequisite must be there: {reason}"
