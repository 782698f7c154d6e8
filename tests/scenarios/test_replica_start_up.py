"""What a region reports of replicas that do not come up: one that loads its
model for minutes is starting (and left to load); one that exits at every start
is a crash loop, reported failed, while the old version goes on serving.

`servefleet up` in this process, real replica processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from servefleet.spec import RegionState
from tests.scenarios.harness import SETTLE, demo_command, demo_spec, local_fleet, manifest
from tests.waiting import eventually


async def test_a_replica_loading_its_model_is_reported_starting(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The demo server answers its health path 503 for 600 s after it starts, as long
    as the default startup probe allows."""
    spec = demo_spec("v1", replicas=1, command=demo_command("--startup-delay", "600"))
    async with local_fleet(sqlite_url, tmp_path) as fleet:
        await fleet.service.apply(manifest("llm", spec, ["r1"]))

        async def reported_starting() -> bool:
            status = await fleet.status("llm")
            return status is not None and "starting, probe not passing yet" in status.message

        await eventually(lambda: _started(fleet.pids("llm")), within=SETTLE)
        (pid,) = fleet.pids("llm")
        await eventually(reported_starting, within=SETTLE)
        assert fleet.pids("llm") == {pid}  # left to load, not restarted


async def _started(pids: set[int]) -> bool:
    return len(pids) == 1


async def test_a_version_that_exits_at_every_start_is_reported_failed(
    sqlite_url: str, tmp_path: Path
) -> None:
    crashing = demo_spec(
        "v2", command=[sys.executable, "-c", "import sys; sys.exit('no weights')"], args=[]
    )
    async with local_fleet(sqlite_url, tmp_path) as fleet:
        await fleet.service.apply(manifest("llm", demo_spec("v1", replicas=1), ["r1"]))
        await fleet.settled("llm", replicas=1)
        (v1,) = fleet.pids("llm")
        await fleet.service.apply(manifest("llm", crashing, ["r1"]))

        async def failed() -> bool:
            status = await fleet.status("llm")
            return (
                status is not None
                and status.state is RegionState.FAILED
                and "crash loop" in status.message
                and "exited with status 1" in status.message
            )

        await eventually(failed, within=SETTLE)
        answer = await fleet.chat("llm")
        assert (answer.status, answer.version, answer.pid) == (200, "v1", v1)
