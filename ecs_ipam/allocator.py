"""Address arithmetic and the allocation walk of one pool, over one bucket of a transaction.

Knows nothing of the environment, JSON or the backend: it reads and writes a
:class:`ecs_ipam.kv.Tx` bound to the pool's bucket, and every decision is a function of
what it read there, so a transaction can be re-run safely.

Bucket layout (one bucket per subnet, named by its CIDR)::

    <address>          msgpack {"id", "container_id", "ifname", "allocated_at"}
                       (the gateway: {"id": "GateWay"} or {"id": "GateWayV6"})
    lastKnownIP        msgpack str: the address the walk continues after
    lastKnownIPv6      (the same, in an IPv6 bucket)
    id/<owner id>      msgpack str: the address <owner id> holds (DEL by id needs no scan)
"""

from __future__ import annotations

from typing import NamedTuple

import msgpack

from .addr import Network, format_address, parse_address
from .config import Pool
from .errors import AddressInUseError, IdAlreadyAllocatedError, PoolExhaustedError, quoted
from .kv.base import MAX_KEY_BYTES, Tx

GATEWAY_OWNER = {4: "GateWay", 6: "GateWayV6"}
LAST_KNOWN_KEY = {4: "lastKnownIP", 6: "lastKnownIPv6"}
ID_INDEX_PREFIX = "id/"
HASHED_ID_INDEX_PREFIX = "id#"
INDEX_PREFIXES = (ID_INDEX_PREFIX, HASHED_ID_INDEX_PREFIX)
# Where the Go plugin's pairs wait after a migration (ecs_ipam.legacy).  Not "IPAM", the
# Go bucket's own name: that is also kv.open_store's default bucket, and another agent's
# keys there must never be taken for leases.
LEGACY_BUCKET = "go-plugin-IPAM"


class Owner(NamedTuple):
    """Who an address is handed to: the config's id, and the CNI attachment for GC.

    An empty id is an anonymous owner, as in the original plugin: any number of them
    coexist, none has an id-index entry, and only a DEL naming the address releases one.
    """

    id: str
    container_id: str | None = None
    ifname: str | None = None


def encode(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def decode(raw: bytes) -> object:
    try:
        return msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None


def owner_of(record: object) -> str | None:
    """The owner id recorded for an address, or None for a record we do not understand."""
    if isinstance(record, dict):
        owner = record.get("id")
        return owner if isinstance(owner, str) else None
    return None


def id_index_key(owner_id: str) -> str:
    key = ID_INDEX_PREFIX + owner_id
    if len(key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES and owner_id.isprintable():
        return key
    # Ids are data of any length (a netns path, a MAC...); a digest keeps the key within
    # the store's limit.  Imported here: hashlib is slow to import and rarely needed.
    import hashlib

    return HASHED_ID_INDEX_PREFIX + hashlib.sha256(owner_id.encode("utf-8", "surrogatepass")).hexdigest()


def address_text(value: int, version: int) -> str:
    """The bucket key of an address: exactly ``str(netaddr.IPAddress(value, version))``.

    No Address object: the walk over a run of used addresses does this once per address.
    """
    return format_address(value, version)


class PoolAllocator:
    """Claims and releases the addresses of one pool inside one transaction."""

    def __init__(self, pool: Pool, tx: Tx) -> None:
        self.pool = pool
        self.tx = tx
        subnet = pool.subnet
        self.first = subnet.first + 1
        # IPv4 keeps its broadcast address out of the pool; IPv6 has none.
        self.last = subnet.last - 1 if pool.version == 4 else subnet.last
        self.gateway_owner = GATEWAY_OWNER[pool.version]
        self.last_known_key = LAST_KNOWN_KEY[pool.version]

    # -- reads ------------------------------------------------------------------------

    def record(self, address: str) -> dict | None:
        pair = self.tx.find(address)
        if pair is None:
            return None
        record = decode(pair.value)
        return record if isinstance(record, dict) else {"id": None}

    def held_by(self, owner_id: str) -> str | None:
        """The address *owner_id* holds in this pool, or None."""
        pair = self.tx.find(id_index_key(owner_id))
        if pair is None:
            return None
        address = decode(pair.value)
        if not isinstance(address, str) or owner_of(self.record(address)) != owner_id:
            return None  # a stale index entry: the address went to someone else
        return address

    def last_known(self) -> int | None:
        pair = self.tx.find(self.last_known_key)
        if pair is None:
            return None
        address = parse_address(decode(pair.value), self.pool.version)
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

    def reservations(self) -> list[tuple[str, dict]]:
        """Every address held by a task: (address, record).  Scans the bucket."""
        held = []
        for pair in self.tx.list(""):
            if pair.key == self.last_known_key or pair.key.startswith(INDEX_PREFIXES):
                continue
            record = decode(pair.value)
            if owner_of(record) not in (None, self.gateway_owner):
                held.append((pair.key, record))
        return held

    # -- writes -----------------------------------------------------------------------

    def reserve_gateway(self) -> None:
        """Record the gateway as reserved, so that no task is ever handed it.

        :raises AddressInUseError: the gateway address is held by a task.
        """
        address = str(self.pool.gateway)
        record = self.record(address)
        if record is None:
            self.tx.put(address, encode({"id": self.gateway_owner}))
        elif owner_of(record) != self.gateway_owner:
            raise AddressInUseError(
                f"gateway {address} of {self.pool.subnet} is held by {quoted(owner_of(record))}"
            )

    def allocate(self, owner: Owner, now: float) -> Network:
        """Claim the pool's fixed address, or the next free one after the last-known address.

        :return: the claimed address with its prefix length (the fixed address keeps its own).
        :raises AddressInUseError: the fixed address is taken.
        :raises PoolExhaustedError: no address is free.
        :raises IdAlreadyAllocatedError: *owner* already holds an address in this pool
            (checked after the two above, as the original plugin does).
        """
        if owner.id in GATEWAY_OWNER.values():
            # Records under these names are the gateway's: never released, never counted.
            raise IdAlreadyAllocatedError(f"id already exists: {quoted(owner.id)} is the gateway's")
        fixed = self.pool.fixed_address
        if fixed is not None:
            address = str(fixed.ip)
            record = self.record(address)
            if record is not None:
                raise AddressInUseError(f"address {address} is already held by {quoted(owner_of(record))}")
            prefixlen = fixed.prefixlen
        else:
            address = self._next_free()
            prefixlen = self.pool.subnet.prefixlen
        # After the address, as in the original: a taken address or a full pool is what
        # the caller hears about first, also when the id holds an address already.
        held = self.held_by(owner.id) if owner.id else None
        if held is not None:
            raise IdAlreadyAllocatedError(
                f"id already exists: {quoted(owner.id)} holds {held} in {self.pool.subnet}"
            )
        self._claim(address, owner, now)
        return Network(parse_address(address), prefixlen)

    def _next_free(self) -> str:
        # Round-robin from the last address handed out or released: a task that crash-
        # loops does not get its previous address straight back, so stale state about it
        # elsewhere (ARP caches, conntrack, the agent's own records) has time to age out.
        start = self.last_known()
        candidate = self.first if start is None or start >= self.last else start + 1
        version, exists = self.pool.version, self.tx.exists
        for _ in range(self.last - self.first + 1):
            text = address_text(candidate, version)
            if not exists(text):
                return text
            candidate = self.first if candidate >= self.last else candidate + 1
        raise PoolExhaustedError(f"failed to find available ip addresses in the subnet {self.pool.subnet}")

    def _claim(self, address: str, owner: Owner, now: float) -> None:
        self.tx.put(
            address,
            encode(
                {
                    "id": owner.id,
                    "container_id": owner.container_id or None,
                    "ifname": owner.ifname or None,
                    "allocated_at": now,
                }
            ),
        )
        if owner.id:
            self.tx.put(id_index_key(owner.id), encode(address))
        self.tx.put(self.last_known_key, encode(address))

    def release(self, address: str, owner_id: str | None = None) -> bool:
        """Release *address* (only if *owner_id* holds it, when given); never the gateway.

        The last-known pointer moves to the released address, as in the original plugin,
        so the walk continues after it.
        :return: whether an address was released.
        """
        record = self.record(address)
        if record is None:
            return False
        holder = owner_of(record)
        if holder == self.gateway_owner or (owner_id is not None and holder != owner_id):
            return False
        self.tx.delete(address)
        if holder:
            index = self.tx.find(id_index_key(holder))
            if index is not None and decode(index.value) == address:
                self.tx.delete(index.key)
        self.tx.put(self.last_known_key, encode(address))
        return True

    def release_id(self, owner_id: str) -> str | None:
        """Release what *owner_id* holds in this pool; return the address, or None."""
        address = self.held_by(owner_id)
        if address is None:
            # Drop a stale index entry, if any, so the id can allocate again.
            self.tx.delete(id_index_key(owner_id))
            return None
        self.release(address, owner_id)
        return address
