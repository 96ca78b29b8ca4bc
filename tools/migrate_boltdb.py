#!/usr/bin/env python3
"""Migrate the Go ecs-ipam plugin's bolt database to ecs-ipam's LMDB database, offline.

    python tools/migrate_boltdb.py [SRC] [--db DEST] [--dry-run] [--timeout SECONDS]

The same as ``ecs-ipamctl migrate`` (:mod:`ecs_ipam.ctl.migration`), for a checkout.
Without ``--db`` (or with DEST naming SRC itself) the migration is in place: SRC becomes
the LMDB database and the bolt file is kept as ``SRC.bolt`` (``SRC.bolt.1``... when an
older backup is there).  With ``--db DEST`` the pairs are added to DEST (created if
missing) and SRC is left as it is.  Prints one ``key=<key> - value=<value>`` line per pair
moved, then a summary, which also goes to the plugin's log; ``--dry-run`` prints the same
lines and writes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script from a checkout: use the package of the same tree, installed or not.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ecs_ipam.ctl.cli import main as ctl_main

PROG = "migrate_boltdb.py"


def main(argv: list[str] | None = None) -> int:
    """Migrate the bolt file named on the command line.

    :param argv: the arguments, without the program name (default: ``sys.argv[1:]``).
    :return: 0; 1 when nothing could be migrated (message on stderr, nothing written);
        2 for a wrong command line.
    """
    return ctl_main(["migrate", *(sys.argv[1:] if argv is None else argv)], prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
