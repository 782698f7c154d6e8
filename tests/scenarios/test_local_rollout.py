"""A progressive rollout on two local regions with every real part running: `up`'s
elected rollout driver moves it on from the regions' reports, the reconcilers run
the new version beside the old in the first wave's region only, then in both, and
the promotion replaces every replica."""

from __future__ import annotations

from pathlib import Path

import pytest

from servefleet.rollout_service import RolloutService
from servefleet.spec import RolloutPhase
from tests.scenarios.harness import SETTLE, demo_spec, local_fleet, manifest
from tests.waiting import eventually

NEW = "ghcr.io/example/server:2.0"
POLICY = {
    "waves": [["r1"], ["r2"]],
    "steps": [{"weight": 50, "hold": 1}],
    "guard_rails": {"readiness_deadline": 120},
}


@pytest.mark.slow(seconds=20)
async def test_a_rollout_goes_wave_by_wave_to_promotion_on_its_own(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with local_fleet(sqlite_url, tmp_path, ("r1", "r2")) as fleet:
        spec = demo_spec(replicas=1, image="ghcr.io/example/server:1.0", rollout=POLICY)
        await fleet.service.apply(manifest("llm", spec, ["r1", "r2"]))
        await fleet.settled("llm", replicas=1, regions=("r1", "r2"))

        await RolloutService(fleet.service).start("llm", NEW)

        # Wave 1: the new version runs in r1 only.
        await fleet.settled("llm", replicas=1, canary=1, regions=("r1",))
        assert fleet.pids("llm", "r2", role="canary") == set()

        async def promoted() -> bool:
            rollout = (await fleet.store.get_endpoint("llm")).rollout
            assert rollout is not None
            assert rollout.phase is not RolloutPhase.ROLLED_BACK, rollout.reason
            return rollout.phase is RolloutPhase.PROMOTED

        await eventually(promoted, within=SETTLE)
        done = await fleet.settled("llm", replicas=1, regions=("r1", "r2"))
        assert done.spec.image == NEW
