"""TLS for ``etcds://``: the context built from the settings, and connections that use it.

Only an ``etcds://`` URL imports this module, and with it ``ssl`` (several milliseconds
of start-up that a plain URL or an LMDB file never pays).  Hostname and IP address
verification stay on: the server's certificate must name the host of the URL.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from ...errors import InvalidEnvironmentError, StoreError
from .http import Connection, describe
from .settings import VARIABLES, Security

if TYPE_CHECKING:
    import socket

# OpenSSL reasons of a handshake the server ended, and what each means for the operator.
_CLIENT_CERTIFICATE_REFUSED = (
    "ALERT_BAD_CERTIFICATE",
    "ALERT_UNKNOWN_CA",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_UNSUPPORTED_CERTIFICATE",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REVOKED",
    "ALERT_ACCESS_DENIED",
    "ALERT_DECRYPT_ERROR",
)
_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST")


# DER of the extendedKeyUsage extension's OID (2.5.29.37) and of clientAuth's
# (1.3.6.1.5.5.7.3.2): a certificate holds the first when its uses are limited.
_EXTENDED_KEY_USAGE = bytes.fromhex("0603551d25")
_CLIENT_AUTH = bytes.fromhex("06082b06010505070302")


def serves_plain_http(host: str, port: int, timeout: float) -> bool:
    """Whether the server at *host*:*port* (which just ended a TLS handshake without a
    word) answers a plain HTTP request: an ``etcds://`` URL naming a plain port."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=min(timeout, 1.0)) as probe:
            probe.sendall(b"GET /version HTTP/1.0\r\n\r\n")
            return probe.recv(5) == b"HTTP/"
    except OSError:
        return False


class TLSRefusedError(StoreError):
    """A TLS handshake failed for a reason that trying again will not change."""


def _readable(name: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise InvalidEnvironmentError(f"{VARIABLES[name]} {path!r} cannot be read: {describe(error)}") from None


def _refuse_passphrase() -> bytes:
    # An encrypted key would otherwise make OpenSSL ask on the terminal.
    raise InvalidEnvironmentError(
        f"{VARIABLES['key']} is encrypted; give the key without a passphrase (file mode 0600)"
    )


def context_for(security: Security) -> ssl.SSLContext:
    """The client context: the CA bundle (or the system's), the client certificate if any.

    :raises InvalidEnvironmentError: a file cannot be read or holds no usable PEM data
        (the message names its variable).
    """
    if security.cacert:
        _readable("cacert", security.cacert)
    try:
        context = ssl.create_default_context(cafile=security.cacert)
    except (ssl.SSLError, ValueError) as error:
        raise InvalidEnvironmentError(
            f"{VARIABLES['cacert']} {security.cacert!r} holds no usable PEM certificate ({_reason(error)})"
        ) from None
    if security.cert and security.key:
        _readable("cert", security.cert)
        _readable("key", security.key)
        try:
            context.load_cert_chain(security.cert, security.key, password=_refuse_passphrase)
        except ssl.SSLError as error:
            raise InvalidEnvironmentError(
                f"{VARIABLES['cert']} {security.cert!r} and {VARIABLES['key']} {security.key!r} are not a "
                f"usable PEM certificate and matching key ({_reason(error)})"
            ) from None
    return context


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return reason.lower().replace("_", " ") if isinstance(reason, str) else str(error)


def refusal(error: ssl.SSLError, authority: str, has_certificate: bool) -> TLSRefusedError | None:
    """What a TLS failure means, when it is one that retrying will not cure; else None
    (the connection merely broke: an etcd restarting, a network hiccup)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return TLSRefusedError(
            f"etcd at {authority} is not trusted: its certificate failed verification "
            f"({error.verify_message}); check {VARIABLES['cacert']} and the host name in the URL"
        )
    reason = str(error.reason or "").upper()
    if "CERTIFICATE_REQUIRED" in reason or ("ALERT" in reason and not has_certificate):
        return TLSRefusedError(
            f"etcd at {authority} requires a client certificate: set {VARIABLES['cert']} and {VARIABLES['key']}"
        )
    if any(name in reason for name in _CLIENT_CERTIFICATE_REFUSED):
        return TLSRefusedError(
            f"etcd at {authority} rejected the client certificate ({_reason(error)}); "
            f"check {VARIABLES['cert']} against the CA etcd trusts"
        )
    if any(name in reason for name in _NOT_TLS):
        return TLSRefusedError(f"etcd at {authority} does not speak TLS ({_reason(error)}); use etcd://")
    if "ALERT" in reason:
        return TLSRefusedError(f"etcd at {authority} refused the TLS handshake ({_reason(error)})")
    return None


class TLSConnection(Connection):
    """A :class:`Connection` over TLS.

    :raises TLSRefusedError: the handshake failed for good (untrusted server, client
        certificate refused or missing, not a TLS server).
    :raises OSError: the connection could not be made or broke.
    """

    def __init__(self, host: str, port: int, timeout: float, context: ssl.SSLContext, has_certificate: bool) -> None:
        self.context = context
        self.has_certificate = has_certificate
        self.port = port
        super().__init__(host, port, timeout)

    def _secure(self, raw: socket.socket, host: str) -> socket.socket:
        try:
            return self.context.wrap_socket(raw, server_hostname=host.strip("[]"))
        except ssl.SSLError as error:
            refused = refusal(error, self.authority, self.has_certificate)
            if refused is not None:
                raise refused from None
            if isinstance(error, ssl.SSLEOFError):
                self._refuse_plain_http(host, raw.gettimeout())
            raise
        except ConnectionResetError:
            self._refuse_plain_http(host, raw.gettimeout())
            raise

    def _refuse_plain_http(self, host: str, bound: float | None) -> None:
        # The probe spends no more than the attempt had: a short bound while other
        # endpoints wait their turn.
        if serves_plain_http(host, self.port, 1.0 if bound is None else bound):
            raise TLSRefusedError(f"etcd at {self.authority} serves plain HTTP: use etcd://") from None

    def lacks_client_auth(self) -> bool:
        """Whether the server's certificate limits its use and leaves out ``clientAuth``.

        etcd's JSON gateway presents the server certificate to etcd itself as a client
        certificate; without that use, every request fails inside etcd as "unavailable",
        which retrying never cures.
        """
        der = self.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        return isinstance(der, bytes) and _EXTENDED_KEY_USAGE in der and _CLIENT_AUTH not in der

    def post(
        self, path: str, payload: bytes, timeout: float, stream: bool = False, token: str | None = None
    ) -> tuple[int, bytes | None]:
        try:
            return super().post(path, payload, timeout, stream, token)
        except ssl.SSLError as error:
            # With TLS 1.3 the server judges the client certificate after the client
            # has finished its handshake: the verdict arrives with the first answer.
            refused = refusal(error, self.authority, self.has_certificate)
            if refused is not None:
                raise refused from None
            raise
