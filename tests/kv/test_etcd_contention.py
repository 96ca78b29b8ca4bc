"""What concurrent writers cost each other on etcd: only what they really share.

A hint read (the allocator's last-known pointer) is not compared at commit; a write
transaction reads the latest revision (every read is compared at commit), and one that
wrote nothing checks that what it read at several revisions still holds.
"""

from __future__ import annotations

import uuid

import pytest

from ecs_ipam.kv.etcd import EtcdStore
from etcd_server import ETCD, NOT_INSTALLED

pytestmark = pytest.mark.skipif(ETCD is None, reason=NOT_INSTALLED)


@pytest.fixture
def stores(etcd):
    url = f"{etcd.url}/test-{uuid.uuid4().hex}"
    with EtcdStore(url, "test") as store, EtcdStore(url, "test") as rival:
        yield store, rival


def runs_of(store, body) -> int:
    runs = []

    def counted(tx):
        runs.append(tx.reruns)
        return body(tx)

    store.transact(counted)
    assert runs == list(range(len(runs)))  # each run knows how many came before
    return len(runs)


@pytest.mark.parametrize("hint, runs", [(True, 1), (False, 2)])
def test_a_hint_changed_meanwhile_is_no_conflict(stores, hint, runs):
    store, rival = stores
    store.put("pointer", b"1")

    def body(tx):
        (tx.find_hint if hint else tx.find)("pointer")
        if not tx.reruns:
            rival.put("pointer", b"2")
        tx.put("claim", b"mine")

    assert runs_of(store, body) == runs
    assert store.get("pointer").value == b"2"


def test_a_write_transaction_reads_the_latest_revision(stores):
    store, rival = stores
    store.put("a", b"1")
    store.put("b", b"1")

    def body(tx):
        assert tx.get("a").value == b"1"
        rival.put("b", b"2")  # once: the body below does not conflict
        seen = tx.get("b").value
        tx.put("c", seen)

    assert runs_of(store, body) == 1
    assert store.get("c").value == b"2"


def test_a_write_transaction_that_wrote_nothing_checks_its_reads(stores):
    store, rival = stores
    store.put("a", b"1")
    store.put("b", b"1")
    seen = []

    def body(tx):
        a = tx.get("a").value
        if not tx.reruns:
            rival.transact(lambda other: (other.put("a", b"2"), other.put("b", b"2")))
        seen.append((a, tx.get("b").value))

    assert runs_of(store, body) == 2
    # The first run saw a state that never existed; it was not answered.
    assert seen == [(b"1", b"2"), (b"2", b"2")]
