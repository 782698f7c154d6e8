"""The rollout verbs and the driver's step (`RolloutService`) on real stores: the
rules they refuse by, what each writes, and that a rollout's state lives in the
store with the endpoint, so another process resumes it where it was."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from servefleet.plan import desired_workload
from servefleet.rollout import Action
from servefleet.rollout_service import RolloutService
from servefleet.service import EndpointService, OperationRefused
from servefleet.spec import (
    Endpoint,
    EndpointManifest,
    InvalidInput,
    Region,
    RegionKind,
    RegionStatus,
    RegionTraffic,
    RolloutPhase,
    VersionTraffic,
)
from servefleet.store import Change, Store, open_store
from tests.conftest import EVERY_STORE
from tests.factories import T0, make_spec, make_status

OLD = "ghcr.io/example/server:1.0"
NEW = "ghcr.io/example/server:2.0"
REGIONS = ["us-east-1", "eu-west-1", "ap-southeast-1"]
POLICY = {
    "waves": [["us-east-1"], ["eu-west-1", "ap-southeast-1"]],
    "steps": [{"weight": 10, "hold": 60}, {"weight": 50, "hold": 60}],
    "guard_rails": {"max_error_percent": 2, "min_requests": 100},
}
HEALTHY = [make_status("llm", region, canary_ready=1, canary_desired=1) for region in REGIONS]
"""Every region's canary ready; no traffic counted (a Kubernetes region's report)."""


def with_canary_traffic(region: str, requests: int, errors: int) -> list[RegionStatus]:
    """HEALTHY, with `region` reporting that many canary requests and 5xx answers
    since T0 (cumulative, as a region counts them)."""
    counted = VersionTraffic(image=NEW, since=T0, requests=requests, errors=errors)
    traffic = RegionTraffic(canary=counted)
    return [
        status.model_copy(update={"traffic": traffic}) if status.region == region else status
        for status in HEALTHY
    ]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def deployed(store: Store, clock: Clock, **spec: object) -> EndpointService:
    service = EndpointService(store, clock=clock)
    for region in REGIONS:
        await service.add_region(Region(name=region, kind=RegionKind.LOCAL))
    await service.deploy("llm", make_spec(rollout=POLICY, **spec), REGIONS)
    return service


def canaries(endpoint: Endpoint) -> dict[str, tuple[str | None, int]]:
    """Each region's canary image and weight, as the reconcilers will run them."""
    shown = {}
    for region in endpoint.target_regions:
        workload = desired_workload(endpoint, region)
        assert workload is not None
        assert workload.primary.image == endpoint.spec.image
        if workload.canary is not None:
            shown[region] = (workload.canary.image, workload.canary_weight)
    return shown


async def take(changes: AsyncIterator[Change], count: int) -> list[Change]:
    async with asyncio.timeout(10):
        return [await anext(changes) for _ in range(count)]


@EVERY_STORE
async def test_a_rollout_stored_mid_way_resumes_in_another_process_where_it_was(
    store: Store, store_url: str, clock: Clock
) -> None:
    service = await deployed(store, clock)
    feed = await store.feed_position()
    started = await RolloutService(service, clock).start("llm", NEW)
    clock.now += timedelta(seconds=61)
    raised, decision = await RolloutService(service, clock).advance("llm", HEALTHY)
    assert decision.action is Action.RAISE_WEIGHT
    assert canaries(raised) == {"us-east-1": (NEW, 50)}

    # Every process gone: a new one opens the store and goes on from what it holds.
    other = await open_store(store_url)
    try:
        reread = await other.get_endpoint("llm")
        assert reread == raised
        rollouts = RolloutService(EndpointService(other, clock=clock), clock)
        clock.now += timedelta(seconds=61)
        next_wave, decision = await rollouts.advance("llm", HEALTHY)
    finally:
        await other.close()

    assert decision.action is Action.NEXT_WAVE
    assert canaries(next_wave) == {
        "us-east-1": (NEW, 50),
        "eu-west-1": (NEW, 10),
        "ap-southeast-1": (NEW, 10),
    }
    # Each step is a write the reconcilers hear of through the change feed.
    changes = await take(aiter(store.watch(feed)), 3)
    assert [(c.name, c.revision) for c in changes] == [
        ("llm", started.revision),
        ("llm", raised.revision),
        ("llm", next_wave.revision),
    ]
    assert started.generation < raised.generation < next_wave.generation


async def test_start_puts_the_new_version_in_the_first_wave_only(
    store: Store, clock: Clock
) -> None:
    service = await deployed(store, clock)

    started = await RolloutService(service, clock).start("llm", NEW)

    assert canaries(started) == {"us-east-1": (NEW, 10)}
    assert started.spec.image == OLD
    assert started.rollout is not None
    assert started.rollout.reason == "wave 1 started: 10 % in us-east-1"


async def test_a_breach_in_the_second_wave_rolls_the_first_back_too(
    store: Store, clock: Clock
) -> None:
    service = await deployed(store, clock)
    rollouts = RolloutService(service, clock)
    await rollouts.start("llm", NEW)
    for _ in range(2):
        clock.now += timedelta(seconds=61)
        await rollouts.advance("llm", HEALTHY)
    # The step's window starts from the counts as they stand at the first look.
    _, decision = await rollouts.advance("llm", with_canary_traffic("eu-west-1", 100, 0))
    assert decision.action is Action.HOLD

    back, decision = await rollouts.advance("llm", with_canary_traffic("eu-west-1", 412, 31))

    assert decision.action is Action.ROLL_BACK
    assert canaries(back) == {}
    assert back.spec.image == OLD
    assert back.rollout is not None
    assert back.rollout.reason == (
        "rolled back everywhere: canary 5xx 9.9 % > 2 % over 312 requests in eu-west-1"
    )
    with pytest.raises(OperationRefused, match="no rollout under way to resume"):
        await rollouts.resume("llm")


async def test_the_last_step_held_promotes_the_image_everywhere(store: Store, clock: Clock) -> None:
    service = await deployed(store, clock, region_images={"eu-west-1": OLD})
    rollouts = RolloutService(service, clock)
    await rollouts.start("llm", NEW)
    actions = []
    for _ in range(4):
        clock.now += timedelta(seconds=61)
        endpoint, decision = await rollouts.advance("llm", HEALTHY)
        actions.append(decision.action)

    assert actions == [Action.RAISE_WEIGHT, Action.NEXT_WAVE, Action.RAISE_WEIGHT, Action.PROMOTE]
    assert (endpoint.spec.image, endpoint.spec.region_images) == (NEW, {})
    assert canaries(endpoint) == {}
    assert endpoint.rollout is not None
    assert endpoint.rollout.phase is RolloutPhase.PROMOTED


async def test_pause_holds_and_is_written_without_a_new_generation(
    store: Store, clock: Clock
) -> None:
    service = await deployed(store, clock)
    rollouts = RolloutService(service, clock)
    started = await rollouts.start("llm", NEW)

    paused = await rollouts.pause("llm")
    clock.now += timedelta(hours=1)
    held, decision = await rollouts.advance("llm", HEALTHY)

    assert (paused.generation, paused.revision) == (started.generation, started.revision + 1)
    assert (decision.action, decision.reason) == (Action.HOLD, "paused by the user")
    assert held == paused  # an unchanged hold writes nothing
    with pytest.raises(OperationRefused, match="paused already"):
        await rollouts.pause("llm")
    resumed = await rollouts.resume("llm")
    assert resumed.rollout is not None
    assert (resumed.rollout.paused, resumed.rollout.step_started_at) == (False, clock.now)
    aborted = await rollouts.abort("llm")
    assert canaries(aborted) == {}
    assert aborted.rollout is not None
    assert aborted.rollout.reason == "rolled back everywhere: aborted by the user"


async def test_between_waves_wait_for_resume(store: Store, clock: Clock) -> None:
    service = await deployed(store, clock)
    await service.apply(
        EndpointManifest.model_validate(
            {
                "metadata": {"name": "llm"},
                "regions": REGIONS,
                "spec": {
                    "image": OLD,
                    "replicas": 2,
                    "rollout": {**POLICY, "between_waves": "wait"},
                },
            }
        )
    )
    rollouts = RolloutService(service, clock)
    await rollouts.start("llm", NEW)
    for _ in range(3):
        clock.now += timedelta(seconds=61)
        waiting, decision = await rollouts.advance("llm", HEALTHY)
    assert decision.reason == "wave 1 done; waiting for resume"
    assert canaries(waiting) == {"us-east-1": (NEW, 50)}

    resumed = await rollouts.resume("llm")

    assert canaries(resumed) == {
        "us-east-1": (NEW, 50),
        "eu-west-1": (NEW, 10),
        "ap-southeast-1": (NEW, 10),
    }


async def test_refusals_name_the_field_and_write_nothing(store: Store, clock: Clock) -> None:
    service = await deployed(store, clock)
    rollouts = RolloutService(service, clock)
    before = await store.get_endpoint("llm")

    with pytest.raises(InvalidInput) as bad_image:
        await rollouts.start("llm", "Not An Image")
    assert bad_image.value.problems[0].startswith("image: is not a valid OCI image reference")
    with pytest.raises(OperationRefused, match=r"image: .* is what 'llm' runs already"):
        await rollouts.start("llm", OLD)
    with pytest.raises(OperationRefused, match="no rollout under way to pause"):
        await rollouts.pause("llm")
    assert await store.get_endpoint("llm") == before
    stopped = await service.stop("llm")
    with pytest.raises(OperationRefused, match="'llm' is stopped; start it before a rollout"):
        await rollouts.start("llm", NEW)
    assert await store.get_endpoint("llm") == stopped
    before = await service.start("llm")
    # Leaving a wave's region out of the targets breaks the policy.
    with pytest.raises(InvalidInput) as untargeted:
        await service.apply(
            EndpointManifest.model_validate(
                {
                    "metadata": {"name": "llm"},
                    "regions": REGIONS[:2],
                    "spec": {"image": OLD, "replicas": 2, "rollout": POLICY},
                }
            )
        )
    assert untargeted.value.problems == [
        "spec.rollout.waves.1: region 'ap-southeast-1' is not a target of the endpoint "
        "(targets: us-east-1, eu-west-1)"
    ]
    assert await store.get_endpoint("llm") == before

    await rollouts.start("llm", NEW)
    with pytest.raises(OperationRefused, match="already rolling out"):
        await rollouts.start("llm", "ghcr.io/example/server:3.0")
    with pytest.raises(OperationRefused, match="abort the rollout first"):
        await service.canary("llm", image="ghcr.io/example/server:3.0")
