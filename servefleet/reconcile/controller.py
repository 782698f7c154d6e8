"""One region's reconciler: a queue of endpoint names, workers, and three feeds.

Level-triggered, after controller-runtime: a pass (`reconcile(name)`) reads the
record and what the runtime holds, and makes them agree; no pass depends on
having seen an earlier event. Events only decide *when* a name is looked at:

- the store's change feed (a spec change reaches the runtime without waiting),
- the runtime's events (a replica died or became ready),
- a periodic resync (default 5 minutes) as the safety net.

A pass writes to the runtime only when the desired workload's hash differs from
the one recorded on what is running, and writes region status only when the
report changed (or the heartbeat is due), so a steady fleet costs nothing.

Every pass is measured (`servefleet.metrics`): its duration and outcome, the delay
from the record's write to its workload applied, watchdog unroutes and routes, and
the ready/desired replicas reported; an endpoint removed from the region loses its
series. Log lines about one endpoint carry `endpoint`, `region` and, where known,
`generation` as fields (`extra`), for `--log-format json`.

A pass reuses the endpoint record it last read (or the listing read) unless the
feed has since shown a newer revision of it: every write reaches the feed, so the
store is read once per change rather than once per pass. The controllers of one
process share what their own writes tell (`shared.SharedRecords`): a record this
process settled as `running` is taken from the feed without a pass or a read, and a
region that turns READY reads every region's report only when none led here still
keeps the endpoint deploying. A purged endpoint is
forgotten (its record and feed revision) once its purge is seen: a name created
again starts over at revision 1, and purged names do not pile up in memory.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from servefleet.metrics import Metrics
from servefleet.plan import (
    Observed,
    WatchdogDecision,
    Workload,
    desired_workload,
    fleet_state,
    only_settled,
    purgeable,
    ready_in,
    region_status,
    status_changed,
    watchdog,
    workload_hash,
)
from servefleet.reconcile.queue import QueueShutDown, WorkQueue
from servefleet.reconcile.shared import SharedRecords, shared_records
from servefleet.runtime.base import Runtime, RuntimeFailure, WorkloadUnsupported
from servefleet.spec import DesiredState, Endpoint, RegionState, RegionStatus
from servefleet.store import (
    ChangeKind,
    EndpointNotFound,
    FeedCompacted,
    Lease,
    LeaseLost,
    RevisionConflict,
    Store,
    StoreError,
    StoreUnavailable,
)

__all__ = ["Controller", "ControllerSettings", "Result", "TemporaryError"]

log = logging.getLogger(__name__)

T = TypeVar("T")

Clock = Callable[[], datetime]
Fence = Callable[[], Lease | None]


@dataclass(frozen=True)
class ControllerSettings:
    workers: int = 16
    """Endpoints reconciled at once: a pass mostly waits (API requests one after
    another, the store), and the runtime's rate limit, not this, protects the API
    server."""
    resync_interval: float = 300.0
    heartbeat_interval: float = 300.0
    """A report that has not changed is written again after this long."""
    watchdog_threshold: float = 300.0
    """An endpoint with no ready replica for this long loses its route."""
    backoff_initial: float = 0.05
    backoff_max: float = 60.0
    rate_limit: float = 20.0
    """Retries of failing endpoints per second, over all endpoints (burst 200)."""
    store_retry: float = 1.0
    restart_initial: float = 1.0
    """A region whose reconciler an error stopped stands for election again after
    this long, doubling up to `restart_max` (`run_region`)."""
    restart_max: float = 60.0


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


class TemporaryError(Exception):
    """The pass could not finish; try the endpoint again after its backoff."""


OUTCOMES = ("success", "requeue", "retry", "error")


def log_fields(region: str, endpoint: str, generation: int | None = None) -> dict[str, object]:
    """The structured fields of a log line about one endpoint in one region."""
    fields: dict[str, object] = {"region": region, "endpoint": endpoint}
    if generation is not None:
        fields["generation"] = generation
    return fields


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
        self._records: dict[str, Endpoint] = {}
        self._feed_revisions: dict[str, int] = {}
        """Per endpoint, a revision the feed showed that `_records` does not hold yet."""
        self._listings: list[set[str]] = []
        """One per listing under way: the names forgotten meanwhile, whose listed
        record may be the one just purged."""
        self._heartbeat = timedelta(seconds=settings.heartbeat_interval)
        self._watchdog_threshold = timedelta(seconds=settings.watchdog_threshold)
        self.queue = WorkQueue(
            backoff_initial=settings.backoff_initial,
            backoff_max=settings.backoff_max,
            rate=settings.rate_limit,
        )
        self.outcomes: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))
        self._metrics = metrics or Metrics()
        self._pass_duration = self._metrics.reconcile_duration.labels(region)
        self._outcome_counters = {
            outcome: self._metrics.reconcile_outcomes.labels(region, outcome)
            for outcome in OUTCOMES
        }
        self._unrouted: set[str] = set()
        self._replicas: dict[str, tuple[int, int]] = {}
        """By endpoint held here, (ready, desired) as last reported: its metrics."""
        """Endpoints whose route this reconciler withdrew (watchdog), to count each
        withdrawal and restoration once."""
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
        position = await self._retrying(self._store.feed_position)
        statuses = await self._retrying(lambda: self._store.list_region_status(region=self._region))
        self._statuses = {status.endpoint: status for status in statuses}
        self._shared.lead(self._region, self._statuses, self._acting)
        self._first_round = await self._enqueue_everything()
        self._looked_at()  # an empty region is synced at once
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._follow_feed(position))
                tasks.create_task(self._follow_runtime())
                tasks.create_task(self._resync())
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

    # Feeding the queue.

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                return await call()
            except StoreUnavailable as error:
                log.warning(
                    "region %s: store unavailable, retrying: %s",
                    *(self._region, error),
                    extra={"region": self._region},
                )
                await asyncio.sleep(self._settings.store_retry)

    async def _enqueue_everything(self) -> set[str]:
        """Queue every endpoint the store lists for the region, the runtime holds or
        a status names; those names."""
        forgotten: set[str] = set()
        self._listings.append(forgotten)
        try:
            endpoints = await self._retrying(
                lambda: self._store.list_endpoints(region=self._region)
            )
        finally:
            self._listings.remove(forgotten)
        one_copy = self._shared.one_copy
        listed = {e.name: one_copy(e) for e in endpoints if e.name not in forgotten}
        for name, endpoint in listed.items():
            known = self._records.get(name)
            if known is not None and known.revision > endpoint.revision:
                listed[name] = known  # read while this listing was under way
        self._records = listed
        names = set(listed)
        names |= await self._runtime.held()
        names |= self._statuses.keys()
        for name in sorted(names):
            self.queue.add(name)
        return names

    async def _follow_feed(self, position: int) -> None:
        while True:
            try:
                async for change in self._store.watch(position):
                    position = change.seq
                    known = self._records.get(change.name)
                    if change.kind is ChangeKind.PURGED:
                        self._forget(change.name)
                        self._shared.purged(change.name)
                    elif await self._took_settled(change.name, change.revision):
                        continue
                    elif known is None or known.revision < change.revision:
                        self._shared.changed(change.name, change.revision)
                        seen = self._feed_revisions.get(change.name, 0)
                        self._feed_revisions[change.name] = max(seen, change.revision)
                    self.queue.add(change.name)
            except FeedCompacted:
                log.warning(
                    "region %s: fell behind the change feed; listing again",
                    self._region,
                    extra={"region": self._region},
                )
                position = await self._retrying(self._store.feed_position)
                await self._enqueue_everything()
            except StoreUnavailable as error:
                log.warning(
                    "region %s: change feed interrupted: %s",
                    *(self._region, error),
                    extra={"region": self._region},
                )
                await asyncio.sleep(self._settings.store_retry)

    async def _took_settled(self, name: str, revision: int) -> bool:
        """Whether the change of `name` to `revision` is its record settled as running
        by this process, which changes nothing for this region: then it is taken as
        the record, with no pass (`shared.SharedRecords`)."""
        await self._shared.after_settling(name)
        settled = self._shared.settled(name)
        known = self._records.get(name)
        if (
            settled is None
            or known is None
            or settled.revision != revision
            or not (known is settled or only_settled(known, settled))
        ):
            return False
        self._remember(settled)
        return True

    async def _follow_runtime(self) -> None:
        async for name in self._runtime.events():
            self.queue.add(name)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self._settings.resync_interval)
            await self._enqueue_everything()

    # Working.

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
        endpoint = await self._record(name)
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
        await self._settle(endpoint, report)
        if transient:
            raise TemporaryError(error)
        if decision is not None and decision.recheck_at is not None:
            return Result(requeue_after=max(0.0, (decision.recheck_at - now).total_seconds()))
        return Result()

    async def _record(self, name: str) -> Endpoint | None:
        """The endpoint's record: the one last read, unless the feed has shown a newer one."""
        known = self._records.get(name)
        if known is not None and known.revision >= self._feed_revisions.get(name, 0):
            return known
        try:
            endpoint = await self._store.get_endpoint(name)
        except EndpointNotFound:
            self._forget(name)
            return None
        self._remember(endpoint)
        return endpoint

    def _remember(self, endpoint: Endpoint) -> None:
        self._records[endpoint.name] = self._shared.one_copy(endpoint)
        if endpoint.revision >= self._feed_revisions.get(endpoint.name, 0):
            self._feed_revisions.pop(endpoint.name, None)

    def _forget(self, name: str) -> None:
        """Drop the record and feed revision of `name`, gone from the store: a record
        created again under the name starts over at revision 1. A listing under way
        may have read the purged record; it will not keep it."""
        self._records.pop(name, None)
        self._feed_revisions.pop(name, None)
        for forgotten in self._listings:
            forgotten.add(name)

    def remembered(self) -> set[str]:
        """The endpoints this controller keeps a record, a feed revision or a status
        of: for people and tests to look at."""
        return self._records.keys() | self._feed_revisions.keys() | self._statuses.keys()

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

    async def _settle(self, endpoint: Endpoint, report: RegionStatus) -> None:
        """The fleet-wide consequences of this region's report: a deleted endpoint
        purged once every region has removed it; `deploying` becoming `running`.
        Each write passes `fence()` first, as runtime and status writes do, so a
        deposed leader does neither (the store checks no lease token on these two:
        their revision check is what it enforces)."""
        if endpoint.desired_state is DesiredState.DELETED:
            if report.state is not RegionState.DELETED:
                return
            statuses = await self._store.list_region_status(endpoint=endpoint.name)
            if purgeable(endpoint, statuses):
                self._fence()
                try:
                    await self._store.purge_endpoint(
                        endpoint.name, expected_revision=endpoint.revision
                    )
                except (RevisionConflict, EndpointNotFound):
                    return  # changed or purged meanwhile; the feed brings it back if needed
                self._statuses.pop(endpoint.name, None)
                self._forget(endpoint.name)
                log.info(
                    "%s: purged; every region has removed it",
                    endpoint.name,
                    extra=log_fields(self._region, endpoint.name, endpoint.generation),
                )
            return
        if not (
            endpoint.desired_state is DesiredState.DEPLOYING
            and report.state is RegionState.READY
            and report.observed_generation == endpoint.generation
        ):
            return
        # The regions led here need no read: the last of them to turn READY reads.
        if not ready_in(endpoint, self._shared.reports(endpoint.name)):
            return
        statuses = await self._store.list_region_status(endpoint=endpoint.name)
        if fleet_state(endpoint, statuses) is DesiredState.RUNNING:
            self._fence()
            epoch = self._shared.epoch
            running: Endpoint | None = None
            settling = self._shared.settling(endpoint.name)
            try:
                running = await self._store.update_endpoint(
                    endpoint.model_copy(update={"desired_state": DesiredState.RUNNING}),
                    expected_revision=endpoint.revision,
                )
            except (RevisionConflict, EndpointNotFound):
                return
            finally:
                self._shared.settled_as(endpoint.name, settling, running, epoch=epoch)
            self._remember(running)
