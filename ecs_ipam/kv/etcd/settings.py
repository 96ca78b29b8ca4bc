"""What a client needs to reach an etcd: the URL's endpoints and prefix, TLS, a user.

``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`` is plain HTTP, ``etcds://...`` is TLS.
Certificates and the user come from keyword arguments, else from the environment::

    IPAM_ETCD_CACERT     PEM bundle that verifies the server (default: the system's)
    IPAM_ETCD_CERT       client certificate (PEM), with
    IPAM_ETCD_KEY        its private key (PEM, not encrypted)
    IPAM_ETCD_USER       etcd user, with
    IPAM_ETCD_PASSWORD   its password
    IPAM_ETCD_TOKEN_CACHE  a file that keeps the user's auth token for the next process
                         (opt-in; see :mod:`.token_cache`)

This module only reads names and checks that they go together; the files are read
where the TLS context is built (:mod:`.tls`), so that a plain URL never imports ``ssl``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ...errors import InvalidArgumentError, InvalidEnvironmentError

if TYPE_CHECKING:
    from collections.abc import Mapping

PLAIN = "etcd://"
TLS = "etcds://"
DEFAULT_PORT = 2379
DEFAULT_PREFIX = "ecs-ipam"

# Keyword argument -> environment variable.
VARIABLES = {
    "cacert": "IPAM_ETCD_CACERT",
    "cert": "IPAM_ETCD_CERT",
    "key": "IPAM_ETCD_KEY",
    "user": "IPAM_ETCD_USER",
    "password": "IPAM_ETCD_PASSWORD",
    "token_cache": "IPAM_ETCD_TOKEN_CACHE",
}
_TLS_ONLY = ("cacert", "cert", "key")


def is_etcd_url(path: object) -> bool:
    """Whether *path* names an etcd database rather than a file."""
    return isinstance(path, str) and path.startswith((PLAIN, TLS))


def parse_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """Split an ``etcd://`` or ``etcds://`` URL into its endpoints and its key prefix.

    :return: ``([(host, port), ...], prefix)``; the prefix has no leading or trailing ``/``.
    :raises InvalidArgumentError: the URL is not a usable etcd URL.
    """
    if not is_etcd_url(url):
        raise InvalidArgumentError(f"not an etcd URL: {url!r} (expected {PLAIN} or {TLS} then HOST:PORT[/PREFIX])")
    authority, _, prefix = url.partition("://")[2].partition("/")
    endpoints = [_parse_endpoint(item.strip(), url) for item in authority.split(",")]
    return endpoints, prefix.strip("/") or DEFAULT_PREFIX


def _parse_endpoint(item: str, url: str) -> tuple[str, int]:
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise InvalidArgumentError(f"bad endpoint {item!r} in {url}")
        port_text = rest[1:]
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
    elif ":" in item:
        raise InvalidArgumentError(f"bad endpoint {item!r} in {url}: write an IPv6 host as [ADDRESS]:PORT")
    else:
        host, port_text = item, ""
    if not host:
        raise InvalidArgumentError(f"endpoint without a host in {url}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidArgumentError(f"bad port {port_text!r} in {url}")
    return host, int(port_text)


class Secret:
    """A password that shows as ``***`` wherever it is printed, logged or repr'd."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The password itself, for the one request that sends it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class Security:
    """TLS files and etcd user of one client.  The password never shows in its repr."""

    __slots__ = ("cacert", "cert", "key", "password", "tls", "token_cache", "user")

    def __init__(
        self,
        tls: bool,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        user: str | None = None,
        password: str | None = None,
        token_cache: str | None = None,
    ) -> None:
        self.tls = tls
        self.token_cache = token_cache
        self.cacert = cacert
        self.cert = cert
        self.key = key
        self.user = user
        self.password = Secret(password) if password is not None else None

    def __repr__(self) -> str:
        return (
            f"Security(tls={self.tls}, cacert={self.cacert!r}, cert={self.cert!r}, key={self.key!r}, "
            f"user={self.user!r}, password={self.password!r}, token_cache={self.token_cache!r})"
        )


def security_of(url: str, options: Mapping[str, str | None], environ: Mapping[str, str] | None = None) -> Security:
    """The security settings for *url*: each of *options* (keyword -> value) that is None
    or absent is taken from *environ* (default: the process environment); empty means unset.

    :raises InvalidEnvironmentError: the settings do not go together (a certificate
        without its key, a user without a password, TLS files for a plain URL).
    """
    environ = os.environ if environ is None else environ
    values: dict[str, str | None] = {}
    for name, variable in VARIABLES.items():
        value = options.get(name)
        if value is None:
            value = environ.get(variable)
        values[name] = value or None
    tls = url.startswith(TLS)
    if not tls:
        given = [VARIABLES[name] for name in _TLS_ONLY if values[name]]
        if given:
            # Refused rather than ignored: certificates given for a plain URL mean the
            # operator expects TLS, and the connection would go out in the clear.
            raise InvalidEnvironmentError(f"{', '.join(given)} set for a plain {PLAIN} URL; use {TLS} for TLS")
    for first, second in (("cert", "key"), ("key", "cert"), ("user", "password"), ("password", "user")):
        if values[first] and not values[second]:
            raise InvalidEnvironmentError(f"{VARIABLES[first]} is set but {VARIABLES[second]} is not")
    return Security(tls, **values)
