"""A file that keeps an etcd auth token for the next plugin process (opt-in).

etcd checks a password with bcrypt, on purpose slow: about 57 ms of its CPU for each
``/v3/auth/authenticate`` at its default cost, which every plugin process (one per
container) would pay.  With ``IPAM_ETCD_TOKEN_CACHE=PATH`` a process reuses the token
the previous one got, until etcd refuses it (it expired, the member restarted, the
password changed): then it authenticates again and rewrites the file.

What makes that safe:

* The file holds a token, never the password.  A token expires (etcd's
  ``--auth-token-ttl``, 5 minutes by default for simple tokens, the ``ttl`` of JWT ones)
  and grants what the user's password grants; anyone who can read the file as its owner
  can read the plugin's environment, password included, already.
* It is written mode 0600 to a new file beside PATH, then renamed over PATH, so a reader
  never sees half a file and the mode holds from the first byte whatever the umask.
* It is used only if it is a regular file (not a link), owned by the user the plugin runs
  as, readable by nobody else, in a folder that nobody else can write to (else another
  user could put a file of their own there); otherwise it is ignored and left alone.
* It names the user and the endpoint the token came from: a token of another user, or
  of an endpoint the URL does not name, is never sent.

Any problem with the file (missing, unreadable, a full disk) only costs an
authentication: it never fails a command.
"""

from __future__ import annotations

import json
import os
import stat


def _trusted(path: str, fd: int) -> bool:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        return False
    folder = os.stat(os.path.dirname(os.path.abspath(path)))
    return folder.st_uid in (0, os.geteuid()) and not folder.st_mode & 0o022


def load(path: str, user: str, endpoints: list[str]) -> tuple[str, str] | None:
    """``(endpoint, token)`` kept for *user* at one of *endpoints*, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not _trusted(path, fd):
            return None
        with os.fdopen(os.dup(fd), "rb") as file:
            kept = json.loads(file.read(65536))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(kept, dict) or kept.get("user") != user or kept.get("endpoint") not in endpoints:
        return None
    token = kept.get("token")
    return (kept["endpoint"], token) if isinstance(token, str) and token else None


def save(path: str, user: str, endpoint: str, token: str) -> None:
    """Keep *token* of *user*, got from *endpoint*, in the file at *path* (mode 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        info = os.stat(folder)
        if info.st_uid not in (0, os.geteuid()) or info.st_mode & 0o022:
            return  # a folder others can write to: never leave a token there
        temporary = f"{path}.{os.getpid()}.{os.urandom(4).hex()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(json.dumps({"user": user, "endpoint": endpoint, "token": token}).encode())
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError:
        pass  # the next process authenticates: slower, never wrong
