"""`servefleet up`'s gateway flags: bad values are refused, naming the flag, before
anything starts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from servefleet.service import EndpointService
from servefleet.store import open_store
from tests.cli.test_cli import servefleet
from tests.scenarios.harness import SETTLE, demo_command, demo_spec, manifest, up_process
from tests.waiting import eventually


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        pytest.param(
            "--trusted-proxy",
            "proxy.example",
            "--trusted-proxy: not an IP address or network (got 'proxy.example')",
            id="trusted-proxy",
        ),
        pytest.param(
            "--upstream-read-timeout",
            "0",
            "--upstream-read-timeout: must be a number of seconds more than 0 (got 0)",
            id="upstream-read-timeout",
        ),
        pytest.param(
            "--max-connections",
            "0",
            "--max-connections: must be at least 1 (got 0)",
            id="max-connections",
        ),
        pytest.param(
            "--hold-timeout",
            "0",
            "--hold-timeout: must be a number of seconds more than 0 (got 0)",
            id="hold-timeout",
        ),
        pytest.param(
            "--hold-timeout",
            "inf",
            "--hold-timeout: must be a number of seconds more than 0 (got inf)",
            id="hold-timeout-inf",
        ),
        pytest.param("--max-held", "0", "--max-held: must be at least 1 (got 0)", id="max-held"),
    ],
)
async def test_up_refuses_a_bad_gateway_flag(
    sqlite_url: str, flag: str, value: str, message: str
) -> None:
    refused = await servefleet(sqlite_url, "up", "--regions", "r1", flag, value)
    assert refused.code == 1
    assert refused.stderr == f"error: {message}\n"
    store = await open_store(sqlite_url)
    try:
        assert await store.list_regions() == []  # refused before anything was written
    finally:
        await store.close()


@pytest.mark.slow(seconds=20)
async def test_up_holds_requests_as_its_hold_flags_say(sqlite_url: str, tmp_path: Path) -> None:
    """An endpoint at zero whose replica loads for longer than the test lasts: one
    request waits `--hold-timeout` and is refused naming it; past `--max-held`
    waiting, the next is refused at once naming that."""
    pace = {
        "enabled": True,
        "min_replicas": 0,
        "max_replicas": 1,
        "metrics": [{"type": "concurrency", "target": 1}],
    }
    spec = demo_spec(command=demo_command("--startup-delay", "600"), autoscaling=pace)
    async with up_process(
        sqlite_url,
        *("--regions", "r1", "--port", "0", "--hold-timeout", "5", "--max-held", "1"),
        stderr=tmp_path / "up.log",
    ) as up:
        store = await open_store(sqlite_url)
        try:
            await EndpointService(store).apply(manifest("llm", spec, ["r1"]))

            async def reported(desired: int) -> bool:
                [status] = await store.list_region_status(endpoint="llm") or [None]
                return status is not None and status.routed and status.replicas_desired == desired

            url = f"{up.gateway_url}/inference/llm/v1/models"
            async with aiohttp.ClientSession() as client:
                await eventually(lambda: reported(0), within=SETTLE)
                held = asyncio.create_task(client.get(url))
                # Once it woke the endpoint, it is held, taking the only place.
                await eventually(lambda: reported(1), within=SETTLE)
                async with client.get(url) as answer:
                    refused = (answer.status, await answer.text())
                async with await held as answer:
                    timed_out = (answer.status, await answer.text())
        finally:
            await store.close()

    assert refused == (
        503,
        '{"error": {"code": 503, "message": "endpoint \'llm\' is starting; 1 requests already '
        'wait for it, retry later"}}',
    )
    assert timed_out == (
        503,
        '{"error": {"code": 503, "message": "endpoint \'llm\' is starting: no replica was '
        'ready within 5s, retry later"}}',
    )
