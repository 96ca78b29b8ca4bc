"""GC on a store that limits the writes of one transaction (etcd's --max-txn-ops):
released in batches, each a complete transaction, until nothing stale is left.

The etcd run with 500 stale reservations is in tests/kv/test_etcd_store.py; these use
the in-memory store with a small limit, and count what each transaction writes.
"""

from __future__ import annotations

import pytest

from ecs_ipam import ipam as core
from ecs_ipam.allocator import Owner
from ecs_ipam.config import parse_netconf
from ecs_ipam.kv.memory import MemoryStore

DUAL = {"ipv4-subnet": "10.0.0.0/24", "ipv6-subnet": "fd00::/64"}


class CountingStore(MemoryStore):
    """A memory store with a write limit, recording the writes of each committed transaction."""

    def __init__(self, max_writes: int | None) -> None:
        super().__init__("IPAM")
        self.max_writes = max_writes
        self.commits: list[int] = []

    def transact(self, body, write=True):
        counted: set[tuple[str, str]] = set()

        def counting(tx):
            counted.clear()
            return body(_Counter(tx, counted))

        result = super().transact(counting, write)
        if write and counted:
            self.commits.append(len(counted))
        return result


class _Counter:
    """A Tx wrapper that records the keys written and deleted, in every bucket (a key
    written twice is one write in etcd's transaction too)."""

    def __init__(self, tx, counted):
        self._tx, self._counted = tx, counted

    def __getattr__(self, name):
        return getattr(self._tx, name)

    def bucket(self, name):
        return _Counter(self._tx.bucket(name), self._counted)

    def put(self, key, value):
        self._counted.add((self._tx.bucket_name, key))
        return self._tx.put(key, value)

    def delete(self, key):
        self._counted.add((self._tx.bucket_name, key))
        return self._tx.delete(key)


def gc_conf(valid=()):
    return parse_netconf(
        {
            "cniVersion": "1.1.0",
            "name": "n",
            "ipam": {"type": "ecs-ipam", **DUAL},
            "cni.dev/valid-attachments": [{"containerID": c, "ifname": "eth0"} for c in valid],
        }
    )


def fill(store, count: int) -> None:
    for n in range(count):
        conf = parse_netconf({"cniVersion": "1.1.0", "name": "n", "ipam": {"type": "ecs-ipam", "id": f"t{n}", **DUAL}})
        core.add(store, conf, Owner(f"t{n}", f"c{n}", "eth0"), 0.0)


@pytest.mark.parametrize("max_writes, stale, expected_commits", [(10, 25, 13), (10, 8, 4), (7, 1, 1)])
def test_gc_releases_everything_in_transactions_within_the_limit(max_writes, stale, expected_commits):
    store = CountingStore(None)
    fill(store, stale + 2)
    store.max_writes, store.commits = max_writes, []

    released = core.gc(store, gc_conf(valid=[f"c{stale}", f"c{stale + 1}"]))

    assert len(released) == 2 * stale and len(set(released)) == 2 * stale
    assert max(store.commits) <= max_writes
    assert len(store.commits) == expected_commits
    assert core.gc(store, gc_conf(valid=[f"c{stale}", f"c{stale + 1}"])) == []
    assert {pair.key for pair in store.bucket("10.0.0.0/24").list("id/")} == {f"id/t{stale}", f"id/t{stale + 1}"}


def test_gc_without_a_limit_is_one_transaction():
    store = CountingStore(None)
    fill(store, 30)
    store.commits = []

    assert len(core.gc(store, gc_conf())) == 60
    assert len(store.commits) == 1
