"""The gateway's load counting: `LoadMeter` itself, and the gateway counting real
requests over loopback against the version that serves them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web

from servefleet.runtime.local.gateway import Backend, Gateway, GatewaySettings, Router
from servefleet.runtime.local.load import LoadMeter
from servefleet.runtime.local.routing import Role
from tests.waiting import eventually

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_meter_counts_arrivals_and_averages_what_is_in_flight() -> None:
    meter = LoadMeter()
    meter.arrive()
    meter.arrive()
    (first,) = meter.sample(T0, keep=3)
    assert first.at == T0
    assert first.arrivals == 2
    assert 0 < first.in_flight <= 2  # both arrived after the period opened

    # Both in flight all through the next period: exactly 2, and nothing arrived.
    second = meter.sample(T0 + timedelta(seconds=1), keep=3)[-1]
    assert (second.in_flight, second.arrivals) == (2.0, 0)

    meter.depart()
    meter.arrive()
    meter.depart()
    meter.depart()
    third = meter.sample(T0 + timedelta(seconds=2), keep=3)[-1]
    assert third.arrivals == 1
    assert 0 < third.in_flight <= 2
    assert meter.in_flight == 0

    kept = meter.sample(T0 + timedelta(seconds=3), keep=3)
    assert [sample.at for sample in kept] == [T0 + timedelta(seconds=n) for n in (1, 2, 3)]
    assert kept[-1].in_flight == 0.0


@pytest.fixture
async def held_upstream() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A replica that answers every request once the event is set."""
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", release
    release.set()
    await runner.cleanup()


@pytest.mark.parametrize("version", ["primary", "canary"])
async def test_the_gateway_counts_each_request_against_its_version(
    held_upstream: tuple[str, asyncio.Event], version: Role
) -> None:
    url, release = held_upstream
    router = Router("r1")
    replica = Backend(f"llm/{version}-0", url)
    router.set_route(
        "llm",
        "/inference/llm",
        routed=True,
        reason="",
        weight=50,
        # With no replica of the other version, every request goes to this one.
        primary=[replica] if version == "primary" else [],
        canary=[replica] if version == "canary" else [],
    )
    gateway = Gateway([router], GatewaySettings(shutdown_timeout=1))
    base = await gateway.start()
    counted = router.load("llm", version)
    other = router.load("llm", "canary" if version == "primary" else "primary")
    assert counted is not None
    assert other is not None
    try:
        async with aiohttp.ClientSession() as client:

            async def one() -> int:
                async with client.get(f"{base}/inference/llm/v1/models") as response:
                    return response.status

            requests = [asyncio.create_task(one()) for _ in range(3)]

            async def all_in_flight() -> bool:
                return counted.in_flight == 3

            await eventually(all_in_flight)
            assert counted.sample(T0, keep=5)[-1].arrivals == 3
            release.set()
            assert await asyncio.gather(*requests) == [200, 200, 200]
        assert counted.in_flight == 0
        after = counted.sample(T0 + timedelta(seconds=1), keep=5)[-1]
        assert after.arrivals == 0
        assert 0 < after.in_flight <= 3
        assert other.sample(T0, keep=5)[-1].arrivals == 0
    finally:
        await gateway.close()


def test_a_routes_meters_last_across_updates_and_go_with_it() -> None:
    router = Router("r1")
    router.set_route(
        "llm", "/inference/llm", routed=True, reason="", weight=0, primary=[], canary=[]
    )
    meter = router.load("llm", "primary")
    assert meter is not None
    router.set_route(
        "llm", "/inference/llm2", routed=False, reason="stopped", weight=0, primary=[], canary=[]
    )
    assert router.load("llm", "primary") is meter
    router.remove_route("llm")
    assert router.load("llm", "primary") is None
