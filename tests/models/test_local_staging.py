"""Pre-staging on local regions, end to end: `servefleet up` in this process (real
store, reconciler, local runtime, gateway), the stage command as a real child
process, and replicas (`model_replica.py`) that report the model files they found
when they started. The S3 sources are `SlowS3` on loopback, which the test lets
go on, or not."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from servefleet.plan import desired_workload
from servefleet.runtime.local.gateway import Router
from servefleet.runtime.local.supervisor import LocalRuntime
from servefleet.spec import EndpointSpec, RegionState, RegionStatus
from servefleet.store import open_store
from tests.factories import make_endpoint
from tests.models.conftest import SlowS3, slow_model
from tests.scenarios.harness import LOCAL, Fleet, local_fleet
from tests.waiting import eventually

REPLICA = str(Path(__file__).with_name("model_replica.py"))


def model_spec(source: str, **env: str) -> EndpointSpec:
    return EndpointSpec(
        command=[sys.executable, REPLICA, "--port", "{port}", "--model", "{model_dir}"],
        replicas=1,
        model_source=source,
        env=env,
    )


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = await open_store(url, init=True)
    await store.close()
    async with local_fleet(url, tmp_path) as started:
        yield started


async def test_replicas_start_only_on_a_complete_verified_model(
    fleet: Fleet, slow_s3: SlowS3
) -> None:
    data, manifest = slow_model(slow_s3, "llama/1")
    spec = model_spec("s3://models/llama/1", AWS_ENDPOINT_URL=slow_s3.url)
    await fleet.service.deploy("llm", spec, ["r1"])

    half: list[RegionStatus] = []

    async def staging_halfway() -> bool:
        status = await fleet.status("llm")
        if status is not None and status.staging and status.staging.bytes_done == len(data) // 2:
            half.append(status)
        return bool(half)

    await eventually(staging_halfway, within=30)
    assert half[0].state is RegionState.PROGRESSING
    assert half[0].staging is not None
    assert half[0].staging.bytes_total == len(data)
    assert not half[0].staging.complete
    assert half[0].message == "staging the model from s3://models/llama/1: 0.2 MB of 0.4 MB"
    assert [r.pid for r in fleet.replicas("llm")] == [None]  # waiting, no process

    slow_s3.release.set()
    await fleet.settled("llm", replicas=1)

    status = await fleet.status("llm")
    assert status is not None
    assert status.staging is not None
    assert (status.staging.bytes_done, status.staging.complete) == (len(data), True)
    answer = await fleet.chat("llm")
    seen = answer.body
    assert seen["files"] == {"weights.bin": manifest.files[0].sha256}
    assert seen["model_dir"] == seen["env_model_dir"]
    assert Path(seen["model_dir"]).is_relative_to(fleet.runtime().model_cache_dir)


async def test_a_hanging_source_times_out_and_the_region_reports_it_failed(
    fleet: Fleet, slow_s3: SlowS3
) -> None:
    slow_model(slow_s3, "llama/1")  # never released
    slow_s3.stall_resumed = True
    spec = model_spec(
        "s3://models/llama/1", AWS_ENDPOINT_URL=slow_s3.url, SERVEFLEET_STAGE_TIMEOUT="3"
    )
    await fleet.service.deploy("llm", spec, ["r1"])

    async def failed() -> bool:
        status = await fleet.status("llm")
        return status is not None and status.state is RegionState.FAILED

    await eventually(failed, within=30)
    status = await fleet.status("llm")
    assert status is not None
    assert re.fullmatch(
        r"model staging from s3://models/llama/1 timed out after 3s "
        r"\((0|200000) of (0|400000) bytes staged\) \(attempt \d+; next in [0-9.]+s\)",
        status.message,
    ), status.message
    assert status.replicas_ready == 0
    assert [r.pid for r in fleet.replicas("llm")] == [None]


async def test_a_hostile_model_source_reaches_no_shell(tmp_path: Path) -> None:
    """The spec refuses such a source; a record that holds one anyway (written by an
    older version, say) still only ever reaches the stage command as a value."""
    marker = tmp_path / "pwned"
    hostile = f"file:///tmp/x; touch {marker}"
    planned = desired_workload(make_endpoint("llm", ["r1"], command=["true"], image=None), "r1")
    assert planned is not None
    workload = planned.model_copy(update={"model_source": hostile})
    runtime = LocalRuntime("r1", Router("r1"), log_dir=tmp_path / "logs", settings=LOCAL)
    try:
        await runtime.apply(workload)

        async def reported() -> bool:
            observed = await runtime.observe("llm")
            return observed is not None and bool(observed.failure)

        await eventually(reported, within=30)
        observed = await runtime.observe("llm")
        assert observed is not None
        assert observed.failure.startswith(
            f"model staging failed: {hostile}: no such directory (attempt 1"
        )
        held = runtime.replicas("llm")
        assert held
        assert all(r.pid is None for r in held)
    finally:
        await runtime.close()
    assert not marker.exists()
