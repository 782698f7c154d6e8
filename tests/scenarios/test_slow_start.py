"""A replica whose model loads for minutes is reported as starting, and left to load.

`servefleet up` in this process; the endpoint is the demo server answering its
health path 503 for 600 s after it starts (`--startup-delay`), as long as the
default startup probe allows. The region's status says why it is not ready yet,
and the replica is the same process all along.
"""

from __future__ import annotations

from pathlib import Path

from tests.scenarios.harness import SETTLE, demo_command, demo_spec, local_fleet, manifest
from tests.waiting import eventually


async def test_a_replica_loading_its_model_is_reported_starting(
    sqlite_url: str, tmp_path: Path
) -> None:
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
