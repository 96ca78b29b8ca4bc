"""KVPair is written out by hand (importing collections costs every plugin start a
millisecond); it must stay the tuple collections.namedtuple makes, in every way a caller
can see."""

from __future__ import annotations

import copy
import pickle
from collections import namedtuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecs_ipam.kv import KVPair

Reference = namedtuple("KVPair", ["key", "value", "last_index"])

pairs = st.tuples(st.text(max_size=5), st.binary(max_size=5), st.integers())


@given(pairs)
def test_it_is_the_named_tuple_in_every_visible_way(fields):
    ours, theirs = KVPair(*fields), Reference(*fields)
    assert ours == theirs == fields and hash(ours) == hash(theirs)
    assert repr(ours) == repr(theirs)
    assert (ours.key, ours.value, ours.last_index) == (theirs.key, theirs.value, theirs.last_index)
    assert ours._asdict() == theirs._asdict() and list(ours._asdict()) == list(theirs._asdict())
    assert ours._replace(last_index=7) == theirs._replace(last_index=7)
    assert type(ours._replace(key="k")) is KVPair
    assert KVPair(key=fields[0], value=fields[1], last_index=fields[2]) == ours
    assert KVPair._make(iter(fields)) == ours and type(KVPair._make(fields)) is KVPair
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        again = pickle.loads(pickle.dumps(ours, protocol))
        assert again == ours and type(again) is KVPair
    assert copy.copy(ours) == ours and copy.deepcopy(ours) == ours


def test_its_class_attributes_are_the_named_tuples():
    assert KVPair._fields == Reference._fields
    assert KVPair._field_defaults == Reference._field_defaults == {}
    if hasattr(Reference, "__match_args__"):  # Python 3.10 and later
        assert KVPair.__match_args__ == Reference.__match_args__
    assert KVPair.__name__ == "KVPair" and issubclass(KVPair, tuple)
    assert KVPair.__slots__ == ()


def test_it_refuses_what_the_named_tuple_refuses():
    pair = KVPair("k", b"v", 1)
    for make in (lambda cls: cls("k", b"v"), lambda cls: cls._make(("k",)), lambda cls: cls("k", b"v", 1, 2)):
        with pytest.raises(TypeError):
            make(KVPair)
        with pytest.raises(TypeError):
            make(Reference)
    with pytest.raises(ValueError, match="unexpected field names: \\['nope'\\]"):
        pair._replace(nope=1)
    with pytest.raises(AttributeError):
        pair.key = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        pair.extra = 1  # type: ignore[attr-defined]
