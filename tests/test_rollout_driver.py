"""The rollout driver (`servefleet.rollout_driver`) on a real SQLite store: it moves
rollouts on from the regions' reports, and under the store's `rollouts` lease a
standby takes over a rollout where a stopped leader left it."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

import pytest

from servefleet.reconcile.leader import LeaderElection, LeaseSettings, StoreLeases
from servefleet.rollout_driver import (
    ROLLOUT_LEASE,
    ActiveRollouts,
    drive_once,
    drive_rollouts,
)
from servefleet.rollout_service import RolloutService
from servefleet.service import EndpointService
from servefleet.spec import Region, RegionKind, RolloutPhase
from servefleet.store import Store
from tests.factories import T0, make_spec, make_status
from tests.waiting import eventually

NEW = "ghcr.io/example/server:2.0"
POLICY = {
    "waves": [["r1"], ["r2"]],
    "steps": [{"weight": 10, "hold": 30}],
    "guard_rails": {"readiness_deadline": 120},
}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def rolling(store: Store, clock: Clock) -> RolloutService:
    service = EndpointService(store, clock=clock)
    for region in ("r1", "r2"):
        await service.add_region(Region(name=region, kind=RegionKind.LOCAL))
    await service.deploy("llm", make_spec(rollout=POLICY), ["r1", "r2"])
    rollouts = RolloutService(service, clock)
    await rollouts.start("llm", NEW)
    return rollouts


async def report_canary_ready(store: Store, region: str) -> None:
    await store.put_region_status(
        make_status("llm", region, canary_ready=1, canary_desired=1, replicas_desired=3)
    )


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_the_driver_goes_wave_by_wave_on_the_regions_reports(store: Store) -> None:
    clock = Clock()
    rollouts = await rolling(store, clock)
    active = ActiveRollouts(store)

    clock.now += timedelta(seconds=31)
    await drive_once(rollouts, store, active)  # r1 has not reported its canary ready: hold
    first = (await store.get_endpoint("llm")).rollout
    assert first is not None
    assert (first.wave, first.reason) == (
        0,
        "waiting for the new version to be ready in r1 (deadline 00:02:00)",
    )
    await report_canary_ready(store, "r1")
    await drive_once(rollouts, store, active)
    second = (await store.get_endpoint("llm")).rollout
    assert second is not None
    assert (second.wave, second.weights) == (1, {"r1": 10, "r2": 10})
    await report_canary_ready(store, "r2")
    clock.now += timedelta(seconds=31)
    await drive_once(rollouts, store, active)

    done = await store.get_endpoint("llm")
    assert done.rollout is not None
    assert done.rollout.phase is RolloutPhase.PROMOTED
    assert done.spec.image == NEW


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_region_never_ready_by_the_deadline_rolls_every_region_back(
    store: Store,
) -> None:
    clock = Clock()
    rollouts = await rolling(store, clock)
    active = ActiveRollouts(store)
    await report_canary_ready(store, "r1")
    clock.now += timedelta(seconds=31)
    await drive_once(rollouts, store, active)  # wave 2 starts; r2 never reports its canary

    clock.now += timedelta(seconds=121)
    await drive_once(rollouts, store, active)

    back = await store.get_endpoint("llm")
    assert back.rollout is not None
    assert back.rollout.phase is RolloutPhase.ROLLED_BACK
    assert back.rollout.reason == (
        "rolled back everywhere: the new version not ready within the readiness deadline in r2"
    )
    assert back.rollout.weights == {}


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
@pytest.mark.timeout(60)
async def test_a_standby_driver_takes_the_rollout_over_from_a_stopped_leader(
    store: Store,
) -> None:
    clock = Clock()
    await rolling(store, clock)
    await report_canary_ready(store, "r1")
    settings = LeaseSettings(ttl=1.5, renew_interval=0.2, retry_interval=0.1)

    def driver(holder: str) -> asyncio.Task[None]:
        election = LeaderElection(StoreLeases(store, ROLLOUT_LEASE), holder, settings)
        drive = lambda: drive_rollouts(store, clock=clock, interval=0.05)  # noqa: E731
        return asyncio.create_task(election.run(drive))

    async def in_wave(number: int) -> bool:
        rollout = (await store.get_endpoint("llm")).rollout
        assert rollout is not None
        return rollout.wave == number

    async def promoted() -> bool:
        return (await store.get_endpoint("llm")).spec.image == NEW

    first = driver("first")
    clock.now += timedelta(seconds=31)
    await eventually(lambda: in_wave(1), within=30)
    first.cancel()  # the leader stops; it releases its lease on the way out
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await report_canary_ready(store, "r2")
    second = driver("second")
    try:
        clock.now += timedelta(seconds=31)
        await eventually(promoted, within=30)
    finally:
        second.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await second


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_the_store_is_listed_again_only_after_a_change_and_a_pause_its_cost_sets(
    store: Store,
) -> None:
    clock = Clock()
    service = EndpointService(store, clock=clock)
    await service.add_region(Region(name="r1", kind=RegionKind.LOCAL))
    for name in ("a", "b", "idle"):
        await service.deploy(name, make_spec(), ["r1"])
    rollouts = RolloutService(service, clock)
    await rollouts.start("a", NEW)
    # The first listing takes 1 s (by this clock): the next waits 20 s more.
    ticks = iter([0.0, 0.0, 1.0])  # the look, the listing started, ended
    seconds = [0.0]

    def monotonic() -> float:
        seconds[0] = next(ticks, seconds[0])
        return seconds[0]

    active = ActiveRollouts(store, monotonic)
    assert [endpoint.name for endpoint in await active.endpoints()] == ["a"]

    await rollouts.start("b", NEW)  # the feed moves, but the listing is not due
    seconds[0] = 20.0
    assert [endpoint.name for endpoint in await active.endpoints()] == ["a"]
    seconds[0] = 21.0
    assert [endpoint.name for endpoint in await active.endpoints()] == ["a", "b"]

    await rollouts.abort("a")  # a known one that ends is dropped without a listing
    seconds[0] = 22.0
    assert [endpoint.name for endpoint in await active.endpoints()] == ["b"]
