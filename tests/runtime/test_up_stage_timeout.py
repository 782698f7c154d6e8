"""`servefleet up --stage-timeout`: the real command in a child process, its local
region staging from `SlowS3` (an S3 look-alike on loopback that never sends the
second half of the model), and its bad values refused before anything starts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from servefleet.service import EndpointService
from servefleet.spec import EndpointSpec, RegionState
from servefleet.store import open_store
from tests.cli.test_cli import servefleet
from tests.models.conftest import SlowS3, slow_model
from tests.models.test_local_staging import REPLICA
from tests.scenarios.harness import SETTLE, up_process
from tests.waiting import eventually


async def test_up_stage_timeout_bounds_staging(
    sqlite_url: str, tmp_path: Path, slow_s3: SlowS3
) -> None:
    """`servefleet up --stage-timeout` is the staging deadline of its local regions
    (an endpoint's own SERVEFLEET_STAGE_TIMEOUT would still win)."""
    slow_model(slow_s3, "llama/1")  # never released
    slow_s3.stall_resumed = True
    spec = EndpointSpec(
        command=[sys.executable, REPLICA, "--port", "{port}", "--model", "{model_dir}"],
        model_source="s3://models/llama/1",
        env={"AWS_ENDPOINT_URL": slow_s3.url},
    )
    args = ("--regions", "r1", "--port", "0", "--stage-timeout", "1")
    async with up_process(sqlite_url, *args, stderr=tmp_path / "up.log"):
        store = await open_store(sqlite_url)
        try:
            await EndpointService(store).deploy("llm", spec, ["r1"])

            async def failed() -> bool:
                statuses = await store.list_region_status(endpoint="llm")
                return any(status.state is RegionState.FAILED for status in statuses)

            await eventually(failed, within=SETTLE)
            (status,) = await store.list_region_status(endpoint="llm")
        finally:
            await store.close()
    assert status.message.startswith("model staging from s3://models/llama/1 timed out after 1s")
    assert status.replicas_ready == 0


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
async def test_up_refuses_a_stage_timeout_that_is_not_positive(sqlite_url: str, value: str) -> None:
    refused = await servefleet(sqlite_url, "up", "--regions", "r1", "--stage-timeout", value)
    assert refused.code == 1
    assert refused.stderr == (
        f"error: --stage-timeout: must be a number of seconds more than 0 (got {float(value):g})\n"
    )
    store = await open_store(sqlite_url)
    try:
        assert await store.list_regions() == []  # refused before anything was written
    finally:
        await store.close()
