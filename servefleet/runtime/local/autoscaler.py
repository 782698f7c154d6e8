"""The local autoscaler: each version's replica count, from the load its gateway counts.

For a workload that autoscales on requests (`autoscaling` with a `concurrency` or
`rps` metric), the primary and the canary each get a `Scaling`: the count the
supervisor runs (`target`) and the count last decided. Once a second, for each
version, the samples of its `LoadMeter` (its own share of the traffic), the
replicas it runs and the state the last decision returned go to
`autoscale.decide`, the pure decision; the target then moves one replica toward
the decided count, so replicas start and retire (drained first, by the
supervisor) one at a time.

The decision and its reason are what `observe` reports (`VersionObservation
.desired`), so they reach the region's status; they are never written into the
spec, and a new apply of the workload keeps them (clamped to new bounds). A
version seen for the first time starts from the replicas it runs, or else its
minimum, with no state: `decide` then holds that count for a scale-down window.

A version at zero is woken by `wake`, which the gateway calls when a request
arrives for it: one replica starts at once, before the next decision, which the
request's arrival then keeps at one at least for `scale_to_zero_after`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from servefleet.autoscale import decide
from servefleet.runtime.local.records import ROLES, EndpointRecord, Role, Scaling, autoscaled_roles
from servefleet.runtime.local.routes import RoutePublisher

__all__ = ["Autoscaler"]

log = logging.getLogger(__name__)

INTERVAL = 1.0
"""Seconds between decisions: `decide` reads one sample a second."""


class Autoscaler:
    """Sets the count of every autoscaled version of one runtime's endpoints."""

    def __init__(
        self,
        region: str,
        endpoints: dict[str, EndpointRecord],
        routes: RoutePublisher,
        converge: Callable[[EndpointRecord], None],
        running: Callable[[EndpointRecord, Role], int],
    ) -> None:
        """`converge(record)` makes the supervisor act on a changed target;
        `running(record, role)` counts the version's replicas of its current spec
        that are not retiring."""
        self._region = region
        self._endpoints = endpoints
        self._routes = routes
        self._converge = converge
        self._running = running
        self._task: asyncio.Task[None] | None = None

    def adopt(self, record: EndpointRecord) -> None:
        """Take on the versions the record's workload autoscales (called on every
        apply, before the supervisor converges); let go of the others."""
        workload = record.workload
        roles = autoscaled_roles(workload)
        for role in ROLES:
            if role not in roles:
                record.scaling.pop(role, None)
        if workload is None or workload.autoscaling is None:
            return
        low, high = workload.autoscaling.min_replicas, workload.autoscaling.max_replicas
        for role in roles:
            scaling = record.scaling.get(role)
            if scaling is None:
                running = self._running(record, role)
                resumed = workload.resume_replicas
                if running:
                    count, reason = running, f"{running} running when autoscaling began"
                elif resumed:
                    count = resumed[ROLES.index(role)]
                    reason = f"{count} as last reported, before this runtime took over"
                else:
                    count, reason = low, "min_replicas"
                count = min(high, max(low, count))
                record.scaling[role] = Scaling(count, count, f"{reason} → {count}")
            elif not low <= scaling.decided <= high:
                count = min(high, max(low, scaling.decided))
                scaling.target = min(high, max(low, scaling.target))
                scaling.decided = count
                scaling.reason = f"bounds {low}..{high} → {count}"
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"autoscaler-{self._region}")

    def wake(self, endpoint: str, role: Role) -> None:
        """A request arrived for a version: start its first replica now if it has none."""
        record = self._endpoints.get(endpoint)
        scaling = record.scaling.get(role) if record else None
        if record is None or scaling is None or scaling.target > 0:
            return
        scaling.target = scaling.decided = 1
        scaling.waking = True
        scaling.reason = "a request arrived at zero → 1"
        log.info("%s/%s: %s %s", self._region, endpoint, role, scaling.reason)
        self._converge(record)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            now = datetime.now(UTC)
            for record in list(self._endpoints.values()):
                try:
                    self._step(record, now)
                except Exception:
                    # One endpoint's bug must not stop the others' scaling.
                    log.exception("%s/%s: autoscaling failed", self._region, record.name)

    def _step(self, record: EndpointRecord, now: datetime) -> None:
        workload = record.workload
        if workload is None or workload.autoscaling is None:
            return
        spec = workload.autoscaling
        changed = False
        for role, scaling in record.scaling.items():
            meter = self._routes.load(record.name, role)
            # `decide` reads no further back than the stable window (the panic
            # window is at most as long); one sample more covers a late tick.
            samples = meter.sample(now, keep=spec.scale_up_window + 1) if meter else ()
            running = self._running(record, role)
            decision = decide(samples, running, spec, now=now, previous=scaling.state)
            scaling.state = decision.state
            if decision.replicas != scaling.decided:
                # The reason is kept only with a new count: a status write each
                # second for an average moving inside one count would say nothing.
                scaling.decided, scaling.reason = decision.replicas, decision.reason
                log.info("%s/%s: %s %s", self._region, record.name, role, decision.reason)
                changed = True
            if scaling.target != scaling.decided:
                # From zero, the first replica starts as a wake's does; at zero, none does.
                scaling.waking = scaling.target == 0 or (scaling.waking and scaling.decided > 0)
                scaling.target += 1 if scaling.decided > scaling.target else -1
                changed = True
        if changed:
            self._converge(record)
