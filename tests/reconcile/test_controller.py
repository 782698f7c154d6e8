"""The controller against a real store (SQLite and PostgreSQL) and an in-memory runtime."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any, cast

import pytest

from servefleet.metrics import Metrics
from servefleet.plan import Observed, Workload, desired_workload
from servefleet.reconcile.controller import Controller
from servefleet.reconcile.leader import LeaseUnconfirmed
from servefleet.reconcile.settings import ControllerSettings
from servefleet.reconcile.shared import SharedRecords
from servefleet.service import EndpointService, utc_now
from servefleet.spec import (
    DesiredState,
    Endpoint,
    EndpointManifest,
    Region,
    RegionKind,
    RegionState,
    RegionStatus,
)
from servefleet.store import EndpointNotFound, LeaseLost, Store
from tests.factories import make_endpoint, make_spec
from tests.reconcile.fakes import MemoryRuntime
from tests.waiting import eventually

FAST = ControllerSettings(
    workers=2, resync_interval=3600, watchdog_threshold=3600, backoff_initial=0.02
)


@asynccontextmanager
async def running(
    store: Store,
    runtime: MemoryRuntime,
    settings: ControllerSettings = FAST,
    region: str = "r1",
    *,
    metrics: Metrics | None = None,
    shared: SharedRecords | None = None,
) -> AsyncIterator[Controller]:
    controller = Controller(
        store, runtime, region, settings, clock=utc_now, metrics=metrics, shared=shared
    )
    task = asyncio.create_task(controller.run())
    try:
        yield controller
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.fixture
async def service(store: Store) -> EndpointService:
    for name in ("r1", "r2"):
        await store.put_region(Region(name=name, kind=RegionKind.LOCAL))
    return EndpointService(store)


async def region_state(store: Store, name: str, region: str = "r1") -> RegionState | None:
    statuses = await store.list_region_status(endpoint=name, region=region)
    return statuses[0].state if statuses else None


async def test_a_store_write_reaches_the_runtime_without_a_resync(
    store: Store, service: EndpointService
) -> None:
    runtime = MemoryRuntime()
    async with running(store, runtime):
        await service.deploy("llm", make_spec(replicas=2), ["r1"])
        await eventually(lambda: _has(runtime, "llm", replicas=2))
        await service.scale("llm", 5)
        await eventually(lambda: _has(runtime, "llm", replicas=5))
        await eventually(lambda: _state_is(store, "llm", RegionState.READY))

    (status,) = await store.list_region_status(endpoint="llm")
    assert status.observed_generation == (await store.get_endpoint("llm")).generation
    assert (status.replicas_ready, status.replicas_desired) == (5, 5)


async def test_propagation_is_measured_once_per_generation_not_for_a_reapply(
    store: Store, service: EndpointService
) -> None:
    runtime = MemoryRuntime()
    metrics = Metrics()
    measured = "servefleet_propagation_delay_seconds_count"
    async with running(store, runtime, metrics=metrics):
        await service.deploy("llm", make_spec(replicas=2), ["r1"])
        await eventually(lambda: _state_is(store, "llm", RegionState.READY))
        assert _sample(metrics, measured, region="r1") == 1
        await service.scale("llm", 3)
        await eventually(lambda: _has(runtime, "llm", replicas=3))
        await eventually(lambda: _generation_reported(store, "llm"))
        assert _sample(metrics, measured, region="r1") == 2

        # The workload is lost (a restart): applied again, but no write asked for it.
        applies = len(runtime.applies)
        del runtime.held_workloads["llm"]
        runtime.announce("llm")
        await eventually(lambda: _applied(runtime, applies + 1))
        assert _sample(metrics, measured, region="r1") == 2
    total = _sample(metrics, "servefleet_propagation_delay_seconds_sum", region="r1")
    assert total is not None
    assert total >= 0


async def test_the_runtime_is_told_it_is_synced_once_every_endpoint_was_looked_at(
    store: Store, service: EndpointService
) -> None:
    for name in ("a", "b", "c"):
        await service.deploy(name, make_spec(), ["r1"])
    runtime = MemoryRuntime()
    async with running(store, runtime):
        await eventually(lambda: _synced(runtime))
        assert runtime.synced_after == 3  # after the first pass of each


@dataclasses.dataclass
class GatedRuntime(MemoryRuntime):
    """A `MemoryRuntime` whose first apply waits for `gate`."""

    gate: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def apply(self, workload: Workload) -> None:
        if not self.applies:
            self.applies.append(workload)
            await self.gate.wait()
            self.applies.pop()
        await super().apply(workload)


async def test_a_change_during_the_first_round_goes_before_the_rest_of_the_listing(
    store: Store, service: EndpointService
) -> None:
    """The first listing waits in the queue's backlog: an endpoint deployed while a
    region works through it is looked at next, not after the listing."""
    listed = [f"listed-{index:02}" for index in range(20)]
    for name in listed:
        await service.deploy(name, make_spec(), ["r1"])
    runtime = GatedRuntime()
    async with running(store, runtime, dataclasses.replace(FAST, workers=1)) as controller:
        await eventually(lambda: _applying(runtime))
        await service.deploy("changed", make_spec(), ["r1"])
        await eventually(lambda: _waiting(controller, len(listed)))
        runtime.gate.set()
        await eventually(functools.partial(_has, runtime, "changed", replicas=2))
        await eventually(functools.partial(_has, runtime, listed[-1], replicas=2))

    order = [workload.endpoint for workload in runtime.applies]
    assert order[:2] == ["listed-00", "changed"]
    assert sorted(order[2:]) == listed[1:]


async def _applying(runtime: MemoryRuntime) -> bool:
    return bool(runtime.applies)


async def _waiting(controller: Controller, keys: int) -> bool:
    return len(controller.queue) == keys


async def test_a_region_with_no_endpoint_is_synced_at_once(store: Store) -> None:
    runtime = MemoryRuntime()
    async with running(store, runtime):
        await eventually(lambda: _synced(runtime))
        assert runtime.synced_after == 0


async def _synced(runtime: MemoryRuntime) -> bool:
    return runtime.synced_after is not None


async def test_a_converged_endpoint_costs_no_writes(store: Store, service: EndpointService) -> None:
    runtime = MemoryRuntime()
    async with running(store, runtime) as controller:
        await service.deploy("llm", make_spec(), ["r1"])
        await eventually(lambda: _fleet_running(store, "llm"))
        await eventually(lambda: _idle(controller))
        runtime_writes, status_writes = controller.runtime_writes, controller.status_writes

        for _ in range(5):
            await controller.reconcile("llm")

        assert (controller.runtime_writes, controller.status_writes) == (
            runtime_writes,
            status_writes,
        )
        assert len(runtime.applies) == 1


async def test_the_fleet_state_becomes_running_once_every_region_is_ready(
    store: Store, service: EndpointService
) -> None:
    r1, r2 = MemoryRuntime(), MemoryRuntime()
    await service.deploy("llm", make_spec(), ["r1", "r2"])
    async with running(store, r1, region="r1"):
        await eventually(lambda: _state_is(store, "llm", RegionState.READY))
        assert (await store.get_endpoint("llm")).desired_state is DesiredState.DEPLOYING
        async with running(store, r2, region="r2"):
            await eventually(lambda: _fleet_running(store, "llm"))

    updated = await service.scale("llm", 4)
    assert updated.desired_state is DesiredState.DEPLOYING


async def test_stop_and_start_reach_the_runtime(store: Store, service: EndpointService) -> None:
    runtime = MemoryRuntime()
    async with running(store, runtime):
        await service.deploy("llm", make_spec(replicas=2), ["r1"])
        await eventually(lambda: _has(runtime, "llm", replicas=2))
        await service.stop("llm")
        await eventually(lambda: _state_is(store, "llm", RegionState.STOPPED))
        assert not runtime.held_workloads["llm"].routed
        await service.start("llm")
        await eventually(lambda: _has(runtime, "llm", replicas=2, routed=True))


async def test_deleted_endpoints_are_removed_then_purged(
    store: Store, service: EndpointService
) -> None:
    runtime = MemoryRuntime()
    async with running(store, runtime):
        await service.deploy("llm", make_spec(), ["r1"])
        await eventually(lambda: _has(runtime, "llm", replicas=2))
        await service.delete("llm")
        await eventually(lambda: _purged(store, "llm"))

    assert runtime.removals == ["llm"]
    assert await store.list_region_status(endpoint="llm") == []


async def test_an_endpoint_moved_off_a_region_is_removed_there(
    store: Store, service: EndpointService
) -> None:
    runtime = MemoryRuntime()
    metrics = Metrics()
    placed = {"endpoint": "llm", "region": "r1"}
    async with running(store, runtime, metrics=metrics):
        await service.deploy("llm", make_spec(), ["r1"])
        await eventually(lambda: _has(runtime, "llm", replicas=2))

        async def reported() -> bool:
            # Set just after the status is written: the store may show it first.
            return _sample(metrics, "servefleet_endpoint_replicas_desired", **placed) == 2

        await eventually(reported)
        moved = EndpointManifest.of(await service.get("llm")).model_copy(update={"regions": ["r2"]})
        await service.apply(moved)
        await eventually(lambda: _state_is(store, "llm", RegionState.DELETED))

        async def series_gone() -> bool:
            # Removed just after the DELETED status is written, as they were set.
            return all(
                _sample(metrics, name, **placed) is None
                for name in (
                    "servefleet_endpoint_replicas_desired",
                    "servefleet_endpoint_replicas_ready",
                )
            )

        # Its series in the region go with it.
        await eventually(series_gone)

    assert "llm" not in runtime.held_workloads


async def test_what_the_store_does_not_know_is_never_removed(store: Store) -> None:
    """An empty or wrong store must not wipe a region (the reference design deleted
    on a failed listing)."""
    runtime = MemoryRuntime()
    ghost = desired_workload(make_endpoint("ghost"), "r1")
    assert ghost is not None
    runtime.held_workloads["ghost"] = ghost

    async with running(store, runtime) as controller:
        await eventually(lambda: _processed(controller))
        await controller.reconcile("ghost")

    assert runtime.removals == []
    assert "ghost" in runtime.held_workloads


async def test_an_unsupported_workload_is_reported_and_not_retried(
    store: Store, service: EndpointService
) -> None:
    runtime = MemoryRuntime()
    async with running(store, runtime) as controller:
        await service.deploy("llm", make_spec(image="refused.example/never:1"), ["r1"])
        await eventually(lambda: _state_is(store, "llm", RegionState.FAILED))
        await asyncio.sleep(0.2)
        assert controller.outcomes["retry"] == 0

    (status,) = await store.list_region_status(endpoint="llm")
    assert status.message == "this region refuses that image"


async def test_a_failing_runtime_is_retried_with_backoff_and_recovers(
    store: Store, service: EndpointService
) -> None:
    runtime = MemoryRuntime(unavailable=True)
    async with running(store, runtime) as controller:
        await service.deploy("llm", make_spec(), ["r1"])
        await eventually(lambda: _retried(controller, 3))
        (status,) = await store.list_region_status(endpoint="llm")
        assert status.state is RegionState.FAILED
        assert "region unreachable" in status.message

        runtime.unavailable = False
        await eventually(lambda: _state_is(store, "llm", RegionState.READY))


class Unconfirmed:
    """A leader's `fence()` while its store lease cannot be renewed (`cut`)."""

    def __init__(self) -> None:
        self.cut = True

    def __call__(self) -> None:
        if self.cut:
            raise LeaseUnconfirmed("region/r1", "test")


async def test_a_pass_the_store_outage_fails_is_retried_at_the_stores_pace(
    store: Store, service: EndpointService
) -> None:
    """The passes an outage of the store fails (here: at the fence of a leader whose
    lease is not renewed) do not grow the endpoint's backoff: with a backoff of an
    hour, the change still lands soon after the store is back."""
    runtime = MemoryRuntime()
    fence = Unconfirmed()
    patient = dataclasses.replace(FAST, backoff_initial=3600, backoff_max=3600, store_retry=0.05)
    controller = Controller(store, runtime, "r1", patient, clock=utc_now, fence=fence)
    task = asyncio.create_task(controller.run())
    try:
        await service.deploy("llm", make_spec(replicas=2), ["r1"])
        await eventually(lambda: _retried(controller, 3))
        assert runtime.applies == []
        assert controller.queue.failures("llm") == 0

        fence.cut = False
        await eventually(lambda: _has(runtime, "llm", replicas=2))
        await eventually(lambda: _state_is(store, "llm", RegionState.READY))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_runtime_events_bring_the_endpoint_back_for_a_look(
    store: Store, service: EndpointService
) -> None:
    runtime = MemoryRuntime()
    async with running(store, runtime):
        await service.deploy("llm", make_spec(replicas=2), ["r1"])
        await eventually(lambda: _state_is(store, "llm", RegionState.READY))
        runtime.ready["llm"] = 1
        runtime.announce("llm")
        await eventually(lambda: _state_is(store, "llm", RegionState.DEGRADED))


class EndpointReadCounting:
    """A store that counts `get_endpoint` calls, and listings of one endpoint's
    region statuses, passing everything through."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.endpoint_reads = 0
        self.reads_of: Counter[str] = Counter()
        self.status_listings_of: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get_endpoint(self, name: str) -> Endpoint:
        self.endpoint_reads += 1
        self.reads_of[name] += 1
        return await self.inner.get_endpoint(name)

    async def list_region_status(
        self, *, endpoint: str | None = None, region: str | None = None
    ) -> list[RegionStatus]:
        if endpoint is not None:
            self.status_listings_of[endpoint] += 1
        return await self.inner.list_region_status(endpoint=endpoint, region=region)


@dataclasses.dataclass
class ObserveCounting(MemoryRuntime):
    """A `MemoryRuntime` that counts `observe` calls per endpoint: a pass observes
    its endpoint once, and once more after an apply."""

    observed: Counter[str] = dataclasses.field(default_factory=Counter)

    async def observe(self, endpoint: str) -> Observed | None:
        self.observed[endpoint] += 1
        return await super().observe(endpoint)


async def test_an_endpoint_converges_in_one_pass_per_region_and_one_look_at_every_report(
    store: Store, service: EndpointService
) -> None:
    """The regions of one process: each reads the new record once, applies it and
    reports READY in one pass; none reads the others' reports, which it knows, and
    the write that settles the endpoint as running costs none of them a pass or a
    read."""
    await store.put_region(Region(name="r3", kind=RegionKind.LOCAL))
    counting = EndpointReadCounting(store)
    runtimes = {region: ObserveCounting() for region in ("r1", "r2", "r3")}
    async with AsyncExitStack() as stack:
        for region, runtime in runtimes.items():
            await stack.enter_async_context(running(cast(Store, counting), runtime, region=region))
            await eventually(functools.partial(_synced, runtime))  # it follows the feed
        await service.deploy("llm", make_spec(), list(runtimes))
        await eventually(lambda: _fleet_running(store, "llm"))
        # The feed is delivered in order: once every region has applied an endpoint
        # created after the settling write, every region has seen that write.
        await service.deploy("later", make_spec(), list(runtimes))
        for runtime in runtimes.values():
            await eventually(functools.partial(_has, runtime, "later", replicas=2))

    assert {region: runtime.observed["llm"] for region, runtime in runtimes.items()} == {
        "r1": 2,  # the pass that applied: before the apply and after it
        "r2": 2,
        "r3": 2,
    }
    assert counting.reads_of["llm"] == 3  # each region's of the record created
    assert counting.status_listings_of["llm"] == 0


async def test_a_region_led_elsewhere_is_asked_for_by_the_last_region_here_to_turn_ready(
    store: Store, service: EndpointService
) -> None:
    """r1 and r2 run in this process, r3 in another (its own `SharedRecords`): the
    endpoint settles as running only once r3 is READY, which r1 and r2 learn from
    the store's reports; r3, with no region led beside it, reads them too."""
    await store.put_region(Region(name="r3", kind=RegionKind.LOCAL))
    counting = EndpointReadCounting(store)
    here = SharedRecords()
    await service.deploy("llm", make_spec(), ["r1", "r2", "r3"])
    async with AsyncExitStack() as stack:
        controllers = [
            await stack.enter_async_context(
                running(cast(Store, counting), MemoryRuntime(), region=region, shared=here)
            )
            for region in ("r1", "r2")
        ]
        for region, controller in zip(("r1", "r2"), controllers, strict=True):
            await eventually(functools.partial(_ready_in, store, "llm", region))
            await eventually(functools.partial(_idle, controller))
        assert counting.status_listings_of["llm"] == 1  # the later of r1 and r2
        assert (await store.get_endpoint("llm")).desired_state is DesiredState.DEPLOYING

        elsewhere = SharedRecords()
        await stack.enter_async_context(
            running(cast(Store, counting), MemoryRuntime(), region="r3", shared=elsewhere)
        )
        await eventually(lambda: _fleet_running(store, "llm"))
    assert counting.status_listings_of["llm"] == 2


async def test_a_pass_reads_the_record_again_only_after_the_feed_shows_a_change(
    store: Store, service: EndpointService
) -> None:
    counting = EndpointReadCounting(store)
    runtime = MemoryRuntime()
    async with running(cast(Store, counting), runtime) as controller:
        await service.deploy("llm", make_spec(replicas=2), ["r1"])
        await eventually(lambda: _fleet_running(store, "llm"))
        await eventually(lambda: _idle(controller))
        reads = counting.endpoint_reads
        for _ in range(3):
            await controller.reconcile("llm")
        assert counting.endpoint_reads == reads

        await service.scale("llm", 4)
        await eventually(lambda: _has(runtime, "llm", replicas=4))
        assert counting.endpoint_reads > reads


async def test_a_purged_name_created_again_is_read_once_per_change(
    store: Store, service: EndpointService
) -> None:
    counting = EndpointReadCounting(store)
    runtime = MemoryRuntime()
    async with running(cast(Store, counting), runtime) as controller:
        await service.deploy("llm", make_spec(replicas=2), ["r1"])
        await eventually(lambda: _fleet_running(store, "llm"))
        await service.delete("llm")
        await eventually(lambda: _purged(store, "llm"))

        await service.deploy("llm", make_spec(replicas=3), ["r1"])
        await eventually(lambda: _has(runtime, "llm", replicas=3))
        await eventually(lambda: _fleet_running(store, "llm"))
        await eventually(lambda: _idle(controller))
        reads = counting.endpoint_reads
        for _ in range(3):
            await controller.reconcile("llm")
        assert counting.endpoint_reads == reads


async def test_purged_endpoints_are_forgotten(store: Store, service: EndpointService) -> None:
    names = [f"gone-{n}" for n in range(5)]
    async with running(store, MemoryRuntime()) as controller:
        await service.deploy("kept", make_spec(), ["r1"])
        for name in names:
            await service.deploy(name, make_spec(), ["r1"])
        for name in names:
            await eventually(functools.partial(_fleet_running, store, name))
            await service.delete(name)
        for name in names:
            await eventually(functools.partial(_purged, store, name))

        async def only_kept() -> bool:
            return controller.remembered() == {"kept"}

        await eventually(only_kept)


class Deposable:
    """A leader's `fence()` that refuses once `deposed` is set."""

    def __init__(self) -> None:
        self.deposed = False

    def __call__(self) -> None:
        if self.deposed:
            raise LeaseLost("region/r1", "test")


async def _reported_by_r2_as_well(store: Store, name: str) -> None:
    """Region r2 reports what r1 did (as its own reconciler would have)."""
    (r1,) = await store.list_region_status(endpoint=name, region="r1")
    await store.put_region_status(r1.model_copy(update={"region": "r2"}))


async def test_a_deposed_leader_does_not_mark_an_endpoint_running(
    store: Store, service: EndpointService
) -> None:
    fence = Deposable()
    controller = Controller(store, MemoryRuntime(), "r1", FAST, clock=utc_now, fence=fence)
    await service.deploy("llm", make_spec(), ["r1", "r2"])
    await controller.reconcile("llm")
    await _reported_by_r2_as_well(store, "llm")

    fence.deposed = True
    with pytest.raises(LeaseLost):
        await controller.reconcile("llm")
    assert (await store.get_endpoint("llm")).desired_state is DesiredState.DEPLOYING

    fence.deposed = False
    await controller.reconcile("llm")
    assert (await store.get_endpoint("llm")).desired_state is DesiredState.RUNNING


async def test_a_deposed_leader_does_not_purge(store: Store, service: EndpointService) -> None:
    fence = Deposable()
    runtime = MemoryRuntime()
    await service.deploy("llm", make_spec(), ["r1", "r2"])
    await Controller(store, runtime, "r1", FAST, clock=utc_now, fence=fence).reconcile("llm")
    await service.delete("llm")
    # A fresh controller (a restart) reads the deleted record, removes and reports it.
    controller = Controller(store, runtime, "r1", FAST, clock=utc_now, fence=fence)
    await controller.reconcile("llm")
    assert runtime.removals == ["llm"]
    await _reported_by_r2_as_well(store, "llm")

    fence.deposed = True
    with pytest.raises(LeaseLost):
        await controller.reconcile("llm")
    assert (await store.get_endpoint("llm")).desired_state is DesiredState.DELETED

    fence.deposed = False
    await controller.reconcile("llm")
    assert await _purged(store, "llm")


async def test_the_watchdog_unroutes_and_restores(store: Store, service: EndpointService) -> None:
    runtime = MemoryRuntime(ready={"llm": 0})
    settings = ControllerSettings(workers=2, resync_interval=3600, watchdog_threshold=0.3)
    metrics = Metrics()
    events = "servefleet_watchdog_events_total"
    async with running(store, runtime, settings, metrics=metrics):
        await service.deploy("llm", make_spec(), ["r1"])
        await eventually(lambda: _has(runtime, "llm", replicas=2, routed=True))
        await eventually(lambda: _has(runtime, "llm", replicas=2, routed=False))
        # The pass writes the status just after the runtime: wait for it, not only the runtime.
        await eventually(lambda: _message_has(store, "llm", "traffic withdrawn"))
        assert _sample(metrics, events, region="r1", action="unroute") == 1
        assert _sample(metrics, events, region="r1", action="route") == 0

        runtime.ready["llm"] = 2
        runtime.announce("llm")
        await eventually(lambda: _has(runtime, "llm", replicas=2, routed=True))
        await eventually(lambda: _state_is(store, "llm", RegionState.READY))
        assert _sample(metrics, events, region="r1", action="unroute") == 1
        assert _sample(metrics, events, region="r1", action="route") == 1


def _sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# Checks for `eventually`.


async def _has(runtime: MemoryRuntime, name: str, *, replicas: int, routed: bool = True) -> bool:
    workload = runtime.held_workloads.get(name)
    return (
        workload is not None and workload.primary.replicas == replicas and workload.routed == routed
    )


async def _generation_reported(store: Store, name: str) -> bool:
    generation = (await store.get_endpoint(name)).generation
    statuses = await store.list_region_status(endpoint=name)
    return bool(statuses) and statuses[0].observed_generation == generation


async def _applied(runtime: MemoryRuntime, times: int) -> bool:
    return len(runtime.applies) >= times


async def _state_is(store: Store, name: str, state: RegionState) -> bool:
    return await region_state(store, name) is state


async def _ready_in(store: Store, name: str, region: str) -> bool:
    return await region_state(store, name, region) is RegionState.READY


async def _message_has(store: Store, name: str, text: str) -> bool:
    statuses = await store.list_region_status(endpoint=name)
    return bool(statuses) and text in statuses[0].message


async def _fleet_running(store: Store, name: str) -> bool:
    return (await store.get_endpoint(name)).desired_state is DesiredState.RUNNING


async def _purged(store: Store, name: str) -> bool:
    try:
        await store.get_endpoint(name)
    except EndpointNotFound:
        return True
    return False


async def _idle(controller: Controller) -> bool:
    return controller.queue.idle


async def _processed(controller: Controller) -> bool:
    return controller.outcomes["success"] > 0


async def _retried(controller: Controller, times: int) -> bool:
    return controller.outcomes["retry"] >= times


async def test_the_regions_of_a_process_keep_one_copy_of_a_record(
    store: Store, service: EndpointService
) -> None:
    """Listed at start-up and read after a change alike: a record is the same for
    every region, so it is held once, not once per region. (A region without a
    controller keeps the endpoints from settling as running, whose record every
    controller would take from the one that wrote it.)"""
    await store.put_region(Region(name="r3", kind=RegionKind.LOCAL))
    regions = ["r1", "r2", "r3"]
    await service.deploy("listed", make_spec(), regions)
    runtimes = {region: MemoryRuntime() for region in ("r1", "r2")}
    async with AsyncExitStack() as stack:
        controllers = [
            await stack.enter_async_context(running(store, runtime, region=region))
            for region, runtime in runtimes.items()
        ]
        await service.deploy("read", make_spec(), regions)
        for runtime in runtimes.values():
            await eventually(functools.partial(_has, runtime, "listed", replicas=2))
            await eventually(functools.partial(_has, runtime, "read", replicas=2))

        for name in ("listed", "read"):
            copies = {id(controller._records.held(name)) for controller in controllers}
            assert len(copies) == 1, name


def test_a_record_is_shared_only_with_an_identical_one() -> None:
    shared = SharedRecords()
    first = make_endpoint("llm", ["r1"], replicas=2)
    same = first.model_copy()
    other_life = first.model_copy(update={"created_at": first.created_at + timedelta(seconds=1)})

    assert shared.one_copy(first) is first
    assert shared.one_copy(same) is first
    assert shared.one_copy(other_life) is other_life  # a name purged and created again
    assert shared.one_copy(first.model_copy()) is not first
