"""One region's reconciler: a queue of endpoint names, workers, and three feeds.

Level-triggered, after controller-runtime: a pass (`reconcile(name)`) reads the
record and what the runtime holds, and makes them agree; no pass depends on
having seen an earlier event. Events only decide *when* a name is looked at: the
store's change feed, the runtime's events and a periodic resync (`feeds.Feeds`).

A pass writes to the runtime only when the desired workload's hash differs from
the one recorded on what is running, and writes region status only when the
report changed (or the heartbeat is due), so a steady fleet costs nothing.

Every pass is measured (`servefleet.metrics`): its duration and outcome, the delay
from the record's write to its workload applied, watchdog unroutes and routes, and
the ready/desired replicas reported; an endpoint removed from the region loses its
series. Log lines about one endpoint carry `endpoint`, `region` and, where known,
`generation` as fields (`extra`), for `--log-format json`.

A pass takes the endpoint's record from what the controller knows of the store's
(`records.KnownRecords`: the store is read once per change rather than once per
pass), and leaves the fleet-wide consequences of its report (`running`, a purge)
to `settle.Settler`.

Nothing is removed from a region because a listing came back empty or failed:
removal happens only for a record that says so (deleted, or no longer targeting
the region). An endpoint the runtime holds but the store does not know is left
running, with a warning: that is what a wrong or wiped store looks like.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from servefleet.metrics import Metrics
from servefleet.plan import (
    Observed,
    WatchdogDecision,
    Workload,
    desired_workload,
    region_status,
    status_changed,
    watchdog,
    workload_hash,
)
from servefleet.reconcile.feeds import Feeds
from servefleet.reconcile.queue import QueueShutDown, WorkQueue
from servefleet.reconcile.records import KnownRecords
from servefleet.reconcile.settings import Clock, ControllerSettings, Fence, log_fields
from servefleet.reconcile.settle import Settler
from servefleet.reconcile.shared import SharedRecords, shared_records
from servefleet.runtime.base import Runtime, RuntimeFailure, WorkloadUnsupported
from servefleet.spec import RegionStatus
from servefleet.store import LeaseLost, Store, StoreError, StoreUnavailable

__all__ = ["Controller", "Result", "TemporaryError"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


class TemporaryError(Exception):
    """The pass could not finish; try the endpoint again after its backoff."""


OUTCOMES = ("success", "requeue", "retry", "error")


class Controller:
    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        region: str,
        settings: ControllerSettings,
        *,
        clock: Clock,
        fence: Fence = lambda: None,
        metrics: Metrics | None = None,
        shared: SharedRecords | None = None,
    ) -> None:
        self._store = store
        self._shared = shared if shared is not None else shared_records(store)
        self._runtime = runtime
        self._region = region
        self._settings = settings
        self._clock = clock
        self._fence = fence
        self._statuses: dict[str, RegionStatus] = {}
        """The region's reports, by endpoint: one dict for the controller's life,
        which its feeds, its settler and `SharedRecords.lead` read in place."""
        self._records = KnownRecords(store, self._shared)
        self._settler = Settler(
            store,
            region,
            fence=fence,
            shared=self._shared,
            records=self._records,
            statuses=self._statuses,
        )
        self._heartbeat = timedelta(seconds=settings.heartbeat_interval)
        self._watchdog_threshold = timedelta(seconds=settings.watchdog_threshold)
        self.queue = WorkQueue(
            backoff_initial=settings.backoff_initial,
            backoff_max=settings.backoff_max,
            rate=settings.rate_limit,
        )
        self._feeds = Feeds(
            store,
            runtime,
            region,
            settings,
            queue=self.queue,
            records=self._records,
            statuses=self._statuses,
        )
        self.outcomes: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))
        self._metrics = metrics or Metrics()
        self._pass_duration = self._metrics.reconcile_duration.labels(region)
        self._outcome_counters = {
            outcome: self._metrics.reconcile_outcomes.labels(region, outcome)
            for outcome in OUTCOMES
        }
        self._unrouted: set[str] = set()
        """Endpoints whose route this reconciler withdrew (watchdog), to count each
        withdrawal and restoration once."""
        self._replicas: dict[str, tuple[int, int]] = {}
        """By endpoint held here, (ready, desired) as last reported: its metrics."""
        self.runtime_writes = 0
        self.status_writes = 0
        self._first_round: set[str] | None = None
        """The names of the first listing not looked at yet; None once every one
        has been, and the runtime was told (`Runtime.synced`)."""

    async def run(self) -> None:
        """Reconcile until cancelled; `LeaseLost` ends it early."""
        self._metrics.track_region(self._region, self.queue.__len__, self._replicas)
        try:
            await self._run()
        finally:
            self._metrics.untrack_region(self._region)

    async def _run(self) -> None:
        position = await self._feeds.retrying(self._store.feed_position)
        statuses = await self._feeds.retrying(
            lambda: self._store.list_region_status(region=self._region)
        )
        self._statuses.update((status.endpoint, status) for status in statuses)
        self._shared.lead(self._region, self._statuses, self._acting)
        self._first_round = await self._feeds.enqueue_everything()
        self._looked_at()  # an empty region is synced at once
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._feeds.follow_feed(position))
                tasks.create_task(self._feeds.follow_runtime())
                tasks.create_task(self._feeds.resync())
                for _ in range(self._settings.workers):
                    tasks.create_task(self._work())
        except* LeaseLost as lost:
            raise lost.exceptions[0] from None
        finally:
            self._shared.step_down(self._region, self._statuses)
            self.queue.shut_down()

    def _acting(self) -> bool:
        """Whether this controller may still act on its region (its lease holds)."""
        try:
            self._fence()
        except StoreError:
            return False
        return True

    async def _work(self) -> None:
        while True:
            try:
                name = await self.queue.get()
            except QueueShutDown:
                return
            started = time.perf_counter()
            outcome = "error"
            try:
                result = await self.reconcile(name)
            except (LeaseLost, asyncio.CancelledError):
                raise
            except (TemporaryError, StoreError, RuntimeFailure) as error:
                if isinstance(error, StoreUnavailable):
                    # Not the endpoint's fault: retry at the store's pace. Its own
                    # backoff would grow with every runtime event during the outage
                    # (each one a pass) and outlast the outage by up to a minute.
                    delay = self.queue.add_limited(name, self._settings.store_retry)
                else:
                    delay = self.queue.add_rate_limited(name)
                outcome = "retry"
                log.warning(
                    "%s/%s: %s (retry in %.1fs)",
                    *(self._region, name, error, delay),
                    extra=log_fields(self._region, name),
                )
            except Exception:
                # A bug met by one endpoint must not stop the region: back off that key.
                delay = self.queue.add_rate_limited(name)
                log.exception(
                    "%s/%s: reconcile failed (retry in %.1fs)",
                    *(self._region, name, delay),
                    extra=log_fields(self._region, name),
                )
            else:
                self.queue.forget(name)
                if result.requeue_after is not None:
                    outcome = "requeue"
                    self.queue.add_after(name, result.requeue_after)
                else:
                    outcome = "success"
            finally:
                self.queue.done(name)
                self._looked_at(name)
            self.outcomes[outcome] += 1
            self._outcome_counters[outcome].inc()
            self._pass_duration.observe(time.perf_counter() - started)

    def _looked_at(self, *names: str) -> None:
        """Count `names` as looked at; tell the runtime once the whole first listing
        has been (a new leader's gateway answers 503, not 404, until then)."""
        if self._first_round is None:
            return
        self._first_round.difference_update(names)
        if not self._first_round:
            self._first_round = None
            self._runtime.synced()

    async def reconcile(self, name: str) -> Result:
        """One level-triggered pass over endpoint `name` in this region."""
        now = self._clock()
        endpoint = await self._records.record(name)
        observed = await self._runtime.observe(name)
        previous = self._statuses.get(name)
        if endpoint is None:
            if observed is not None:
                log.warning(
                    "%s/%s: running here but unknown to the store; left in place",
                    self._region,
                    name,
                    extra=log_fields(self._region, name),
                )
            self._statuses.pop(name, None)
            self._forget_series(name)
            return Result()

        workload = desired_workload(endpoint, self._region, reported=previous)
        decision: WatchdogDecision | None = None
        error = ""
        transient = False
        if workload is not None:
            decision = self._watch(previous, observed, workload, now)
            if decision.unrouted:
                workload = workload.model_copy(update={"routed": False})
            # Only the first apply of a generation the region has not reported is a
            # write reaching the runtime; a re-apply (a replica lost, a restart) is not.
            written = (
                endpoint.updated_at
                if previous is None or previous.observed_generation < endpoint.generation
                else None
            )
            try:
                observed = await self._converge(workload, observed, written=written)
            except WorkloadUnsupported as unsupported:
                error = str(unsupported)
            except RuntimeFailure as failure:
                error, transient = f"runtime: {failure}", True
            # Report on what runs after this pass; the routing already applied stands.
            after = self._watch(previous, observed, workload, now)
            if after.unrouted == decision.unrouted:
                decision = after
            self._count_watchdog(name, decision)
        elif observed is not None:
            self._fence()
            await self._runtime.remove(name)
            self.runtime_writes += 1
            log.info("%s/%s: removed", self._region, name, extra=log_fields(self._region, name))
            observed = await self._runtime.observe(name)
        elif previous is None:
            return Result()  # never held here, nothing to report

        report = region_status(
            endpoint,
            self._region,
            workload,
            observed,
            previous=previous,
            decision=decision,
            error=error,
            now=now,
        )
        if status_changed(previous, report, now=now, heartbeat=self._heartbeat):
            await self._store.put_region_status(report, lease=self._fence())
            self._statuses[name] = report
            self.status_writes += 1
        if workload is None:
            self._forget_series(name)
        else:
            self._replicas[name] = (report.replicas_ready, report.replicas_desired)
        await self._settler.settle(endpoint, report)
        if transient:
            raise TemporaryError(error)
        if decision is not None and decision.recheck_at is not None:
            return Result(requeue_after=max(0.0, (decision.recheck_at - now).total_seconds()))
        return Result()

    def remembered(self) -> set[str]:
        """The endpoints this controller keeps a record, a feed revision or a status
        of: for people and tests to look at."""
        return self._records.remembered() | self._statuses.keys()

    def _count_watchdog(self, name: str, decision: WatchdogDecision) -> None:
        if decision.unrouted and name not in self._unrouted:
            self._unrouted.add(name)
            self._metrics.watchdog_events.labels(self._region, "unroute").inc()
        elif not decision.unrouted and name in self._unrouted:
            self._unrouted.discard(name)
            self._metrics.watchdog_events.labels(self._region, "route").inc()

    def _forget_series(self, name: str) -> None:
        """The endpoint is no longer this region's: drop its metric series."""
        self._unrouted.discard(name)
        self._replicas.pop(name, None)
        self._metrics.remove_endpoint(name, self._region)

    def _watch(
        self,
        previous: RegionStatus | None,
        observed: Observed | None,
        workload: Workload,
        now: datetime,
    ) -> WatchdogDecision:
        return watchdog(
            previous,
            observed,
            wants_replicas=workload.replicas_desired > 0,
            now=now,
            threshold=self._watchdog_threshold,
        )

    async def _converge(
        self, workload: Workload, observed: Observed | None, *, written: datetime | None
    ) -> Observed | None:
        """Apply `workload` unless it is in place; `written`: when the record asking
        for it was written, to measure its propagation from (None: not measured)."""
        if observed is not None and observed.workload_hash == workload_hash(workload):
            return observed
        self._fence()
        await self._runtime.apply(workload)
        self.runtime_writes += 1
        if written is not None:
            # A negative span (hosts' clocks apart) is no delay at all.
            delay = (self._clock() - written).total_seconds()
            self._metrics.propagation_delay.labels(self._region).observe(max(delay, 0.0))
        log.info(
            "%s/%s: applied generation %d",
            *(self._region, workload.endpoint, workload.generation),
            extra=log_fields(self._region, workload.endpoint, workload.generation),
        )
        return await self._runtime.observe(workload.endpoint)
