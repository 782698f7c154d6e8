"""`servefleet autoscale` as users run it: on with bounds, metrics and windows, off
with a count; refusals name the flag; `scale` on an autoscaled endpoint says how
to change the bounds. (The same through the API: `test_api_mode.py`'s script.)"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from servefleet.spec import RegionState, RegionStatus
from servefleet.store import open_store
from tests.cli.test_cli import Cli, prepare


@pytest.fixture
def cli(sqlite_url: str) -> Cli:
    return Cli(sqlite_url)


async def test_autoscale_on_and_off_through_the_command_line(cli: Cli) -> None:
    await prepare(cli.store_url, ["r1"], replicas=2)

    on = await cli.ok(
        "autoscale", "llm", "--min", "0", "--max", "8", "--concurrency", "4",
        "--scale-to-zero-after", "120", "--panic-window", "3",
    )  # fmt: skip
    assert on == (
        "endpoint/llm autoscaled between 0 and 8 replicas on concurrency 4 (generation 2)\n"
    )
    autoscaling = (await cli.endpoint())["spec"]["autoscaling"]
    assert autoscaling == autoscaling | {
        "enabled": True,
        "min_replicas": 0,
        "max_replicas": 8,
        "metrics": [{"type": "concurrency", "target": 4.0}],
        "scale_to_zero_after": 120,
        "panic_window": 3,
        "scale_up_window": 60,  # not given: as declared
    }

    refused = await cli("scale", "llm", "3")
    assert (refused.code, refused.stdout) == (1, "")
    assert refused.stderr == (
        "error: replicas: 'llm' is autoscaled between 0 and 8, so its count is the "
        "autoscaler's; change the bounds (servefleet autoscale llm --min N --max M) or turn "
        "autoscaling off with a count (servefleet autoscale llm --off --replicas 3)\n"
    )

    off = await cli.ok("autoscale", "llm", "--off", "--replicas", "3")
    assert off == "endpoint/llm autoscaling off, 3 replicas (generation 3)\n"
    spec = (await cli.endpoint())["spec"]
    assert spec["replicas"] == 3
    assert spec["autoscaling"] == autoscaling | {"enabled": False}  # kept for next time


async def test_autoscale_refusals_name_the_flag_and_change_nothing(cli: Cli) -> None:
    await prepare(cli.store_url, ["r1"])
    before = await cli.endpoint()

    results = await asyncio.gather(
        cli("autoscale", "llm", "--min", "3", "--max", "2"),
        cli("autoscale", "llm", "--min", "0"),
        cli("autoscale", "llm", "--rps", "5", "--concurrency", "-1"),
        cli("autoscale", "llm", "--scale-down-window", "0"),
        cli("autoscale", "llm", "--replicas", "3"),
        cli("autoscale", "llm", "--off", "--min", "2", "--cpu", "70"),
        cli("autoscale", "nope", "--max", "3"),
    )

    assert [(result.code, result.stdout) for result in results] == [(1, "")] * len(results)
    assert [result.stderr for result in results] == [
        "error: --min: 3 must not exceed max_replicas (2)\n",
        "error: --min: 0 needs a concurrency or rps metric: cpu and memory are measured on "
        "running replicas, so nothing would start one again (got metrics [])\n",
        "error: --concurrency: must be greater than 0 (got -1.0)\n",
        "error: --scale-down-window: must be greater than 0 (got 0)\n",
        "error: --replicas: only with turning autoscaling off: while it is on, the count is "
        "the autoscaler's, between min_replicas and max_replicas\n",
        "error: --cpu: sets autoscaling; it cannot go with turning it off\n"
        "error: --min: sets autoscaling; it cannot go with turning it off\n",
        "error: endpoint 'nope' not found\n",
    ]
    assert await cli.endpoint() == before


async def test_health_does_not_hold_a_region_scaling_up_to_its_new_count(
    cli: Cli, unused_tcp_port: int
) -> None:
    """A region whose autoscaler asked for more replicas than are ready yet is healthy
    while it has its floor (its state says so); a count the workload declared is not."""
    await prepare(cli.store_url, ["r1"])
    store = await open_store(cli.store_url)
    app = web.Application()
    app.router.add_get("/{path:.*}", _ok)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    url = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        reports = {}
        for reason in ("concurrency 2.9/1 per replica → 3", ""):
            status = RegionStatus(
                endpoint="llm",
                region="r1",
                state=RegionState.READY,
                observed_generation=1,
                replicas_ready=1,
                replicas_desired=3,
                routed=True,
                scale_reason=reason,
            )
            await store.put_region_status(status)
            reports[reason] = await cli("health", "llm", "--url", url, "-o", "json")
    finally:
        await runner.cleanup()
        await store.close()

    scaling, short = reports.values()
    assert scaling.code == 0, scaling
    [row] = scaling.json()["regions"]
    assert (row["healthy"], row["ready"], row["probe"]) == (True, "1/3", "200 ok")
    assert row["scale_reason"] == "concurrency 2.9/1 per replica → 3"
    assert short.code == 6, short


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})
