"""Strictly read-only reader of bolt (boltdb/bbolt) database files.

The Go ECS IPAM plugin kept its allocations in a bolt file through libkv.  This module
reads such a file so its contents can be migrated; it never writes, locks or repairs it.

Only what a migration needs is supported: the top-level buckets and the plain key/value
pairs of one of them.  Every structural inconsistency found while reading raises
:class:`~ecs_ipam.errors.CorruptDatabaseError`, so a damaged file can never produce an
``IndexError``, a ``struct.error`` or an endless loop.
"""

from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, NamedTuple, Union

from .errors import CorruptDatabaseError, DatabaseNotFoundError, KeyNotFoundError
from .kv.dbfile import BOLT_FALLBACK_PAGE_SIZE, BOLT_MAGIC, has_bolt_magic

if TYPE_CHECKING:
    from collections.abc import Iterator

    StrPath = Union[str, os.PathLike[str]]  # an alias is evaluated: no X | Y before 3.10

__all__ = ["BoltFile", "BucketNotFoundError", "has_bolt_magic", "is_bolt_file", "meta_page_starts", "read_libkv_bucket"]

# The magic and where it lies are kv.dbfile's, which tells every kind of file apart.
MAGIC = BOLT_MAGIC
VERSION = 2
# bolt takes the OS page size when it creates a file; used only when meta page 0 is bad.
_FALLBACK_PAGE_SIZE = BOLT_FALLBACK_PAGE_SIZE

_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_META = struct.Struct("<IIIIQQQQQQ")  # magic, version, page size, flags, root,
# sequence, freelist, pgid, txid, checksum
_CHECKSUMMED = _META.size - 8  # the checksum covers everything before it
_BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
_LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BUCKET_HEADER = struct.Struct("<QQ")  # root pgid, sequence

_BRANCH_PAGE, _LEAF_PAGE, _META_PAGE = 0x01, 0x02, 0x04
_BUCKET_ELEMENT = 0x01
_LIBKV_INDEX_BYTES = 8

_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


class BucketNotFoundError(CorruptDatabaseError, KeyNotFoundError):
    """The bolt file has no such top-level bucket.

    A missing bucket is reported as corruption (a migration cannot proceed) but is also a
    ``KeyNotFoundError``, so a caller can tell it apart from real damage if it wants to.
    """


class _Meta(NamedTuple):
    page_size: int
    root: int
    high_water: int  # first page id past the data; pages at or above it are unused
    txid: int


def _fnv1a64(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def _parse_meta(page: bytes) -> tuple[_Meta | None, str]:
    """Validate one meta page as bolt does; return the meta or why it is unusable."""
    if len(page) < _PAGE_HEADER.size + _META.size:
        return None, "meta page is cut short"
    _, flags, _, _ = _PAGE_HEADER.unpack_from(page)
    fields = _META.unpack_from(page, _PAGE_HEADER.size)
    magic, version, page_size, _, root, _, _, high_water, txid, checksum = fields
    if magic != MAGIC:
        return None, f"bad magic 0x{magic:08x}"
    if version != VERSION:
        return None, f"unsupported version {version}"
    body = page[_PAGE_HEADER.size : _PAGE_HEADER.size + _CHECKSUMMED]
    if checksum != _fnv1a64(body):
        return None, "bad checksum"
    if flags != _META_PAGE:
        return None, f"page flags 0x{flags:x} are not those of a meta page"
    if page_size < 512 or page_size > 1 << 20 or page_size & (page_size - 1):
        return None, f"implausible page size {page_size}"
    return _Meta(page_size, root, high_water, txid), ""


def _open_readonly(path: StrPath) -> int:
    # O_NONBLOCK: opening a FIFO that sits at the path must not wait for a writer.
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))


def is_bolt_file(path: StrPath) -> bool:
    """Tell whether a file looks like a bolt database, by the magic of its meta pages.

    This is a cheap sniff, not a validation: a damaged bolt file can still say True.

    :param path: the file to look at.
    :return: True if meta page 0 (or, failing that, page 1 at the usual 4096-byte page
        size) carries the bolt magic; False for anything else, including a missing,
        unreadable, empty or short file.
    """
    try:
        fd = _open_readonly(path)
    except (OSError, ValueError):
        return False
    try:
        return has_bolt_magic(fd)
    finally:
        os.close(fd)


def meta_page_starts(fd: int) -> list[int]:
    """Where the meta pages of the bolt file *fd* may start, as the reader looks for them:
    page 0, and page 1 at the page size meta page 0 gives (when sound) and at the usual size.
    """
    meta0, _ = _parse_meta(os.pread(fd, _PAGE_HEADER.size + _META.size, 0))
    page_size = meta0.page_size if meta0 else _FALLBACK_PAGE_SIZE
    return sorted({0, page_size, _FALLBACK_PAGE_SIZE})


class BoltFile:
    """A bolt database file opened for reading only.

    Pages are read with ``pread`` rather than mapped: the Go plugin might still be
    running and shrink or rewrite the file, and a mapping would then crash the process
    with SIGBUS instead of raising an error.  Use it as a context manager.
    """

    def __init__(self, path: StrPath) -> None:
        """Open the file read-only and select its current meta page.

        :param path: the bolt file.
        :raises DatabaseNotFoundError: if no file exists at ``path``.
        :raises CorruptDatabaseError: if neither meta page is valid or the file is
            shorter than the data it claims to hold.
        :raises OSError: if the file cannot be opened or read for another reason.
        """
        self.path = os.fspath(path)
        try:
            self._fd = _open_readonly(self.path)
        except FileNotFoundError as exc:
            raise DatabaseNotFoundError(f"no bolt file at {self.path}") from exc
        try:
            self._size = os.fstat(self._fd).st_size
            self._meta = self._select_meta()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> BoltFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file descriptor; calling it again does nothing."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def buckets(self) -> list[str]:
        """List the top-level buckets.

        Names are decoded as UTF-8; bytes that are not (bolt allows any) are kept as
        surrogate escapes, so every returned name can be passed back to :meth:`items`.

        :return: the bucket names in key order.
        :raises CorruptDatabaseError: if the root tree is damaged.
        """
        return [
            key.decode("utf-8", "surrogateescape")
            for flags, key, _ in self._walk(self._meta.root, None)
            if flags & _BUCKET_ELEMENT
        ]

    def items(self, bucket: str) -> Iterator[tuple[bytes, bytes]]:
        """Iterate over the plain key/value pairs of a top-level bucket.

        Entries that are nested buckets are skipped.

        :param bucket: the top-level bucket name.
        :return: an iterator of ``(key, value)`` raw bytes, in key order.
        :raises BucketNotFoundError: if there is no such bucket.
        :raises CorruptDatabaseError: if the bucket's tree is damaged (possibly only
            once some pairs have been yielded: pages are read as iteration goes).
        """
        root, inline = self._find_bucket(bucket)
        return ((key, value) for flags, key, value in self._walk(root, inline) if not flags & _BUCKET_ELEMENT)

    # --- internals ------------------------------------------------------------------

    def _corrupt(self, what: str) -> CorruptDatabaseError:
        return CorruptDatabaseError(f"bolt file {self.path} is corrupt: {what}")

    def _pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise self._corrupt(f"truncated: {length} bytes wanted at offset {offset}, the file has {self._size}")
        return data

    def _select_meta(self) -> _Meta:
        # Like bolt: page 0 tells the page size, and the valid meta page with the
        # highest transaction id is the current one (the other is the previous commit).
        length = _PAGE_HEADER.size + _META.size
        meta0, why0 = _parse_meta(os.pread(self._fd, length, 0))
        page_size = meta0.page_size if meta0 else _FALLBACK_PAGE_SIZE
        meta1, why1 = _parse_meta(os.pread(self._fd, length, page_size))
        if meta1 and meta1.page_size != page_size:
            why1 = f"page size {meta1.page_size} differs from the {page_size} bytes it was found at"
            meta1 = None
        valid = [m for m in (meta0, meta1) if m]
        if not valid:
            raise self._corrupt(f"no valid meta page (page 0: {why0}; page 1: {why1})")
        meta = max(valid, key=lambda m: m.txid)
        if self._size < meta.high_water * meta.page_size:
            raise self._corrupt(
                f"truncated: {meta.high_water} pages of {meta.page_size} "
                f"bytes in use but the file has only {self._size} bytes"
            )
        return meta

    def _page(self, pgid: int) -> tuple[int, int, bytes]:
        """Read a tree page with its overflow pages; return (flags, count, bytes)."""
        meta = self._meta
        if not 2 <= pgid < meta.high_water:
            raise self._corrupt(f"page id {pgid} out of range 2..{meta.high_water - 1}")
        offset = pgid * meta.page_size
        stored_id, flags, count, overflow = _PAGE_HEADER.unpack(self._pread(offset, _PAGE_HEADER.size))
        if stored_id != pgid:
            raise self._corrupt(f"page {pgid} is labelled as page {stored_id}")
        if pgid + 1 + overflow > meta.high_water:
            raise self._corrupt(f"page {pgid} overflows past the last page in use")
        if flags not in (_BRANCH_PAGE, _LEAF_PAGE):
            raise self._corrupt(f"page {pgid} has flags 0x{flags:x} where a branch or leaf page was expected")
        return flags, count, self._pread(offset, (1 + overflow) * meta.page_size)

    def _find_bucket(self, name: str) -> tuple[int, bytes | None]:
        """Return a bucket's root page id, or (0, its inline page) if stored inline."""
        wanted = name.encode("utf-8", "surrogateescape")
        for flags, key, value in self._walk(self._meta.root, None):
            if key == wanted and flags & _BUCKET_ELEMENT:
                if len(value) < _BUCKET_HEADER.size:
                    raise self._corrupt(f"bucket {name!r} has a {len(value)}-byte header")
                root, _ = _BUCKET_HEADER.unpack_from(value)
                return root, (value[_BUCKET_HEADER.size :] if root == 0 else None)
        raise BucketNotFoundError(f"bucket {name!r} not found in bolt file {self.path}")

    def _walk(self, root: int, inline: bytes | None) -> Iterator[tuple[int, bytes, bytes]]:
        """Yield (flags, key, value) of every leaf element of a tree, in key order."""
        if inline is not None:
            if len(inline) < _PAGE_HEADER.size:
                raise self._corrupt("inline bucket page is cut short")
            _, flags, count, _ = _PAGE_HEADER.unpack_from(inline)
            if flags != _LEAF_PAGE:
                raise self._corrupt(f"inline bucket page has flags 0x{flags:x}")
            yield from self._ordered(self._leaf_elements(inline, count, "inline page"))
            return

        def pages() -> Iterator[tuple[int, bytes, bytes]]:
            # Depth-first with an explicit stack (no recursion limit on deep corrupt
            # trees); a page seen twice means a cycle or shared subtree, i.e. damage.
            seen: set[int] = set()
            stack = [root]
            while stack:
                pgid = stack.pop()
                if pgid in seen:
                    raise self._corrupt(f"page {pgid} is referenced twice (cycle?)")
                seen.add(pgid)
                flags, count, data = self._page(pgid)
                if flags == _BRANCH_PAGE:
                    stack.extend(reversed(self._branch_children(data, count, pgid)))
                else:
                    yield from self._leaf_elements(data, count, f"page {pgid}")

        yield from self._ordered(pages())

    def _ordered(self, elements: Iterator[tuple[int, bytes, bytes]]) -> Iterator[tuple[int, bytes, bytes]]:
        # bolt keeps keys unique and sorted; anything else means pages got mixed up.
        previous: bytes | None = None
        for element in elements:
            if previous is not None and element[1] <= previous:
                raise self._corrupt(f"key {element[1]!r} is out of order after {previous!r}")
            previous = element[1]
            yield element

    def _branch_children(self, data: bytes, count: int, pgid: int) -> list[int]:
        if count == 0:
            raise self._corrupt(f"branch page {pgid} has no elements")
        if _PAGE_HEADER.size + count * _BRANCH_ELEMENT.size > len(data):
            raise self._corrupt(f"branch page {pgid} claims {count} elements, too many to fit")
        first = _PAGE_HEADER.size
        return [_BRANCH_ELEMENT.unpack_from(data, first + i * _BRANCH_ELEMENT.size)[2] for i in range(count)]

    def _leaf_elements(self, data: bytes, count: int, where: str) -> Iterator[tuple[int, bytes, bytes]]:
        if _PAGE_HEADER.size + count * _LEAF_ELEMENT.size > len(data):
            raise self._corrupt(f"{where} claims {count} elements, too many to fit")
        for i in range(count):
            at = _PAGE_HEADER.size + i * _LEAF_ELEMENT.size
            flags, pos, ksize, vsize = _LEAF_ELEMENT.unpack_from(data, at)
            if flags & ~_BUCKET_ELEMENT:
                raise self._corrupt(f"element {i} of {where} has flags 0x{flags:x}")
            # Offsets are relative to the element itself.
            key_at = at + pos
            value_at = key_at + ksize
            if value_at + vsize > len(data):
                raise self._corrupt(f"element {i} of {where} points past the page end")
            yield flags, data[key_at:value_at], data[value_at : value_at + vsize]


def read_libkv_bucket(path: StrPath, bucket: str = "IPAM") -> dict[str, str]:
    """Read a bucket written through libkv's bolt store as text.

    libkv prefixes every stored value with its 8-byte little-endian modification index;
    that prefix is stripped, as libkv itself does when it returns a value.

    :param path: the bolt file.
    :param bucket: the top-level bucket to read.
    :return: key -> value, both decoded as UTF-8, in key order.
    :raises DatabaseNotFoundError: if no file exists at ``path``.
    :raises BucketNotFoundError: if the bucket does not exist.
    :raises CorruptDatabaseError: if the file is damaged, a value is shorter than the
        libkv prefix, or a key or value is not UTF-8.
    """
    with BoltFile(path) as db:
        pairs: dict[str, str] = {}
        for key, value in db.items(bucket):
            if len(value) < _LIBKV_INDEX_BYTES:
                raise db._corrupt(f"value of key {key!r} in bucket {bucket!r} is shorter than libkv's index prefix")
            try:
                pairs[key.decode("utf-8")] = value[_LIBKV_INDEX_BYTES:].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise db._corrupt(f"key {key!r} in bucket {bucket!r}: {exc}") from None
        return pairs
