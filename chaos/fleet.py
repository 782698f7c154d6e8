"""What every scenario's fleet shares: the region and endpoint names, `servefleet up`
processes on a PostgreSQL schema of their own, and waiting for a converged state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from servefleet.spec import RegionState, RegionStatus
from servefleet.store import Store

REGION = "r1"
ENDPOINT = "chaos"
POLL = 0.05


async def region_status(
    store: Store, endpoint: str = ENDPOINT, region: str = REGION
) -> RegionStatus | None:
    statuses = await store.list_region_status(endpoint=endpoint, region=region)
    return statuses[0] if statuses else None


async def converged(
    store: Store,
    *,
    replicas: int,
    canary: int = 0,
    processes: Callable[[], int],
    within: float,
    endpoint: str = ENDPOINT,
    region: str = REGION,
) -> None:
    """Wait until `region` reports the endpoint's current generation ready and
    routed with `replicas` primary and `canary` canary replicas, and `processes()`
    counts exactly that many replica processes (the old ones are gone);
    TimeoutError after `within` seconds."""
    async with asyncio.timeout(within):
        while True:
            record = await store.get_endpoint(endpoint)
            status = await region_status(store, endpoint, region)
            if (
                status is not None
                and status.state is RegionState.READY
                and status.observed_generation == record.generation
                and (status.replicas_ready, status.canary_ready) == (replicas, canary)
                and status.routed
                and processes() == replicas + canary
            ):
                return
            await asyncio.sleep(POLL)
