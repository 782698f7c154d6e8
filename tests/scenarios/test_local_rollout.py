"""A progressive rollout on three local regions with every real part running: `up`'s
elected rollout driver moves it on from the regions' reports, the reconcilers run
the new version beside the old in the first wave's region only, and after a Ctrl-C
of `up` mid-rollout a new `up` on the same store takes it on: to the end of wave 1,
then (resumed) through wave 2 to the promotion, which replaces every replica."""

from __future__ import annotations

from pathlib import Path

import pytest

from servefleet.rollout_service import RolloutService
from servefleet.spec import RolloutPhase
from tests.scenarios.harness import SETTLE, demo_spec, local_fleet, manifest
from tests.waiting import eventually

NEW = "ghcr.io/example/server:2.0"
REGIONS = ("r1", "r2", "r3")
POLICY = {
    "waves": [["r1"], ["r2", "r3"]],
    "steps": [{"weight": 50, "hold": 2}],
    "guard_rails": {"readiness_deadline": 120},
    "between_waves": "wait",
}


@pytest.mark.slow(seconds=25)
async def test_a_rollout_survives_a_restart_of_up_and_goes_on_to_promotion(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with local_fleet(sqlite_url, tmp_path, REGIONS) as fleet:
        spec = demo_spec(replicas=1, image="ghcr.io/example/server:1.0", rollout=POLICY)
        await fleet.service.apply(manifest("llm", spec, list(REGIONS)))
        await fleet.settled("llm", replicas=1, regions=REGIONS)

        await RolloutService(fleet.service).start("llm", NEW)

        # Wave 1: the new version runs in r1 only; r2 and r3 are untouched.
        await fleet.settled("llm", replicas=1, canary=1, regions=("r1",))
        for untouched in ("r2", "r3"):
            assert fleet.pids("llm", untouched, role="canary") == set()
    # Ctrl-C: every process of the fleet is gone; the rollout is where the store says.

    async with local_fleet(sqlite_url, tmp_path / "again", REGIONS) as fleet:

        async def reached(phase: RolloutPhase) -> bool:
            rollout = (await fleet.store.get_endpoint("llm")).rollout
            assert rollout is not None
            assert rollout.phase is not RolloutPhase.ROLLED_BACK, rollout.reason
            return rollout.phase is phase

        # Wave 1 held (before the Ctrl-C or after it), the rollout waits for resume.
        await eventually(lambda: reached(RolloutPhase.WAITING), within=SETTLE)
        await RolloutService(fleet.service).resume("llm")
        await eventually(lambda: reached(RolloutPhase.PROMOTED), within=SETTLE)
        done = await fleet.settled("llm", replicas=1, regions=REGIONS)
        assert done.spec.image == NEW
