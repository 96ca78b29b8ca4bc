"""Tests of the read-only bolt reader against files written by the Go plugin."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import struct
import tempfile
from pathlib import Path

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecs_ipam import boltdb
from ecs_ipam.errors import CorruptDatabaseError, DatabaseNotFoundError, KeyNotFoundError

FIXTURES = Path(__file__).parent / "fixtures" / "boltdb"
NAMES = [
    "ecs-agent-classic-2019",
    "ecs-agent-classic-2026",
    "ecs-agent-dualstack-2026",
    "full-slash20-2026",
]
PAGE = 4096
HEADER = struct.Struct("<QHHI")
META = struct.Struct("<IIIIQQQQQQ")
MAGIC = 0xED0CDAED


def fixture(name: str) -> Path:
    return FIXTURES / f"{name}.db"


def expected(name: str) -> dict[str, str]:
    return json.loads((FIXTURES / f"{name}.expected.json").read_text())["entries"]


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h


def current_meta(data: bytes) -> tuple[int, tuple]:
    """(meta page number, meta fields) of the meta with the highest txid."""
    metas = [(p, META.unpack_from(data, p * PAGE + HEADER.size)) for p in (0, 1)]
    return max(metas, key=lambda m: m[1][8])


def ipam_header_offsets(data: bytes) -> list[int]:
    """Offsets of the IPAM bucket header in every root leaf (current and previous)."""
    offsets, at = [], data.find(b"IPAM")
    while at >= 0:
        offsets.append(at + 4)  # the value (bucket header) follows the key
        at = data.find(b"IPAM", at + 1)
    assert offsets
    return offsets


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Turn a hang into a test failure instead of a stuck test run."""

    def on_alarm(signum, frame):
        raise Hang(f"reader still busy after {seconds}s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read_everything(path: Path) -> None:
    with boltdb.BoltFile(path) as db:
        for name in db.buckets():
            list(db.items(name))
    boltdb.read_libkv_bucket(path)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def write(tmp_path: Path, data: bytes, name: str = "damaged.db") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- the real files -----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_read_libkv_bucket_matches_expected_pair_for_pair(name):
    got = boltdb.read_libkv_bucket(fixture(name))
    assert list(got.items()) == list(expected(name).items())


@pytest.mark.parametrize("name", NAMES)
def test_buckets_and_raw_items(name):
    with boltdb.BoltFile(fixture(name)) as db:
        assert db.buckets() == ["IPAM"]
        pairs = list(db.items("IPAM"))
    keys = [key for key, _ in pairs]
    assert keys == sorted(keys) == [k.encode() for k in expected(name)]
    # libkv's 8-byte little-endian index counts puts per process (every plugin run
    # starts again at 1), so it is small and repeats, but never 0.
    assert all(len(value) >= 8 for _, value in pairs)
    assert min(struct.unpack("<Q", value[:8])[0] for _, value in pairs) >= 1


@pytest.mark.parametrize("name", NAMES)
def test_is_bolt_file_true_for_fixtures(name):
    assert boltdb.is_bolt_file(fixture(name)) is True


def test_multi_level_fixture_really_has_a_branch_page():
    # Guards the premise of the full-slash20 tests: the IPAM root must be a branch.
    data = fixture("full-slash20-2026").read_bytes()
    _, fields = current_meta(data)
    at = data.index(b"IPAM", fields[4] * PAGE) + 4
    ipam_root = struct.unpack_from("<Q", data, at)[0]
    assert HEADER.unpack_from(data, ipam_root * PAGE)[1] == 0x01


@pytest.mark.parametrize("name", NAMES)
def test_reader_never_modifies_the_file(tmp_path, name):
    path = tmp_path / "copy.db"
    shutil.copy2(fixture(name), path)
    before, stat = path.read_bytes(), path.stat()
    fds = open_fds()
    assert boltdb.is_bolt_file(path)
    read_everything(path)
    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == stat.st_mtime_ns
    assert path.stat().st_size == stat.st_size
    assert open_fds() == fds
    assert sorted(os.listdir(tmp_path)) == ["copy.db"]  # no lock or journal file left


@pytest.mark.parametrize(
    "name, diff_key",
    [
        ("ecs-agent-classic-2019", "lastKnownIP"),  # newest meta is page 0
        ("ecs-agent-dualstack-2026", "lastKnownIPv6"),  # newest meta is page 1
    ],
)
def test_damaged_newest_meta_falls_back_to_previous_commit(tmp_path, name, diff_key):
    data = bytearray(fixture(name).read_bytes())
    newest, _ = current_meta(data)
    data[newest * PAGE + HEADER.size + 48] ^= 0xFF  # inside the txid
    got = boltdb.read_libkv_bucket(write(tmp_path, data))
    want = expected(name)
    # The plugin records the last known address in its own commit, after the allocation.
    assert got.keys() == want.keys()
    assert {k for k in want if got[k] != want[k]} == {diff_key}


# --- not bolt files -----------------------------------------------------------------


def make_lmdb(path: Path) -> None:
    env = lmdb.open(str(path), subdir=False)
    with env.begin(write=True) as txn:
        txn.put(b"169.254.172.2", b"owner")
    env.close()


@pytest.mark.parametrize("kind", ["empty", "short", "random", "missing", "lmdb", "directory"])
def test_is_bolt_file_false_for_other_files(tmp_path, kind):
    path = tmp_path / "candidate"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "short":
        path.write_bytes(fixture("full-slash20-2026").read_bytes()[:19])
    elif kind == "random":
        path.write_bytes(random.Random(7).randbytes(3 * PAGE))
    elif kind == "lmdb":
        make_lmdb(path)
    elif kind == "directory":
        path.mkdir()
    assert boltdb.is_bolt_file(path) is False


def test_is_bolt_file_still_true_when_page_0_is_damaged(tmp_path):
    data = bytearray(fixture("ecs-agent-classic-2019").read_bytes())
    data[HEADER.size : HEADER.size + 4] = b"\0\0\0\0"
    assert boltdb.is_bolt_file(write(tmp_path, data))


def test_lmdb_file_is_rejected_as_bad_magic(tmp_path):
    path = tmp_path / "store.lmdb"
    make_lmdb(path)
    with pytest.raises(CorruptDatabaseError, match="bad magic"):
        boltdb.BoltFile(path)


def test_missing_file(tmp_path):
    with pytest.raises(DatabaseNotFoundError, match="no bolt file"):
        boltdb.read_libkv_bucket(tmp_path / "absent.db")


def test_missing_bucket_message(tmp_path):
    path = fixture("ecs-agent-dualstack-2026")
    with pytest.raises(KeyNotFoundError) as info:
        boltdb.read_libkv_bucket(path, "ipam")
    assert str(info.value) == f"bucket 'ipam' not found in bolt file {path}"
    assert isinstance(info.value, CorruptDatabaseError)


# --- damaged copies -----------------------------------------------------------------


def truncated(name: str, length: int) -> bytes:
    return fixture(name).read_bytes()[:length]


def both_metas(name: str, offset: int, value: bytes) -> bytes:
    data = bytearray(fixture(name).read_bytes())
    for page in (0, 1):
        at = page * PAGE + HEADER.size + offset
        data[at : at + len(value)] = value
    return bytes(data)


def ipam_root_pointing_to(name: str, pgid: int) -> bytes:
    data = bytearray(fixture(name).read_bytes())
    for at in ipam_header_offsets(data):
        struct.pack_into("<Q", data, at, pgid)
    return bytes(data)


def meta_root_pointing_to(name: str, pgid: int) -> bytes:
    # Keeps the checksums valid, so only the page id range check can catch it.
    data = bytearray(fixture(name).read_bytes())
    for page in (0, 1):
        at = page * PAGE + HEADER.size
        fields = list(META.unpack_from(data, at))
        fields[4] = pgid
        body = struct.pack("<IIIIQQQQQ", *fields[:9])
        data[at : at + META.size] = body + struct.pack("<Q", fnv1a64(body))
    return bytes(data)


def branch_pages(data: bytes) -> list[int]:
    return [p for p in range(len(data) // PAGE) if HEADER.unpack_from(data, p * PAGE)[1] == 1]


def first_child_pointing_to(name: str, target) -> bytes:
    data = bytearray(fixture(name).read_bytes())
    for page in branch_pages(data):
        struct.pack_into("<Q", data, page * PAGE + HEADER.size + 8, target(page))
    return bytes(data)


def ipam_root_header(name: str, fmt: str, offset: int, value: int) -> bytes:
    """Overwrite a field of the IPAM root page header in the current and previous tree."""
    data = bytearray(fixture(name).read_bytes())
    for at in ipam_header_offsets(data):
        pgid = struct.unpack_from("<Q", data, at)[0]
        struct.pack_into(fmt, data, pgid * PAGE + offset, value)
    return bytes(data)


def key_position(name: str, pos: int) -> bytes:
    data = bytearray(fixture(name).read_bytes())
    for at in ipam_header_offsets(data):
        pgid = struct.unpack_from("<Q", data, at)[0]
        struct.pack_into("<I", data, pgid * PAGE + HEADER.size + 4, pos)
    return bytes(data)


DAMAGE = {
    "empty": (lambda: truncated("full-slash20-2026", 0), "no valid meta page"),
    "first page only": (lambda: truncated("full-slash20-2026", 100), "truncated"),
    "metas only": (lambda: truncated("full-slash20-2026", 2 * PAGE), "truncated"),
    "half": (lambda: truncated("full-slash20-2026", 40 * PAGE), "truncated"),
    "last byte": (lambda: truncated("full-slash20-2026", 79 * PAGE - 1), "truncated"),
    "small truncated": (lambda: truncated("ecs-agent-classic-2019", 5 * PAGE), "truncated"),
    "meta byte flipped": (lambda: both_metas("ecs-agent-classic-2019", 40, b"\x7f"), "bad checksum"),
    "meta magic": (lambda: both_metas("ecs-agent-dualstack-2026", 0, b"\0"), "bad magic"),
    "meta version": (lambda: both_metas("ecs-agent-dualstack-2026", 4, b"\x09"), "unsupported version"),
    "meta root out of range": (lambda: meta_root_pointing_to("ecs-agent-classic-2026", 9), "out of range"),
    "meta root is a meta page": (lambda: meta_root_pointing_to("full-slash20-2026", 1), "out of range"),
    "bucket root out of range": (lambda: ipam_root_pointing_to("ecs-agent-classic-2026", 2**63), "out of range"),
    "bucket root is the freelist": (lambda: ipam_root_pointing_to("ecs-agent-classic-2026", 6), "flags 0x10"),
    "branch child out of range": (
        lambda: first_child_pointing_to("full-slash20-2026", lambda page: 10**6),
        "out of range",
    ),
    "branch child is itself": (
        lambda: first_child_pointing_to("full-slash20-2026", lambda page: page),
        "referenced twice",
    ),
    "unknown leaf flags": (lambda: ipam_root_header("ecs-agent-dualstack-2026", "<H", 8, 0x40), "flags 0x40"),
    "leaf count too large": (lambda: ipam_root_header("ecs-agent-classic-2019", "<H", 10, 300), "too many"),
    "branch count too large": (lambda: ipam_root_header("full-slash20-2026", "<H", 10, 0xFFFF), "too many"),
    "branch count zero": (lambda: ipam_root_header("full-slash20-2026", "<H", 10, 0), "no elements"),
    "page labelled wrong": (lambda: ipam_root_header("ecs-agent-classic-2026", "<Q", 0, 3), "labelled as page 3"),
    "overflow past the end": (lambda: ipam_root_header("ecs-agent-classic-2026", "<I", 12, 9), "overflows"),
    "key outside page": (lambda: key_position("ecs-agent-classic-2019", 0xFFFFFFF0), "past the page end"),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_file_raises_corrupt_database_error(tmp_path, kind):
    make, message = DAMAGE[kind]
    path = write(tmp_path, make())
    fds = open_fds()
    with time_limit(10), pytest.raises(CorruptDatabaseError, match=message) as info:
        read_everything(path)
    assert str(path) in str(info.value)
    assert open_fds() == fds


# --- hand-built files: inline buckets, nested buckets, short libkv values ----------


def leaf_page(pgid: int, elements: list[tuple[int, bytes, bytes]], overflow: int = 0) -> bytes:
    head = HEADER.pack(pgid, 0x02, len(elements), overflow)
    table, blob = b"", b""
    for i, (flags, key, value) in enumerate(elements):
        pos = 16 * (len(elements) - i) + len(blob)  # from this element to its key
        table += struct.pack("<IIII", flags, pos, len(key), len(value))
        blob += key + value
    return head + table + blob


def inline_bucket(elements: list[tuple[int, bytes, bytes]]) -> bytes:
    return struct.pack("<QQ", 0, 0) + leaf_page(0, elements)


def build_bolt(root_elements: list[tuple[int, bytes, bytes]], *more_pages: bytes) -> bytes:
    """A bolt file: metas, an empty freelist, the root leaf at page 3, then more_pages."""
    pages = [HEADER.pack(2, 0x10, 0, 0), leaf_page(3, root_elements), *more_pages]
    pages = [page.ljust(-(-len(page) // PAGE) * PAGE, b"\0") for page in pages]
    high_water = 2 + sum(len(page) // PAGE for page in pages)

    def meta(pgid: int, txid: int) -> bytes:
        body = struct.pack("<IIIIQQQQQ", MAGIC, 2, PAGE, 0, 3, 0, 2, high_water, txid)
        page = HEADER.pack(pgid, 0x04, 0, 0) + body + struct.pack("<Q", fnv1a64(body))
        return page.ljust(PAGE, b"\0")

    return meta(0, 2) + meta(1, 1) + b"".join(pages)


def libkv(index: int, text: str) -> bytes:
    return struct.pack("<Q", index) + text.encode()


def test_inline_bucket_and_nested_bucket_entries(tmp_path):
    ipam = inline_bucket(
        [
            (0, b"10.0.0.1", libkv(1, "GateWay")),
            (0, b"10.0.0.2", libkv(2, "task-a")),
            (0, b"lastKnownIP", libkv(4, "10.0.0.2")),
            (1, b"nested", inline_bucket([(0, b"k", libkv(3, "v"))])),
        ]
    )
    path = write(tmp_path, build_bolt([(1, b"IPAM", ipam), (1, b"other", inline_bucket([]))]))
    assert boltdb.is_bolt_file(path)
    with boltdb.BoltFile(path) as db:
        assert db.buckets() == ["IPAM", "other"]
        assert list(db.items("other")) == []
        assert [key for key, _ in db.items("IPAM")] == [b"10.0.0.1", b"10.0.0.2", b"lastKnownIP"]
    assert boltdb.read_libkv_bucket(path) == {"10.0.0.1": "GateWay", "10.0.0.2": "task-a", "lastKnownIP": "10.0.0.2"}


@pytest.mark.parametrize(
    "value, message",
    [
        (b"\x01\0\0\0", "prefix"),
        (libkv(1, "") + b"\xff\xfe", "utf-8"),
    ],
)
def test_values_that_are_not_libkv_text(tmp_path, value, message):
    path = write(tmp_path, build_bolt([(1, b"IPAM", inline_bucket([(0, b"k", value)]))]))
    with pytest.raises(CorruptDatabaseError, match=message):
        boltdb.read_libkv_bucket(path)


def test_value_spanning_an_overflow_page(tmp_path):
    big = "x" * 6000
    ipam_page = leaf_page(4, [(0, b"big", libkv(1, big)), (0, b"small", libkv(2, "y"))], overflow=1)
    assert PAGE < len(ipam_page) <= 2 * PAGE
    path = write(tmp_path, build_bolt([(1, b"IPAM", struct.pack("<QQ", 4, 0))], ipam_page))
    assert boltdb.read_libkv_bucket(path) == {"big": big, "small": "y"}


def ipam_inline(*elements: tuple[int, bytes, bytes]) -> list[tuple[int, bytes, bytes]]:
    return [(1, b"IPAM", inline_bucket(list(elements)))]


@pytest.mark.parametrize(
    "root, message",
    [
        (ipam_inline((0, b"b", libkv(1, "x")), (0, b"a", libkv(2, "y"))), "out of order"),
        (ipam_inline((0, b"a", libkv(1, "x")), (0, b"a", libkv(2, "y"))), "out of order"),
        (ipam_inline((0x02, b"a", libkv(1, "x"))), "flags 0x2"),
        ([(1, b"IPAM", b"short")], "header"),
        ([(1, b"IPAM", struct.pack("<QQ", 0, 0) + HEADER.pack(0, 0x01, 1, 0))], "inline"),
    ],
)
def test_hand_built_damage(tmp_path, root, message):
    path = write(tmp_path, build_bolt(root))
    with pytest.raises(CorruptDatabaseError, match=message):
        read_everything(path)


def with_meta_page_size(data: bytes, page: int, page_size: int, txid: int) -> bytes:
    """Give meta page *page* another page size and txid, with a checksum that still matches."""
    data = bytearray(data)
    at = page * PAGE + HEADER.size
    fields = list(META.unpack_from(data, at))
    fields[2], fields[8] = page_size, txid
    body = struct.pack("<IIIIQQQQQ", *fields[:9])
    data[at : at + META.size] = body + struct.pack("<Q", fnv1a64(body))
    return bytes(data)


def test_meta_page_1_with_another_page_size_is_not_used(tmp_path):
    # Page 1 is found at page 0's page size; a valid meta there that claims another
    # size belongs to some other layout: page 0 is read, although page 1 is newer.
    data = with_meta_page_size(build_bolt(ipam_inline((0, b"k", libkv(1, "v")))), 1, 2 * PAGE, txid=3)
    assert boltdb.read_libkv_bucket(write(tmp_path, data)) == {"k": "v"}


def test_meta_page_1_with_another_page_size_and_page_0_damaged(tmp_path):
    data = bytearray(with_meta_page_size(build_bolt(ipam_inline()), 1, 2 * PAGE, txid=1))
    data[HEADER.size + 40] ^= 0xFF
    path = write(tmp_path, bytes(data))
    with pytest.raises(CorruptDatabaseError) as info:
        read_everything(path)
    assert str(info.value) == (
        f"bolt file {path} is corrupt: no valid meta page (page 0: bad checksum; "
        f"page 1: page size 8192 differs from the 4096 bytes it was found at)"
    )


# --- random damage ------------------------------------------------------------------

ORIGINALS = {name: fixture(name).read_bytes() for name in NAMES}


@st.composite
def mutated_fixture(draw) -> bytes:
    data = bytearray(ORIGINALS[draw(st.sampled_from(NAMES))])
    pages_in_use = current_meta(data)[1][7]
    for _ in range(draw(st.integers(1, 6))):
        page = draw(st.integers(0, pages_in_use - 1))
        # Headers and element tables sit at the start of a page, where damage matters.
        offset = draw(st.one_of(st.integers(0, 127), st.integers(0, PAGE - 1)))
        data[page * PAGE + offset] = draw(st.integers(0, 255))
    if draw(st.integers(0, 9)) == 0:
        del data[draw(st.integers(0, len(data))) :]
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_fixture())
def test_random_damage_returns_or_raises_corrupt_only(data):
    with tempfile.TemporaryDirectory() as directory:
        path = write(Path(directory), data)
        with time_limit(10):
            assert isinstance(boltdb.is_bolt_file(path), bool)
            with contextlib.suppress(CorruptDatabaseError):
                read_everything(path)
