"""The pool bucket's layout (ecs_ipam.pool_store): which buckets are pools, the record codec
and the id index, and that every reader of the database follows the same rule."""

from __future__ import annotations

import msgpack
import pytest

from ecs_ipam import minipack
from ecs_ipam.allocator import Owner, PoolAllocator, overlapping_buckets
from ecs_ipam.config import parse_netconf
from ecs_ipam.ctl.leases import read_holdings
from ecs_ipam.kv.memory import MemoryStore
from ecs_ipam.migrate import conflicts
from ecs_ipam.pool_store import (
    LEGACY_BUCKET,
    address_records,
    decode,
    encode,
    held_in,
    id_index_key,
    is_address_key,
    is_pool_bucket,
    lease_record,
    pool_of_bucket,
    pool_subnet,
)

BUCKETS = [
    ("10.0.0.0/24", True),
    ("10.0.0.0/30", True),
    ("0.0.0.0/0", True),
    ("fd00:ec2::172:0/112", True),
    ("fd00::/126", True),
    ("::/0", True),
    ("10.0.0.0/31", False),  # a prefix no configuration may give
    ("10.0.0.0/32", False),
    ("fd00::/127", False),
    ("10.0.0.5/24", False),  # host bits: that pool's bucket is 10.0.0.0/24
    ("fd00::5/120", False),
    ("FD00::/120", False),  # not the canonical text
    ("fd00:0::/120", False),
    ("010.0.0.0/24", False),
    ("10.0.0.0/024", False),
    ("10.0.0.0/8x", False),
    ("10.0.0.0", False),
    ("IPAM", False),
    (LEGACY_BUCKET, False),
    ("", False),
]


@pytest.mark.parametrize(("name", "is_pool"), BUCKETS)
def test_one_rule_decides_what_is_a_pool_bucket(name, is_pool):
    assert is_pool_bucket(name) is is_pool
    assert (pool_subnet(name) is not None) is is_pool
    assert (pool_of_bucket(name) is not None) is is_pool
    if is_pool:
        assert str(pool_subnet(name)) == name


def pool_of(subnet: str):
    family = "ipv6" if ":" in subnet else "ipv4"
    (pool,) = parse_netconf({"cniVersion": "0.3.0", "ipam": {f"{family}-subnet": subnet}}).pools
    return pool


def test_the_allocator_the_operator_tool_and_the_migration_skip_the_same_buckets():
    """Buckets that look like subnets but are no pool's (another program's) are not read as
    leases by any of them: not overlapping pools, not holdings, not migration clashes."""
    store = MemoryStore()
    lookalikes = [name for name, is_pool in BUCKETS if not is_pool and name.startswith("10.")]
    lookalikes = [name for name in lookalikes if name != "10.0.0.0"]

    def fill(tx):
        for name in lookalikes:
            tx.bucket(name).put("10.0.0.9", lease_record("other", None, None, None))
        PoolAllocator(pool_of("10.0.0.0/24"), tx.bucket("10.0.0.0/24")).reserve_gateway()

    store.transact(fill)
    with store.transaction() as tx:
        names = tx.buckets()
        assert set(lookalikes) < set(names)
        assert overlapping_buckets(tx, pool_of("10.0.0.0/16"), names)[0].subnet == pool_subnet("10.0.0.0/24")
        assert len(overlapping_buckets(tx, pool_of("10.0.0.0/16"), names)) == 1
        holdings = read_holdings(tx)
        assert list(holdings.pools) == ["10.0.0.0/24"]
        assert holdings.leases == []
        assert conflicts(tx.bucket(LEGACY_BUCKET), names, {"10.0.0.9": "go-owner"}) == []
        # ... and the pool next to them allocates as if they were not there.
        allocator = PoolAllocator(
            pool_of("10.0.0.0/24"), tx.bucket("10.0.0.0/24"), overlapping_buckets(tx, pool_of("10.0.0.0/24"), names)
        )
        assert allocator.overlapping == ()


def test_a_real_pool_bucket_does_clash_with_a_migrated_pair():
    store = MemoryStore()
    store.transact(lambda tx: tx.bucket("10.0.0.0/24").put("10.0.0.9", lease_record("task", None, None, None)))
    with store.transaction() as tx:
        assert conflicts(tx.bucket(LEGACY_BUCKET), tx.buckets(), {"10.0.0.9": "go-owner"}) == [
            "10.0.0.9 is held by 'task' in bucket 10.0.0.0/24, not 'go-owner'"
        ]


@pytest.mark.parametrize(
    ("key", "is_address"),
    [
        ("10.0.0.2", True),
        ("fd00::2", True),
        ("lastKnownIP", False),
        ("lastKnownIPv6", False),
        ("id/task", False),
        ("id#" + "0" * 64, False),
    ],
)
def test_key_kinds(key, is_address):
    assert is_address_key(key) is is_address


def test_address_records_are_the_address_keys_decoded():
    store = MemoryStore()
    pool = pool_of("10.0.0.0/24")

    def body(tx):
        allocator = PoolAllocator(pool, tx.bucket(pool.bucket))
        allocator.reserve_gateway()
        allocator.allocate(Owner("a", "c", "eth0"), 5.0)
        tx.bucket(pool.bucket).put("10.0.0.77", b"\xc1")  # unreadable: still an address key

    store.transact(body)
    with store.transaction() as tx:
        bucket = tx.bucket(pool.bucket)
        assert address_records(bucket) == [
            ("10.0.0.1", {"id": "GateWay"}),
            ("10.0.0.2", {"id": "a", "container_id": "c", "ifname": "eth0", "allocated_at": 5.0}),
            ("10.0.0.77", None),
        ]
        assert held_in(bucket, "a") == "10.0.0.2"
        assert bucket.find(id_index_key("a")) is not None


def test_records_are_msgpack_whichever_path_packs_them():
    for value in ({"id": "a", "n": 1.5}, "10.0.0.2", bytearray(b"\x00\x01"), 2**63):
        assert encode(value) == msgpack.packb(value, use_bin_type=True)
    single = msgpack.packb(1.5, use_single_float=True)  # not the fast path's: msgpack reads it
    assert decode(single) == 1.5
    assert minipack.unpackb(single) == 1.5


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x92\x01", b"\xa2\xff\xfe", b"\x81\x01\x02"])
def test_what_msgpack_cannot_read_is_none_for_the_pool_store_and_an_error_for_minipack(raw):
    assert decode(raw) is None
    with pytest.raises(minipack.NotMsgpackError):
        minipack.unpackb(raw)


def test_an_unpackable_value_is_msgpacks_error():
    with pytest.raises(TypeError):
        minipack.packb({1, 2})
