#!/usr/bin/env python3
"""Migrate the Go ecs-ipam plugin's bolt database to ecs-ipam's LMDB database, offline.

    python tools/migrate_boltdb.py [SRC] [--db DEST] [--dry-run] [--timeout SECONDS]

The plugin does the same by itself the first time it finds a bolt file at
``IPAM_DB_PATH``; this tool is for doing it ahead of time, or into another file.

Without ``--db`` (or with DEST naming SRC itself) the migration is in place: SRC becomes
the LMDB database and the bolt file is kept as ``SRC.bolt``.  With ``--db DEST`` the
pairs are added to DEST (created if missing) and SRC is left as it is.  Either way the
pairs land verbatim in bucket ``go-plugin-IPAM``; the plugin moves each into the bucket of its
subnet when a configuration first names that subnet.

Prints one ``key=<key> - value=<value>`` line per pair moved, then a summary.
``--dry-run`` prints the same lines and writes nothing.  Waits for a running Go plugin
to release the file, at most ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script from a checkout: use the package of the same tree, installed or not.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ecs_ipam.config import DEFAULT_DB_PATH, DEFAULT_TIMEOUT
from ecs_ipam.errors import ECSIPAMError
from ecs_ipam.kv.dbfile import file_kind
from ecs_ipam.migrate import backup_path, conflicts, copy_into, migrate_in_place, read_locked
from ecs_ipam.pool_store import LEGACY_BUCKET

PROG = "migrate_boltdb.py"


class MigrateError(Exception):
    """A condition that ends the tool with a one-line message and exit code 1."""


def in_place(src: str, dest: str | None) -> bool:
    if dest is None:
        return True
    try:
        return os.path.samefile(src, dest)
    except FileNotFoundError:
        return False


def print_pairs(pairs: dict[str, str]) -> None:
    for key, value in pairs.items():
        print(f"key={key} - value={value}")


def plural(count: int) -> str:
    return f"{count} pair{'' if count == 1 else 's'}"


def dry_run(src: str, dest: str, timeout: float) -> None:
    """Print what a migration would move; never write, never create a file."""
    pairs = read_locked(src, timeout)
    if not in_place(src, dest) and file_kind(dest) == "lmdb":
        from ecs_ipam import kv

        with kv.open_store(dest, bucket=LEGACY_BUCKET, read_only=True) as store, store.transaction(write=False) as tx:
            clashes = conflicts(tx, store.buckets(), pairs)
        if clashes:
            raise MigrateError(f"{dest} already records differently: {'; '.join(clashes)}")
    print_pairs(pairs)
    target = f"{src} in place (the bolt file kept as {backup_path(src)})" if in_place(src, dest) else dest
    print(f"would migrate {plural(len(pairs))} from {src} into {target}; nothing was written")


def migrate(src: str, dest: str, timeout: float) -> None:
    if in_place(src, dest):
        pairs = migrate_in_place(src, timeout)
        if pairs is None:
            raise MigrateError(f"{src} holds no bolt database of the Go plugin")
        print_pairs(pairs)
        print(
            f"migrated {plural(len(pairs))} into {src} (bucket {LEGACY_BUCKET}); "
            f"the bolt file is kept as {backup_path(src)}"
        )
        return
    pairs = read_locked(src, timeout)
    copy_into(pairs, dest, timeout)
    print_pairs(pairs)
    print(f"migrated {plural(len(pairs))} from {src} into {dest} (bucket {LEGACY_BUCKET}); {src} is unchanged")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Move the Go ecs-ipam plugin's bolt database into an ecs-ipam LMDB database.",
    )
    parser.add_argument(
        "src",
        metavar="SRC",
        nargs="?",
        default=os.environ.get("IPAM_DB_PATH") or DEFAULT_DB_PATH,
        help="the bolt file (default: $IPAM_DB_PATH, else %(default)s)",
    )
    parser.add_argument("--db", metavar="DEST", help="LMDB database to add the pairs to (default: SRC, in place)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be moved, write nothing")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help="seconds to wait for a running Go plugin to release SRC (default: %(default)g)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Migrate the bolt file named on the command line.

    :param argv: the arguments, without the program name (default: ``sys.argv[1:]``).
    :return: 0, or 1 when nothing could be migrated (message on stderr, nothing written).
    :raises SystemExit: 2 on invalid arguments, from argparse.
    """
    args = parse_args(argv)
    dest = args.db if args.db is not None else args.src
    try:
        kind = file_kind(args.src)
        if kind == "lmdb" and in_place(args.src, dest):
            print(f"{args.src} is already an ecs-ipam LMDB database; nothing to migrate")
            return 0
        if kind == "missing":
            raise MigrateError(f"no file at {args.src}")
        if kind != "bolt":
            raise MigrateError(f"{args.src} is not a bolt database of the Go plugin")
        if args.dry_run:
            dry_run(args.src, dest, args.timeout)
        else:
            migrate(args.src, dest, args.timeout)
    except (MigrateError, ECSIPAMError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
