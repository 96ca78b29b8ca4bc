"""JSON through the C scanner and encoder of ``_json``, without importing :mod:`json`.

``import json`` loads ``re``, ``enum`` and ``functools`` (``json.decoder`` compiles its
patterns at import), a few milliseconds of every plugin start, for two calls: read the
network configuration, write the result.  Both calls are done here by the same C
functions ``json`` itself uses (``_json.make_scanner`` and ``_json.make_encoder``), with
the settings ``json.loads`` and ``json.dumps`` give them by default.

Anything this path does not handle exactly as ``json`` would is handed to ``json``: a
document that is not clean UTF-8 text (a BOM, UTF-16 or UTF-32), one that fails to parse
(so the error and its message are ``json``'s own), and a value the encoder refuses.
``tests/test_jsonfast.py`` proves with hypothesis that both functions answer exactly what
``json`` answers, on every supported Python version.
"""

from __future__ import annotations

from _json import encode_basestring_ascii as _encode_string
from _json import make_encoder as _make_encoder
from _json import make_scanner as _make_scanner

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"  # json.decoder.WHITESPACE
_INFINITY = float("inf")
_CONSTANTS = {"-Infinity": -_INFINITY, "Infinity": _INFINITY, "NaN": float("nan")}


class _DecoderSettings:
    """What ``_json.make_scanner`` reads from a decoder: ``json.JSONDecoder()``'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_CONSTANTS.__getitem__)


# typeshed names the scanner class as the context's type; the C code reads the six attributes.
_scan_once = _make_scanner(_DecoderSettings())  # type: ignore[arg-type]


def loads(document: bytes | bytearray | str) -> Any:
    """``json.loads(document)``."""
    text = _utf8_text(document)
    if text is not None:
        start = len(text) - len(text.lstrip(_WHITESPACE))
        try:
            value, end = _scan_once(text, start)
        except (StopIteration, ValueError, RecursionError, SystemError):
            # json raises its own error for it, below.  SystemError: on Python 3.9 to 3.11
            # the scanner looks json.decoder up in sys.modules for its error class, without
            # importing it, and fails that way when json is not loaded.
            pass
        else:
            if not text[end:].strip(_WHITESPACE):
                return value
    import json

    return json.loads(document)


def _utf8_text(document: bytes | bytearray | str) -> str | None:
    """*document* as text if json would read it as UTF-8 with no BOM; else None."""
    if isinstance(document, str):
        return None if document.startswith("\ufeff") else document
    if not isinstance(document, bytes):
        return None
    # json.detect_encoding: a BOM starts with a byte above 0x7f; UTF-16 and UTF-32 put a
    # NUL among the first four bytes of any JSON text.
    if document[:1] >= b"\x80" or b"\0" in document[:4]:
        return None
    try:
        return document.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None


def _refuse(value: object) -> object:
    raise TypeError  # json.dumps raises the error itself, below


def dumps_compact(value: object) -> str:
    """``json.dumps(value, separators=(",", ":"))``, as the Go plugin prints."""
    # JSONEncoder.iterencode's call: check_circular (a new markers dict: an error leaves
    # it dirty), ensure_ascii, allow_nan, keys neither sorted nor skipped, no indent.
    encode = _make_encoder({}, _refuse, _encode_string, None, ":", ",", False, False, True)
    try:
        return "".join(encode(value, 0))
    except (TypeError, ValueError, RecursionError):
        import json

        return json.dumps(value, separators=(",", ":"))
