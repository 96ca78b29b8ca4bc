"""Leases migrated from the Go plugin, adopted into the bucket of their subnet on first use.

The Go plugin kept every address of every subnet in one bolt bucket, ``IPAM``, and never
recorded the subnets themselves: only the network configurations name them.  So the
migration (:mod:`ecs_ipam.migrate`) copies that bucket verbatim into the bucket
``go-plugin-IPAM``, and the first transaction that touches a pool moves the legacy pairs lying in
the pool's subnet into the pool's bucket (:mod:`ecs_ipam.pool_store` layout), in the
caller's transaction.  Until then no command can reach those addresses except through
:func:`adopt`, so none of them can be handed out twice, whichever subnet's config
arrives first.

Legacy layout (values are msgpack strings)::

    169.254.172.5        owner id, or GateWay for the gateway
    6fd00:ec2::172:5     the same for IPv6: the address prefixed with "6",
                         GateWayV6 for the gateway
    lastKnownIP          address text: the walk continues after it
    lastKnownIPv6        (the same for IPv6, without the "6" prefix)

Anything else in the bucket (a key that is no address, a value that is no string) is
never adopted and stays where it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from .addr import Address, parse_address
from .errors import StoreError
from .kv.base import KVPair, Tx
from .pool_store import (
    GATEWAY_OWNER,
    LAST_KNOWN_KEY,
    LEGACY_BUCKET,
    decode,
    encode,
    gateway_record,
    held_in,
    id_index_key,
    lease_record,
    owner_of,
    read_record,
    write_index,
    write_last_known,
)

if TYPE_CHECKING:
    from .config import Pool

GO_IPV6_KEY_PREFIX = "6"
LEGACY_GATEWAY_OWNERS = frozenset(GATEWAY_OWNER.values())


def adopt(tx: Tx, pool: Pool, write: bool = True, pairs: list[KVPair] | None = None) -> Tx:
    """Move the legacy pairs of *pool*'s subnet into its bucket; return the pool's bucket.

    Cheap when there is nothing to adopt: one scan of the (absent or empty) legacy bucket.
    Where the pool's bucket already records an address or a last-known pointer, the
    bucket wins (it is the newer truth); the legacy pair is dropped either way.

    :param tx: any bucket's view of the caller's transaction.
    :param pool: the pool the caller is about to work on.
    :param write: whether *tx* may write.  A read transaction cannot move anything, so
        it gets a read-only view of the pool's bucket with the adoptable pairs merged
        in: CHECK finds a migrated lease, STATUS counts it.
    :param pairs: the legacy bucket's pairs, when the caller has already listed them.
    :return: the view of the pool's bucket the allocator should use.
    """
    bucket = tx.bucket(pool.bucket)
    legacy = tx.bucket(LEGACY_BUCKET)
    if pairs is None:
        pairs = legacy.list("")
    if not pairs:
        return bucket
    adoption = Adoption.of(pairs, pool)
    if not adoption.legacy_keys:
        return bucket
    if not write:
        return AdoptedView(bucket, adoption.entries())
    for address, record in adoption.records.items():
        if bucket.find(address) is None:
            bucket.put(address, record)
    for owner, address in adoption.addresses_of.items():
        # Index only what the owner really got (the bucket may have held the address
        # already), and keep a live index the owner has in this pool.
        if owner_of(read_record(bucket, address)) == owner and held_in(bucket, owner) is None:
            write_index(bucket, owner, address)
    if adoption.last_known is not None and bucket.find(LAST_KNOWN_KEY[pool.version]) is None:
        write_last_known(bucket, pool.version, adoption.last_known)
    for key in adoption.legacy_keys:
        legacy.delete(key)
    if len(adoption.legacy_keys) == len(pairs):
        # The last pairs moved: the bucket goes with them, so no listing shows it empty.
        tx.drop_bucket(LEGACY_BUCKET)
    return bucket


class Adoption(NamedTuple):
    """What a pool takes from the legacy bucket, translated into the pool bucket's layout."""

    version: int
    legacy_keys: tuple[str, ...]  # the legacy pairs taken
    records: dict[str, bytes]  # address -> encoded record (tasks and gateway)
    addresses_of: dict[str, str]  # owner id -> the address its index entry names
    last_known: str | None

    @classmethod
    def of(cls, pairs: list[KVPair], pool: Pool) -> Adoption:
        """Select and translate the legacy pairs that lie in *pool*'s subnet.

        :param pairs: the legacy bucket's pairs.
        """
        version = pool.version
        subnet = pool.subnet
        last_known_key = LAST_KNOWN_KEY[version]
        legacy_keys: list[str] = []
        records: dict[str, bytes] = {}
        lowest: dict[str, Address] = {}
        last_known = None
        for pair in pairs:
            value = decode(pair.value)
            if not isinstance(value, str):
                continue
            if pair.key == last_known_key:
                address = _parse(value, version)
                if address is not None and address in subnet:
                    legacy_keys.append(pair.key)
                    last_known = str(address)
                continue
            address = legacy_key_address(pair.key, version)
            if address is None or address not in subnet:
                continue
            legacy_keys.append(pair.key)
            if value in LEGACY_GATEWAY_OWNERS:
                records[str(address)] = gateway_record(version)
                continue
            records[str(address)] = lease_record(value, None, None, None, migrated=True)
            # The Go plugin let an id hold one address per family; should a file hold
            # more, DEL by id releases the lowest and the others stay reserved until a
            # DEL by address.
            if value not in lowest or address < lowest[value]:
                lowest[value] = address
        addresses_of = {owner: str(address) for owner, address in lowest.items()}
        return cls(version, tuple(legacy_keys), records, addresses_of, last_known)

    def entries(self) -> dict[str, bytes]:
        """Every pair the pool's bucket would gain, keyed as in that bucket."""
        entries = dict(self.records)
        for owner, address in self.addresses_of.items():
            entries[id_index_key(owner)] = encode(address)
        if self.last_known is not None:
            entries[LAST_KNOWN_KEY[self.version]] = encode(self.last_known)
        return entries


def release_waiting(tx: Tx, owner_id: str) -> list[str]:
    """Release the migrated pairs *owner_id* holds that still wait for their subnet.

    A DEL by id releases the id in the whole database, as the Go plugin did in its one
    bucket; a pair waiting here belongs to a subnet no configuration has named yet.
    :param tx: any bucket's view of the caller's (write) transaction.
    :return: the released addresses.
    """
    legacy = tx.bucket(LEGACY_BUCKET)
    released = []
    pairs = legacy.list("")
    for pair in pairs:
        if owner_id in LEGACY_GATEWAY_OWNERS or decode(pair.value) != owner_id:
            continue
        address = legacy_key_address(pair.key, 4) or legacy_key_address(pair.key, 6)
        if address is not None:
            legacy.delete(pair.key)
            released.append(str(address))
    if pairs and len(released) == len(pairs):
        tx.drop_bucket(LEGACY_BUCKET)
    return released


def drop_if_empty(tx: Tx) -> None:
    """Drop the legacy bucket once nothing waits in it any more.

    :param tx: any bucket's view of the caller's (write) transaction.
    """
    if not tx.bucket(LEGACY_BUCKET).list(""):
        tx.drop_bucket(LEGACY_BUCKET)


def legacy_key_address(key: str, version: int) -> Address | None:
    """The address a legacy key names in the given family, or None (other family, no address)."""
    if version == 6:
        if not key.startswith(GO_IPV6_KEY_PREFIX) or ":" not in key:
            return None
        return _parse(key[len(GO_IPV6_KEY_PREFIX) :], 6)
    if ":" in key or not key[:1].isdigit():
        return None
    return _parse(key, 4)


def _parse(text: str, version: int) -> Address | None:
    # Data, not configuration: no message to phrase, and the fast path refuses exactly
    # what netaddr refuses (tests/test_addr.py).
    return parse_address(text, version)


class AdoptedView(Tx):
    """A read-only view of a pool's bucket with the legacy pairs it would adopt merged in.

    What the bucket holds wins over a legacy pair for the same key, as in :func:`adopt`.
    """

    def __init__(self, bucket: Tx, adopted: dict[str, bytes]) -> None:
        self._bucket = bucket
        self._adopted = adopted
        self.bucket_name = bucket.bucket_name

    def _read(self, key: str) -> KVPair | None:
        pair = self._bucket.find(key)
        if pair is None and key in self._adopted:
            return KVPair(key, self._adopted[key], 0)
        return pair

    def _scan(self, prefix: str) -> list[KVPair]:
        merged = {key: KVPair(key, value, 0) for key, value in self._adopted.items() if key.startswith(prefix)}
        merged.update((pair.key, pair) for pair in self._bucket.list(prefix))
        return [merged[key] for key in sorted(merged)]

    def _write(self, key: str, value: bytes) -> KVPair:
        raise StoreError("write in a read-only transaction")

    def _remove(self, key: str) -> bool:
        raise StoreError("write in a read-only transaction")

    def drop_bucket(self, name: str) -> bool:
        raise StoreError("write in a read-only transaction")

    def bucket(self, name: str) -> Tx:
        return self._bucket.bucket(name)

    def buckets(self) -> list[str]:
        return self._bucket.buckets()
