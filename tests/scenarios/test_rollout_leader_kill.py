"""A rollout whose driver is killed mid-rollout: two `servefleet up` processes on one
store, the first alone until the rollout is under way (so it is the one driving it),
then a standby beside it. SIGKILL of the first (no lease released, its replicas go
with it) leaves the rollout where the store has it; the standby takes the regions'
leases and the rollout's, and carries the rollout on from there: wave 1 held, the
wait for resume, wave 2, the promotion in every region."""

from __future__ import annotations

import signal
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from servefleet.rollout_service import RolloutService
from servefleet.service import EndpointService
from servefleet.spec import RegionState, RolloutPhase
from servefleet.store import Store, open_store
from tests.scenarios.harness import SETTLE, demo_spec, manifest, up_process
from tests.waiting import eventually

OLD = "ghcr.io/example/server:1.0"
NEW = "ghcr.io/example/server:2.0"
REGIONS = ("r1", "r2", "r3")
TTL = 2.0
POLICY = {
    "waves": [["r1"], ["r2", "r3"]],
    "steps": [{"weight": 50, "hold": 3}],
    "guard_rails": {"readiness_deadline": 120},
    "between_waves": "wait",
}


async def _serving(store: Store, *, canary: int, regions: tuple[str, ...]) -> bool:
    """Every region in `regions` reports the current generation ready and routed, with
    one primary and `canary` canary replicas ready."""
    record = await store.get_endpoint("llm")
    statuses = {status.region: status for status in await store.list_region_status(endpoint="llm")}
    return all(
        (status := statuses.get(region)) is not None
        and status.state is RegionState.READY
        and status.observed_generation == record.generation
        and (status.replicas_ready, status.canary_ready) == (1, canary)
        and status.routed
        for region in regions
    )


async def _phase(store: Store) -> RolloutPhase:
    rollout = (await store.get_endpoint("llm")).rollout
    assert rollout is not None
    assert rollout.phase is not RolloutPhase.ROLLED_BACK, rollout.reason
    return rollout.phase


@pytest.mark.slow(seconds=12)
async def test_a_standby_up_carries_on_a_rollout_whose_driver_was_killed(tmp_path: Path) -> None:
    path = str(tmp_path / "store.db")
    args = ("--regions", ",".join(REGIONS), "--port", "0", "--lease-ttl", str(TTL))
    async with AsyncExitStack() as stack:
        store = await open_store(path, init=True)
        stack.push_async_callback(store.close)
        first = await stack.enter_async_context(
            up_process(path, *args, stderr=tmp_path / "first.log")
        )
        service = EndpointService(store)
        spec = demo_spec(replicas=1, image=OLD, rollout=POLICY)
        await service.apply(manifest("llm", spec, list(REGIONS)))
        await eventually(lambda: _serving(store, canary=0, regions=REGIONS), within=SETTLE)

        await RolloutService(service).start("llm", NEW)
        # Wave 1 under way, driven by the only process there is: the new version
        # runs beside the old in r1, its step not yet held.
        await eventually(lambda: _serving(store, canary=1, regions=("r1",)), within=SETTLE)
        assert await _phase(store) is RolloutPhase.RUNNING

        second = await stack.enter_async_context(
            up_process(path, *args, stderr=tmp_path / "second.log")
        )
        assert second.replicas() == set()  # a standby: the first holds every lease
        first.process.send_signal(signal.SIGKILL)
        await first.process.wait()

        # The standby's driver holds wave 1 to its end and waits for resume; its
        # reconcilers run every region, r1 with the new version beside the old. The
        # first's last reports say as much until the standby writes its own, so its
        # replicas are counted: one a region, and r1's canary.
        await eventually(lambda: _phase_is(store, RolloutPhase.WAITING), within=SETTLE)

        async def standby_runs_wave_1() -> bool:
            return len(second.replicas()) == len(REGIONS) + 1

        await eventually(standby_runs_wave_1, within=SETTLE)
        await eventually(lambda: _serving(store, canary=1, regions=("r1",)), within=SETTLE)

        await RolloutService(service).resume("llm")
        await eventually(lambda: _phase_is(store, RolloutPhase.PROMOTED), within=SETTLE)
        await eventually(lambda: _serving(store, canary=0, regions=REGIONS), within=SETTLE)
        promoted = await store.get_endpoint("llm")
        assert promoted.spec.image == NEW
        assert promoted.spec.canary is None

        async def old_replicas_retired() -> bool:
            return len(second.replicas()) == len(REGIONS)

        await eventually(old_replicas_retired, within=SETTLE)


async def _phase_is(store: Store, phase: RolloutPhase) -> bool:
    return await _phase(store) is phase
