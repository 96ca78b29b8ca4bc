"""A libkv-like key/value store, embedded: buckets of ``str`` keys and ``bytes`` values.

Public API for any agent on the host, usable concurrently with the plugin::

    from ecs_ipam import kv

    with kv.open_store("/data/eni-ipam.db", bucket="my-agent") as store:
        store.put("greeting", b"hello")
        pair = store.get("greeting")                 # KVPair(key, value, last_index)
        store.atomic_put("greeting", b"hi", previous=pair)   # compare-and-swap
        with store.transaction() as tx:             # all or nothing, across buckets
            tx.put("a", b"1")
            tx.bucket("other").delete("b")

The path selects the backend: a file path is an LMDB database (the default); the
backend behind a URL scheme is documented in the README.  See :class:`Store` for the
operations and the errors they raise.
"""

from __future__ import annotations

from ..errors import (
    BoltDatabaseError,
    CallNotSupportedError,
    CorruptDatabaseError,
    DatabaseAliasError,
    DatabaseNotFoundError,
    InvalidArgumentError,
    KeyExistsError,
    KeyModifiedError,
    KeyNotFoundError,
    NotADatabaseError,
    StoreError,
    StoreTimeoutError,
    StoreUnavailableError,
    UnsafeFileError,
)
from .base import DAMAGED_INDEX, KVPair, Store, Tx

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "KVPair",
    "DAMAGED_INDEX",
    "Store",
    "Tx",
    "open_store",
    "list_buckets",
    "StoreError",
    "KeyNotFoundError",
    "KeyExistsError",
    "KeyModifiedError",
    "CallNotSupportedError",
    "InvalidArgumentError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "DatabaseNotFoundError",
    "NotADatabaseError",
    "DatabaseAliasError",
    "BoltDatabaseError",
    "UnsafeFileError",
    "CorruptDatabaseError",
]


def open_store(
    path: str,
    bucket: str = "IPAM",
    timeout: float = 5.0,
    *,
    read_only: bool = False,
    create: bool = True,
    cacert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
    user: str | None = None,
    password: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Store:
    """Open bucket *bucket* of the database at *path*.

    :param path: an LMDB database file (created mode 0600 if missing and *create*), or
        ``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`` for a database kept in etcd
        (``etcds://`` for TLS).
    :param bucket: the bucket to work on; others are reachable with ``store.bucket(name)``.
    :param timeout: seconds a write may wait for another writer before StoreTimeoutError
        (etcd: seconds an operation may take, retries included).
    :param read_only: never write, never create a file.
    :param create: create the database if it does not exist.
    :param cacert, cert, key, user, password: etcd only: the CA bundle that verifies the
        server, the client certificate and key (PEM files), the etcd user and password.
        Each one not given is read from *environ*: ``IPAM_ETCD_CACERT``,
        ``IPAM_ETCD_CERT``, ``IPAM_ETCD_KEY``, ``IPAM_ETCD_USER``, ``IPAM_ETCD_PASSWORD``.
    :param environ: where those variables are read (default: the process environment).
    :return: a :class:`Store`, also a context manager that closes it.
    :raises DatabaseNotFoundError: no database at *path* and none may be created.
    :raises NotADatabaseError: *path* holds something else, such as a FIFO (it is left
        untouched, and never opened blocking); BoltDatabaseError: the Go plugin's bolt file.
    :raises UnsafeFileError: the file or its lock file belongs to another user, or group or
        others may write it.
    :raises InvalidEnvironmentError: etcd: a certificate or key file cannot be read or
        used, or the settings do not go together (the message names the variable).
    :raises StoreError: the database cannot be opened (etcd: it refused the user or the
        TLS handshake, or the server is not trusted).
    """
    if isinstance(path, str) and path.startswith(("etcd://", "etcds://")):
        # Imported here: the LMDB path must not pay for the etcd client.
        from .etcd import EtcdStore

        return EtcdStore(
            path,
            bucket,
            timeout,
            read_only=read_only,
            create=create,
            cacert=cacert,
            cert=cert,
            key=key,
            user=user,
            password=password,
            environ=environ,
        )
    from .lmdb_store import LMDBStore

    return LMDBStore(path, bucket, timeout, read_only=read_only, create=create)


def list_buckets(path: str, **etcd_options: str | None) -> list[str]:
    """Return the sorted names of the buckets in the database at *path* (read-only).

    :param etcd_options: as :func:`open_store`'s ``cacert``... ``password``.
    :raises DatabaseNotFoundError: no database at *path*.
    """
    with open_store(path, read_only=True, **etcd_options) as store:  # type: ignore[arg-type]
        return store.buckets()
