"""The gateway holding requests for an endpoint at zero replicas, over real HTTP.

The replica here is a small aiohttp app in the test's event loop, and the test
plays the runtime: it sees the gateway's `wake` calls and puts the replica into
the route when it chooses, so each test controls exactly when a replica is ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from servefleet.runtime.local.gateway import Backend, Gateway, GatewaySettings, Hold, Router
from servefleet.runtime.local.routing import Role
from tests.waiting import eventually

URL = "/inference/llm/v1/stream"
PRIMARY: tuple[Role] = ("primary",)


def route(router: Router, *, primary: list[Backend], routed: bool = True) -> None:
    router.set_route(
        "llm",
        "/inference/llm",
        routed=routed,
        reason="" if routed else "endpoint is stopped",
        weight=0,
        primary=primary,
        canary=[],
        wakes=PRIMARY,
    )


async def events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    for n in range(3):
        await response.write(f"data: {n}\n\n".encode())
    await response.write_eof()
    return response


@asynccontextmanager
async def replica() -> AsyncIterator[Backend]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", events)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield Backend("llm/primary-0", f"http://{host}:{port}")
    finally:
        await runner.cleanup()


Start = Callable[..., Awaitable[tuple[Router, str, list[tuple[str, Role]]]]]


@pytest.fixture
async def gateway() -> AsyncIterator[Start]:
    """Start a gateway over a router whose endpoint is at zero; returns the router,
    the gateway's URL and the list of wake calls it receives."""
    started: list[Gateway] = []

    async def start(**settings: Any) -> tuple[Router, str, list[tuple[str, Role]]]:
        router = Router("r1")
        woken: list[tuple[str, Role]] = []
        router.on_wake = lambda endpoint, role: woken.append((endpoint, role))
        route(router, primary=[])
        gateway = Gateway([router], GatewaySettings(shutdown_timeout=1, **settings))
        started.append(gateway)
        return router, await gateway.start(), woken

    yield start
    for gateway in started:
        await gateway.close()


async def get(client: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with client.get(url + URL) as response:
        return response.status, await response.text()


def test_a_request_for_a_version_at_zero_that_wakes_is_held() -> None:
    router = Router("r1")
    route(router, primary=[])
    choice = router.pick(URL)
    assert isinstance(choice, Hold)
    assert (choice.endpoint, choice.version, choice.router) == ("llm", "primary", router)
    # Without `wakes`, the same route refuses at once, as before autoscaling.
    router.set_route(
        "llm", "/inference/llm", routed=True, reason="", weight=0, primary=[], canary=[]
    )
    assert not isinstance(router.pick(URL), Hold)


async def test_held_requests_are_woken_for_and_forwarded_once_a_replica_is_ready(
    gateway: Start,
) -> None:
    router, url, woken = await gateway()
    meter = router.load("llm", "primary")
    assert meter is not None
    async with aiohttp.ClientSession() as client, replica() as ready:
        held = [asyncio.create_task(get(client, url)) for _ in range(5)]

        async def all_held() -> bool:
            return meter.in_flight == 5

        await eventually(all_held)
        assert set(woken) == {("llm", "primary")}
        assert not any(task.done() for task in held)
        route(router, primary=[ready])
        answers = await asyncio.gather(*held)
    assert answers == [(200, "data: 0\n\ndata: 1\n\ndata: 2\n\n")] * 5
    assert meter.in_flight == 0
    assert meter.sample(_now(), keep=1)[-1].arrivals == 5


async def test_a_held_request_times_out_with_a_503_saying_the_endpoint_starts(
    gateway: Start,
) -> None:
    _router, url, woken = await gateway(hold_timeout=0.2)
    async with aiohttp.ClientSession() as client, client.get(url + URL) as response:
        assert response.status == 503
        body = await response.json()
    assert body == {
        "error": {
            "code": 503,
            "message": "endpoint 'llm' is starting: no replica was ready within 0.2s, retry later",
        }
    }
    assert woken


async def test_past_max_held_a_request_is_refused_at_once_and_a_leaving_client_frees_its_place(
    gateway: Start,
) -> None:
    router, url, _woken = await gateway(max_held=2)
    meter = router.load("llm", "primary")
    assert meter is not None
    async with aiohttp.ClientSession() as client, replica() as ready:
        held = [asyncio.create_task(get(client, url)) for _ in range(2)]

        def in_flight(count: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return meter.in_flight == count

            return check

        await eventually(in_flight(2))
        status, text = await get(client, url)
        assert status == 503
        assert "2 requests already wait for it" in text

        held[0].cancel()  # the client goes away: its place is free again
        await eventually(in_flight(1))
        again = asyncio.create_task(get(client, url))
        await eventually(in_flight(2))
        route(router, primary=[ready])
        assert [await held[1], await again] == [(200, "data: 0\n\ndata: 1\n\ndata: 2\n\n")] * 2


async def test_a_held_request_gets_the_refusal_of_an_endpoint_stopped_meanwhile(
    gateway: Start,
) -> None:
    router, url, _woken = await gateway()
    meter = router.load("llm", "primary")
    assert meter is not None
    async with aiohttp.ClientSession() as client:
        held = asyncio.create_task(get(client, url))

        async def waiting() -> bool:
            return meter.in_flight == 1

        await eventually(waiting)
        route(router, primary=[], routed=False)
        status, text = await held
    assert status == 503
    assert "endpoint is stopped" in text


def _now() -> datetime:
    return datetime.now(UTC)
