"""The `Runtime` protocol: the reconciler's only view of a region.

A runtime runs workloads and reports what it holds. The reconciler never looks
past this seam, so the same reconciler drives local processes and Kubernetes
clusters, and its tests can use a small function-backed runtime.

Errors a runtime raises on purpose form one family, mapped once at the edge:

    RuntimeError_ (base)
    ├── RuntimeUnavailable   the region cannot be reached now; retry with backoff
    ├── ApplyConflict        someone else changed what we manage; retry
    └── WorkloadUnsupported  this region can never run this workload as declared;
                             report it, do not retry until the spec changes
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from servefleet.plan import Observed, Workload

__all__ = [
    "ApplyConflict",
    "EventSubscription",
    "Runtime",
    "RuntimeFailure",
    "RuntimeUnavailable",
    "WorkloadUnsupported",
]


class RuntimeFailure(Exception):
    """Base of every error a runtime raises on purpose."""


class RuntimeUnavailable(RuntimeFailure):
    pass


class ApplyConflict(RuntimeFailure):
    pass


class WorkloadUnsupported(RuntimeFailure):
    pass


class Runtime(Protocol):
    async def observe(self, endpoint: str) -> Observed | None:
        """What the region holds for `endpoint`; None when it holds nothing."""
        ...

    async def held(self) -> set[str]:
        """Names of every endpoint the region holds anything of."""
        ...

    async def apply(self, workload: Workload) -> None:
        """Make the region run `workload` (recording its hash), replacing what was there."""
        ...

    async def remove(self, endpoint: str) -> None:
        """Remove everything of `endpoint`; removing what is not there is not an error."""
        ...

    def events(self) -> AsyncIterator[str]:
        """Names of endpoints whose observed state changed (a replica died or became
        ready); the reconciler looks at them again."""
        ...

    def synced(self) -> None:
        """The reconciler has looked once at every endpoint the store lists for the
        region (and every one the runtime holds) since the runtime opened: from now
        on what it does not hold is unknown here, not still to come."""
        ...


class EventSubscription:
    """One consumer of a runtime's `events()`: each endpoint name waits at most once,
    so a burst of changes to one endpoint costs one look."""

    def __init__(self) -> None:
        self._pending: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._closed = False

    def push(self, name: str) -> None:
        self._pending[name] = None
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> str:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        name = next(iter(self._pending))
        del self._pending[name]
        return name
