"""How a pair's value and last_index are laid out in a backend that stores both in one
value (LMDB): a two-element msgpack array ``[last_index, value]``."""

from __future__ import annotations

from ..errors import CorruptDatabaseError
from ..minipack import NotMsgpackError, packb, unpackb


def encode_record(value: bytes, last_index: int) -> bytes:
    return packb((last_index, value))


def decode_record(raw: bytes | memoryview, key: str = "?") -> tuple[bytes, int]:
    """Return ``(value, last_index)`` of a stored record.

    :param raw: the record, as stored (a memoryview when read without a copy).

    :raises CorruptDatabaseError: the record was not written by this codec.
    """
    try:
        record = unpackb(raw)
    except NotMsgpackError:
        raise CorruptDatabaseError(f"record of key {key!r} is not a valid kv record") from None
    if not isinstance(record, (list, tuple)) or len(record) != 2:
        raise CorruptDatabaseError(f"record of key {key!r} is not a valid kv record")
    last_index, value = record
    if not isinstance(last_index, int) or not isinstance(value, bytes):
        raise CorruptDatabaseError(f"record of key {key!r} is not a valid kv record")
    return value, last_index
