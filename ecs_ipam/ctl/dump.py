"""``ecs-ipamctl dump``: what a database holds, bucket by bucket, never written to.

Without a bucket: one line per bucket with its number of entries (every key counts: an
address, its id index entry, the walk's pointer).  With a bucket: one line per pair,
``key=<key> - value=<value>``, the lines the Go plugin's README had users print with a
hand-written Go program.  An address's record shows as its owner id, a msgpack string as
its text, anything else as its Python repr.  ``--json`` gives the same as one JSON
document, with each value fully decoded.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING

from .. import kv
from ..errors import OperatorRequestError
from ..kv.dbfile import file_kind
from ..minipack import NotMsgpackError, unpackb

if TYPE_CHECKING:
    from collections.abc import Mapping

# What to run on a bolt file of the Go plugin.
MIGRATE_COMMAND = "ecs-ipamctl migrate"


def decode_value(raw: bytes) -> tuple[bool, object]:
    """Decode a stored value as msgpack.

    :return: ``(True, object)``, or ``(False, raw)`` when *raw* is not one msgpack object.
    """
    try:
        return True, unpackb(raw)
    except NotMsgpackError:
        return False, raw


def value_text(raw: bytes) -> str:
    """The text of a value in a ``key=... - value=...`` line.

    An address record (a map with ``id``) shows as its owner, as the Go plugin stored it;
    one held by a CNI attachment (``"owner": "attachment"``) as
    ``attachment=<container id>/<ifname>``.
    """
    ok, value = decode_value(raw)
    if ok and isinstance(value, dict) and value.get("owner") == "attachment":
        return f"attachment={value.get('container_id')}/{value.get('ifname')}"
    if ok and isinstance(value, dict) and "id" in value:
        value = value["id"]
    if ok and isinstance(value, str):
        return value
    return repr(value)


def shown(text: str) -> str:
    """*text* as printable: bytes that were not UTF-8 in the database (a key another program
    wrote, read back as surrogate escapes) shown as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _json_fallback(value: object) -> object:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return repr(value)


def entry_json(pair: kv.KVPair) -> dict[str, object]:
    """One pair as a JSON-ready dict.

    A value that is not msgpack is given as base64 text, flagged by
    ``"value_encoding": "base64"``; bytes nested in a msgpack value are base64 text too.
    """
    ok, value = decode_value(pair.value)
    entry = {"key": shown(pair.key), "value": value, "last_index": pair.last_index}
    if not ok:
        entry["value"] = _json_fallback(pair.value)
        entry["value_encoding"] = "base64"
    return entry


def open_database(path: str, bucket: str = "IPAM", environ: Mapping[str, str] | None = None) -> kv.Store:
    """Open *bucket* of the database at *path* read-only.

    :raises OperatorRequestError: *path* holds a bolt file of the Go plugin.
    :raises DatabaseNotFoundError: nothing at *path*.
    :raises StoreError: *path* cannot be read as an LMDB database.
    """
    if file_kind(path) == "bolt":
        raise OperatorRequestError(
            f"{path} is a bolt database of the Go ecs-ipam plugin, not LMDB; convert it with {MIGRATE_COMMAND}"
        )
    return kv.open_store(path, bucket, read_only=True, environ=environ)


def bucket_counts(path: str, environ: Mapping[str, str] | None = None) -> list[tuple[str, int | None]]:
    """Every bucket of the database with its number of entries, counted in one snapshot
    (None for a name that is not UTF-8: no bucket of ours, and the API cannot open it)."""
    with open_database(path, environ=environ) as store:
        names = store.buckets()
        with store.transaction(write=False) as tx:
            return [(shown(name), len(tx.bucket(name).list()) if shown(name) == name else None) for name in names]


def bucket_pairs(path: str, bucket: str, environ: Mapping[str, str] | None = None) -> list[kv.KVPair]:
    """Every pair of *bucket*, sorted by key.

    :raises OperatorRequestError: the bucket does not exist.
    """
    with open_database(path, bucket, environ) as store:
        names = store.buckets()
        if bucket not in names:
            known = ", ".join(names) if names else "none"
            raise OperatorRequestError(f"no bucket {bucket!r} in {path} (buckets: {known})")
        return store.list()


def buckets_text(counts: list[tuple[str, int | None]], as_json: bool) -> str:
    if as_json:
        return json.dumps({"buckets": [{"name": n, "entries": c} for n, c in counts]}, indent=2) + "\n"
    width = max((len(name) for name, _ in counts), default=0)
    return "".join(
        f"{name:<{width}}  (name not UTF-8: not read)\n"
        if count is None
        else f"{name:<{width}}  {count} {'entry' if count == 1 else 'entries'}\n"
        for name, count in counts
    )


def pairs_text(bucket: str, pairs: list[kv.KVPair], as_json: bool) -> str:
    if as_json:
        document = {"bucket": bucket, "entries": [entry_json(pair) for pair in pairs]}
        return json.dumps(document, indent=2, default=_json_fallback) + "\n"
    return "".join(f"key={shown(pair.key)} - value={value_text(pair.value)}\n" for pair in pairs)
