"""The plugin as a process: the ``ecs-ipam`` console script and ``python -m ecs_ipam``.

A CNI call is a process that lives for one command, so two things the interpreter does
for long-lived programs are left out:

* the cyclic garbage collector: the call creates no cycles worth finding, and the
  collections set off by importing the plugin's modules cost more than the call's own
  work.  Disabled here, in the module only a plugin process imports, before the plugin's
  modules are;
* the teardown after the command (freeing every module and object, one by one): once
  the answer is flushed, the log line written and the database closed, nothing is left
  that the teardown would save, so the process ends with ``os._exit``.

:func:`ecs_ipam.cni.main` itself returns normally, for callers that run it in-process.
"""

from __future__ import annotations

import gc

gc.disable()

import os  # noqa: E402 - after the collector is off, as every import below
import sys  # noqa: E402

from .cni import main  # noqa: E402

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn


def run() -> NoReturn:
    """Run one CNI command and end the process with its exit code."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """End the process with *code* once stdout and stderr are flushed, skipping teardown.

    main() has closed the database (its transactions are committed and synced) and wrote
    its log lines with ``os.write``; only the standard streams may still hold bytes.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            # What the interpreter does when it cannot flush stdout at exit.
            code = code or 120
    os._exit(code)
