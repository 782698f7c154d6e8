"""A region's reconciler as one long-running task: elect, then reconcile.

The runtime is opened only while this process leads the region and closed when
it stops leading, so a standby holds nothing (on the local runtime: no replica
processes), and a deposed leader lets go of what the new leader now manages.

The region's lease is the store's (`region/<name>`) unless the caller passes
another backend (for a Kubernetes region, a Lease in its namespace).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from servefleet.reconcile.controller import Clock, Controller, ControllerSettings
from servefleet.reconcile.leader import LeaderElection, LeaseBackend, LeaseSettings, StoreLeases
from servefleet.runtime.base import Runtime
from servefleet.store import Store

__all__ = ["run_region"]

RuntimeFactory = Callable[[], AbstractAsyncContextManager[Runtime]]


async def run_region(
    store: Store,
    region: str,
    open_runtime: RuntimeFactory,
    *,
    holder: str,
    settings: ControllerSettings,
    lease: LeaseSettings,
    clock: Clock,
    on_controller: Callable[[Controller], None] = lambda _controller: None,
    leases: LeaseBackend | None = None,
) -> None:
    """Reconcile `region` whenever this process holds its lease (kept by `leases`,
    by default in the store), until cancelled."""
    election = LeaderElection(leases or StoreLeases(store, f"region/{region}"), holder, lease)

    async def lead() -> None:
        async with open_runtime() as runtime:
            controller = Controller(
                store, runtime, region, settings, clock=clock, fence=election.fence
            )
            on_controller(controller)
            await controller.run()

    await election.run(lead)
