"""msgpack for the few shapes the plugin stores: the fast path around the msgpack package.

Importing msgpack costs a CNI call about a quarter of a bare interpreter's start-up (its
package loads ``datetime`` for the timestamp extension, which the plugin never stores).
The records the plugin reads and writes on every call are small: maps of strings, None,
booleans, integers and floats; strings; the backend's ``[last_index, value]`` pairs.
This module packs and unpacks exactly those itself, and hands anything else to msgpack
(imported only then): callers see msgpack's answers, whichever path gave them.
tests/test_minipack.py proves, with hypothesis, that whatever the fast path packs is byte
for byte what ``msgpack.packb(value, use_bin_type=True)`` writes, and whatever it unpacks
is what ``msgpack.unpackb(raw, raw=False)`` reads.
"""

from __future__ import annotations

from struct import pack as _struct_pack
from struct import unpack_from as _struct_unpack_from

# The fast path's answer when a value is not one of its shapes: msgpack's to read.
_UNSURE = object()


class NotMsgpackError(ValueError):
    """The bytes are not one msgpack object (or one that msgpack refuses to read)."""


class _Unsure(Exception):
    pass


def packb(value: object) -> bytes:
    """``msgpack.packb(value, use_bin_type=True)``.

    :raises TypeError, ValueError: msgpack cannot pack *value*.
    """
    packed = _fast_packb(value)
    if packed is None:
        import msgpack

        packed = msgpack.packb(value, use_bin_type=True)
    return packed


def unpackb(raw: bytes | memoryview) -> object:
    """``msgpack.unpackb(raw, raw=False)``.

    :raises NotMsgpackError: *raw* is not one msgpack object that msgpack reads.
    """
    value = _fast_unpackb(raw)
    if value is not _UNSURE:
        return value
    import msgpack

    try:
        return msgpack.unpackb(raw, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise NotMsgpackError(str(error)) from None


def _fast_packb(value: object) -> bytes | None:
    """``msgpack.packb(value, use_bin_type=True)``, or None: msgpack's to pack."""
    out: list[bytes] = []
    try:
        _pack(value, out)
    except (_Unsure, UnicodeEncodeError, RecursionError):
        return None
    return b"".join(out)


def _pack(value: object, out: list[bytes]) -> None:
    if value is None:
        out.append(b"\xc0")
    elif type(value) is bool:
        out.append(b"\xc3" if value else b"\xc2")
    elif type(value) is int:
        out.append(_pack_int(value))
    elif type(value) is float:
        out.append(b"\xcb" + _struct_pack(">d", value))
    elif type(value) is str:
        data = value.encode("utf-8")
        out.append(_header(len(data), 0xA0, 31, b"\xd9", b"\xda", b"\xdb") + data)
    elif type(value) is bytes:
        out.append(_header(len(value), None, 0, b"\xc4", b"\xc5", b"\xc6") + value)
    elif type(value) is dict:
        out.append(_header(len(value), 0x80, 15, None, b"\xde", b"\xdf"))
        for key, item in value.items():
            _pack(key, out)
            _pack(item, out)
    elif type(value) is list or type(value) is tuple:
        out.append(_header(len(value), 0x90, 15, None, b"\xdc", b"\xdd"))
        for item in value:
            _pack(item, out)
    else:
        raise _Unsure


def _header(size: int, fix: int | None, fix_max: int, one: bytes | None, two: bytes, four: bytes) -> bytes:
    if fix is not None and size <= fix_max:
        return bytes((fix | size,))
    if one is not None and size <= 0xFF:
        return one + bytes((size,))
    if size <= 0xFFFF:
        return two + size.to_bytes(2, "big")
    if size <= 0xFFFFFFFF:
        return four + size.to_bytes(4, "big")
    raise _Unsure


def _pack_int(value: int) -> bytes:
    if 0 <= value <= 0x7F:
        return bytes((value,))
    if -32 <= value < 0:
        return bytes((value & 0xFF,))
    if value > 0:
        for tag, width in ((b"\xcc", 1), (b"\xcd", 2), (b"\xce", 4), (b"\xcf", 8)):
            if value < 1 << (8 * width):
                return tag + value.to_bytes(width, "big")
    else:
        for tag, width in ((b"\xd0", 1), (b"\xd1", 2), (b"\xd2", 4), (b"\xd3", 8)):
            if value >= -(1 << (8 * width - 1)):
                return tag + value.to_bytes(width, "big", signed=True)
    raise _Unsure


def _fast_unpackb(raw: bytes | memoryview) -> object:
    """``msgpack.unpackb(raw, raw=False)``, or :data:`_UNSURE` (for anything malformed too:
    msgpack then says what is wrong)."""
    if type(raw) is not bytes:
        if not isinstance(raw, memoryview):
            return _UNSURE
        raw = bytes(raw)  # a record is small; the parser below needs bytes.decode
    try:
        value, end = _unpack(raw, 0)
    except (_Unsure, IndexError, UnicodeDecodeError, RecursionError):
        return _UNSURE
    return value if end == len(raw) else _UNSURE


# Fixed-width tags: (size in bytes, signed).
_INTS = {
    0xCC: (1, False),
    0xCD: (2, False),
    0xCE: (4, False),
    0xCF: (8, False),
    0xD0: (1, True),
    0xD1: (2, True),
    0xD2: (4, True),
    0xD3: (8, True),
}
_STR = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_ARRAY = {0xDC: 2, 0xDD: 4}
_MAP = {0xDE: 2, 0xDF: 4}


def _unpack(raw: bytes, at: int) -> tuple[object, int]:
    tag = raw[at]
    at += 1
    if tag <= 0x7F:
        return tag, at
    if tag >= 0xE0:
        return tag - 0x100, at
    if 0xA0 <= tag <= 0xBF:
        return _text(raw, at, tag & 0x1F)
    if 0x80 <= tag <= 0x8F:
        return _map(raw, at, tag & 0x0F)
    if 0x90 <= tag <= 0x9F:
        return _array(raw, at, tag & 0x0F)
    if tag == 0xC0:
        return None, at
    if tag == 0xC2:
        return False, at
    if tag == 0xC3:
        return True, at
    if tag == 0xCB:
        _need(raw, at + 8)
        return _struct_unpack_from(">d", raw, at)[0], at + 8
    if tag in _INTS:
        width, signed = _INTS[tag]
        _need(raw, at + width)
        return int.from_bytes(raw[at : at + width], "big", signed=signed), at + width
    for table, read in ((_STR, _text), (_BIN, _binary), (_ARRAY, _array), (_MAP, _map)):
        if tag in table:
            width = table[tag]
            _need(raw, at + width)
            return read(raw, at + width, int.from_bytes(raw[at : at + width], "big"))
    raise _Unsure  # float32, ext, timestamps, the never-used 0xc1


def _need(raw: bytes, end: int) -> None:
    if end > len(raw):
        raise _Unsure


def _text(raw: bytes, at: int, size: int) -> tuple[str, int]:
    _need(raw, at + size)
    return raw[at : at + size].decode("utf-8"), at + size


def _binary(raw: bytes, at: int, size: int) -> tuple[bytes, int]:
    _need(raw, at + size)
    return bytes(raw[at : at + size]), at + size


def _array(raw: bytes, at: int, size: int) -> tuple[list[object], int]:
    items: list[object] = []
    for _ in range(size):
        item, at = _unpack(raw, at)
        items.append(item)
    return items, at


def _map(raw: bytes, at: int, size: int) -> tuple[dict[object, object], int]:
    items: dict[object, object] = {}
    for _ in range(size):
        key, at = _unpack(raw, at)
        if type(key) is not str and type(key) is not bytes:
            raise _Unsure  # msgpack refuses such keys (strict_map_key)
        value, at = _unpack(raw, at)
        items[key] = value
    return items, at
