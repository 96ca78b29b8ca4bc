#!/usr/bin/env python3
"""Show what an ecs-ipam database holds, without ever writing to it.

    python tools/dump_db.py [--db PATH] [--bucket NAME] [--json]

The same as ``ecs-ipamctl dump`` (:mod:`ecs_ipam.ctl.dump`), for a checkout: without
``--bucket``, one line per bucket with its number of entries; with ``--bucket``, one
``key=<key> - value=<value>`` line per pair; ``--json``, one JSON document.  The database
is opened read-only: no file is ever created, and the listing works while plugins are
writing (it shows the last committed state).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script from a checkout: use the package of the same tree, installed or not.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ecs_ipam.ctl.cli import main as ctl_main

PROG = "dump_db.py"


def main(argv: list[str] | None = None) -> int:
    """List the database named on the command line.

    :param argv: the arguments, without the program name (default: ``sys.argv[1:]``).
    :return: 0; 1 when the database or bucket cannot be read (message on stderr); 2 for
        a wrong command line.
    """
    return ctl_main(["dump", *(sys.argv[1:] if argv is None else argv)], prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
