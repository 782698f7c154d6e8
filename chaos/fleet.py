"""What every scenario's fleet shares: the region and endpoint names, `servefleet up`
processes on a PostgreSQL schema of their own, and waiting for a converged state."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from servefleet.service import EndpointService
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


@dataclass
class Changes:
    asked: list[int] = field(default_factory=list)
    """Replica counts asked for, in order; the last one is the final form."""
    made_at: list[float] = field(default_factory=list)
    """time.monotonic() when each was stored."""
    made: asyncio.Event = field(default_factory=asyncio.Event)
    """Set after each change (cleared by whoever waits for the next)."""


@asynccontextmanager
async def changing(
    service: EndpointService, interval: float, rng: random.Random
) -> AsyncIterator[Changes]:
    """Scale the endpoint to 1-3 replicas every `interval` s while the block runs."""
    changes = Changes()

    async def change() -> None:
        while True:
            await asyncio.sleep(interval)
            replicas = rng.randint(1, 3)
            await service.scale(ENDPOINT, replicas)
            changes.asked.append(replicas)
            changes.made_at.append(time.monotonic())
            changes.made.set()

    task = asyncio.create_task(change(), name="chaos-spec-changes")
    try:
        yield changes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def skew_in_words(skew: float, what: str) -> str:
    """The clock-skew part of a leader-kill scenario's fault, in words ("" for none)."""
    if not skew:
        return ""
    return f"one {what}'s clock {skew:g} s ahead (and each replacement of it); "
