"""Where an etcd database keeps its buckets, markers and commit keys, and how keys travel.

Layout under ``PREFIX`` (default ``ecs-ipam``), bucket names percent-escaped so that
none contains ``/`` and no bucket's range can reach into another's::

    PREFIX/d/<bucket>/<key>     a pair; last_index is the key's mod_revision
    PREFIX/m/<bucket>           the bucket's marker, rewritten by every commit that
                                writes the bucket (buckets() lists these)
    PREFIX/c/<time>-<token>     one per commit, so that a commit whose answer was
                                lost can tell whether it was applied; swept after an hour
"""

from __future__ import annotations

import base64
import os

from ...errors import InvalidArgumentError

# A commit key only has to outlive the retries of its own commit (one timeout); an hour
# also leaves room for clocks that disagree between hosts.
COMMIT_KEY_LIFETIME = 3600


def escape_bucket(name: str) -> str:
    """The bucket name as it appears in keys: ``%`` and ``/`` percent-encoded."""
    return name.replace("%", "%25").replace("/", "%2F")


def unescape_bucket(escaped: str) -> str:
    """The inverse of :func:`escape_bucket`."""
    # Every "%" of an escaped name starts "%25" or "%2F", so decoding "%2F" first can
    # never match across two escapes.
    return escaped.replace("%2F", "/").replace("%25", "%")


def utf8(text: str, what: str) -> bytes:
    """*text* as UTF-8.

    :raises InvalidArgumentError: *text* holds lone surrogates (*what* names it).
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{what} is not valid unicode text") from None


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key above every key that starts with *prefix* (etcd's ``range_end``)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"  # etcd: every key from the start key on
    return stripped[:-1] + bytes([stripped[-1] + 1])


def b64(raw: bytes) -> str:
    """*raw* as the gateway's JSON carries bytes."""
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str | None) -> bytes:
    """The bytes of a base64 field of a gateway answer."""
    # The gateway leaves out empty fields: a missing value is an empty one.
    return base64.b64decode(text) if text else b""


class Layout:
    """Where buckets, markers and commit keys live under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.root = utf8(prefix, "etcd prefix") + b"/"
        self.markers = self.root + b"m/"
        self.commits = self.root + b"c/"

    def data_prefix(self, bucket: str) -> bytes:
        return self.root + b"d/" + escape_bucket(bucket).encode("utf-8") + b"/"

    def marker_of(self, data_prefix: bytes) -> bytes:
        return self.markers + data_prefix[len(self.root) + 2 : -1]

    def bucket_of_marker(self, marker: bytes) -> str:
        return unescape_bucket(marker[len(self.markers) :].decode("utf-8"))

    def commit_key(self, now: float) -> bytes:
        return self.commits + b"%012d-" % int(now) + os.urandom(12).hex().encode("ascii")

    def expired_commits(self, now: float) -> tuple[bytes, bytes]:
        return self.commits, self.commits + b"%012d" % max(0, int(now) - COMMIT_KEY_LIFETIME)
