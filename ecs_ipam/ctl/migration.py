"""``ecs-ipamctl migrate``: the Go plugin's bolt database into an LMDB database, offline.

The plugin does the same by itself the first time it finds a bolt file at
``IPAM_DB_PATH``; this command is for doing it ahead of time, or into another file.
In place (no other destination, or the source itself), the source becomes the LMDB
database and the bolt file is kept beside it (:func:`ecs_ipam.migrate.backup_path`).
Into another destination, the pairs are added to it (created if missing) and the source
is left as it is.  Either way the pairs land verbatim in bucket ``go-plugin-IPAM``.

The output is one ``key=<key> - value=<value>`` line per pair moved, then a summary;
a dry run prints the same lines and writes nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import OperatorRequestError
from ..kv.dbfile import file_kind
from ..migrate import backup_path, conflicts, copy_into, migrate_in_place, plural, read_locked
from ..pool_store import LEGACY_BUCKET

if TYPE_CHECKING:
    from collections.abc import Callable


def migrate(src: str, dest: str, timeout: float, dry_run: bool, report: Callable[[str], None]) -> str:
    """Migrate the bolt file *src* into *dest* (in place when they name the same file).

    :param timeout: seconds to wait for a running Go plugin to release *src*.
    :param report: called with the summary line of a migration that wrote something
        (the tool logs it).
    :return: the text to print.
    :raises OperatorRequestError: *src* holds no bolt file, or *dest* records differently.
    """
    kind = file_kind(src)
    if kind == "lmdb" and _in_place(src, dest):
        return f"{src} is already an ecs-ipam LMDB database; nothing to migrate\n"
    if kind == "missing":
        raise OperatorRequestError(f"no file at {src}")
    if kind != "bolt":
        raise OperatorRequestError(f"{src} is not a bolt database of the Go plugin")
    if dry_run:
        return _dry_run(src, dest, timeout)
    if _in_place(src, dest):
        summaries: list[str] = []
        pairs = migrate_in_place(src, timeout, report=summaries.append)
        if pairs is None:
            raise OperatorRequestError(f"{src} holds no bolt database of the Go plugin")
        summary = summaries[0]
    else:
        pairs = read_locked(src, timeout)
        copy_into(pairs, dest, timeout)
        summary = f"migrated {plural(len(pairs))} from {src} into {dest} (bucket {LEGACY_BUCKET}); {src} is unchanged"
    report(summary)
    return _pair_lines(pairs) + summary + "\n"


def _dry_run(src: str, dest: str, timeout: float) -> str:
    """What a migration would move; never writes, never creates a file."""
    pairs = read_locked(src, timeout)
    if not _in_place(src, dest) and file_kind(dest) == "lmdb":
        from .. import kv

        with kv.open_store(dest, bucket=LEGACY_BUCKET, read_only=True) as store, store.transaction(write=False) as tx:
            clashes = conflicts(tx, store.buckets(), pairs)
        if clashes:
            raise OperatorRequestError(f"{dest} already records differently: {'; '.join(clashes)}")
    target = f"{src} in place (the bolt file kept as {backup_path(src)})" if _in_place(src, dest) else dest
    return _pair_lines(pairs) + f"would migrate {plural(len(pairs))} from {src} into {target}; nothing was written\n"


def _in_place(src: str, dest: str) -> bool:
    if src == dest:
        return True
    try:
        return os.path.samefile(src, dest)
    except FileNotFoundError:
        return False


def _pair_lines(pairs: dict[str, str]) -> str:
    return "".join(f"key={key} - value={value}\n" for key, value in pairs.items())
