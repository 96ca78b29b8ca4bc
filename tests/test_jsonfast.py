"""ecs_ipam.jsonfast answers exactly what json answers: the same values, the same text,
the same errors, on what the plugin reads (configurations, previous results) and writes
(results, error objects), and on anything else a caller may pipe in."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ecs_ipam.jsonfast import dumps_compact, loads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Text the way configurations carry it: escapes, quotes, control characters, non-ASCII,
# astral characters and lone surrogates (which json escapes and reads back).
text = st.text(st.characters(blacklist_categories=()), max_size=20) | st.sampled_from(
    ["", '"', "\\", "\n\t\r\b\f", "\x00\x1f\x7f", "é", "€", "😀", "\ud800", "/", "\u2028", "169.254.172.0/22"]
)
numbers = (
    st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 1e300, 5e-324, 0.1, 1.5, 100.0])
)
scalars = st.none() | st.booleans() | numbers | text
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(text, inner, max_size=5),
    max_leaves=30,
)
# json.dumps turns these keys into strings; the encoder must do the same.
keys = text | st.integers() | st.floats(allow_nan=True) | st.booleans() | st.none()
written = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.tuples(inner, inner) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=30,
)


def same(a: object, b: object) -> bool:
    """Equal with the same types all the way down, key order included, NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list):
        return len(a) == len(b) and all(same(a[i], b[i]) for i in range(len(a)))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def outcome(function, document):
    try:
        return "value", function(document)
    except (ValueError, TypeError, RecursionError) as error:
        return type(error), str(error)


def assert_loads_like_json(document: object) -> None:
    ours, theirs = outcome(loads, document), outcome(json.loads, document)
    assert ours[0] == theirs[0], (document, ours, theirs)
    assert same(ours[1], theirs[1]), (document, ours, theirs)


layouts = st.sampled_from(
    [
        {},
        {"separators": (",", ":")},
        {"ensure_ascii": False},
        {"indent": 2},
        {"indent": "\t", "ensure_ascii": False},
        {"sort_keys": True},
    ]
)
padding = st.text(" \t\n\r", max_size=3)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(values, layouts, padding, padding)
def test_it_reads_what_json_writes_as_json_reads_it(value, layout, before, after):
    document = before + json.dumps(value, **layout) + after
    assert_loads_like_json(document)
    assert_loads_like_json(document.encode("utf-8", "surrogatepass"))


@settings(max_examples=300)
@given(values, st.sampled_from(["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"]))
def test_other_encodings_are_read_as_json_reads_them(value, encoding):
    document = json.dumps(value)
    try:
        raw = document.encode(encoding)
    except UnicodeEncodeError:  # a lone surrogate
        raw = document.encode(encoding, "surrogatepass")
    assert_loads_like_json(raw)


@settings(max_examples=500)
@given(st.binary(max_size=40) | st.text(max_size=40))
@example(b"")
@example(" ")
@example(b"\xef\xbb\xbf{}")
@example("\ufeff{}")
@example(b'{"a": 1} x')
@example(b'{"a": 1,}')
@example(b"[1, 2")
@example(b'"\\ud800"')
@example(b'"\xff"')
@example(b"NaN")
@example(b"-Infinity")
@example(b"nan")
@example(b'"a\nb"')
@example(b"1e400")
@example(b"\x00{}")
@example(b"{}\x00")
@example(bytearray(b"{}"))
def test_anything_else_is_read_or_refused_as_json_does(document):
    assert_loads_like_json(document)


@settings(max_examples=300)
@given(values, st.data())
def test_damaged_documents_are_refused_as_json_refuses_them(value, data):
    document = json.dumps(value)
    where = data.draw(st.integers(0, len(document)))
    cut = data.draw(st.integers(0, 3))
    insert = data.draw(st.sampled_from(["", ",", "]", "}", '"', "\\", "x", "\x01", " 1"]))
    damaged = document[:where] + insert + document[where + cut :]
    assert_loads_like_json(damaged)
    assert_loads_like_json(damaged.encode("utf-8", "surrogatepass"))


def test_nesting_too_deep_is_refused_as_json_refuses_it():
    for document in ("[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        assert outcome(loads, document)[0] is outcome(json.loads, document)[0] is RecursionError


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(written)
def test_it_writes_what_json_writes(value):
    ours, theirs = outcome(dumps_compact, value), outcome(lambda v: json.dumps(v, separators=(",", ":")), value)
    assert ours == theirs


@pytest.mark.parametrize(
    "value",
    [
        {"a": {1, 2}},
        {"a": b"bytes"},
        {("tuple", "key"): 1},
        {"a": object()},
        {"a": 1, 2: "b", None: 3, 1.5: 4, True: 5},
        "plain text \u00e9",
        float("nan"),
    ],
)
def test_values_the_encoder_refuses_or_converts_come_out_as_json_makes_them(value):
    ours, theirs = outcome(dumps_compact, value), outcome(lambda v: json.dumps(v, separators=(",", ":")), value)
    assert ours == theirs


def test_a_circular_value_is_refused_as_json_refuses_it():
    loop: list[object] = []
    loop.append(loop)
    assert outcome(dumps_compact, loop) == (ValueError, "Circular reference detected")
    # An error leaves no trace in the next call (json starts each call afresh too).
    assert dumps_compact([[], {}]) == "[[],{}]"


PLUGIN_SHAPED = """
import sys
sys.path.insert(0, sys.argv[1])
from ecs_ipam.jsonfast import dumps_compact, loads
conf = loads(b'{"cniVersion":"1.0.0","name":"n\\\\u00e9","ipam":{"id":"t","ipv4-subnet":"10.0.0.0/22",'
             b'"ipv4-routes":[{"dst":"169.254.170.2/32"}],"n":1.5,"b":true,"x":null}}')
assert conf["ipam"]["ipv4-routes"][0]["dst"] == "169.254.170.2/32", conf
out = dumps_compact({"cniVersion": "1.0.0", "code": 7, "msg": "caf\\u00e9 \\"x\\"", "ips": [{"a": 1.5, "b": None}]})
assert out == '{"cniVersion":"1.0.0","code":7,"msg":"caf\\\\u00e9 \\\\"x\\\\"","ips":[{"a":1.5,"b":null}]}', out
print(sorted(name for name in ("json", "re", "enum", "functools", "collections") if name in sys.modules))
"""


def test_what_the_plugin_reads_and_writes_never_imports_json():
    # The module is worth its place only if the fast path serves the plugin's documents.
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PLUGIN_SHAPED, ROOT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


# Errors in a process where json is not loaded: the scanner's error path differs there
# (before 3.12 it finds json.decoder's error class only if json is already imported).
UNLOADED = r"""
import sys
sys.path.insert(0, sys.argv[1])
from ecs_ipam.jsonfast import loads
documents = [b"{", b'{"a": }', b'[1, 2', b'{"a": "b\\q"}', b'{"a": [1, 2,]}', b'"\\ud800\\x"', b"{} x", b"", b"nul"]
errors = []
for document in documents:
    try:
        loads(document)
        errors.append(None)
    except ValueError as error:
        errors.append([type(error).__name__, str(error)])
import json
expected = []
for document in documents:
    try:
        json.loads(document)
        expected.append(None)
    except ValueError as error:
        expected.append([type(error).__name__, str(error)])
print(json.dumps([errors == expected, errors, expected]))
"""


def test_errors_are_json_s_own_in_a_process_that_never_loaded_json():
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", UNLOADED, ROOT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    same_errors, errors, expected = json.loads(done.stdout)
    assert same_errors, (errors, expected)
    assert all(error is not None for error in errors)


def test_the_c_functions_are_the_ones_json_uses():
    # json uses _json's scanner and encoder whenever _json exists (every CPython build
    # the plugin supports); if that ever changed, the proof above would compare the C
    # path with the pure-Python one rather than with itself.
    import _json
    import json.decoder
    import json.encoder
    import json.scanner

    assert json.scanner.make_scanner is _json.make_scanner
    assert json.encoder.c_make_encoder is _json.make_encoder
    assert json.encoder.encode_basestring_ascii is _json.encode_basestring_ascii
