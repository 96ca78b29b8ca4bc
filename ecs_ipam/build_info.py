"""Where ``ecs-ipam --version`` learns its git state.

An installed package carries ``_build.py``, written by ``setup.py`` at build time; a
source checkout asks git.  Either way this runs only for ``--version``.
"""

from __future__ import annotations

import os
import subprocess


def git_state() -> tuple[bool, str]:
    """Return ``(dirty, short_hash)``; ``(False, "")`` when unknown."""
    try:
        # Written by setup.py into the built package only: a checkout never has it.
        from ._build import DIRTY, GIT_SHORT_HASH

        return bool(DIRTY), str(GIT_SHORT_HASH)
    except ImportError:
        pass
    return read_git_state(os.path.dirname(os.path.abspath(__file__)))


def read_git_state(directory: str) -> tuple[bool, str]:
    """Ask git about the checkout that contains *directory*."""
    try:
        short_hash = subprocess.run(
            ["git", "-C", directory, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", directory, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False, ""
    return bool(changes), short_hash
