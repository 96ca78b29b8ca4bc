"""CNI results in the shape of the version the caller asked for (spec section "Result")."""

from __future__ import annotations

from .addr import Address, Network, parse_network
from .config import Pool

# typing.TYPE_CHECKING without importing typing, which every plugin start would pay for.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

Allocation = tuple[Pool, Network]


def format_result(cni_version: str, allocations: Iterable[Allocation]) -> dict[str, Any]:
    """Build the ADD result for *cni_version*; IPv4 comes first, as in *allocations*."""
    if cni_version in ("0.1.0", "0.2.0"):
        # One address per family, each carrying its own routes.
        result: dict[str, Any] = {"cniVersion": cni_version}
        for pool, address in allocations:
            result[f"ip{pool.version}"] = {
                "ip": str(address),
                "gateway": str(pool.gateway),
                "routes": [route.to_json() for route in pool.routes],
            }
        result["dns"] = {}
        return result
    ips: list[dict[str, str]] = []
    routes: list[dict[str, str]] = []
    for pool, address in allocations:
        ip = {"address": str(address), "gateway": str(pool.gateway)}
        if cni_version.startswith("0."):
            ip = {"version": str(pool.version), **ip}
        ips.append(ip)
        routes.extend(route.to_json() for route in pool.routes)
    return {"cniVersion": cni_version, "ips": ips, "routes": routes, "dns": {}}


def result_addresses(result: Mapping[str, Any]) -> list[Address]:
    """The addresses a previous result (of any version's shape) handed out."""
    texts = []
    ips = result.get("ips")
    if isinstance(ips, list):
        texts = [ip.get("address") for ip in map(_mapping_or_none, ips) if ip is not None]
    for family in ("ip4", "ip6"):
        legacy = _mapping_or_none(result.get(family))
        if legacy is not None:
            texts.append(legacy.get("ip"))
    addresses = []
    for text in texts:
        network = parse_network(text)
        if network is not None:
            addresses.append(network.ip)
        elif isinstance(text, str):
            # Forms the fast path leaves to netaddr (an address without a prefix...).
            address = _parse_with_netaddr(text)
            if address is not None:
                addresses.append(address)
    return addresses


def _mapping_or_none(value: object) -> Mapping[str, Any] | None:
    # A result read from JSON holds dicts; collections.abc (a millisecond of start-up, with
    # collections) only for another mapping an embedder passes.
    if isinstance(value, dict):
        return value
    from collections.abc import Mapping

    return value if isinstance(value, Mapping) else None


def _parse_with_netaddr(text: str) -> Address | None:
    import netaddr

    try:
        ip = netaddr.IPNetwork(text).ip
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None
    return Address(int(ip), ip.version)
