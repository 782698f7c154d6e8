"""A region's reconciler as one long-running task: elect, then reconcile.

The runtime is opened only while this process leads the region and closed when
it stops leading, so a standby holds nothing (on the local runtime: no replica
processes), and a deposed leader lets go of what the new leader now manages.
A leader cut off from the store's lease does not stop leading at its renew
deadline, only acting (`servefleet.reconcile.leader`): its runtime stays open
and the region keeps serving.

The region's lease is the store's (`region/<name>`) unless the caller passes
another backend (for a Kubernetes region, a Lease in its namespace), whose token
its holder then records in the store as `region/<name>/fence`, the fence of the
region's status writes (`StoreFencedLeases`). A name apart from the store lease's:
a fence never expires in the store, so a region that turned from Kubernetes to
local would otherwise never elect a leader.

Each region is supervised on its own. An error that escapes its reconciler or
its election (a store failing in a way no retry mends: a missing table, a
damaged row; or a bug) is logged with its traceback, the region steps down (its
runtime closes, its lease is released), and after a backoff (`restart_initial`
doubling to `restart_max`, from the start again once a run lasted `restart_max`)
it stands for election again. Other regions, and the gateways, never notice.
Only cancellation ends `run_region`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from servefleet.metrics import Metrics
from servefleet.reconcile.controller import Controller
from servefleet.reconcile.leader import (
    LeaderElection,
    LeaseSettings,
    StoreFencedLeases,
    StoreLeases,
    TokenLeaseBackend,
)
from servefleet.reconcile.settings import Clock, ControllerSettings
from servefleet.runtime.base import Runtime
from servefleet.store import Store

__all__ = ["run_region"]

log = logging.getLogger(__name__)

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
    leases: TokenLeaseBackend | None = None,
    metrics: Metrics | None = None,
) -> None:
    """Reconcile `region` whenever this process holds its lease (kept by `leases`,
    by default in the store), until cancelled; an error stops only this region for
    a while (see the module doc)."""
    metrics = metrics or Metrics()
    election = LeaderElection(
        StoreFencedLeases(leases, store, f"region/{region}/fence")
        if leases is not None
        else StoreLeases(store, f"region/{region}"),
        holder,
        lease,
        on_leading=lambda leading: metrics.set_leader(region, leading),
    )

    async def lead() -> None:
        async with open_runtime() as runtime:
            controller = Controller(
                store,
                runtime,
                region,
                settings,
                clock=clock,
                fence=election.fence,
                metrics=metrics,
            )
            on_controller(controller)
            await controller.run()

    delay = settings.restart_initial
    while True:
        began = time.monotonic()
        try:
            await election.run(lead)
            return
        except Exception as error:
            # The region's edge: whatever stopped it must not reach the other regions.
            if time.monotonic() - began >= settings.restart_max:
                delay = settings.restart_initial
            log.error(
                "region %s: stopped by %s; stepped down, standing for election again in %gs",
                *(region, _described(error), delay),
                exc_info=error,
                extra={"region": region},
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, settings.restart_max)


def _described(error: BaseException) -> str:
    """The errors in `error`, task groups unwrapped, in a line."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_described(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}"
