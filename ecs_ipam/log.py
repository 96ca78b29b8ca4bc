"""A minimal append-only log: one line per event, opened only when something is logged.

Logging must never change the plugin's output or exit code, so every failure to write
is swallowed.  The stdlib ``logging`` package is not used: importing and configuring it
would cost every container start a few milliseconds for one or two lines.
"""

from __future__ import annotations

import os
import time

LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "critical": 50, "off": 100}


class Log:
    def __init__(self, path: str, level: str = "info") -> None:
        self.path = path
        self.threshold = LEVELS.get(level.lower(), LEVELS["info"])

    def _write(self, level: str, message: str) -> None:
        if LEVELS[level] < self.threshold:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = f"{stamp} [{level}] pid={os.getpid()} {message}\n"
        try:
            with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(line)
        except (OSError, ValueError):
            pass

    def debug(self, message: str) -> None:
        self._write("debug", message)

    def info(self, message: str) -> None:
        self._write("info", message)

    def error(self, message: str) -> None:
        self._write("error", message)
