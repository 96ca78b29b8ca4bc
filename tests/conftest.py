"""Fixtures that several test files share."""

from __future__ import annotations

import uuid

import pytest

from ci_skips import pytest_runtest_makereport  # noqa: F401 - the hook: no skip under CI=true
from etcd_server import running_etcd


@pytest.fixture(scope="session")
def etcd(tmp_path_factory):
    """One real etcd for the whole run; each test works under a prefix of its own."""
    with running_etcd(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture(params=["lmdb", "etcd"])
def lmdb_or_etcd(request, tmp_path):
    """A database on LMDB (a path), or under a fresh prefix of the session's etcd (a URL)."""
    if request.param == "lmdb":
        return str(tmp_path / "ipam.db")
    return f"{request.getfixturevalue('etcd').url}/{request.node.module.__name__.rpartition('.')[2]}-{uuid.uuid4().hex}"
