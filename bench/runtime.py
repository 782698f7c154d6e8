"""A runtime that runs nothing: it records when each workload was applied.

Modelled on the tests' `MemoryRuntime`: what it holds is ready at once (every
desired replica ready, routed as asked), so the controller's pass ends right after
`apply`. It records `time.perf_counter()` at the moment each (endpoint, generation)
is first applied, and lets the benchmark wait for that moment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from servefleet.plan import Observed, VersionObservation, Workload, workload_hash

Key = tuple[str, int]


class RecordingRuntime:
    def __init__(self) -> None:
        self.held_workloads: dict[str, Workload] = {}
        self._hashes: dict[str, str] = {}
        self.applied_at: dict[Key, float] = {}
        """perf_counter() of the first `apply` of each (endpoint, generation)."""
        self.applies = 0
        self.removals = 0
        self._waiters: dict[Key, asyncio.Future[float]] = {}

    async def observe(self, endpoint: str) -> Observed | None:
        workload = self.held_workloads.get(endpoint)
        if workload is None:
            return None
        primary = workload.primary.replicas or 0
        canary = workload.canary_desired
        return Observed(
            workload_hash=self._hashes[endpoint],
            primary=VersionObservation(ready=primary, running=primary),
            canary=VersionObservation(ready=canary, running=canary),
            routed=workload.routed,
        )

    async def held(self) -> set[str]:
        return set(self.held_workloads)

    def synced(self) -> None:
        pass

    async def apply(self, workload: Workload) -> None:
        now = time.perf_counter()
        key = (workload.endpoint, workload.generation)
        self.applies += 1
        self.applied_at.setdefault(key, now)
        self.held_workloads[workload.endpoint] = workload
        self._hashes[workload.endpoint] = workload_hash(workload)
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(self.applied_at[key])

    async def remove(self, endpoint: str) -> None:
        self.removals += 1
        self.held_workloads.pop(endpoint, None)
        self._hashes.pop(endpoint, None)

    async def events(self) -> AsyncIterator[str]:
        # Nothing ever changes by itself here: no replica dies, none becomes ready later.
        never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        yield await never

    async def applied(self, endpoint: str, generation: int, within: float) -> float | None:
        """perf_counter() when `generation` of `endpoint` was applied; None if it was
        not applied within `within` seconds."""
        key = (endpoint, generation)
        if key in self.applied_at:
            return self.applied_at[key]
        waiter = self._waiters.get(key)
        if waiter is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[key] = waiter
        try:
            async with asyncio.timeout(within):
                return await asyncio.shield(waiter)
        except TimeoutError:
            return None
