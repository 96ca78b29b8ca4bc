"""How ecs-ipamctl prints: tables for people, JSON for programs, and the Prometheus text
exposition format for node_exporter's textfile collector."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from .leases import Lease, PoolUsage

LEASE_KEYS = ("address", "subnet", "id", "container_id", "ifname", "allocated_at")
# What owns a lease, in the JSON "owner" key.
OWNER_ID, OWNER_ATTACHMENT, OWNER_NONE = "id", "attachment", "anonymous"

# Gauge name -> help text; the names are part of the interface (dashboards use them).
GAUGES = {
    "ecs_ipam_pool_capacity_addresses": "Addresses the pool can hand out (network, broadcast and gateway excluded).",
    "ecs_ipam_pool_allocated_addresses": "Addresses of the pool held by tasks.",
    "ecs_ipam_pool_stale_addresses": "Addresses of the pool held by an owner whose netns path no longer exists.",
}


# What the tables say where a migrated lease's subnet is not known yet (it waits in the
# legacy bucket until a command of the plugin names a subnet that contains it).
UNKNOWN_SUBNET = "(unknown)"


class UsageRow(NamedTuple):
    """What ``usage`` reports for one pool, or (subnet and capacity None) for the migrated
    leases whose subnet is not known yet."""

    subnet: str | None
    capacity: int | None
    allocated: int
    stale: int


def usage_rows(
    pools: Iterable[tuple[PoolUsage, list[Lease]]], unplaced: Sequence[Lease], is_stale: Callable[[Lease], bool]
) -> list[UsageRow]:
    """One row per pool, from the pool and the leases of its addresses, then one for the
    *unplaced* migrated leases, if any."""
    rows = [
        UsageRow(usage.pool.bucket, usage.capacity, len(held), sum(1 for lease in held if is_stale(lease)))
        for usage, held in pools
    ]
    if unplaced:
        rows.append(UsageRow(None, None, len(unplaced), sum(1 for lease in unplaced if is_stale(lease))))
    return rows


# --- leases ----------------------------------------------------------------------------------


def lease_json(lease: Lease) -> dict[str, object]:
    document: dict[str, object] = {key: getattr(lease, key) for key in LEASE_KEYS}
    document["owner"] = (
        OWNER_ATTACHMENT if lease.attachment else OWNER_ID if lease.id else None if lease.damaged else OWNER_NONE
    )
    if lease.damaged:
        document["damaged"] = True
    return document


def leases_json(leases: Sequence[Lease], reasons: Sequence[str] | None = None) -> str:
    """A JSON list of leases; with *reasons*, each has a ``reason`` (why it looks leaked)."""
    documents = [lease_json(lease) for lease in leases]
    if reasons is not None:
        for document, reason in zip(documents, reasons):
            document["reason"] = reason
    return json.dumps(documents, indent=2) + "\n"


def container_text(lease: Lease) -> str:
    """The container id as the release lines and their log lines show it (``-``: none recorded)."""
    return _cell(lease.container_id) if lease.container_id else "-"


def leases_table(leases: Sequence[Lease], now: float, reasons: Sequence[str] | None = None) -> str:
    """One line per lease; with *reasons*, a last column saying why each looks leaked."""
    header = ["ADDRESS", "SUBNET", "ID", "CONTAINER", "IFNAME", "AGE"]
    rows = [
        [
            lease.address,
            lease.subnet or UNKNOWN_SUBNET,
            "(damaged)" if lease.damaged else _owner_cell(lease),
            container_text(lease),
            _cell(lease.ifname) if lease.ifname else "-",
            _age(lease, now),
        ]
        for lease in leases
    ]
    if reasons is not None:
        header.append("WHY")
        for row, reason in zip(rows, reasons):
            row.append(reason)
    return _table(header, rows)


def _owner_cell(lease: Lease) -> str:
    if lease.attachment:
        return "(attachment)"  # the CONTAINER and IFNAME columns name it
    return _cell(lease.id) if lease.id else "(anonymous)"


def _age(lease: Lease, now: float) -> str:
    if lease.allocated_at is None:
        return "(migrated)" if lease.migrated else "-"
    seconds = max(int(now - lease.allocated_at), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            big, rest = divmod(seconds, size)
            smaller = {"d": ("h", 3600), "h": ("m", 60), "m": ("s", 1)}[unit]
            part = rest // smaller[1]
            return f"{big}{unit}{part}{smaller[0]}" if part else f"{big}{unit}"
    return f"{seconds}s"


def _cell(text: str) -> str:
    # Ids are data of any shape: a control character must not break the table.
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _table(header: list[str], rows: list[list[str]], right_from: int | None = None) -> str:
    """Aligned columns; numbers (the columns from *right_from* on) to the right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = (
            cell.rjust(width) if right_from is not None and i >= right_from else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        )
        return "  ".join(cells).rstrip()

    return "\n".join(line(row) for row in [header, *rows]) + "\n"


# --- usage -----------------------------------------------------------------------------------


def usage_table(rows: Sequence[UsageRow]) -> str:
    if not rows:
        return "no pools in this database\n"
    header = ["SUBNET", "CAPACITY", "ALLOCATED", "STALE", "USED"]
    body = [
        [
            row.subnet or UNKNOWN_SUBNET,
            "-" if row.capacity is None else str(row.capacity),
            str(row.allocated),
            str(row.stale),
            _percent(row.allocated, row.capacity),
        ]
        for row in rows
    ]
    return _table(header, body, right_from=1)


def _percent(part: int, whole: int | None) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def usage_json(rows: Sequence[UsageRow]) -> str:
    document = [
        {"subnet": row.subnet, "capacity": row.capacity, "allocated": row.allocated, "stale": row.stale} for row in rows
    ]
    return json.dumps(document, indent=2) + "\n"


def usage_prometheus(rows: Sequence[UsageRow]) -> str:
    """The text exposition format: a HELP and a TYPE line per gauge, then one sample per pool.

    Migrated leases whose subnet is not known yet are samples labelled ``subnet="unknown"``
    (allocated and stale; no capacity): summed over the labels, the gauges count every lease.
    """
    values = {
        "ecs_ipam_pool_capacity_addresses": lambda row: row.capacity,
        "ecs_ipam_pool_allocated_addresses": lambda row: row.allocated,
        "ecs_ipam_pool_stale_addresses": lambda row: row.stale,
    }
    lines = []
    for name, help_text in GAUGES.items():
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        lines.extend(
            f'{name}{{subnet="{_label(row.subnet or "unknown")}"}} {values[name](row)}'
            for row in rows
            if values[name](row) is not None
        )
    return "\n".join(lines) + "\n"


def _owner_words(lease: Lease) -> str:
    container = container_text(lease)
    if lease.attachment:
        return f"attachment={container}/{_cell(lease.ifname or '')}"
    return f"id={lease.id!r} container={container}"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# --- release ---------------------------------------------------------------------------------


def release_lines(leases: Sequence[Lease], dry_run: bool, asked: str) -> str:
    """One line per lease released (or that would be), or one saying there was none.

    :param asked: what was asked for, for the "nothing" line (``no lease held by id 'task-1'``).
    """
    verb = "would release" if dry_run else "released"
    lines = [
        f"{verb} {lease.address} ({lease.subnet or 'not yet in a pool'}) {_owner_words(lease)}" for lease in leases
    ]
    if not leases:
        lines.append(f"{'nothing to release' if dry_run else 'nothing released'}: {asked}")
    return "\n".join(lines) + "\n"
