"""The record fast path (ecs_ipam.minipack) against msgpack: byte for byte the same packing,
the same values unpacked, and None or UNSURE (never a different answer) for anything else."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ecs_ipam import minipack
from ecs_ipam.errors import CorruptDatabaseError
from ecs_ipam.kv.codec import decode_record, encode_record
from ecs_ipam.pool_store import decode, encode

# Values of up to 64 KiB (the edges of msgpack's 32-bit headers) are slow to draw on a busy
# machine; their size is the point.
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]

# What the plugin stores: what minipack must handle itself, not leave to msgpack.  Sizes
# and values cluster at the edges where msgpack switches to a longer header.
INT_EDGES = [
    edge + step
    for edge in (0, 0x7F, 0xFF, 0xFFFF, 0xFFFFFFFF, 2**64 - 1, -32, -128, -(2**15), -(2**31), -(2**63))
    for step in (-1, 0, 1)
    if -(2**63) <= edge + step <= 2**64 - 1
]
SIZE_EDGES = [15, 16, 31, 32, 255, 256, 65535, 65536]
INT64 = st.one_of(st.integers(-(2**63), 2**64 - 1), st.integers(-40, 300), st.sampled_from(INT_EDGES))
texts = st.one_of(
    st.text(), st.sampled_from(SIZE_EDGES).map(lambda n: "a" * n), st.text(max_size=3).map(lambda t: t * 11)
)
binaries = st.one_of(st.binary(), st.sampled_from(SIZE_EDGES).map(lambda n: b"\x01" * n))
handled_scalars = st.one_of(st.none(), st.booleans(), INT64, st.floats(), texts, binaries)
handled = st.recursive(
    handled_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=8), inner, max_size=5),
        st.lists(st.none(), min_size=14, max_size=17),
        st.dictionaries(st.text(max_size=3), st.none(), min_size=14, max_size=17),
    ),
    max_leaves=20,
)
# Beyond it: integers msgpack cannot pack, lone surrogates, other key types, sets, ext.
anything = st.recursive(
    st.one_of(
        handled_scalars,
        st.integers(),
        st.text(st.characters(), max_size=3).map(lambda s: s + "\ud800"),
        st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
        st.frozensets(st.integers(0, 3)),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(), st.binary(max_size=3)), inner, max_size=4),
    ),
    max_leaves=12,
)


def msgpack_packb(value: object) -> bytes | Exception:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except Exception as error:  # noqa: BLE001 - whatever msgpack says, compared below
        return error


def msgpack_unpackb(raw: bytes) -> object:
    try:
        return msgpack.unpackb(raw, raw=False)
    except Exception as error:  # noqa: BLE001
        return error


def same(ours: object, theirs: object) -> bool:
    # repr tells list from tuple, bytes from str, 1 from 1.0 and True; NaN is "nan" on both.
    return repr(ours) == repr(theirs)


@settings(max_examples=300, suppress_health_check=SLOW_OK)
@given(handled)
def test_packs_what_the_plugin_stores_byte_for_byte_as_msgpack(value):
    packed = minipack._fast_packb(value)
    assert packed is not None
    assert packed == msgpack.packb(value, use_bin_type=True)
    assert encode(value) == packed


@settings(max_examples=300, suppress_health_check=SLOW_OK)
@given(anything)
def test_packs_anything_as_msgpack_or_leaves_it_to_msgpack(value):
    packed = minipack._fast_packb(value)
    expected = msgpack_packb(value)
    if packed is None:
        if not isinstance(expected, Exception):
            assert encode(value) == expected
        return
    assert packed == expected


@settings(max_examples=300, suppress_health_check=SLOW_OK)
@given(handled)
def test_unpacks_what_the_plugin_stores_as_msgpack(value):
    raw = msgpack.packb(value, use_bin_type=True)
    ours = minipack._fast_unpackb(raw)
    assert ours is not minipack._UNSURE
    assert same(ours, msgpack.unpackb(raw, raw=False))


def raw_inputs() -> st.SearchStrategy[bytes]:
    packed = anything.map(msgpack_packb).filter(lambda raw: isinstance(raw, bytes))
    single = st.floats(width=32).map(lambda f: msgpack.packb(f, use_single_float=True))
    return st.one_of(
        st.binary(max_size=40),
        packed,
        single,
        st.tuples(packed, st.integers(0, 40)).map(lambda t: t[0][: t[1]]),  # truncated
        st.tuples(packed, st.binary(min_size=1, max_size=3)).map(lambda t: t[0] + t[1]),  # trailing data
    )


@settings(max_examples=500, suppress_health_check=SLOW_OK)
@given(raw_inputs())
@example(b"\x81\x01\x02")  # an int key: msgpack refuses it
@example(b"\xa2\xff\xfe")  # not UTF-8
@example(b"\xc1")
@example(b"\x92\x01")
@example(b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00")  # NaN
def test_unpacks_anything_as_msgpack_or_leaves_it_to_msgpack(raw):
    ours = minipack._fast_unpackb(raw)
    theirs = msgpack_unpackb(raw)
    if ours is not minipack._UNSURE:
        assert not isinstance(theirs, Exception), (raw, ours, theirs)
        assert same(ours, theirs)
    assert same(decode(raw), None if isinstance(theirs, Exception) else theirs)


@settings(suppress_health_check=SLOW_OK)
@given(st.binary(max_size=64), st.integers(0, 2**64 - 1))
def test_kv_records_round_trip_and_are_msgpack(value, last_index):
    raw = encode_record(value, last_index)
    assert raw == msgpack.packb((last_index, value), use_bin_type=True)
    assert decode_record(raw) == (value, last_index)
    assert decode_record(memoryview(raw)) == (value, last_index)  # a record read without a copy


@pytest.mark.parametrize(
    "raw", [b"", b"\x91\x01", b"\x93\x01\xc4\x00\x01", b"\x92\xc4\x00\x01", b"\xc1", b"\x82\xa1a\x01\xa1b\x02"]
)
def test_a_bad_kv_record_is_corrupt(raw):
    with pytest.raises(CorruptDatabaseError):
        decode_record(raw, "k")


def test_nan_packs_as_msgpack_does():
    assert minipack._fast_packb(math.nan) == msgpack.packb(math.nan)
