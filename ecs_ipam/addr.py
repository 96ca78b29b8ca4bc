"""IP addresses and networks as integers: the plugin's fast path around netaddr.

netaddr is how the plugin understands addresses, but importing it costs a CNI call more
than everything else the call does.  This module parses and formats the strict forms the
configuration accepts (``netaddr.IPAddress(text, flags=INET_PTON)``, and ``address/prefix``
as :func:`ecs_ipam.config.parse_cidr` reads it): IPv6 with the C library's ``inet_pton``
and ``inet_ntop``, which are what netaddr itself calls; IPv4, the four decimal octets
netaddr's ``inet_pton`` rules allow, in Python.  tests/test_addr.py proves, with
hypothesis, that it accepts, rejects, computes and writes exactly what netaddr does.

What it returns are small immutable values with the attribute names netaddr's objects
have (``value``, ``version``, ``first``, ``last``, ``prefixlen``, ``ip``, ``cidr``), so
the code that uses them reads as it did with netaddr.

IPv6 only loads ``_socket`` (as late as that), and not ``socket``, which imports enum
and selectors on top of the same two C functions: an IPv4 pool, the common case, loads
neither.
"""

from __future__ import annotations

WIDTH = {4: 32, 6: 128}


class Address:
    """One IP address: ``value`` (an int) of IP ``version`` 4 or 6."""

    __slots__ = ("value", "version")
    value: int
    version: int

    def __init__(self, value: int, version: int) -> None:
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "version", version)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __str__(self) -> str:
        return format_address(self.value, self.version)

    def __repr__(self) -> str:
        return f"Address('{self}')"

    def __eq__(self, other: object) -> bool:
        # Duck-typed, so that an address compares equal to netaddr's IPAddress of it.
        try:
            return (self.version, self.value) == (other.version, other.value)  # type: ignore[attr-defined]  # duck-typed: AttributeError is the answer
        except AttributeError:
            return NotImplemented

    def __hash__(self) -> int:
        return hash((self.version, self.value))

    def __lt__(self, other: Address) -> bool:
        return (self.version, self.value) < (other.version, other.value)


class Network:
    """An address with a prefix length, as netaddr's IPNetwork: host bits are kept in ``ip``."""

    __slots__ = ("first", "ip", "last", "prefixlen")
    ip: Address
    prefixlen: int
    first: int
    last: int

    def __init__(self, ip: Address, prefixlen: int) -> None:
        host_bits = WIDTH[ip.version] - prefixlen
        first = ip.value >> host_bits << host_bits
        object.__setattr__(self, "ip", ip)
        object.__setattr__(self, "prefixlen", prefixlen)
        object.__setattr__(self, "first", first)
        object.__setattr__(self, "last", first | ((1 << host_bits) - 1))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    @property
    def version(self) -> int:
        return self.ip.version

    @property
    def value(self) -> int:
        return self.ip.value

    @property
    def cidr(self) -> Network:
        """The network itself: host bits cleared."""
        return Network(Address(self.first, self.version), self.prefixlen)

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.ip}/{self.prefixlen}"

    def __repr__(self) -> str:
        return f"Network('{self}')"

    def __contains__(self, other: object) -> bool:
        # An address, or a network wholly inside this one; either kind of object, ours or
        # netaddr's, as netaddr's IPNetwork answers.
        if getattr(other, "version", None) != self.version:
            return False
        if hasattr(other, "prefixlen"):
            return bool(self.first <= other.first and other.last <= self.last)  # type: ignore[attr-defined]  # a network: has prefixlen
        return bool(self.first <= other.value <= self.last)  # type: ignore[attr-defined]  # same version: an address

    def __eq__(self, other: object) -> bool:
        # netaddr's rule: the same version and range, whatever the host bits.
        try:
            return (self.version, self.first, self.last) == (other.version, other.first, other.last)  # type: ignore[attr-defined]  # duck-typed, as __eq__ above
        except AttributeError:
            return NotImplemented

    def __hash__(self) -> int:
        return hash((self.version, self.first, self.last))


def format_address(value: int, version: int) -> str:
    """Exactly ``str(netaddr.IPAddress(value, version))``: netaddr writes IPv4 as four
    decimal octets, IPv6 with ``inet_ntop``."""
    if version == 4:
        return f"{value >> 24}.{value >> 16 & 0xFF}.{value >> 8 & 0xFF}.{value & 0xFF}"
    from _socket import AF_INET6, inet_ntop

    return inet_ntop(AF_INET6, value.to_bytes(16, "big"))


def parse_address(text: object, version: int | None = None) -> Address | None:
    """The address netaddr reads in *text* (strictly: ``flags=INET_PTON``), or None.

    None means netaddr refuses *text* too, or that it is of the other *version*.  No
    message: a caller that must explain a refusal asks netaddr (config.parse_ip).
    """
    if not isinstance(text, str):
        return None
    if ":" not in text:
        value = _parse_ipv4(text)
        return None if value is None or version == 6 else Address(value, 4)
    if version == 4:
        return None
    from _socket import AF_INET6, inet_pton

    try:
        packed = inet_pton(AF_INET6, text)
    except (OSError, ValueError):  # ValueError: NUL, or text that is not encodable
        return None
    return Address(int.from_bytes(packed, "big"), 6)


def _parse_ipv4(text: str) -> int | None:
    # inet_pton's IPv4 form: four decimal octets of at most 255, nothing else.  netaddr
    # also refuses leading zeros, which some C libraries would read as octal.
    octets = text.split(".")
    if len(octets) != 4:
        return None
    value = 0
    for octet in octets:
        if not 0 < len(octet) <= 3 or not octet.isascii() or not octet.isdigit():
            return None
        if len(octet) > 1 and octet[0] == "0":
            return None
        number = int(octet)
        if number > 255:
            return None
        value = value << 8 | number
    return value


def parse_prefix(text: str, version: int) -> int | None:
    """A prefix length of ``address/prefix`` as config.parse_cidr accepts it: one to three
    ASCII digits, at most the address width; else None."""
    if not 0 < len(text) <= 3 or not text.isascii() or not text.isdigit():
        return None
    prefixlen = int(text)
    return prefixlen if prefixlen <= WIDTH[version] else None


def parse_network(text: object, version: int | None = None) -> Network | None:
    """``address/prefix`` as config.parse_cidr accepts it, host bits kept; or None."""
    if not isinstance(text, str):
        return None
    address, slash, prefix = text.partition("/")
    if not slash:
        return None
    ip = parse_address(address, version)
    if ip is None:
        return None
    prefixlen = parse_prefix(prefix, ip.version)
    return None if prefixlen is None else Network(ip, prefixlen)
