"""A rollout that hurts is taken back by itself, on real traffic: three local regions
under `up`, a steady load through the global gateway, and a new version that is
ready (its `/health` passes) but answers 500 to one request in ten. The regions
report each version's answers, the elected driver judges the step's window on
them, and rolls every region back: none left on the new version, none promoted,
and the reason where `servefleet rollout status` shows it.

Without the regions' traffic reports the new version would pass every step on
readiness and be promoted, which this test refuses at every look."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from pathlib import Path

import aiohttp
import pytest

from servefleet.rollout_service import RolloutService
from servefleet.spec import RolloutPhase
from tests.cli.test_cli import COMMAND, REPO
from tests.scenarios.harness import SETTLE, Fleet, demo_spec, local_fleet, manifest
from tests.waiting import eventually

OLD = "ghcr.io/example/server:1.0"
HURTS = "ghcr.io/example/server:2.0"
REGIONS = ("r1", "r2", "r3")
IMAGES = {
    OLD: ["--version", "v1"],
    HURTS: ["--version", "v2", "--error-percent", "10"],
}
"""What each image of this test runs: a local region runs a command, and the
version's image reaches it as `{image}`."""
RUN_IMAGE = (
    "import json, os, sys; "
    "flags = json.loads(sys.argv[1])[sys.argv[2]]; "
    "os.execv(sys.executable, [sys.executable, '-m', 'servefleet.demo', *sys.argv[3:], *flags])"
)
POLICY = {
    "waves": [["r1"], ["r2", "r3"]],
    "steps": [{"weight": 30, "hold": 5}, {"weight": 60, "hold": 5}],
    # Small, so a short test judges real windows; latency is not what this one tests.
    "guard_rails": {
        "max_error_percent": 2,
        "min_requests": 20,
        "max_latency_ratio": 100,
        "readiness_deadline": 120,
    },
}
BREACH = re.compile(
    r"rolled back everywhere: canary 5xx \d+\.\d % > 2 % over \d+ requests in r[123]"
)


async def steady_load(fleet: Fleet, statuses: list[int]) -> None:
    """Four clients asking through the global gateway, each pausing a little between
    requests, until cancelled."""

    async def client() -> None:
        while True:
            try:
                answer = await fleet.chat("llm")
                statuses.append(answer.status)
            except aiohttp.ClientError:
                statuses.append(0)
            await asyncio.sleep(0.02)

    async with asyncio.TaskGroup() as clients:
        for _ in range(4):
            clients.create_task(client())


async def rollout_status(store_url: str) -> str:
    """What `servefleet rollout status llm` prints."""
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        *("rollout", "status", "llm"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SERVEFLEET_STORE": store_url, "COLUMNS": "200"},
        cwd=REPO,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()
    return output.decode()


@pytest.mark.slow(seconds=10)
async def test_a_version_answering_500_is_rolled_back_in_every_region_by_itself(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with local_fleet(sqlite_url, tmp_path, REGIONS) as fleet:
        command = [sys.executable, "-c", RUN_IMAGE, json.dumps(IMAGES), "{image}"]
        args = ["--port", "{port}", "--token-delay", "0"]
        spec = demo_spec(replicas=1, image=OLD, rollout=POLICY, command=command, args=args)
        await fleet.service.apply(manifest("llm", spec, list(REGIONS)))
        await fleet.settled("llm", replicas=1, regions=REGIONS)

        statuses: list[int] = []
        load = asyncio.create_task(steady_load(fleet, statuses))
        try:
            await eventually(lambda: _answered(statuses, 50), within=SETTLE)
            assert 500 not in statuses, "the old version answers 500 to nothing"

            await RolloutService(fleet.service).start("llm", HURTS)

            async def rolled_back() -> bool:
                rollout = (await fleet.store.get_endpoint("llm")).rollout
                assert rollout is not None
                assert rollout.phase is not RolloutPhase.PROMOTED, rollout.reason
                return rollout.phase is RolloutPhase.ROLLED_BACK

            await eventually(rolled_back, within=2 * SETTLE)
        finally:
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load

        assert 500 in statuses, "the new version served requests before it was taken back"
        # Every region back on the old version alone: no canary anywhere, none promoted.
        back = await fleet.settled("llm", replicas=1, canary=0, regions=REGIONS)
        assert back.spec.image == OLD
        assert back.rollout is not None
        assert back.rollout.weights == {}
        assert BREACH.fullmatch(back.rollout.reason), back.rollout.reason
        for region in REGIONS:
            status = await fleet.status("llm", region)
            assert status is not None
            assert (status.canary_desired, status.traffic) == (0, None)
        shown = await rollout_status(sqlite_url)
        assert "rolled_back" in shown
        assert back.rollout.reason in " ".join(shown.split())


async def _answered(statuses: list[int], count: int) -> bool:
    return len(statuses) >= count
