"""The IPAM core: ADD, DEL, CHECK, GC and STATUS over a store, and the embedded API.

The module functions take parsed values and a :class:`ecs_ipam.kv.Store`; each runs as
one transaction whose body is a pure function of what it reads, so an optimistic backend
may re-run it.  :class:`IPAM` wraps them for embedding: it parses the configuration,
opens the database and applies the version rules of the CNI specification.
"""

from __future__ import annotations

import time

from .allocator import Owner, PoolAllocator, overlapping_buckets, releases_within
from .config import DEFAULT_TIMEOUT, Attachment, NetConf, Pool, attachment_of, parse_netconf
from .errors import (
    BoltDatabaseError,
    DatabaseNotFoundError,
    IncompatibleVersionError,
    InvalidConfigError,
    NotAvailableError,
    ReservationMismatchError,
    quoted,
)
from .pool_store import LEGACY_BUCKET, attachment_index_key, id_index_key, is_attachment_record, pool_of_bucket
from .results import Allocation, format_result, result_addresses

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from .addr import Address
    from .kv.base import Store, Tx


def _allocator(tx: Tx, pool: Pool, names: list[str], write: bool = True) -> PoolAllocator:
    """The allocator of *pool* in transaction *tx*.

    :param names: the database's bucket names, read once per transaction: the pools
        whose subnets overlap this one's share its address space.
    """
    overlapping = overlapping_buckets(tx, pool, names)
    # Leases migrated from the Go plugin wait in their bucket until a config names their
    # subnet; taking them first keeps them from being handed out a second time.  Only a
    # migrated host pays for importing the code that does it.
    # The names tell for free whether there was ever a migration: only then is the
    # bucket listed (on etcd, each listing is a request).
    waiting = tx.bucket(LEGACY_BUCKET).list("") if LEGACY_BUCKET in names else []
    if waiting:
        from .legacy import adopt

        return PoolAllocator(pool, adopt(tx, pool, write, waiting), overlapping)
    return PoolAllocator(pool, tx.bucket(pool.bucket), overlapping)


def add(store: Store, conf: NetConf, owner: Owner, now: float) -> list[Allocation]:
    """Claim one address in every pool of *conf* for *owner*: all of them or none.

    On a store whose commits can end with their outcome unknown (etcd), an ADD retried
    for the same attachment (id, container id, interface) answers what it holds.
    :raises IdAlreadyAllocatedError, AddressInUseError, PoolExhaustedError: nothing is claimed.
    """
    # A store of the embedding program's own may not have the attribute: sure commits.
    repeat = getattr(store, "uncertain_commits", False)

    def body(tx: Tx) -> list[Allocation]:
        allocations = []
        names = tx.buckets()
        for pool in conf.pools:
            allocator = _allocator(tx, pool, names)
            allocator.reserve_gateway()
            held = allocator.held_for(owner) if owner.attachment else None
            allocations.append((pool, held or allocator.allocate(owner, now, repeat)))
        return allocations

    return store.transact(body)


def owner_key(conf: NetConf, attachment: Attachment | None = None) -> str | None:
    """The index key of the owner *conf* names: its id's, or with ``"owner": "attachment"``
    *attachment*'s; None when anonymous."""
    if conf.by_attachment:
        if attachment is None:
            raise InvalidConfigError('ipam.owner "attachment" needs the attachment (container id and ifname)')
        return attachment_index_key(attachment.container_id, attachment.ifname)
    return None if conf.owner_id is None else id_index_key(conf.owner_id)


def delete(store: Store, conf: NetConf, attachment: Attachment | None = None) -> list[str]:
    """Release the pools' fixed addresses and whatever the config's owner holds.

    The owner is the config's id, or with ``"owner": "attachment"`` *attachment*.
    Releasing what is not held is not an error.  When both an owner and a fixed address
    are given, the fixed address is released only if that owner holds it.
    :return: the released addresses.
    """
    key = owner_key(conf, attachment)

    def body(tx: Tx) -> list[str]:
        released: list[str] = []
        names = tx.buckets()
        for pool in conf.pools:
            allocator = _allocator(tx, pool, names)
            if pool.fixed_address is not None:
                address = str(pool.fixed_address.ip)
                if allocator.release(address, key=key):
                    released.append(address)
            if key is not None:
                released += allocator.release_owner(key)
        if key is not None:
            released += _release_in_other_pools(tx, names, key)
        if conf.owner_id is not None and LEGACY_BUCKET in names:
            # Only a host migrated from the Go plugin pays for this (and imports it).
            from .legacy import release_waiting

            released += release_waiting(tx, conf.owner_id)
        return released

    return store.transact(body)


def _release_in_other_pools(tx: Tx, names: list[str], key: str) -> list[str]:
    """Release what the owner of index *key* holds in the pool buckets the configuration
    does not reach.

    The Go plugin releases an id in its whole database, and the ECS agent counts on it:
    its newer path adds a task dual-stack but may build the DEL from what exists at DEL
    time, IPv4 only (after a reboot emptied /var/run/netns).  One index lookup per pool
    bucket, not a scan of leases; a bucket that holds nothing for the id is only read.
    Each release is the one a DEL naming that pool would make (its walk continues after
    the released address).
    """
    released = []
    for name in names:
        # Pool buckets are named by a CIDR; the cheap test skips the others before a read.
        if "/" not in name:
            continue
        bucket = tx.bucket(name)
        if not bucket.exists(key):
            continue
        pool = pool_of_bucket(name)
        if pool is not None:
            released += PoolAllocator(pool, bucket).release_owner(key)
    return released


def check(store: Store, conf: NetConf, attachment: Attachment | None = None) -> None:
    """Verify that the config's owner still holds, in every pool, what prevResult says.

    The owner is the config's id, or with ``"owner": "attachment"`` *attachment*.
    Without either, every prevResult address of each pool must still be held anonymously.
    :raises ReservationMismatchError: a reservation is missing or differs.
    """
    previous = result_addresses(conf.prev_result) if conf.prev_result else []
    key = owner_key(conf, attachment)
    if key is None:
        _check_anonymous(store, conf, previous)
        return
    if attachment is not None and conf.by_attachment:
        who = f"attachment {quoted(attachment.container_id)}/{quoted(attachment.ifname)}"
    else:
        who = f"id {quoted(conf.owner_id)}"

    def body(tx: Tx) -> None:
        names = tx.buckets()
        for pool in conf.pools:
            found = _allocator(tx, pool, names, write=False).held_anywhere(key)
            held = None if found is None else found[0]
            if held is None:
                raise ReservationMismatchError(f"{who} holds no address in {pool.subnet}")
            expected = [str(ip) for ip in previous if ip in pool.subnet]
            if expected and held not in expected:
                raise ReservationMismatchError(
                    f"{who} holds {held} in {pool.subnet}, prevResult says {', '.join(expected)}"
                )

    store.transact(body, write=False)


def _check_anonymous(store: Store, conf: NetConf, previous: list[Address]) -> None:
    def body(tx: Tx) -> None:
        names = tx.buckets()
        for pool in conf.pools:
            expected = [str(ip) for ip in previous if ip in pool.subnet]
            if not expected:
                raise ReservationMismatchError(f"no id and no prevResult address in {pool.subnet}: nothing to check")
            allocator = _allocator(tx, pool, names, write=False)
            for address in expected:
                found = allocator.holder(address)
                if found is None or found[1].get("id") != "" or is_attachment_record(found[1]):
                    raise ReservationMismatchError(f"{address} in {pool.subnet} is not held anonymously any more")

    store.transact(body, write=False)


def gc(store: Store, conf: NetConf) -> list[str]:
    """Release every reservation whose recorded attachment is not in the valid list.

    Reservations recorded without a container id (the ECS agent's own calls) and the
    gateway are never collected.  On a store that limits the writes of a transaction
    (etcd), they are released in batches, each a complete transaction of its own,
    until none is left.
    :return: the released addresses.
    """
    valid = {(a.container_id, a.ifname) for a in conf.valid_attachments or ()}
    batch = None if store.max_writes is None else releases_within(store.max_writes, len(conf.pools))

    def body(tx: Tx) -> list[str]:
        released: list[str] = []
        names = tx.buckets()
        for pool in conf.pools:
            allocator = _allocator(tx, pool, names)
            for address, record in allocator.reservations():
                if len(released) == batch:
                    return released
                container_id = record.get("container_id")
                if not container_id or (container_id, record.get("ifname") or "") in valid:
                    continue
                if allocator.release(address, record["id"]):
                    released.append(address)
        return released

    released: list[str] = []
    while True:
        done = store.transact(body)
        released += done
        if batch is None or len(done) < batch:
            return released


def status(store: Store, conf: NetConf) -> None:
    """:raises NotAvailableError: a pool of *conf* has no free address."""

    def body(tx: Tx) -> None:
        names = tx.buckets()
        for pool in conf.pools:
            allocator = _allocator(tx, pool, names, write=False)
            if allocator.free() <= 0:
                raise NotAvailableError(f"no free address left in {pool.subnet}")

    store.transact(body, write=False)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _require_version(conf: NetConf, command: str, minimum: str) -> None:
    if _version(conf.cni_version) < _version(minimum):
        raise IncompatibleVersionError(f"{command} needs cniVersion {minimum} or later, got {conf.cni_version}")


class IPAM:
    """The plugin's core, for embedding.

    Each method takes the network configuration as a dict (as the plugin reads it from
    stdin) or an already parsed :class:`~ecs_ipam.config.NetConf`, and raises the
    exceptions of :mod:`ecs_ipam.errors`.  A failed call leaves the database unchanged.

    :param db_path: the database: an LMDB file path (created on first ADD).  A bolt file
        of the Go plugin found there is migrated on first use (:mod:`ecs_ipam.migrate`).
        Or an ``etcd://`` / ``etcds://`` URL (see :func:`ecs_ipam.kv.open_store`).
    :param timeout: seconds to wait for another writer before StoreTimeoutError.
    :param environ: where an etcd URL's ``IPAM_ETCD_*`` settings are read (default:
        the process environment).
    :param report: called with a line saying what a migration of a bolt file did and
        where the bolt file is kept (the plugin logs it).
    """

    def __init__(
        self,
        db_path: str,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
        report: Callable[[str], None] | None = None,
    ) -> None:
        self.db_path = db_path
        self.timeout = timeout
        self._clock = clock
        self._environ = environ
        self._report = report
        self._store: Store | None = None

    def __enter__(self) -> IPAM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database, if it was opened."""
        if self._store is not None:
            store, self._store = self._store, None
            store.close()

    def _open(self, create: bool) -> Store | None:
        """The store, opened on first use; None when there is no database and *create* is false."""
        if self._store is None:
            try:
                try:
                    self._store = self._open_store(create)
                except BoltDatabaseError:
                    # The Go plugin's bolt file: migrate it (a no-op if another process
                    # just did), then open what is there now.
                    from .migrate import migrate_in_place

                    migrate_in_place(self.db_path, self.timeout, report=self._report)
                    self._store = self._open_store(create)
            except DatabaseNotFoundError:
                if create:
                    raise
                return None
        return self._store

    def _open_store(self, create: bool) -> Store:
        from . import kv

        return kv.open_store(self.db_path, timeout=self.timeout, create=create, environ=self._environ)

    def add(
        self, netconf: Mapping[str, Any] | NetConf, container_id: str | None = None, ifname: str | None = None
    ) -> dict[str, Any]:
        """Allocate the addresses of *netconf* and return the CNI result the plugin prints.

        Without an id (absent or ``""``) the lease is anonymous: a DEL by address releases it.

        :raises IdAlreadyAllocatedError: the id already holds an address in a pool.
        :raises AddressInUseError: the fixed address or the gateway is held by someone else.
        :raises PoolExhaustedError: a pool has no free address.
        """
        conf = _parsed(netconf)
        if conf.by_attachment:
            attachment_of("ADD", container_id, ifname)
        # Without an id the lease is anonymous, as in the original plugin.
        owner = Owner(conf.owner_id or "", container_id, ifname, conf.by_attachment)
        store = self._open(create=True)
        assert store is not None  # with create=True, _open raises instead of answering None
        allocations = add(store, conf, owner, self._clock())
        return format_result(conf.cni_version, allocations)

    def delete(
        self, netconf: Mapping[str, Any] | NetConf, container_id: str | None = None, ifname: str | None = None
    ) -> list[str]:
        """Release what *netconf*'s id (or fixed address) holds; idempotent.

        With ``"owner": "attachment"``, what the attachment (*container_id*, *ifname*,
        which only such a configuration uses) holds, in every pool of the database; no id
        or address is needed.
        :return: the released addresses ([] when nothing was held or there is no database).
        :raises InvalidEnvironmentError: ``"owner": "attachment"`` without *container_id*
            or *ifname*.
        """
        conf = _parsed(netconf)
        attachment = attachment_of("DEL", container_id, ifname) if conf.by_attachment else None
        if attachment is None and conf.owner_id is None and all(pool.fixed_address is None for pool in conf.pools):
            raise InvalidConfigError("ip address (ipv4 or ipv6) and id can not all be empty for deletion")
        store = self._open(create=False)
        return [] if store is None else delete(store, conf, attachment)

    def check(
        self, netconf: Mapping[str, Any] | NetConf, container_id: str | None = None, ifname: str | None = None
    ) -> None:
        """Verify the reservation still matches (cniVersion 0.4.0 and later).

        With ``"owner": "attachment"``, the reservation of the attachment (*container_id*,
        *ifname*, which only such a configuration uses).
        :raises ReservationMismatchError: it does not.
        :raises InvalidEnvironmentError: ``"owner": "attachment"`` without *container_id*
            or *ifname*.
        """
        conf = _parsed(netconf)
        _require_version(conf, "CHECK", "0.4.0")
        attachment = attachment_of("CHECK", container_id, ifname) if conf.by_attachment else None
        store = self._open(create=False)
        if store is None:
            raise ReservationMismatchError(f"no database at {self.db_path}: nothing is reserved")
        check(store, conf, attachment)

    def gc(self, netconf: Mapping[str, Any] | NetConf) -> list[str]:
        """Release reservations of attachments not in ``cni.dev/valid-attachments`` (1.1.0).

        :return: the released addresses.
        """
        conf = _parsed(netconf)
        _require_version(conf, "GC", "1.1.0")
        if conf.valid_attachments is None:
            raise InvalidConfigError("cni.dev/valid-attachments is required for GC")
        store = self._open(create=False)
        return [] if store is None else gc(store, conf)

    def status(self, netconf: Mapping[str, Any] | NetConf) -> None:
        """Return if an ADD could be served now (1.1.0).

        :raises NotAvailableError: a pool is exhausted.
        """
        conf = _parsed(netconf)
        _require_version(conf, "STATUS", "1.1.0")
        store = self._open(create=False)
        if store is not None:
            status(store, conf)


def _parsed(netconf: Mapping[str, Any] | NetConf) -> NetConf:
    return netconf if isinstance(netconf, NetConf) else parse_netconf(netconf)
