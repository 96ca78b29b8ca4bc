"""A pool's bucket: which buckets are pools, what their keys mean, how records are written
and read.

One bucket per pool, named by its subnet's canonical CIDR (:func:`pool_subnet`)::

    <address>          msgpack {"id", "container_id", "ifname", "allocated_at"}
                       (+ "migrated": true for a lease adopted from the Go plugin;
                       the gateway: {"id": "GateWay"} or {"id": "GateWayV6"})
    lastKnownIP        msgpack str: the address the walk continues after
    lastKnownIPv6      (the same, in an IPv6 bucket)
    id/<owner id>      msgpack str: the address <owner id> holds (DEL by id needs no scan);
    id#<sha256>        id#<hex digest> for an id too long or unprintable for a key

Everything that reads or writes a pool bucket goes through here: the allocator's walk
(:mod:`ecs_ipam.allocator`), legacy adoption (:mod:`ecs_ipam.legacy`), the operator tool
(:mod:`ecs_ipam.ctl.leases`) and the migration (:mod:`ecs_ipam.migrate`).  The database
holds other buckets too: :data:`LEGACY_BUCKET`, and whatever other programs keep there.
"""

from __future__ import annotations

from .addr import Address, Network, format_address, parse_address, parse_network
from .config import MAX_PREFIX, Pool
from .kv.base import MAX_KEY_BYTES
from .minipack import NotMsgpackError, packb, unpackb

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .kv.base import Tx

    # A decoded address record: {"id": ..., "container_id": ..., ...}.
    Record = dict[str, Any]

GATEWAY_OWNER = {4: "GateWay", 6: "GateWayV6"}
LAST_KNOWN_KEY = {4: "lastKnownIP", 6: "lastKnownIPv6"}
ID_INDEX_PREFIX = "id/"
HASHED_ID_INDEX_PREFIX = "id#"
INDEX_PREFIXES = (ID_INDEX_PREFIX, HASHED_ID_INDEX_PREFIX)
_NOT_ADDRESSES = frozenset(LAST_KNOWN_KEY.values())
# Where the Go plugin's pairs wait after a migration (ecs_ipam.legacy).  Not "IPAM", the
# Go bucket's own name: that is also kv.open_store's default bucket, and another agent's
# keys there must never be taken for leases.
LEGACY_BUCKET = "go-plugin-IPAM"


# -- which buckets are pools ---------------------------------------------------------------


def pool_subnet(name: str) -> Network | None:
    """The subnet whose pool keeps its bucket under *name*, or None for any other bucket.

    The one rule: *name* is a CIDR exactly as a pool names its bucket (host bits clear,
    canonical text) with a prefix a configuration may give (``10.0.0.0/31`` is no pool's:
    the configuration refuses it; ``10.0.0.5/24`` neither: the pool's bucket is
    ``10.0.0.0/24``).
    """
    # Cheap test first: most buckets of a database are pools, the others are named freely.
    if "/" not in name:
        return None
    subnet = parse_network(name)
    if subnet is None or subnet.value != subnet.first or subnet.prefixlen > MAX_PREFIX[subnet.version]:
        return None
    return subnet if str(subnet) == name else None


def is_pool_bucket(name: str) -> bool:
    return pool_subnet(name) is not None


def pool_of_bucket(name: str, gateway: str | None = None) -> Pool | None:
    """The pool whose bucket is *name*, as far as a bucket tells (no fixed address, no routes).

    :param gateway: the gateway recorded in the bucket, if any (default: network + 1).
    :return: the pool, or None when *name* is not a pool's bucket or *gateway* is not
        an address of it.
    """
    subnet = pool_subnet(name)
    if subnet is None:
        return None
    version = subnet.version
    gateway_ip = Address(subnet.first + 1, version) if gateway is None else parse_address(gateway, version)
    if gateway_ip is None or gateway_ip not in subnet:
        return None
    return Pool(version, subnet, gateway_ip, None, ())


# -- keys ----------------------------------------------------------------------------------


def is_address_key(key: str) -> bool:
    """Whether *key* of a pool bucket records an address (a lease or a gateway)."""
    return key not in _NOT_ADDRESSES and not key.startswith(INDEX_PREFIXES)


def address_text(value: int, version: int) -> str:
    """The key of an address: exactly ``str(netaddr.IPAddress(value, version))``.

    No Address object: the walk over a run of used addresses does this once per address.
    """
    return format_address(value, version)


def id_index_key(owner_id: str) -> str:
    key = ID_INDEX_PREFIX + owner_id
    if len(key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES and owner_id.isprintable():
        return key
    # Ids are data of any length (a netns path, a MAC...); a digest keeps the key within
    # the store's limit.  Imported here: hashlib is slow to import and rarely needed.
    import hashlib

    return HASHED_ID_INDEX_PREFIX + hashlib.sha256(owner_id.encode("utf-8", "surrogatepass")).hexdigest()


# -- values --------------------------------------------------------------------------------


def encode(value: object) -> bytes:
    return packb(value)


def decode(raw: bytes) -> object:
    """The value msgpack reads in *raw*, or None for anything it cannot read."""
    try:
        return unpackb(raw)
    except NotMsgpackError:
        return None


def lease_record(
    owner_id: str,
    container_id: str | None,
    ifname: str | None,
    allocated_at: float | None,
    *,
    migrated: bool = False,
) -> bytes:
    """The encoded record of an address held by *owner_id* ("" for an anonymous owner)."""
    record: Record = {"id": owner_id, "container_id": container_id, "ifname": ifname, "allocated_at": allocated_at}
    if migrated:
        record["migrated"] = True
    return encode(record)


def gateway_record(version: int) -> bytes:
    return encode({"id": GATEWAY_OWNER[version]})


def owner_of(record: object) -> str | None:
    """The owner id recorded for an address, or None for a record we do not understand."""
    if isinstance(record, dict):
        owner = record.get("id")
        return owner if isinstance(owner, str) else None
    return None


# -- reading a bucket ----------------------------------------------------------------------


def read_record(tx: Tx, address: str) -> Record | None:
    """The record of *address* in the bucket *tx*: None when absent, ``{"id": None}`` when
    it cannot be read (the address stays taken, by nobody we can name)."""
    pair = tx.find(address)
    if pair is None:
        return None
    return as_record(decode(pair.value))


def as_record(value: object) -> Record:
    """A decoded address value as a record (``{"id": None}`` for anything but a map)."""
    return value if isinstance(value, dict) else {"id": None}


def address_records(tx: Tx) -> list[tuple[str, object]]:
    """(key, decoded value) of every address key of the bucket *tx*, in key order.  Scans."""
    return [(pair.key, decode(pair.value)) for pair in tx.list("") if is_address_key(pair.key)]


def read_last_known(tx: Tx, version: int) -> Address | None:
    """The address the walk continues after, or None (none recorded, or unreadable).

    Read as a hint: concurrent ADDs all rewrite the pointer, and conflicting over it
    would make them re-run even when they claim different addresses.  The claim itself
    is checked (the address must still be free at commit), whatever the pointer said.
    """
    pair = tx.find_hint(LAST_KNOWN_KEY[version])
    return None if pair is None else parse_address(decode(pair.value), version)


def held_in(tx: Tx, owner_id: str) -> str | None:
    """The address *owner_id* holds in the bucket *tx*, found by its index entry, or None.

    An index entry is never trusted alone: when it names an address the id does not hold
    (damaged, or edited by hand), the bucket is scanned for the id's lease, so that a DEL
    releases it and an ADD does not give the id a second address.
    """
    pair = tx.find(id_index_key(owner_id))
    if pair is None:
        return None
    address = decode(pair.value)
    if not isinstance(address, str) or parse_address(address) is None:
        address = None  # not even an address: damaged
    if address is not None and owner_of(read_record(tx, address)) == owner_id:
        return address
    for key, value in address_records(tx):
        if owner_of(value) == owner_id:
            return key
    return None  # a stale index entry: the address went to someone else


# -- writing a bucket ----------------------------------------------------------------------


def write_index(tx: Tx, owner_id: str, address: str) -> None:
    tx.put(id_index_key(owner_id), encode(address))


def drop_index(tx: Tx, owner_id: str, address: str | None = None) -> None:
    """Remove *owner_id*'s index entry; with *address*, only if it names that address."""
    key = id_index_key(owner_id)
    if address is None:
        tx.delete(key)
        return
    index = tx.find(key)
    if index is not None and decode(index.value) == address:
        tx.delete(key)


def drop_index_naming(tx: Tx, address: str) -> None:
    """Remove every index entry that names *address* (its record is unreadable, so the
    owner is unknown).  Scans the index: for an operator's release, not the plugin's."""
    for prefix in INDEX_PREFIXES:
        for pair in tx.list(prefix):
            if decode(pair.value) == address:
                tx.delete(pair.key)


def write_last_known(tx: Tx, version: int, address: str) -> None:
    tx.put(LAST_KNOWN_KEY[version], encode(address))
