"""An in-memory runtime for testing the controller's queueing and decisions.

Scenario tests run the real local runtime; this one lets a test decide how many
replicas are ready, and fail or refuse applies, without processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from servefleet.plan import Observed, VersionObservation, Workload, workload_hash
from servefleet.runtime.base import RuntimeUnavailable, WorkloadUnsupported


@dataclass
class MemoryRuntime:
    held_workloads: dict[str, Workload] = field(default_factory=dict)
    ready: dict[str, int] = field(default_factory=dict)
    """Ready primary replicas per endpoint; absent means all desired are ready."""
    unavailable: bool = False
    applies: list[Workload] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)
    synced_after: int | None = None
    """How many applies there had been when the reconciler said it was synced."""
    _events: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    async def observe(self, endpoint: str) -> Observed | None:
        workload = self.held_workloads.get(endpoint)
        if workload is None:
            return None
        wanted = workload.primary.replicas or 0
        ready = self.ready.get(endpoint, wanted)
        canary = workload.canary.replicas or 0 if workload.canary else 0
        return Observed(
            workload_hash=workload_hash(workload),
            primary=VersionObservation(ready=ready, running=wanted),
            canary=VersionObservation(ready=canary, running=canary),
            routed=workload.routed,
        )

    async def held(self) -> set[str]:
        return set(self.held_workloads)

    def synced(self) -> None:
        self.synced_after = len(self.applies)

    async def apply(self, workload: Workload) -> None:
        if self.unavailable:
            raise RuntimeUnavailable("region unreachable")
        if workload.primary.command is None and workload.primary.image is None:
            raise WorkloadUnsupported("nothing to run")
        if workload.primary.image == "refused.example/never:1":
            raise WorkloadUnsupported("this region refuses that image")
        self.applies.append(workload)
        self.held_workloads[workload.endpoint] = workload

    async def remove(self, endpoint: str) -> None:
        self.removals.append(endpoint)
        self.held_workloads.pop(endpoint, None)

    async def events(self) -> AsyncIterator[str]:
        while True:
            yield await self._events.get()

    def announce(self, endpoint: str) -> None:
        self._events.put_nowait(endpoint)
