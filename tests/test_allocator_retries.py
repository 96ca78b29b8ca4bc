"""The walk of a re-run ADD, and an ADD retried for the same attachment.

A store whose transactions can lose races (etcd) re-runs an ADD's body: the re-run starts
its walk a random distance after the pointer, so that the ADDs that raced spread out
instead of racing again for the same next address.  A store whose commit can end with its
outcome unknown answers a retried ADD of the same attachment with the address it holds.
"""

from __future__ import annotations

import pytest

from ecs_ipam.addr import Network
from ecs_ipam.allocator import SPREAD_WINDOW, Owner, PoolAllocator
from ecs_ipam.config import Pool, parse_netconf
from ecs_ipam.errors import IdAlreadyAllocatedError
from ecs_ipam.kv.memory import MemoryStore


def make_pool(subnet: str, address: str | None = None) -> Pool:
    ipam = {"ipv4-subnet": subnet, "id": "unused"}
    if address is not None:
        ipam["ipv4-address"] = address
    (pool,) = parse_netconf({"cniVersion": "0.3.0", "ipam": ipam}).pools
    return pool


def add(store: MemoryStore, pool: Pool, owner: Owner, repeat: bool = False) -> str:
    def body(tx):
        allocator = PoolAllocator(pool, tx.bucket(pool.bucket))
        allocator.reserve_gateway()
        return str(allocator.allocate(owner, 1000.0, repeat))

    return store.transact(body)


def next_free(store: MemoryStore, pool: Pool, reruns: int) -> int:
    def body(tx):
        bucket = tx.bucket(pool.bucket)
        bucket.reruns = reruns
        return PoolAllocator(pool, bucket)._next_free()

    return store.transact(body, write=False)


def test_a_first_run_walks_as_the_original_and_a_rerun_spreads():
    store, pool = MemoryStore(), make_pool("10.0.0.0/22")
    add(store, pool, Owner("a"))  # 10.0.0.2: the walk continues at 10.0.0.3
    after = pool.subnet.first + 3

    assert {next_free(store, pool, 0) for _ in range(50)} == {after}
    starts = [next_free(store, pool, 1) for _ in range(300)]
    assert all(after <= start < after + SPREAD_WINDOW for start in starts)
    assert len(set(starts)) > SPREAD_WINDOW // 2
    # Further re-runs spread wider, still over free addresses only.
    wider = [next_free(store, pool, 3) for _ in range(300)]
    assert max(wider) >= after + SPREAD_WINDOW


def test_a_rerun_in_a_small_pool_still_finds_the_last_free_address():
    store, pool = MemoryStore(), make_pool("10.0.0.0/29")  # .2 to .6 for tasks
    for owner in "abcd":
        add(store, pool, Owner(owner))
    assert {next_free(store, pool, 2) for _ in range(50)} == {pool.subnet.first + 6}


def test_an_add_retried_for_the_same_attachment_answers_its_address():
    store, pool = MemoryStore(), make_pool("10.0.0.0/24")
    owner = Owner("task", "container-1", "eth0")
    first = add(store, pool, owner, repeat=True)

    assert add(store, pool, owner, repeat=True) == first == "10.0.0.2/24"
    for other in (Owner("task", "container-2", "eth0"), Owner("task", "container-1", "eth1")):
        with pytest.raises(IdAlreadyAllocatedError):
            add(store, pool, other, repeat=True)
    # Without repeat (LMDB: every commit's outcome is known), as the original: 101.
    with pytest.raises(IdAlreadyAllocatedError):
        add(store, pool, owner)
    # No container id: nothing tells a retry from another task.
    add(store, pool, Owner("bare"))
    with pytest.raises(IdAlreadyAllocatedError):
        add(store, pool, Owner("bare"), repeat=True)


def test_a_retried_add_of_a_fixed_address_answers_it_with_its_prefix():
    store = MemoryStore()
    owner = Owner("daemon", "container-1", "eth0")
    fixed = make_pool("10.0.0.0/24", address="10.0.0.9/32")
    assert add(store, fixed, owner, repeat=True) == add(store, fixed, owner, repeat=True) == "10.0.0.9/32"
    moved = make_pool("10.0.0.0/24", address="10.0.0.10/32")
    with pytest.raises(IdAlreadyAllocatedError):
        add(store, moved, owner, repeat=True)
    assert isinstance(fixed.fixed_address, Network)
