"""`--wait`: follow the regions' reports until a change is in place everywhere.

A change is in place in a region when its report carries the endpoint's current
generation and the state that generation asks for: ready (running), stopped, or
gone (deleted, once the record is purged). Progress is a live table on a terminal
and a final table otherwise.
"""

from __future__ import annotations

import asyncio
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table

from servefleet.service import EndpointService
from servefleet.spec import DesiredState, Endpoint, RegionState, RegionStatus
from servefleet.store import EndpointNotFound

__all__ = ["wait_until_settled"]

_POLL_INTERVAL = 0.25


def _wanted(endpoint: Endpoint) -> RegionState:
    if endpoint.desired_state is DesiredState.STOPPED:
        return RegionState.STOPPED
    if endpoint.desired_state is DesiredState.DELETED:
        return RegionState.DELETED
    return RegionState.READY


def _pending(endpoint: Endpoint, statuses: list[RegionStatus]) -> list[str]:
    """Target regions whose report does not yet show the current generation in place."""
    by_region = {status.region: status for status in statuses}
    wanted = _wanted(endpoint)
    return [
        region
        for region in endpoint.target_regions
        if (status := by_region.get(region)) is None
        or status.observed_generation != endpoint.generation
        or status.state is not wanted
    ]


def _table(rows: list[tuple[str, Endpoint | None, list[RegionStatus]]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("ENDPOINT", "REGION", "STATE", "GENERATION", "READY", "MESSAGE"):
        table.add_column(column)
    for name, endpoint, statuses in rows:
        if endpoint is None:
            table.add_row(name, "*", "purged", "-", "-", "")
            continue
        by_region = {status.region: status for status in statuses}
        for region in endpoint.target_regions:
            status = by_region.get(region)
            if status is None:
                table.add_row(name, region, "pending", f"-/{endpoint.generation}", "-", "")
                continue
            table.add_row(
                name,
                region,
                status.state.value,
                f"{status.observed_generation}/{endpoint.generation}",
                f"{status.replicas_ready}/{status.replicas_desired}",
                status.message,
            )
    return table


async def wait_until_settled(
    service: EndpointService, names: list[str], *, within: float, console: Console
) -> list[str]:
    """Wait for every endpoint in `names`; returns what is still pending at the timeout."""
    deadline = time.monotonic() + within
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while True:
            rows: list[tuple[str, Endpoint | None, list[RegionStatus]]] = []
            pending: list[str] = []
            for name in names:
                try:
                    endpoint, statuses = await service.status(name)
                except EndpointNotFound:
                    rows.append((name, None, []))
                    continue
                rows.append((name, endpoint, statuses))
                pending += [f"{name} in {region}" for region in _pending(endpoint, statuses)]
            live.update(_table(rows), refresh=True)
            if not pending or time.monotonic() >= deadline:
                break
            await asyncio.sleep(_POLL_INTERVAL)
    if not console.is_terminal:
        console.line()  # the last table ends without one when not on a terminal
    return pending
