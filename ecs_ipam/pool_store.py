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
    at/<container id>/<ifname>
                       msgpack str: the address a CNI attachment holds ("owner":
                       "attachment"; its record has the id "" and "owner": "attachment")
    at#<sha256>        the same for an attachment unfit for a readable key

Everything that reads or writes a pool bucket goes through here: the allocator's walk
(:mod:`ecs_ipam.allocator`), legacy adoption (:mod:`ecs_ipam.legacy`), the operator tool
(:mod:`ecs_ipam.ctl.leases`) and the migration (:mod:`ecs_ipam.migrate`).  The database
holds other buckets too: :data:`LEGACY_BUCKET`, and whatever other programs keep there.
"""

from __future__ import annotations

from .addr import Address, Network, format_address, parse_address, parse_network
from .config import ATTACHMENT_OWNER, MAX_PREFIX, Pool
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
# The owner of an allocation made with "owner": "attachment" is the CNI attachment
# (container id, interface).  It gets an entry in the same index as an id, so that every
# path that finds, checks and releases an owner (its pool's bucket, overlapping pools,
# every pool of the database) serves it unchanged: they all work on an "owner key", the
# index key.  An attachment's entries live under their own prefixes: an id's key always
# starts with "id/" or "id#", so no ECS id, whatever its text, can name an attachment's
# entry or the other way round.
ATTACHMENT_INDEX_PREFIX = "at/"
HASHED_ATTACHMENT_INDEX_PREFIX = "at#"
INDEX_PREFIXES = (ID_INDEX_PREFIX, HASHED_ID_INDEX_PREFIX, ATTACHMENT_INDEX_PREFIX, HASHED_ATTACHMENT_INDEX_PREFIX)
# The record field that marks an attachment's lease (its value: ATTACHMENT_OWNER).
OWNER_FIELD = "owner"
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


def attachment_index_key(container_id: str, ifname: str) -> str:
    """The index key of the attachment (*container_id*, *ifname*)."""
    key = f"{ATTACHMENT_INDEX_PREFIX}{container_id}/{ifname}"
    # A "/" in the container id would make two attachments one text; libcni never sends
    # one, but the key must stay unambiguous whatever arrives.
    if "/" not in container_id and len(key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES and key.isprintable():
        return key
    import hashlib

    return HASHED_ATTACHMENT_INDEX_PREFIX + hashlib.sha256(encode([container_id, ifname])).hexdigest()


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
    attachment: bool = False,
) -> bytes:
    """The encoded record of an address held by *owner_id* ("" for an anonymous owner, and
    for an *attachment*'s lease, which the attachment owns)."""
    record: Record = {"id": owner_id, "container_id": container_id, "ifname": ifname, "allocated_at": allocated_at}
    if migrated:
        record["migrated"] = True
    if attachment:
        record[OWNER_FIELD] = ATTACHMENT_OWNER
    return encode(record)


def gateway_record(version: int) -> bytes:
    return encode({"id": GATEWAY_OWNER[version]})


def owner_of(record: object) -> str | None:
    """The owner id recorded for an address, or None for a record we do not understand."""
    if isinstance(record, dict):
        owner = record.get("id")
        return owner if isinstance(owner, str) else None
    return None


def is_attachment_record(record: object) -> bool:
    """Whether *record* is an address held by an attachment (``"owner": "attachment"``)."""
    return isinstance(record, dict) and record.get(OWNER_FIELD) == ATTACHMENT_OWNER


def owner_key(record: object) -> str | None:
    """The index key of the owner an address record names: its attachment's or its id's;
    None for an anonymous lease, or a record we do not understand."""
    if isinstance(record, dict) and record.get(OWNER_FIELD) == ATTACHMENT_OWNER:
        container_id, ifname = record.get("container_id"), record.get("ifname")
        if isinstance(container_id, str) and isinstance(ifname, str):
            return attachment_index_key(container_id, ifname)
        return None
    owner = owner_of(record)
    return id_index_key(owner) if owner else None


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
    """The address *owner_id* holds in the bucket *tx*, found by its index entry, or None."""
    return held_at(tx, id_index_key(owner_id))


def held_at(tx: Tx, key: str) -> str | None:
    """The address the owner of index *key* (:func:`owner_key`) holds in the bucket *tx*,
    found by its index entry, or None.

    An index entry is never trusted alone: when it names an address the owner does not
    hold (damaged, or edited by hand), the bucket is scanned for the owner's lease, so that
    a DEL releases it and an ADD does not give the owner a second address.
    """
    pair = tx.find(key)
    if pair is None:
        return None
    address = decode(pair.value)
    if not isinstance(address, str) or parse_address(address) is None:
        address = None  # not even an address: damaged
    if address is not None and owner_key(read_record(tx, address)) == key:
        return address
    for name, value in address_records(tx):
        if owner_key(value) == key:
            return name
    return None  # a stale index entry: the address went to someone else


# -- writing a bucket ----------------------------------------------------------------------


def write_index(tx: Tx, owner_id: str, address: str) -> None:
    write_key(tx, id_index_key(owner_id), address)


def write_key(tx: Tx, key: str, address: str) -> None:
    """Record that the owner of index *key* (:func:`owner_key`) holds *address*."""
    tx.put(key, encode(address))


def drop_index(tx: Tx, owner_id: str, address: str | None = None) -> None:
    """Remove *owner_id*'s index entry; with *address*, only if it names that address."""
    drop_key(tx, id_index_key(owner_id), address)


def drop_key(tx: Tx, key: str, address: str | None = None) -> None:
    """Remove the index entry *key*; with *address*, only if it names that address."""
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
