#!/usr/bin/env python3
"""Show what an ecs-ipam database holds, without ever writing to it.

    python tools/dump_db.py [--db PATH] [--bucket NAME] [--json]

Without ``--bucket``: one line per bucket with its number of entries.  With
``--bucket``: one line per pair, ``key=<key> - value=<value>``, the lines the Go
plugin's README had users print with a hand-written Go program.  An address's record
shows as its owner id, a msgpack string as its text, anything else as its Python repr.

``--json`` prints the same as one JSON document, with each value fully decoded.

The database is opened read-only: no file is ever created, and the listing works while
plugins are writing (it shows the last committed state).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script from a checkout: use the package of the same tree, installed or not.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ecs_ipam import kv
from ecs_ipam.config import DEFAULT_DB_PATH
from ecs_ipam.errors import ECSIPAMError
from ecs_ipam.kv.dbfile import file_kind
from ecs_ipam.minipack import NotMsgpackError, unpackb

PROG = "dump_db.py"


class DumpError(Exception):
    """A condition that ends the listing with a one-line message and exit code 1."""


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


def open_database(path: str, bucket: str = "IPAM") -> kv.Store:
    """Open *bucket* of the database at *path* read-only.

    :raises DumpError: *path* holds a bolt file of the Go plugin.
    :raises DatabaseNotFoundError: nothing at *path*.
    :raises StoreError: *path* cannot be read as an LMDB database.
    """
    if file_kind(path) == "bolt":
        raise DumpError(
            f"{path} is a bolt database of the Go ecs-ipam plugin, not LMDB; convert it with tools/migrate_boltdb.py"
        )
    return kv.open_store(path, bucket, read_only=True)


def bucket_counts(path: str) -> list[tuple[str, int | None]]:
    """Every bucket of the database with its number of entries, counted in one snapshot
    (None for a name that is not UTF-8: no bucket of ours, and the API cannot open it)."""
    with open_database(path) as store:
        names = store.buckets()
        with store.transaction(write=False) as tx:
            return [(shown(name), len(tx.bucket(name).list()) if shown(name) == name else None) for name in names]


def bucket_pairs(path: str, bucket: str) -> list[kv.KVPair]:
    """Every pair of *bucket*, sorted by key.

    :raises DumpError: the bucket does not exist.
    """
    with open_database(path, bucket) as store:
        names = store.buckets()
        if bucket not in names:
            known = ", ".join(names) if names else "none"
            raise DumpError(f"no bucket {bucket!r} in {path} (buckets: {known})")
        return store.list()


def print_buckets(counts: list[tuple[str, int | None]], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"buckets": [{"name": n, "entries": c} for n, c in counts]}, indent=2))
        return
    width = max((len(name) for name, _ in counts), default=0)
    for name, count in counts:
        if count is None:
            print(f"{name:<{width}}  (name not UTF-8: not read)")
        else:
            print(f"{name:<{width}}  {count} {'entry' if count == 1 else 'entries'}")


def print_pairs(bucket: str, pairs: list[kv.KVPair], as_json: bool) -> None:
    if as_json:
        document = {"bucket": bucket, "entries": [entry_json(pair) for pair in pairs]}
        print(json.dumps(document, indent=2, default=_json_fallback))
        return
    for pair in pairs:
        print(f"key={shown(pair.key)} - value={value_text(pair.value)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="List the buckets of an ecs-ipam database, or the pairs of one bucket (read-only).",
    )
    parser.add_argument(
        "--db",
        default=os.environ.get("IPAM_DB_PATH") or DEFAULT_DB_PATH,
        help="database file (default: $IPAM_DB_PATH, else %(default)s)",
    )
    parser.add_argument("--bucket", help="list the pairs of this bucket, e.g. 169.254.172.0/22")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """List the database named on the command line.

    :param argv: the arguments, without the program name (default: ``sys.argv[1:]``).
    :return: 0, or 1 when the database or bucket cannot be read (message on stderr).
    :raises SystemExit: 2 on invalid arguments, from argparse.
    """
    args = parse_args(argv)
    try:
        if args.bucket is None:
            print_buckets(bucket_counts(args.db), args.json)
        else:
            print_pairs(args.bucket, bucket_pairs(args.db, args.bucket), args.json)
    except (DumpError, ECSIPAMError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # "dump_db.py ... | head": the reader has what it wanted.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)
