"""The allocation walk of one pool, over one bucket of a transaction.

Knows nothing of the environment, JSON or the backend: it reads and writes a
:class:`ecs_ipam.kv.Tx` bound to the pool's bucket, laid out as :mod:`ecs_ipam.pool_store`
says, and every decision is a function of what it read there, so a transaction can be
re-run safely.

One address space per database, as in the Go plugin's single bucket: pools whose subnets
overlap (a pool widened from /25 to /24, an IPv6 /112 inside a /64) keep their own
buckets, and every claim also looks in the other buckets whose subnet contains the
address (:func:`overlapping_buckets`).  An id holding an address through one of them
holds it for all of them.
"""

from __future__ import annotations

import os

from .addr import Address, Network, parse_address
from .config import Value
from .errors import AddressInUseError, IdAlreadyAllocatedError, PoolExhaustedError, quoted
from .pool_store import (
    GATEWAY_OWNER,
    LAST_KNOWN_KEY,
    address_records,
    address_text,
    attachment_index_key,
    drop_key,
    gateway_record,
    held_at,
    held_in,
    id_index_key,
    lease_record,
    owner_key,
    owner_of,
    pool_subnet,
    read_last_known,
    read_record,
    write_key,
    write_last_known,
)

# How far (in addresses) a re-run ADD may start its walk after the pointer, doubled on
# each further re-run (see PoolAllocator._spread).
SPREAD_WINDOW = 64

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .config import Pool
    from .kv.base import Tx
    from .pool_store import Record


class Owner(Value):
    """Who an address is handed to: the config's ``id``, and the CNI attachment for GC
    (``container_id``, ``ifname``: str or None); with ``attachment`` true (``"owner":
    "attachment"``), the attachment itself, and ``id`` is "".

    An empty id is an anonymous owner, as in the original plugin: any number of them
    coexist, none has an id-index entry, and only a DEL naming the address releases one.
    """

    __slots__ = ("attachment", "container_id", "id", "ifname")

    def __init__(
        self, id: str, container_id: str | None = None, ifname: str | None = None, attachment: bool = False
    ) -> None:
        self.id = id
        self.container_id = container_id
        self.ifname = ifname
        self.attachment = attachment

    @property
    def key(self) -> str | None:
        """The owner's index key (:func:`ecs_ipam.pool_store.owner_key`), or None when anonymous."""
        if self.attachment:
            return attachment_index_key(self.container_id or "", self.ifname or "")
        return id_index_key(self.id) if self.id else None


class Overlap(Value):
    """Another pool's bucket (``tx``), whose ``subnet`` shares addresses with this pool's."""

    __slots__ = ("subnet", "tx")

    def __init__(self, subnet: Network, tx: Tx) -> None:
        self.subnet = subnet
        self.tx = tx


def overlapping_buckets(tx: Tx, pool: Pool, names: Sequence[str]) -> list[Overlap]:
    """The buckets of other pools of *pool*'s family whose subnets overlap its subnet.

    :param tx: any bucket's view of the transaction.
    :param names: the database's bucket names, read once per transaction (``tx.buckets()``).
    """
    own, ipv6 = pool.bucket, pool.version == 6
    found = []
    for name in names:
        # Cheap tests first: most databases hold one pool per family and nothing else.
        if name == own or (":" in name) != ipv6:
            continue
        other = pool_subnet(name)
        if other is not None and other.first <= pool.subnet.last and pool.subnet.first <= other.last:
            found.append(Overlap(other, tx.bucket(name)))
    return found


def releases_within(max_writes: int, pools: int) -> int:
    """How many releases one transaction over *pools* pools can hold, when it may write
    at most *max_writes* keys (GC's batches): a release deletes the address and its
    id-index entry, and each pool rewrites its last-known pointer once."""
    return max(1, (max_writes - pools) // 2)


class PoolAllocator:
    """Claims and releases the addresses of one pool inside one transaction.

    :param tx: the pool's bucket.
    :param overlapping: the other pools' buckets that share addresses with this one.
    """

    def __init__(self, pool: Pool, tx: Tx, overlapping: Sequence[Overlap] = ()) -> None:
        self.pool = pool
        self.tx = tx
        self.overlapping = tuple(overlapping)
        subnet = pool.subnet
        self.first = subnet.first + 1
        # IPv4 keeps its broadcast address out of the pool; IPv6 has none.
        self.last = subnet.last - 1 if pool.version == 4 else subnet.last
        self.gateway_owner = GATEWAY_OWNER[pool.version]
        self.last_known_key = LAST_KNOWN_KEY[pool.version]

    # -- reads ------------------------------------------------------------------------

    def record(self, address: str) -> Record | None:
        return read_record(self.tx, address)

    def held_by(self, owner_id: str) -> str | None:
        """The address *owner_id* holds in this pool's own bucket, or None."""
        return held_in(self.tx, owner_id)

    def held_anywhere(self, key: str) -> tuple[str, Tx] | None:
        """The address the owner of index *key* holds in this pool or an overlapping one,
        with its bucket."""
        for tx in (self.tx, *(overlap.tx for overlap in self.overlapping)):
            address = held_at(tx, key)
            if address is not None:
                return address, tx
        return None

    def _containing(self, value: int) -> list[Tx]:
        return [o.tx for o in self.overlapping if o.subnet.first <= value <= o.subnet.last]

    def holder(self, address: str) -> tuple[Tx, Record] | None:
        """The bucket that records *address*, this pool's first, with the record."""
        buckets = [self.tx]
        if self.overlapping:
            parsed = parse_address(address, self.pool.version)
            if parsed is not None:
                buckets += self._containing(parsed.value)
        for tx in buckets:
            record = read_record(tx, address)
            if record is not None:
                return tx, record
        return None

    def last_known(self) -> int | None:
        address = read_last_known(self.tx, self.pool.version)
        if address is None:
            return None
        value = address.value
        return value if self.first <= value <= self.last else None

    def capacity(self) -> int:
        """How many addresses the pool can hand out (the gateway excluded)."""
        return self.last - self.first + 1 - (self.first <= self.pool.gateway.value <= self.last)

    def used(self) -> int:
        """How many addresses are held, gateway excluded.  Scans the bucket: STATUS only."""
        return len(self.reservations())

    def reservations(self) -> list[tuple[str, Record]]:
        """Every address of the pool held by a task: (address, record), also those held
        through an overlapping pool.  Scans the buckets."""
        held: list[tuple[str, Record]] = []
        for address, value in [*address_records(self.tx), *self._overlapping_addresses()]:
            # owner_of() is None for anything but a dict: the isinstance only tells mypy so.
            if isinstance(value, dict) and owner_of(value) not in (None, self.gateway_owner):
                held.append((address, value))
        return held

    def _overlapping_addresses(self) -> list[tuple[str, object]]:
        """(address, decoded value) of every address of this pool recorded by another pool."""
        found = []
        for overlap in self.overlapping:
            for address, value in address_records(overlap.tx):
                parsed = parse_address(address, self.pool.version)
                if parsed is not None and self.first <= parsed.value <= self.last:
                    found.append((address, value))
        return found

    def free(self) -> int:
        """How many addresses are still free for a task (gateways and every pool's leases
        excluded).  Scans the buckets: STATUS only."""
        if not self.overlapping:
            return self.capacity() - self.used()
        taken = {address for address, _ in self.reservations()}
        for address, _ in self._overlapping_addresses():
            taken.add(address)  # the other pools' gateways too
        gateway = self.pool.gateway.value
        if self.first <= gateway <= self.last:
            taken.add(address_text(gateway, self.pool.version))
        return self.last - self.first + 1 - len(taken)

    # -- writes -----------------------------------------------------------------------

    def reserve_gateway(self) -> None:
        """Record the gateway as reserved, so that no task is ever handed it.

        :raises AddressInUseError: the gateway address is held by a task.
        """
        address = str(self.pool.gateway)
        record = self.record(address)
        if record is None:
            holder = self.holder(address)
            if holder is not None and owner_of(holder[1]) != self.gateway_owner:
                # The gateway of an overlapping pool at the same address is no conflict:
                # both pools reserve it for the same purpose.
                raise AddressInUseError(
                    f"gateway {address} of {self.pool.subnet} is held by {quoted(owner_of(holder[1]))} "
                    f"in {holder[0].bucket_name}"
                )
            self.tx.put(address, gateway_record(self.pool.version))
        elif owner_of(record) != self.gateway_owner:
            raise AddressInUseError(f"gateway {address} of {self.pool.subnet} is held by {quoted(owner_of(record))}")

    def allocate(self, owner: Owner, now: float, repeat: bool = False) -> Network:
        """Claim the pool's fixed address, or the next free one after the last-known address.

        :param repeat: answer the address this very attachment (id, container id and
            interface) holds in the pool, if any, instead of IdAlreadyAllocatedError:
            for a store whose commit can end with its outcome unknown (etcd), where the
            runtime's retry of such an ADD must get what the first one recorded.
        :return: the claimed address with its prefix length (the fixed address keeps its own).
        :raises AddressInUseError: the fixed address is taken.
        :raises PoolExhaustedError: no address is free.
        :raises IdAlreadyAllocatedError: *owner* already holds an address in this pool or
            an overlapping one (checked after the two above, as the original plugin does).
        """
        if owner.id in GATEWAY_OWNER.values():
            # Records under these names are the gateway's: never released, never counted.
            raise IdAlreadyAllocatedError(f"id already exists: {quoted(owner.id)} is the gateway's")
        if repeat:
            granted = self._granted_to(owner)
            if granted is not None:
                return granted
        # Read before the walk, so that the walk's reads come last, just before the
        # commit (less time for another writer to take the address found free); raised
        # after it, as in the original: a taken address or a full pool is what the
        # caller hears about first, also when the id holds an address already.
        key = owner.key
        held = self.held_anywhere(key) if key else None
        fixed = self.pool.fixed_address
        if fixed is not None:
            ip = fixed.ip
            address = str(ip)
            holder = self.holder(address)
            if holder is not None:
                raise AddressInUseError(f"address {address} is already held by {quoted(owner_of(holder[1]))}")
            prefixlen = fixed.prefixlen
        else:
            value = self._next_free()
            ip = Address(value, self.pool.version)
            address = address_text(value, self.pool.version)
            prefixlen = self.pool.subnet.prefixlen
        if held is not None:
            raise IdAlreadyAllocatedError(
                f"id already exists: {quoted(owner.id)} holds {held[0]} in {held[1].bucket_name}"
            )
        self._claim(address, owner, now)
        return Network(ip, prefixlen)

    def _granted_to(self, owner: Owner) -> Network | None:
        """The address of this pool recorded for *owner*'s very attachment, or None."""
        if not owner.id or not owner.container_id:
            return None  # anonymous, or no attachment to tell a retry from another task
        address = self.held_by(owner.id)
        record = self.record(address) if address is not None else None
        if record is None or (record.get("container_id"), record.get("ifname")) != (
            owner.container_id,
            owner.ifname or None,
        ):
            return None
        fixed = self.pool.fixed_address
        if fixed is not None:
            return fixed if str(fixed.ip) == address else None
        ip = parse_address(address, self.pool.version)
        return None if ip is None else Network(ip, self.pool.subnet.prefixlen)

    def _next_free(self) -> int:
        # Round-robin from the last address handed out or released: a task that crash-
        # loops does not get its previous address straight back, so stale state about it
        # elsewhere (ARP caches, conntrack, the agent's own records) has time to age out.
        start = self.last_known()
        candidate = self.first if start is None or start >= self.last else start + 1
        if self.tx.reruns:
            candidate = self._spread(candidate, self.tx.reruns)
        version = self.pool.version
        exists: Callable[[str], bool] = self.tx.exists
        if self.overlapping:
            exists = self._taken_anywhere
        for _ in range(self.last - self.first + 1):
            if not exists(address_text(candidate, version)):
                return candidate
            candidate = self.first if candidate >= self.last else candidate + 1
        raise PoolExhaustedError(f"failed to find available ip addresses in the subnet {self.pool.subnet}")

    def _spread(self, candidate: int, reruns: int) -> int:
        """Where a re-run body starts its walk: a random distance after *candidate*.

        Only a body that lost a race is re-run, and the ADDs it raced walked from the
        same pointer to the same address: starting each re-run at a random place among
        the next addresses spreads them, instead of having them race again for the one
        after.  A single writer never re-runs, so its walk is the original's; under
        concurrency, an ADD that lost a race may take an address a little further on.
        """
        size = self.last - self.first + 1
        window = min(size, SPREAD_WINDOW << min(reruns - 1, 4))
        offset = int.from_bytes(os.urandom(4), "big") % window
        return self.first + (candidate - self.first + offset) % size

    def _taken_anywhere(self, address: str) -> bool:
        return self.holder(address) is not None

    def held_for(self, owner: Owner) -> Network | None:
        """What an attachment already holds for this pool, as its ADD answers it, or None.

        A runtime may repeat an ADD (a retry after a timeout, a restart): the attachment
        gets the address it holds, never a second one.
        :raises IdAlreadyAllocatedError: it holds an address this configuration would not
            give it (another fixed address, or one outside a narrowed subnet).
        """
        key = owner.key
        found = self.held_anywhere(key) if key else None
        if found is None:
            return None
        address, tx = found
        ip = parse_address(address, self.pool.version)
        fixed = self.pool.fixed_address
        wanted = fixed.ip.value if fixed is not None else None
        if ip is None or ip not in self.pool.subnet or wanted not in (None, ip.value):
            raise IdAlreadyAllocatedError(
                f"id already exists: attachment {quoted(owner.container_id)}/{quoted(owner.ifname)} holds {address} "
                f"in {tx.bucket_name}"
            )
        return Network(ip, fixed.prefixlen if fixed is not None else self.pool.subnet.prefixlen)

    def _claim(self, address: str, owner: Owner, now: float) -> None:
        record = lease_record(
            owner.id, owner.container_id or None, owner.ifname or None, now, attachment=owner.attachment
        )
        self.tx.put(address, record)
        key = owner.key
        if key:
            write_key(self.tx, key, address)
        write_last_known(self.tx, self.pool.version, address)

    def release(self, address: str, owner_id: str | None = None, key: str | None = None) -> bool:
        """Release *address* (only if *owner_id* holds it, or the owner of index *key*,
        when given); never the gateway.

        The last-known pointer moves to the released address, as in the original plugin,
        so the walk continues after it.
        :return: whether an address was released.
        """
        found = self.holder(address)
        if found is None:
            return False
        tx, record = found
        if (owner_id is not None and owner_of(record) != owner_id) or (key is not None and owner_key(record) != key):
            return False
        return self._release_from(tx, address, record)

    def _release_from(self, tx: Tx, address: str, record: Record) -> bool:
        if owner_of(record) == self.gateway_owner:
            return False
        tx.delete(address)
        key = owner_key(record)
        if key:
            drop_key(tx, key, address)
        if tx is not self.tx:
            # Released from an overlapping pool: this pool's walk continues after it when
            # it is one of its addresses.  The other pool's pointer stays, so a release
            # writes at most one pointer per pool (GC's batches count on it).
            parsed = parse_address(address, self.pool.version)
            if parsed is None or not self.first <= parsed.value <= self.last:
                return True
        write_last_known(self.tx, self.pool.version, address)
        return True

    def release_id(self, owner_id: str) -> str | None:
        """Release what *owner_id* holds in this pool; return the address, or None."""
        return self.release_key(id_index_key(owner_id))

    def release_key(self, key: str) -> str | None:
        """Release what the owner of index *key* holds in this pool; return the address, or None."""
        address = held_at(self.tx, key)
        # The owner holds nothing here afterwards, whatever its entry named (see held_at): a
        # stale one goes too, so the owner can allocate again.
        drop_key(self.tx, key)
        if address is not None:
            # held_at read the record: the owner holds it in this bucket.
            self._release_from(self.tx, address, read_record(self.tx, address) or {})
        return address

    def release_owner(self, key: str) -> list[str]:
        """Release what the owner of index *key* holds in this pool and in every overlapping one.

        After a pool was widened or narrowed, the agent releases with the new
        configuration what the id took with the old one.
        :return: the released addresses.
        """
        released = []
        address = self.release_key(key)
        if address is not None:
            released.append(address)
        for overlap in self.overlapping:
            address = held_at(overlap.tx, key)
            if address is not None and self._release_from(overlap.tx, address, read_record(overlap.tx, address) or {}):
                released.append(address)
        return released
