"""The fast path (ecs_ipam.addr) against netaddr, the library of record: same accept and
reject, same values, same text, same containment, on arbitrary strings and integers."""

from __future__ import annotations

import re

import netaddr
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ecs_ipam.addr import Address, Network, format_address, parse_address, parse_network
from ecs_ipam.config import parse_cidr, parse_ip
from ecs_ipam.errors import InvalidConfigError

MAX = {4: 2**32 - 1, 6: 2**128 - 1}


# --- references: what the plugin did with netaddr alone -------------------------------


def netaddr_ip(text: str) -> netaddr.IPAddress | None:
    try:
        return netaddr.IPAddress(text, flags=netaddr.INET_PTON)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None


def netaddr_cidr(text: str) -> netaddr.IPNetwork | None:
    """config.parse_cidr as it was before the fast path, None for any refusal."""
    address, slash, prefix = text.partition("/")
    if not slash or not re.fullmatch(r"[0-9]{1,3}", prefix):
        return None
    ip = netaddr_ip(address)
    if ip is None or int(prefix) > (32 if ip.version == 4 else 128):
        return None
    return netaddr.IPNetwork(f"{ip}/{int(prefix)}")


# --- strategies ----------------------------------------------------------------------


def v6_values() -> st.SearchStrategy[int]:
    # Words drawn so that runs of zeros (what "::" compresses), ffff (IPv4-mapped) and
    # the IPv4-compatible forms inet_ntop writes with a dotted tail all come up often.
    word = st.one_of(st.just(0), st.just(0xFFFF), st.integers(0, 0xFF), st.integers(0, 0xFFFF))
    words = st.lists(word, min_size=8, max_size=8).map(lambda ws: int("".join(f"{w:04x}" for w in ws), 16))
    return st.one_of(
        words,
        st.integers(0, MAX[6]),
        st.integers(0, 0xFFFFFFFF),
        st.integers(0, 0xFFFFFFFF).map(lambda v: v | 0xFFFF << 32),
    )


def values() -> st.SearchStrategy[tuple[int, int]]:
    return st.one_of(st.tuples(st.integers(0, MAX[4]), st.just(4)), st.tuples(v6_values(), st.just(6)))


@st.composite
def renderings(draw) -> str:
    """A valid address written in one of the many forms, some of which netaddr refuses."""
    value, version = draw(values())
    if version == 4:
        octets = [str(b) for b in value.to_bytes(4, "big")]
        if draw(st.booleans()):
            octets = [draw(st.sampled_from(["", "0", "00"])) + o for o in octets]
        return ".".join(octets)
    style = draw(st.sampled_from(["compact", "verbose", "expanded", "upper", "dotted-tail"]))
    ip = netaddr.IPAddress(value, 6)
    if style == "compact":
        return str(ip)
    if style == "verbose":
        return ip.format(netaddr.ipv6_verbose)
    if style == "expanded":
        return ip.format(netaddr.ipv6_full)
    if style == "upper":
        return str(ip).upper()
    words = ip.format(netaddr.ipv6_full).split(":")
    tail = ".".join(str(b) for b in (value & 0xFFFFFFFF).to_bytes(4, "big"))
    return ":".join(words[:6]) + ":" + tail


ADDRESS_ALPHABET = "0123456789abcdefABCDEF:.%/ x\n\x00-+"
address_texts = st.one_of(
    renderings(),
    st.text(alphabet=ADDRESS_ALPHABET, max_size=45),
    st.text(max_size=20),
    # A valid address with something added or dropped at either end.
    st.tuples(renderings(), st.text(alphabet=ADDRESS_ALPHABET, max_size=3), st.booleans()).map(
        lambda t: t[1] + t[0] if t[2] else t[0] + t[1]
    ),
    renderings().map(lambda text: text[1:]),
    renderings().map(lambda text: text[:-1]),
)
prefix_texts = st.one_of(
    st.integers(0, 130).map(str),
    st.integers(0, 130).map(lambda n: f"0{n}"),
    st.text(alphabet="0123456789 +-x\n٣²", max_size=5),
)
cidr_texts = st.one_of(
    st.tuples(address_texts, prefix_texts).map("/".join),
    st.text(alphabet=ADDRESS_ALPHABET, max_size=50),
)

ODD_STRINGS = [
    "",
    "\ud800",
    "1.2.3.4\x00",
    "1.2.3.4\n",
    " 1.2.3.4",
    "1.2.3.04",
    "01.2.3.4",
    "1.2.3",
    "1.2.3.256",
    "::ffff:1.2.3.4",
    "::1.2.3.4",
    "1::2::3",
    "fe80::1%eth0",
    "１.2.3.4",
    "0x1.2.3.4",
    "1.2.3.4/24",
]


# --- addresses -----------------------------------------------------------------------


def assert_same_address(ours: Address | None, theirs: netaddr.IPAddress | None) -> None:
    if theirs is None:
        assert ours is None
        return
    assert ours is not None
    assert (ours.version, ours.value, str(ours)) == (theirs.version, theirs.value, str(theirs))
    assert ours == theirs and hash(ours) == hash(Address(theirs.value, theirs.version))


@settings(max_examples=300)
@given(address_texts)
def test_parse_address_accepts_and_reads_what_netaddr_does(text):
    assert_same_address(parse_address(text), netaddr_ip(text))


@pytest.mark.parametrize("text", ODD_STRINGS)
def test_parse_address_on_odd_strings(text):
    assert_same_address(parse_address(text), netaddr_ip(text))


@given(address_texts, st.sampled_from([4, 6]))
def test_parse_address_of_one_version(text, version):
    theirs = netaddr_ip(text)
    assert_same_address(
        parse_address(text, version), theirs if theirs is not None and theirs.version == version else None
    )


@settings(max_examples=200)
@given(values())
def test_format_address_writes_what_netaddr_writes(value_version):
    value, version = value_version
    assert format_address(value, version) == str(netaddr.IPAddress(value, version))
    assert parse_address(format_address(value, version)) == Address(value, version)


@given(address_texts)
@example("1.2.3.04")
@example("\ud800")
def test_config_parse_ip_is_netaddr(text):
    theirs = netaddr_ip(text)
    if theirs is None:
        with pytest.raises(InvalidConfigError, match="is not a valid IP address"):
            parse_ip(text, "field")
    else:
        assert_same_address(parse_ip(text, "field"), theirs)


def test_address_values_are_immutable_and_ordered():
    ip = Address(5, 4)
    with pytest.raises(AttributeError):
        ip.value = 6
    assert Address(4, 4) < ip < Address(0, 6)
    assert ip != Address(5, 6) and ip != "0.0.0.5"


# --- networks ------------------------------------------------------------------------


def assert_same_network(ours: Network | None, theirs: netaddr.IPNetwork | None) -> None:
    if theirs is None:
        assert ours is None
        return
    assert ours is not None
    assert (str(ours), ours.version, ours.prefixlen, ours.first, ours.last, ours.value, ours.size) == (
        str(theirs),
        theirs.version,
        theirs.prefixlen,
        theirs.first,
        theirs.last,
        theirs.value,
        theirs.size,
    )
    assert_same_address(ours.ip, theirs.ip)
    assert (str(ours.cidr), ours.cidr.first, ours.cidr.last) == (str(theirs.cidr), theirs.cidr.first, theirs.cidr.last)
    assert ours == theirs and ours.cidr == theirs.cidr


@settings(max_examples=300)
@given(cidr_texts)
@example("10.0.0.1/024")
@example("10.0.0.1/24\n")
@example("10.0.0.1/٣")
@example("::/0")
@example("1.2.3.4/33")
def test_parse_network_is_config_parse_cidr_with_netaddr(text):
    theirs = netaddr_cidr(text)
    assert_same_network(parse_network(text), theirs)
    if theirs is None:
        with pytest.raises(InvalidConfigError):
            parse_cidr(text, "field")
    else:
        assert_same_network(parse_cidr(text, "field"), theirs)


@st.composite
def networks(draw) -> tuple[Network, netaddr.IPNetwork]:
    value, version = draw(values())
    prefixlen = draw(st.integers(0, 32 if version == 4 else 128))
    theirs = netaddr.IPNetwork(f"{netaddr.IPAddress(value, version)}/{prefixlen}")
    return Network(Address(value, version), prefixlen), theirs


@settings(max_examples=200)
@given(networks(), values(), networks())
def test_containment_is_netaddrs(network, value_version, other):
    ours, theirs = network
    assert_same_network(ours, theirs)
    value, version = value_version
    near = [value, ours.first, ours.last, max(ours.first - 1, 0), min(ours.last + 1, MAX[ours.version])]
    for candidate in near:
        if candidate > MAX[version]:
            continue
        expected = netaddr.IPAddress(candidate, version) in theirs
        assert (Address(candidate, version) in ours) == expected
        assert (netaddr.IPAddress(candidate, version) in ours) == expected
    assert (other[0] in ours) == (other[1] in theirs)
    assert (other[1] in ours) == (other[1] in theirs)


def test_network_keeps_host_bits_as_netaddr_does():
    network = Network(Address(0x0A000105, 4), 24)
    assert (str(network), str(network.cidr), str(network.ip)) == ("10.0.1.5/24", "10.0.1.0/24", "10.0.1.5")
    with pytest.raises(AttributeError):
        network.prefixlen = 25
