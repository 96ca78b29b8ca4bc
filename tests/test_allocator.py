"""The allocation walk of one pool, table driven, against the in-memory store."""

from __future__ import annotations

import hashlib

import msgpack
import netaddr
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecs_ipam.allocator import Owner, PoolAllocator
from ecs_ipam.config import Pool, parse_netconf
from ecs_ipam.errors import (
    ADDRESS_IN_USE,
    ID_ALREADY_ALLOCATED,
    POOL_EXHAUSTED,
    AddressInUseError,
    IdAlreadyAllocatedError,
    PoolExhaustedError,
)
from ecs_ipam.kv.base import MAX_KEY_BYTES
from ecs_ipam.kv.memory import MemoryStore
from ecs_ipam.pool_store import address_text, id_index_key


def make_pool(subnet: str, gateway: str | None = None, address: str | None = None) -> Pool:
    family = "ipv6" if ":" in subnet else "ipv4"
    ipam = {f"{family}-subnet": subnet, "id": "unused"}
    if gateway is not None:
        ipam[f"{family}-gateway"] = gateway
    if address is not None:
        ipam[f"{family}-address"] = address
    (pool,) = parse_netconf({"cniVersion": "0.3.0", "ipam": ipam}).pools
    return pool


def snapshot(store: MemoryStore) -> dict:
    return {name: dict(pairs) for name, pairs in store.db.buckets.items()}


def in_pool(store: MemoryStore, pool: Pool, body):
    return store.transact(lambda tx: body(PoolAllocator(pool, tx.bucket(pool.bucket))))


def add(store: MemoryStore, pool: Pool, owner_id: str, now: float = 1000.0, **attachment):
    def body(allocator: PoolAllocator):
        allocator.reserve_gateway()
        return str(allocator.allocate(Owner(owner_id, **attachment), now))

    return in_pool(store, pool, body)


def read(store: MemoryStore, bucket: str, key: str) -> object:
    pair = store.db.buckets.get(bucket, {}).get(key)
    return None if pair is None else msgpack.unpackb(pair.value, raw=False)


# --- the walk, as sequences of steps ---------------------------------------------------------
#
# A step is one transaction:
#   ("add", id, expected)                  the next free address (expected: "a.b.c.d/len" or an error class)
#   ("fixed", id, "a.b.c.d/len", expected) the pool's fixed address
#   ("release", address, expected_bool)
#   ("release_id", id, expected_address_or_None)

SCENARIOS = {
    "reference sequence": (
        {"subnet": "10.0.0.0/24"},
        [
            ("add", "a", "10.0.0.2/24"),
            ("add", "b", "10.0.0.3/24"),
            ("fixed", "f", "10.0.0.9/24", "10.0.0.9/24"),
            ("release_id", "a", "10.0.0.2"),
            # The walk continues after the released .2: .3 is taken.
            ("add", "c", "10.0.0.4/24"),
            ("add", "d", "10.0.0.5/24"),
        ],
    ),
    "wraps around at the end of the subnet": (
        {"subnet": "10.0.0.0/29"},
        [
            *[("add", owner, f"10.0.0.{n}/29") for n, owner in zip(range(2, 7), "abcde")],
            ("release_id", "a", "10.0.0.2"),
            ("release_id", "b", "10.0.0.3"),
            # From after .3: .4 .5 .6 taken, .7 is the broadcast, .0 the network,
            # .1 the gateway; then .2, before .3.
            ("add", "f", "10.0.0.2/29"),
            ("add", "g", "10.0.0.3/29"),
            ("add", "h", PoolExhaustedError),
        ],
    ),
    "a released address is not handed back while others are free": (
        {"subnet": "10.0.0.0/24"},
        [
            ("add", "a", "10.0.0.2/24"),
            ("release_id", "a", "10.0.0.2"),
            ("add", "a", "10.0.0.3/24"),
        ],
    ),
    "release by address moves the walk": (
        {"subnet": "10.0.0.0/24"},
        [
            *[("add", owner, f"10.0.0.{n}/24") for n, owner in zip(range(2, 6), "abcd")],
            ("release", "10.0.0.4", True),
            ("release", "10.0.0.2", True),
            # After .2 (not after .5): .3 is taken, .4 is free.
            ("add", "e", "10.0.0.4/24"),
            ("add", "f", "10.0.0.6/24"),
            ("release", "10.0.0.4", True),
            ("release", "10.0.0.4", False),
        ],
    ),
    "a /30 holds one task": (
        {"subnet": "10.0.0.0/30"},
        [
            ("add", "a", "10.0.0.2/30"),
            ("add", "b", PoolExhaustedError),
            ("release_id", "a", "10.0.0.2"),
            ("add", "b", "10.0.0.2/30"),
        ],
    ),
    "a gateway in the middle of the range is skipped": (
        {"subnet": "10.0.0.0/29", "gateway": "10.0.0.3"},
        [
            ("add", "a", "10.0.0.1/29"),
            ("add", "b", "10.0.0.2/29"),
            ("add", "c", "10.0.0.4/29"),
            ("add", "d", "10.0.0.5/29"),
            ("add", "e", "10.0.0.6/29"),
            ("add", "f", PoolExhaustedError),
        ],
    ),
    "a gateway at the end of the range is skipped": (
        {"subnet": "10.0.0.0/29", "gateway": "10.0.0.6"},
        [
            *[("add", owner, f"10.0.0.{n}/29") for n, owner in zip(range(1, 6), "abcde")],
            ("add", "f", PoolExhaustedError),
        ],
    ),
    "IPv6 /126: no broadcast, the last address is handed out": (
        {"subnet": "fd00::/126"},
        [
            ("add", "a", "fd00::2/126"),
            ("add", "b", "fd00::3/126"),
            ("add", "c", PoolExhaustedError),
        ],
    ),
    "IPv6 gateway in the middle of the range": (
        {"subnet": "fd00::/125", "gateway": "fd00::4"},
        [
            *[("add", owner, f"fd00::{n}/125") for n, owner in zip((1, 2, 3, 5, 6, 7), "abcdef")],
            ("add", "g", PoolExhaustedError),
            ("release_id", "c", "fd00::3"),
            ("add", "g", "fd00::3/125"),
        ],
    ),
    "the agent's subnet": (
        {"subnet": "169.254.172.0/22"},
        [
            ("fixed", "daemon", "169.254.172.2/32", "169.254.172.2/32"),
            ("add", "task-1", "169.254.172.3/22"),
            ("add", "task-2", "169.254.172.4/22"),
        ],
    ),
    "a fixed address that is taken": (
        {"subnet": "10.0.0.0/24"},
        [
            ("add", "a", "10.0.0.2/24"),
            ("fixed", "b", "10.0.0.2/24", AddressInUseError),
            ("fixed", "b", "10.0.0.9/24", "10.0.0.9/24"),
            ("fixed", "c", "10.0.0.9/24", AddressInUseError),
            # The walk skips addresses claimed as fixed ones.
            ("fixed", "d", "10.0.0.3/24", "10.0.0.3/24"),
            ("add", "e", "10.0.0.4/24"),
        ],
    ),
    "the same id twice": (
        {"subnet": "10.0.0.0/24"},
        [
            ("add", "a", "10.0.0.2/24"),
            ("add", "a", IdAlreadyAllocatedError),
            ("fixed", "a", "10.0.0.9/24", IdAlreadyAllocatedError),
            ("release_id", "a", "10.0.0.2"),
            ("fixed", "a", "10.0.0.9/24", "10.0.0.9/24"),
        ],
    ),
    "the gateway is never released": (
        {"subnet": "10.0.0.0/24"},
        [
            ("add", "a", "10.0.0.2/24"),
            ("release", "10.0.0.1", False),
            ("release_id", "GateWay", None),
            ("add", "b", "10.0.0.3/24"),
        ],
    ),
    "the gateway's name is not an id": (
        {"subnet": "10.0.0.0/24"},
        [
            ("add", "GateWay", IdAlreadyAllocatedError),
            ("add", "GateWayV6", IdAlreadyAllocatedError),
            ("add", "a", "10.0.0.2/24"),
        ],
    ),
    "releasing what is not held": (
        {"subnet": "10.0.0.0/24"},
        [
            ("release_id", "nobody", None),
            ("release", "10.0.0.50", False),
            ("add", "a", "10.0.0.2/24"),
        ],
    ),
    "ids of any length and script": (
        {"subnet": "10.0.0.0/24"},
        [
            ("add", "x" * 2000, "10.0.0.2/24"),
            ("add", "tâche/ü/日本/\u00e9", "10.0.0.3/24"),
            ("add", "tab\tid", "10.0.0.4/24"),
            ("add", "x" * 2000, IdAlreadyAllocatedError),
            ("add", "x" * 1999, "10.0.0.5/24"),
            ("release_id", "x" * 2000, "10.0.0.2"),
            ("release_id", "tâche/ü/日本/\u00e9", "10.0.0.3"),
            ("release_id", "tab\tid", "10.0.0.4"),
            ("release_id", "x" * 2000, None),
            ("add", "x" * 2000, "10.0.0.6/24"),
        ],
    ),
}


def run_step(store: MemoryStore, pool_args: dict, step: tuple) -> object:
    kind = step[0]
    if kind == "add":
        return add(store, make_pool(**pool_args), step[1])
    if kind == "fixed":
        return add(store, make_pool(**pool_args, address=step[2]), step[1])
    pool = make_pool(**pool_args)
    if kind == "release":
        return in_pool(store, pool, lambda allocator: allocator.release(step[1]))
    if kind == "release_id":
        return in_pool(store, pool, lambda allocator: allocator.release_id(step[1]))
    raise AssertionError(f"unknown step {step}")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_walk(name):
    pool_args, steps = SCENARIOS[name]
    store = MemoryStore()
    for number, step in enumerate(steps):
        expected = step[-1]
        where = f"step {number} {step[:-1]}"
        if isinstance(expected, type) and issubclass(expected, Exception):
            before = snapshot(store)
            with pytest.raises(expected):
                run_step(store, pool_args, step)
            assert snapshot(store) == before, f"{where} failed but changed the store"
        else:
            assert run_step(store, pool_args, step) == expected, where


# --- errors, exactly --------------------------------------------------------------------------


def test_exhausted_v4_pool():
    store, pool = MemoryStore(), make_pool("10.0.0.0/30")
    add(store, pool, "a")
    with pytest.raises(PoolExhaustedError) as caught:
        add(store, pool, "b")
    assert caught.value.code == POOL_EXHAUSTED == 102
    assert caught.value.msg == "failed to find available ip addresses in the subnet 10.0.0.0/30"


def test_exhausted_v6_pool():
    store, pool = MemoryStore(), make_pool("fd00:ec2::/126")
    add(store, pool, "a")
    add(store, pool, "b")
    with pytest.raises(PoolExhaustedError) as caught:
        add(store, pool, "c")
    assert caught.value.code == 102
    assert caught.value.msg == "failed to find available ip addresses in the subnet fd00:ec2::/126"


def test_fixed_address_taken():
    store = MemoryStore()
    add(store, make_pool("10.0.0.0/24"), "a")
    with pytest.raises(AddressInUseError) as caught:
        add(store, make_pool("10.0.0.0/24", address="10.0.0.2/24"), "b")
    assert caught.value.code == ADDRESS_IN_USE == 100
    assert caught.value.msg == "address 10.0.0.2 is already held by 'a'"


def test_same_id_twice():
    store, pool = MemoryStore(), make_pool("10.0.0.0/24")
    add(store, pool, "a")
    with pytest.raises(IdAlreadyAllocatedError) as caught:
        add(store, pool, "a")
    assert caught.value.code == ID_ALREADY_ALLOCATED == 101
    assert caught.value.msg == "id already exists: 'a' holds 10.0.0.2 in 10.0.0.0/24"


def test_the_gateways_name_cannot_be_allocated():
    # Before this was refused, such a task got an address no DEL could ever release.
    store, pool = MemoryStore(), make_pool("10.0.0.0/24")
    with pytest.raises(IdAlreadyAllocatedError) as caught:
        add(store, pool, "GateWay")
    assert caught.value.code == 101
    assert caught.value.msg == "id already exists: 'GateWay' is the gateway's"
    assert snapshot(store) == {}


def test_gateway_held_by_a_task():
    store = MemoryStore()
    assert add(store, make_pool("10.0.0.0/24", address="10.0.0.5/24"), "task") == "10.0.0.5/24"
    before = snapshot(store)
    with pytest.raises(AddressInUseError) as caught:
        add(store, make_pool("10.0.0.0/24", gateway="10.0.0.5"), "other")
    assert caught.value.code == 100
    assert caught.value.msg == "gateway 10.0.0.5 of 10.0.0.0/24 is held by 'task'"
    assert snapshot(store) == before


# --- the records --------------------------------------------------------------------------------


def test_records_as_stored():
    store, pool = MemoryStore(), make_pool("10.0.0.0/24")
    add(store, pool, "0a:1b:2c:3d:4e:5f", now=1234.5, container_id="cid", ifname="eth0")
    add(store, pool, "bare", now=99.0)
    bucket = "10.0.0.0/24"
    assert store.buckets() == [bucket]
    assert sorted(store.db.buckets[bucket]) == [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
        "id/0a:1b:2c:3d:4e:5f",
        "id/bare",
        "lastKnownIP",
    ]
    assert read(store, bucket, "10.0.0.1") == {"id": "GateWay"}
    assert read(store, bucket, "10.0.0.2") == {
        "id": "0a:1b:2c:3d:4e:5f",
        "container_id": "cid",
        "ifname": "eth0",
        "allocated_at": 1234.5,
    }
    assert read(store, bucket, "10.0.0.3") == {
        "id": "bare",
        "container_id": None,
        "ifname": None,
        "allocated_at": 99.0,
    }
    assert read(store, bucket, "id/0a:1b:2c:3d:4e:5f") == "10.0.0.2"
    assert read(store, bucket, "lastKnownIP") == "10.0.0.3"


def test_ipv6_records_as_stored():
    store, pool = MemoryStore(), make_pool("fd00:ec2::172:0/112")
    add(store, pool, "/var/run/netns/task", now=1.0)
    bucket = "fd00:ec2::172:0/112"
    assert read(store, bucket, "fd00:ec2::172:1") == {"id": "GateWayV6"}
    assert read(store, bucket, "fd00:ec2::172:2")["id"] == "/var/run/netns/task"
    assert read(store, bucket, "id//var/run/netns/task") == "fd00:ec2::172:2"
    assert read(store, bucket, "lastKnownIPv6") == "fd00:ec2::172:2"
    assert "lastKnownIP" not in store.db.buckets[bucket]


def test_release_moves_the_pointer_and_drops_the_index():
    store, pool = MemoryStore(), make_pool("10.0.0.0/24")
    for owner in "abc":
        add(store, pool, owner)
    assert in_pool(store, pool, lambda allocator: allocator.release("10.0.0.2")) is True
    bucket = store.db.buckets["10.0.0.0/24"]
    assert "10.0.0.2" not in bucket and "id/a" not in bucket
    assert read(store, "10.0.0.0/24", "lastKnownIP") == "10.0.0.2"
    assert in_pool(store, pool, lambda allocator: allocator.release_id("c")) == "10.0.0.4"
    assert "10.0.0.4" not in bucket and "id/c" not in bucket
    assert read(store, "10.0.0.0/24", "lastKnownIP") == "10.0.0.4"
    assert in_pool(store, pool, lambda allocator: allocator.held_by("b")) == "10.0.0.3"


def test_release_checks_the_owner_when_given():
    store, pool = MemoryStore(), make_pool("10.0.0.0/24")
    add(store, pool, "a")
    assert in_pool(store, pool, lambda allocator: allocator.release("10.0.0.2", "b")) is False
    assert read(store, "10.0.0.0/24", "10.0.0.2")["id"] == "a"
    assert in_pool(store, pool, lambda allocator: allocator.release("10.0.0.2", "a")) is True


@pytest.mark.parametrize(
    "pointer, expected",
    [
        (b"\xad192.168.7.7", "10.0.0.2/29"),  # another subnet's address
        (b"\xa810.0.0.7", "10.0.0.2/29"),  # the broadcast address
        (b"\xa810.0.0.0", "10.0.0.2/29"),  # the network address
        (b"\xa3fd0", "10.0.0.2/29"),  # not an address
        (b"\xc1", "10.0.0.2/29"),  # not msgpack
        (b"\xa810.0.0.6", "10.0.0.2/29"),  # the last host: wraps to the start
        (b"\xa810.0.0.3", "10.0.0.4/29"),
    ],
)
def test_stale_or_odd_last_known_pointer(pointer, expected):
    store, pool = MemoryStore(), make_pool("10.0.0.0/29")
    store.bucket("10.0.0.0/29").put("lastKnownIP", pointer)
    assert add(store, pool, "a") == expected


def test_stale_index_entry_does_not_block_the_id():
    store, pool = MemoryStore(), make_pool("10.0.0.0/24")
    add(store, pool, "b")
    # id/a points at an address a does not hold (b holds it).
    store.bucket("10.0.0.0/24").put("id/a", msgpack.packb("10.0.0.2"))
    assert in_pool(store, pool, lambda allocator: allocator.held_by("a")) is None
    assert in_pool(store, pool, lambda allocator: allocator.release_id("a")) is None
    assert "id/a" not in store.db.buckets["10.0.0.0/24"]
    assert read(store, "10.0.0.0/24", "10.0.0.2")["id"] == "b"
    assert add(store, pool, "a") == "10.0.0.3/24"


def test_unreadable_record_still_occupies_its_address():
    store, pool = MemoryStore(), make_pool("10.0.0.0/24")
    store.bucket("10.0.0.0/24").put("10.0.0.2", b"\xc1garbage")
    assert add(store, pool, "a") == "10.0.0.3/24"
    assert in_pool(store, pool, lambda allocator: allocator.used()) == 1


# --- the id index key ----------------------------------------------------------------------


def test_index_key_is_readable_when_it_fits():
    assert id_index_key("0a:1b:2c:3d:4e:5f") == "id/0a:1b:2c:3d:4e:5f"
    assert id_index_key("/var/run/netns/x") == "id//var/run/netns/x"
    room = MAX_KEY_BYTES - len("id/")
    assert id_index_key("x" * room) == "id/" + "x" * room
    assert id_index_key("é" * (room // 2)) == "id/" + "é" * (room // 2)


@pytest.mark.parametrize("owner_id", ["x" * (MAX_KEY_BYTES - 2), "é" * 255, "x" * 2000, "tab\tid", "nl\n"])
def test_index_key_is_hashed_when_it_does_not_fit(owner_id):
    key = id_index_key(owner_id)
    assert key == "id#" + hashlib.sha256(owner_id.encode("utf-8")).hexdigest()
    assert len(key.encode()) <= MAX_KEY_BYTES


# --- capacity ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pool_args, capacity",
    [
        ({"subnet": "10.0.0.0/30"}, 1),
        ({"subnet": "10.0.0.0/29"}, 5),
        ({"subnet": "10.0.0.0/29", "gateway": "10.0.0.6"}, 5),
        ({"subnet": "169.254.172.0/22"}, 1021),
        ({"subnet": "fd00::/126"}, 2),
        ({"subnet": "fd00::/126", "gateway": "fd00::3"}, 2),
        ({"subnet": "fd00:ec2::172:0/112"}, 65534),
    ],
)
def test_capacity(pool_args, capacity):
    assert in_pool(MemoryStore(), make_pool(**pool_args), lambda allocator: allocator.capacity()) == capacity


def test_used_and_reservations_leave_out_the_bookkeeping():
    store, pool = MemoryStore(), make_pool("10.0.0.0/24")
    add(store, pool, "a", container_id="c1", ifname="eth0")
    add(store, make_pool("10.0.0.0/24", address="10.0.0.9/32"), "b")
    reservations = in_pool(store, pool, lambda allocator: allocator.reservations())
    assert [(address, record["id"]) for address, record in reservations] == [("10.0.0.2", "a"), ("10.0.0.9", "b")]
    assert in_pool(store, pool, lambda allocator: allocator.used()) == 2


# --- the walk against a model ---------------------------------------------------------------


class WalkModel:
    """The original plugin's rules, written as plainly as possible."""

    def __init__(self, pool: Pool) -> None:
        subnet = pool.subnet
        last = subnet.last - 1 if pool.version == 4 else subnet.last
        self.hosts = list(range(subnet.first + 1, last + 1))
        self.gateway = pool.gateway.value
        self.gateway_owner = "GateWay" if pool.version == 4 else "GateWayV6"
        self.held: dict[int, str] = {}
        self.pointer: int | None = None

    def add(self, owner: str, fixed: int | None) -> int | type:
        held = dict(self.held)
        if held.get(self.gateway, self.gateway_owner) != self.gateway_owner:
            return AddressInUseError
        held[self.gateway] = self.gateway_owner
        if owner in ("GateWay", "GateWayV6"):
            return IdAlreadyAllocatedError
        if fixed is not None:
            if fixed in held:
                return AddressInUseError
            address = fixed
        else:
            start = self.pointer if self.pointer in self.hosts else None
            order = self.hosts if start is None else self.hosts[self.hosts.index(start) + 1 :] + self.hosts
            free = [candidate for candidate in order if candidate not in held]
            if not free:
                return PoolExhaustedError
            address = free[0]
        # As the Go plugin: the address is settled before the id is checked.
        if owner in held.values():
            return IdAlreadyAllocatedError
        held[address] = owner
        self.held, self.pointer = held, address
        return address

    def release(self, address: int) -> bool:
        if address not in self.held or self.held[address] == self.gateway_owner:
            return False
        del self.held[address]
        self.pointer = address
        return True

    def release_id(self, owner: str) -> int | None:
        for address, holder in self.held.items():
            if holder == owner and holder != self.gateway_owner:
                self.release(address)
                return address
        return None


def netaddr_text(value: int, version: int) -> str:
    return str(netaddr.IPAddress(value, version))


OWNERS = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "GateWay"])


def operations(hosts: int):
    offsets = st.integers(min_value=1, max_value=hosts)
    return st.lists(
        st.one_of(
            st.tuples(st.just("add"), OWNERS),
            st.tuples(st.just("fixed"), OWNERS, offsets),
            st.tuples(st.just("release"), offsets),
            st.tuples(st.just("release_id"), OWNERS),
        ),
        max_size=40,
    )


@pytest.mark.parametrize("subnet, gateway", [("10.0.0.0/29", None), ("10.0.0.0/29", "10.0.0.5"), ("fd00::/125", None)])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_walk_matches_the_model(subnet, gateway, data):
    pool = make_pool(subnet, gateway)
    model, store = WalkModel(pool), MemoryStore()
    version = pool.version
    ops = data.draw(operations(len(model.hosts)))
    for op in ops:
        if op[0] in ("add", "fixed"):
            fixed = None
            if op[0] == "fixed":
                fixed = pool.subnet.first + op[2]
                if fixed == model.gateway:
                    continue  # the config refuses it
                fixed_pool = make_pool(subnet, gateway, f"{netaddr_text(fixed, version)}/{pool.subnet.prefixlen}")
            expected = model.add(op[1], fixed)
            try:
                got = add(store, fixed_pool if fixed is not None else pool, op[1])
            except (AddressInUseError, IdAlreadyAllocatedError, PoolExhaustedError) as error:
                assert type(error) is expected, (op, error)
            else:
                assert got == f"{netaddr_text(expected, version)}/{pool.subnet.prefixlen}", op
        elif op[0] == "release":
            address = pool.subnet.first + op[1]
            got = in_pool(
                store, pool, lambda allocator, address=address: allocator.release(netaddr_text(address, version))
            )
            assert got == model.release(address), op
        else:
            expected = model.release_id(op[1])
            got = in_pool(store, pool, lambda allocator, owner=op[1]: allocator.release_id(owner))
            assert got == (None if expected is None else netaddr_text(expected, version)), op
    held = {
        key: record["id"]
        for key, record in ((key, read(store, pool.bucket, key)) for key in store.db.buckets.get(pool.bucket, {}))
        if isinstance(record, dict)
    }
    assert held == {netaddr_text(address, version): owner for address, owner in model.held.items()}


@settings(max_examples=300)
@given(
    st.one_of(
        st.tuples(st.integers(0, 2**32 - 1), st.just(4)),
        st.tuples(st.integers(0, 2**128 - 1), st.just(6)),
        # IPv4-mapped and -compatible IPv6 addresses are where text forms differ most.
        st.tuples(st.integers(0, 2**32 - 1).map(lambda v: (0xFFFF << 32) | v), st.just(6)),
        st.tuples(st.integers(0, 2**32 - 1), st.just(6)),
    )
)
def test_address_text_is_netaddrs_text(value_and_version):
    # Keys must be the text everything else (config, migration, dump) produces.
    value, version = value_and_version
    assert address_text(value, version) == str(netaddr.IPAddress(value, version))
