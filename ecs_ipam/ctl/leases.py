"""What a database holds, lease by lease, which leases look leaked, and releasing them.

Everything here works inside one transaction of the caller and is a function of what it
reads there (plus the answers of :class:`StaleRules`, fixed once asked), so a release
body can be re-run by an optimistic backend.  The bucket layout itself is
:mod:`ecs_ipam.pool_store`'s; the legacy layout is :mod:`ecs_ipam.legacy`'s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, NamedTuple

from ..addr import Address, parse_address
from ..allocator import PoolAllocator
from ..errors import OperatorRequestError
from ..legacy import LEGACY_GATEWAY_OWNERS, drop_if_empty, legacy_key_address
from ..pool_store import (
    GATEWAY_OWNER,
    LEGACY_BUCKET,
    address_records,
    decode,
    drop_index_naming,
    is_attachment_record,
    owner_of,
    pool_of_bucket,
)

if TYPE_CHECKING:
    from ..config import Pool
    from ..kv.base import Tx

NETNS_GONE = "netns path gone"
NOT_LIVE = "container not live"


class Lease(NamedTuple):
    """One address held by a task (never a gateway, never an index entry)."""

    address: str
    subnet: str | None  # the pool it counts in; None: a migrated pair no pool contains
    id: str  # "" for an anonymous lease
    container_id: str | None
    ifname: str | None
    allocated_at: float | None
    migrated: bool  # recorded by the Go plugin (no container id, no time)
    bucket: str  # where its record lives: the pool's bucket or LEGACY_BUCKET
    key: str  # its key in that bucket
    damaged: bool = False  # its record cannot be read: taken by nobody we can name (id "")
    attachment: bool = False  # owned by its attachment ("owner": "attachment"); id is ""


class PoolUsage(NamedTuple):
    pool: Pool
    capacity: int
    leases: list[Lease]  # those this pool's bucket holds (or would adopt)


def in_range(usage: PoolUsage, leases: Iterable[Lease]) -> list[Lease]:
    """The leases of addresses in *usage*'s pool, whichever bucket holds them.

    With overlapping pools an address held through one is taken in every other that
    contains it (one address space per database), so these, not ``usage.leases``, are
    what the pool can no longer hand out.
    """
    subnet = usage.pool.subnet
    return [lease for lease in leases if parse_address(lease.address, usage.pool.version) in subnet]


class Holdings(NamedTuple):
    """The leases and gateways of one snapshot of the database."""

    pools: dict[str, PoolUsage]  # bucket name -> pool, in address order
    leases: list[Lease]  # in pool and address order, unplaced migrated pairs last
    gateways: dict[str, str]  # gateway address -> the bucket that reserves it


def read_holdings(tx: Tx) -> Holdings:
    """Every lease and gateway in the pool buckets, plus the Go plugin's pairs still
    waiting in :data:`LEGACY_BUCKET` for their subnet.

    With overlapping pools each lease is listed once, under the bucket that holds it; a
    waiting pair counts in the smallest pool that contains it, and not at all when a
    pool's bucket already records its address (the bucket wins, as in adoption).

    :param tx: any bucket's view of the transaction; buckets that are not pools (other
        programs', the legacy one) are ignored.
    """
    pools: dict[str, PoolUsage] = {}
    gateways: dict[str, str] = {}
    recorded: set[str] = set()
    found = []
    for name in tx.buckets():
        default = pool_of_bucket(name)
        if default is None:
            continue  # another program's bucket, or the legacy one
        view = tx.bucket(name)
        gateway_owner = GATEWAY_OWNER[default.version]
        addresses = address_records(view)
        recorded.update(address for address, _ in addresses)
        reserved = [address for address, value in addresses if owner_of(value) == gateway_owner]
        gateways.update((address, name) for address in reserved)
        # The gateway a configuration chose is only recorded in the bucket; capacity
        # leaves out that one, not the default.
        pool = (pool_of_bucket(name, reserved[0]) if reserved else None) or default
        found.append((name, pool, view))
    for name, pool, view in sorted(found, key=lambda item: _network_order(item[1])):
        allocator = PoolAllocator(pool, view)
        held = [
            Lease(
                address,
                name,
                record["id"],  # reservations() holds only records with a str owner id
                _text(record.get("container_id")),
                _text(record.get("ifname")),
                _time(record.get("allocated_at")),
                record.get("migrated") is True,
                name,
                address,
                attachment=is_attachment_record(record),
            )
            for address, record in allocator.reservations()
        ]
        # A record that cannot be read keeps its address from being handed out; it is
        # shown, so that it can be released by address.
        held += [
            Lease(address, name, "", None, None, None, False, name, address, damaged=True)
            for address, value in address_records(view)
            if owner_of(value) is None and parse_address(address, pool.version) is not None
        ]
        pools[name] = PoolUsage(pool, allocator.capacity(), held)
    waiting = _waiting_pairs(tx, pools, recorded, gateways)
    for lease in waiting:
        if lease.subnet is not None:
            pools[lease.subnet].leases.append(lease)
    for usage in pools.values():
        usage.leases.sort(key=_address_order)
    leases = [lease for usage in pools.values() for lease in usage.leases]
    leases.extend(lease for lease in waiting if lease.subnet is None)
    return Holdings(pools, leases, gateways)


def _waiting_pairs(tx: Tx, pools: dict[str, PoolUsage], recorded: set[str], gateways: dict[str, str]) -> list[Lease]:
    leases = []
    for pair in tx.bucket(LEGACY_BUCKET).list(""):
        owner = decode(pair.value)
        if not isinstance(owner, str):
            continue
        address = legacy_key_address(pair.key, 4) or legacy_key_address(pair.key, 6)
        if address is None or str(address) in recorded:
            continue
        subnet = _smallest_pool_of(address, pools)
        if owner in LEGACY_GATEWAY_OWNERS:
            gateways.setdefault(str(address), LEGACY_BUCKET)
            continue
        leases.append(Lease(str(address), subnet, owner, None, None, None, True, LEGACY_BUCKET, pair.key))
    leases.sort(key=lambda lease: (lease.subnet is None, _address_order(lease)))
    return leases


def _smallest_pool_of(address: Address, pools: dict[str, PoolUsage]) -> str | None:
    containing = [name for name, usage in pools.items() if address in usage.pool.subnet]
    return max(containing, key=lambda name: pools[name].pool.subnet.prefixlen, default=None)


def _address_order(lease: Lease) -> tuple[int, int]:
    address = parse_address(lease.address)
    # Every lease's address was read as an address; the fallback only keeps sorting total.
    return (address.version, address.value) if address is not None else (0, 0)


def _network_order(pool: Pool) -> tuple[int, int, int]:
    return pool.version, pool.subnet.first, pool.subnet.prefixlen


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _time(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# --- staleness -------------------------------------------------------------------------------


class StaleRules:
    """Which leases look leaked: an owner id naming an absolute path that no longer exists
    (the netns path the newer ECS agent uses), and with a live list, a recorded container
    id that is not in it.

    Each path is looked at once and the answer kept, so a transaction body that is run
    again decides exactly as the first time.

    :param live: the container ids known to be running, or None for no such rule.
    """

    def __init__(self, live: frozenset[str] | None = None) -> None:
        self.live = live
        self._gone: dict[str, bool] = {}

    def netns_gone(self, lease: Lease) -> bool:
        """Whether the lease's owner id is an absolute path that no longer exists."""
        if not lease.id.startswith("/"):
            return False
        if lease.id not in self._gone:
            self._gone[lease.id] = _path_gone(lease.id)
        return self._gone[lease.id]

    def reason(self, lease: Lease) -> str | None:
        """Why the lease looks leaked, or None."""
        if self.netns_gone(lease):
            return NETNS_GONE
        if self.live is not None and lease.container_id and lease.container_id not in self.live:
            return NOT_LIVE
        return None


def _path_gone(path: str) -> bool:
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except (OSError, ValueError):
        # Unreadable (another user's /proc entry) is not gone: never guess a leak.
        return False
    return False


def read_live_list(text: str) -> frozenset[str]:
    """The container ids of a live list: one per line, blank lines ignored."""
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


# --- release ---------------------------------------------------------------------------------

Selector = Callable[[Holdings], list[Lease]]


def by_id(owner_id: str) -> Selector:
    """Every lease *owner_id* holds, in every pool (and any migrated pair of it)."""
    if owner_id in GATEWAY_OWNER.values() or owner_id in LEGACY_GATEWAY_OWNERS:
        raise OperatorRequestError(f"id {owner_id!r} names the gateway records; the gateway is never released")
    return lambda holdings: [lease for lease in holdings.leases if lease.id == owner_id]


def by_address(address: str) -> Selector:
    """The lease of *address* (canonical text), wherever it is recorded."""

    def select(holdings: Holdings) -> list[Lease]:
        if address in holdings.gateways:
            bucket = holdings.gateways[address]
            where = "the Go plugin's records" if bucket == LEGACY_BUCKET else bucket
            raise OperatorRequestError(f"{address} is the gateway of {where}; the gateway is never released")
        return [lease for lease in holdings.leases if lease.address == address]

    return select


def by_staleness(rules: StaleRules) -> Selector:
    """Every lease that *rules* find leaked."""
    return lambda holdings: [lease for lease in holdings.leases if rules.reason(lease)]


def release_body(select: Selector, write: bool) -> Callable[[Tx], list[Lease]]:
    """A transaction body that releases what *select* picks, or with *write* false only
    says what it would release.

    A pool's lease goes through :meth:`PoolAllocator.release`, which also drops the
    owner's index entry (so the owner can allocate again) and moves the last-known
    pointer, as a DEL does; a migrated pair still waiting for its pool is removed from
    the legacy bucket.
    :return: the leases released (or that would be).
    :raises OperatorRequestError: the selection asks for a gateway; nothing is written.
    """

    def body(tx: Tx) -> list[Lease]:
        holdings = read_holdings(tx)
        chosen = select(holdings)
        if write:
            for lease in chosen:
                if lease.bucket == LEGACY_BUCKET:
                    tx.bucket(LEGACY_BUCKET).delete(lease.key)
                else:
                    bucket = tx.bucket(lease.bucket)
                    PoolAllocator(holdings.pools[lease.bucket].pool, bucket).release(
                        lease.address, None if lease.damaged else lease.id
                    )
                    if lease.damaged:
                        drop_index_naming(bucket, lease.address)
            if any(lease.bucket == LEGACY_BUCKET for lease in chosen):
                drop_if_empty(tx)
        return chosen

    return body
