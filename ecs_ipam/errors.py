"""The one exception hierarchy of ecs-ipam.

Every class carries the CNI error code it turns into at the plugin's entry point
(``ecs_ipam.cni``), which is the only place that converts exceptions into CNI error
objects.  Codes below 100 are the CNI specification's; 100 and up are this plugin's own
and are listed in the README.

Leaves also inherit the matching builtin where one exists (``ValueError``,
``TimeoutError``...), so embedding code can catch them idiomatically.  ``KeyError`` is
deliberately avoided: its ``str()`` adds quotes, and these messages end up in JSON.

The names in ``__all__`` are the public API, stable within a major version.  The codes
are reachable as each class's ``code``.
"""

from __future__ import annotations

__all__ = [
    "ECSIPAMError",
    # request errors
    "IncompatibleVersionError",
    "UnsupportedFieldError",
    "InvalidEnvironmentError",
    "DecodeError",
    "InvalidConfigError",
    # allocation outcomes
    "AllocationError",
    "AddressInUseError",
    "IdAlreadyAllocatedError",
    "PoolExhaustedError",
    "ReservationMismatchError",
    "NotAvailableError",
    # store errors
    "StoreError",
    "KeyNotFoundError",
    "KeyExistsError",
    "KeyModifiedError",
    "CallNotSupportedError",
    "InvalidArgumentError",
    "StoreTimeoutError",
    "StoreUnavailableError",
    "DatabaseNotFoundError",
    "NotADatabaseError",
    "DatabaseAliasError",
    "BoltDatabaseError",
    "UnsafeFileError",
    "CorruptDatabaseError",
    # the operator tool
    "OperatorRequestError",
]

# CNI well-known error codes (spec 1.1.0, "Error" section).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_NETWORK_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50

# This plugin's own codes.
ADDRESS_IN_USE = 100
ID_ALREADY_ALLOCATED = 101
POOL_EXHAUSTED = 102
RESERVATION_MISMATCH = 103
INTERNAL_ERROR = 199

# How much of a bad value an error message quotes: enough to recognise it, while a value
# may be megabytes long.
QUOTE_LIMIT = 64


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """*value* as an error message quotes it: its repr, cut to *limit* characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    """*text* as an error message quotes it unquoted: cut to *limit* characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ECSIPAMError(Exception):
    """Base of every error ecs-ipam raises on purpose."""

    code = INTERNAL_ERROR

    def __init__(self, msg: str = "", details: str = "") -> None:
        super().__init__(msg or self._default_message())
        self.msg = str(self.args[0])
        self.details = details

    @classmethod
    def _default_message(cls) -> str:
        # __doc__ is not inherited (an embedder's subclass may have none), and ``python
        # -OO`` strips every docstring of ours but not the builtins': take the nearest of
        # ours, else the class name.
        for klass in cls.__mro__:
            if klass.__doc__:
                return klass.__doc__.splitlines()[0]
            if klass is ECSIPAMError:
                break
        return cls.__name__


# --- request errors: the caller sent something we cannot serve -------------------------


class IncompatibleVersionError(ECSIPAMError, ValueError):
    """The requested CNI version is not supported for this command."""

    code = INCOMPATIBLE_VERSION


class UnsupportedFieldError(ECSIPAMError, ValueError):
    """A field of the network configuration is not supported."""

    code = UNSUPPORTED_FIELD


class InvalidEnvironmentError(ECSIPAMError, ValueError):
    """A CNI environment variable is missing or invalid."""

    code = INVALID_ENVIRONMENT


class DecodeError(ECSIPAMError, ValueError):
    """The network configuration on stdin could not be decoded."""

    code = DECODE_FAILURE


class InvalidConfigError(ECSIPAMError, ValueError):
    """The network configuration is invalid; the message names the field."""

    code = INVALID_NETWORK_CONFIG


# --- allocation outcomes ----------------------------------------------------------------


class AllocationError(ECSIPAMError):
    """An address could not be allocated."""


class AddressInUseError(AllocationError):
    """The requested address is already held by another owner."""

    code = ADDRESS_IN_USE


class IdAlreadyAllocatedError(AllocationError):
    """The id already holds an address in this pool."""

    code = ID_ALREADY_ALLOCATED


class PoolExhaustedError(AllocationError):
    """No free address is left in the subnet."""

    code = POOL_EXHAUSTED


class ReservationMismatchError(ECSIPAMError):
    """CHECK found that the store no longer holds what the previous result says."""

    code = RESERVATION_MISMATCH


class NotAvailableError(ECSIPAMError):
    """STATUS: the plugin cannot currently serve an ADD."""

    code = NOT_AVAILABLE


# --- store errors (ecs_ipam.kv re-exports these) ----------------------------------------


class StoreError(ECSIPAMError):
    """The key/value store failed."""

    code = IO_FAILURE


class KeyNotFoundError(StoreError, LookupError):
    """The key does not exist in the bucket."""


class KeyExistsError(StoreError):
    """Create-only put: the key already exists."""


class KeyModifiedError(StoreError):
    """Compare-and-swap: the key changed since the given pair was read."""


class CallNotSupportedError(StoreError, NotImplementedError):
    """This backend does not support the call (as libkv's bolt backend)."""


class InvalidArgumentError(StoreError, ValueError):
    """A key, value or bucket name is not acceptable to the store."""


class StoreTimeoutError(StoreError, TimeoutError):
    """The database stayed busy longer than the timeout; try again later."""

    code = TRY_AGAIN_LATER


class StoreUnavailableError(StoreError):
    """The store could not be reached; try again later."""

    code = TRY_AGAIN_LATER


class DatabaseNotFoundError(StoreError, FileNotFoundError):
    """No database exists at the path (and the caller asked not to create one)."""


class NotADatabaseError(StoreError):
    """The path holds something that is not a database of this backend; it was left untouched."""


class CorruptDatabaseError(StoreError):
    """The database file is damaged or truncated."""


class DatabaseAliasError(NotADatabaseError):
    """The database file is reached by a second name (a hard link, a file mounted on its own)
    that LMDB would give a lock file of its own; it was left untouched."""


class BoltDatabaseError(NotADatabaseError):
    """The path holds a bolt database of the Go plugin, not yet migrated to LMDB."""


class UnsafeFileError(StoreError):
    """A database or lock file may be changed by someone else (another user owns it, or group
    or others may write it); it was left untouched."""


# --- the operator tool (ecs-ipamctl) ------------------------------------------------------


class OperatorRequestError(ECSIPAMError, ValueError):
    """ecs-ipamctl was asked for something it must not do (such as releasing a gateway)."""

    code = INVALID_NETWORK_CONFIG
