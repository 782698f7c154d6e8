"""Who moves rollouts on: one process at a time, elected through the store's lease
`rollouts`, looks every `interval` at each endpoint with a rollout under way and
takes its next step (`RolloutService.advance`) from the regions' signals.

The state is the endpoint record's, so a leader change or a restart of every
process resumes each rollout where the store says it is; each step is a CAS write
on the record, so even two drivers overlapping for a moment (a lease lapsing
during a step) decide from the record as stored and never undo each other.

Signals come from what the regions write to the store, so a driver in any process
sees every region: a region's canary is ready when its report counts every
desired canary replica ready, and a local region's report carries each version's
requests, 5xx answers and latency buckets while the rollout has reached it, which
`rollout_signals` turns into the current step's window (from the baseline kept
with the rollout's state); so does a Kubernetes region's that reads them from its
Prometheus (`runtime.kubernetes.traffic`). Other Kubernetes regions report
readiness only.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

from servefleet.rollout_service import RolloutService
from servefleet.service import EndpointService, OperationRefused
from servefleet.spec import Endpoint
from servefleet.store import EndpointNotFound, Store, StoreError

__all__ = [
    "DRIVE_INTERVAL",
    "ROLLOUT_LEASE",
    "ActiveRollouts",
    "drive_once",
    "drive_rollouts",
]

log = logging.getLogger(__name__)

ROLLOUT_LEASE = "rollouts"
"""The store lease whose holder drives every rollout."""
DRIVE_INTERVAL = 2.0
"""Seconds between looks: a step's hold and a breach are seen this much late at most."""


class ActiveRollouts:
    """The endpoints with a rollout under way, found without listing every endpoint
    at every look: the store is listed again only after the change feed has moved,
    and then no sooner than `LISTING_FACTOR` times the last listing's duration, so
    a large fleet spends a bounded share of the driver's time listing. In between,
    the endpoints known to be rolling out are read one by one."""

    LISTING_FACTOR = 20.0

    def __init__(self, store: Store, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._monotonic = monotonic
        self._position: int | None = None
        self._names: set[str] = set()
        self._next_listing = 0.0

    async def endpoints(self) -> list[Endpoint]:
        position = await self._store.feed_position()
        if position != self._position and self._monotonic() >= self._next_listing:
            started = self._monotonic()
            rolling = [e for e in await self._store.list_endpoints() if _rolling_out(e)]
            finished = self._monotonic()
            self._next_listing = finished + self.LISTING_FACTOR * (finished - started)
            self._position = position
            self._names = {endpoint.name for endpoint in rolling}
            return rolling
        found = []
        for name in sorted(self._names):
            try:
                endpoint = await self._store.get_endpoint(name)
            except EndpointNotFound:
                endpoint = None
            if endpoint is not None and _rolling_out(endpoint):
                found.append(endpoint)
            else:
                self._names.discard(name)
        return found


def _rolling_out(endpoint: Endpoint) -> bool:
    return endpoint.rollout is not None and endpoint.rollout.phase.active


async def drive_once(rollouts: RolloutService, store: Store, active: ActiveRollouts) -> None:
    """One step of every rollout under way."""
    for endpoint in await active.endpoints():
        statuses = await store.list_region_status(endpoint=endpoint.name)
        try:
            _, decision = await rollouts.advance(endpoint.name, statuses)
        except OperationRefused as refused:  # deleted or changed meanwhile: next look
            log.info("rollout of %s: %s", endpoint.name, refused)
            continue
        if endpoint.rollout is None or decision.reason != endpoint.rollout.reason:
            log.info("rollout of %s: %s", endpoint.name, decision.reason)


async def drive_rollouts(
    store: Store,
    *,
    clock: Callable[[], datetime],
    interval: float = DRIVE_INTERVAL,
) -> None:
    """Drive rollouts until cancelled (the caller holds the `rollouts` lease); a store
    that does not answer is tried again at the next look."""
    rollouts = RolloutService(EndpointService(store, clock), clock)
    active = ActiveRollouts(store)
    while True:
        try:
            await drive_once(rollouts, store, active)
        except StoreError as error:
            log.warning("rollouts: %s; trying again in %g s", error, interval)
        await asyncio.sleep(interval)
