"""A structural check of an LMDB file's pages, read with ``pread``, before LMDB reads them.

LMDB trusts its pages: a page damaged by hand (or by a disk) can make it read past the
end of the map (SIGSEGV), past the end of the file (SIGBUS), or trip one of its own
assertions (SIGABRT), and none of these can be caught.  This walk reads every page
that LMDB could reach from the newest meta page (the main tree, every named database,
the free-page tree and their overflow pages), as LMDB lays them out in a 64-bit build,
and refuses what LMDB would not survive: a page that is not the one its parent names,
or is reached twice; node offsets that are odd or outside the page; keys and values
that run past it; children and overflow runs past the last page in use; keys out of
order.  It does not prove the values right (LMDB keeps no checksums): a damaged value
that still fits its place is read as it is, and the codec above refuses it if it can.
"""

from __future__ import annotations

import os
import struct

from ..errors import CorruptDatabaseError

PAGE_HEADER = 16
NODE_HEADER = 8
DB_RECORD = 48  # MDB_db: pad, flags, depth, branch/leaf/overflow pages, entries, root
P_INVALID = 0xFFFFFFFFFFFFFFFF
P_BRANCH, P_LEAF, P_OVERFLOW = 0x01, 0x02, 0x04
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
MAIN_DB_OFFSET, FREE_DB_OFFSET = 88, 40  # MDB_db records in the meta page
ROOT_IN_DB = 40
LAST_PAGE_OFFSET, TXNID_OFFSET = 136, 144

_HEADER = struct.Struct("<QHHHH")  # pgno, pad, flags, lower, upper
_NODE = struct.Struct("<HHHH")  # lo, hi, flags, ksize
_U16 = struct.Struct("<H")
_FREE, _MAIN, _NAMED = 0, 1, 2  # which tree a page belongs to


class _Walk:
    def __init__(self, fd: int, page_size: int, last_page: int, name: str) -> None:
        self.fd = fd
        self.page_size = page_size
        self.last_page = last_page
        self.name = name
        self.seen: set[int] = set()

    def damaged(self, what: str) -> CorruptDatabaseError:
        return CorruptDatabaseError(
            f"{self.name} is a damaged LMDB database ({what}); it was left unchanged. "
            "Restore it from a backup, or rebuild it (see README, 'Guarantees')"
        )

    def page(self, pgno: int) -> bytes:
        if not 2 <= pgno <= self.last_page:
            raise self.damaged(f"page {pgno} is outside pages 2..{self.last_page}")
        if pgno in self.seen:
            raise self.damaged(f"page {pgno} is reached twice")
        self.seen.add(pgno)
        data = os.pread(self.fd, self.page_size, pgno * self.page_size)
        if len(data) != self.page_size:
            raise self.damaged(f"page {pgno} is cut short")
        if _HEADER.unpack_from(data)[0] != pgno:
            raise self.damaged(f"page {pgno} is labelled as page {_HEADER.unpack_from(data)[0]}")
        return data

    def tree(self, root: int, depth: int, tree: int) -> None:
        if root == P_INVALID:
            return
        if not 1 <= depth <= 32:
            raise self.damaged(f"a tree of depth {depth}")
        self.node_page(root, depth, tree)

    def node_page(self, pgno: int, depth: int, tree: int) -> None:
        data = self.page(pgno)
        _, _, flags, lower, upper = _HEADER.unpack_from(data)
        size = self.page_size
        kind = flags & (P_BRANCH | P_LEAF | P_OVERFLOW)
        if kind not in (P_BRANCH, P_LEAF) or flags & ~(P_BRANCH | P_LEAF):
            raise self.damaged(f"page {pgno} has flags 0x{flags:x}")
        if (kind == P_BRANCH and depth == 1) or (kind == P_LEAF and depth != 1):
            raise self.damaged(f"page {pgno} is a {'branch' if kind == P_BRANCH else 'leaf'} at the wrong depth")
        if lower < PAGE_HEADER or lower > upper or upper > size or lower & 1:
            raise self.damaged(f"page {pgno} has bounds {lower}..{upper}")
        count = (lower - PAGE_HEADER) // 2
        if kind == P_BRANCH and count < 1:
            raise self.damaged(f"branch page {pgno} has no child")
        previous: bytes | None = None
        for index in range(count):
            offset = _U16.unpack_from(data, PAGE_HEADER + 2 * index)[0]
            if offset < upper or offset & 1 or offset + NODE_HEADER > size:
                raise self.damaged(f"page {pgno} has node {index} at offset {offset}")
            lo, hi, node_flags, key_size = _NODE.unpack_from(data, offset)
            key_end = offset + NODE_HEADER + key_size
            if key_end > size:
                raise self.damaged(f"page {pgno}: node {index}'s key runs past the page")
            key = data[offset + NODE_HEADER : key_end]
            # The free-page tree is keyed by transaction ids, native 8-byte integers (a
            # branch page's first key is implicit: LMDB leaves it empty).
            if tree == _FREE and (kind == P_LEAF or index):
                if key_size != 8:
                    raise self.damaged(f"page {pgno}: free-page key {index} is {key_size} bytes")
                key = key[::-1]
            if previous is not None and key <= previous:
                raise self.damaged(f"page {pgno}: keys out of order at node {index}")
            # A branch page's first key is implicit: LMDB leaves it empty.
            previous = None if kind == P_BRANCH and index == 0 else key
            if kind == P_BRANCH:
                self.node_page(lo | hi << 16 | node_flags << 32, depth - 1, tree)
                continue
            self.leaf_value(pgno, index, data, key_end, lo | hi << 16, node_flags, tree)

    def leaf_value(self, pgno: int, index: int, data: bytes, start: int, length: int, flags: int, tree: int) -> None:
        if flags & ~(F_BIGDATA | F_SUBDATA) or flags == F_BIGDATA | F_SUBDATA:
            raise self.damaged(f"page {pgno}: node {index} has flags 0x{flags:x}")
        if flags & F_BIGDATA:
            if start + 8 > self.page_size:
                raise self.damaged(f"page {pgno}: node {index}'s overflow page number runs past the page")
            # Of an overflow value only a free list is looked into (a database record is
            # never one: refused above), and that is read whole, however long it is.
            value = self.overflow(struct.unpack_from("<Q", data, start)[0], length, read=tree == _FREE)
        else:
            if start + length > self.page_size:
                raise self.damaged(f"page {pgno}: node {index}'s value runs past the page")
            value = data[start : start + length]
        if flags & F_SUBDATA:
            if tree != _MAIN or length != DB_RECORD or flags & F_BIGDATA:
                raise self.damaged(f"page {pgno}: node {index} is a misplaced database record")
            depth = _U16.unpack_from(value, 6)[0]
            self.tree(struct.unpack_from("<Q", value, ROOT_IN_DB)[0], depth, _NAMED)
        elif tree == _FREE:
            # A list of free page numbers, its length first: LMDB reads it while it
            # looks for pages to write.
            count = struct.unpack_from("<Q", value)[0] if len(value) >= 8 else -1
            if count < 0 or 8 + 8 * count > len(value):
                raise self.damaged(f"page {pgno}: free-page list {index} is malformed")
            for free in struct.unpack_from(f"<{count}Q", value, 8):
                if not 2 <= free <= self.last_page:
                    raise self.damaged(f"page {pgno}: free-page list {index} names page {free}")

    def overflow(self, pgno: int, length: int, read: bool) -> bytes:
        """Check the overflow run at *pgno* holds *length* bytes; return them if *read*, else b""."""
        data = self.page(pgno)
        flags = _HEADER.unpack_from(data)[2]
        pages = struct.unpack_from("<I", data, 12)[0]
        needed = -(-(PAGE_HEADER + length) // self.page_size)
        if flags != P_OVERFLOW or pages < needed or pgno + pages - 1 > self.last_page:
            raise self.damaged(f"overflow page {pgno} does not hold the {length} bytes it should")
        self.seen.update(range(pgno + 1, pgno + pages))
        if not read:
            return b""
        return os.pread(self.fd, length, pgno * self.page_size + PAGE_HEADER)


def check_pages(fd: int, page_size: int, meta: bytes, name: str) -> None:
    """Walk every tree of the LMDB file *fd* from its newest meta page *meta*.

    :param page_size: the file's page size (from its meta page).
    :param name: the database's path, for the message.
    :raises CorruptDatabaseError: a page LMDB would not survive.
    """
    last_page = struct.unpack_from("<Q", meta, LAST_PAGE_OFFSET)[0]
    walk = _Walk(fd, page_size, last_page, name)
    for offset, tree in ((FREE_DB_OFFSET, _FREE), (MAIN_DB_OFFSET, _MAIN)):
        depth = _U16.unpack_from(meta, offset + 6)[0]
        walk.tree(struct.unpack_from("<Q", meta, offset + ROOT_IN_DB)[0], depth, tree)
