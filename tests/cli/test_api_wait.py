"""`--wait` through the API follows the watch stream: a real process against a real
API prints what it prints on the store, while reading the endpoint only when the
stream says it changed; a stream that cannot be opened or breaks leaves it polling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from servefleet.cli.api_watch import watched
from servefleet.cli.fleet import POLL_INTERVAL
from servefleet.service import EndpointService
from servefleet.spec import EndpointSpec, RegionState, RegionStatus
from servefleet.store import Store
from tests.cli.test_api_mode import Fleet, prepared_store, running_fleet, timeless
from tests.cli.test_cli import IMAGE_1, Result

_ROUTE = "/v1/endpoints/{name}"


async def _requests(url: str, route: str) -> float:
    """How many GET requests of `route` the API at `url` has answered."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as answer:
        text = await answer.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "servefleet_api_requests_total"
        and sample.labels["route"] == route
        and sample.labels["method"] == "GET"
    )


async def _scaled_and_reported(store: Store, run: Callable[..., Awaitable[Result]]) -> Result:
    """`scale llm 3 --wait` while, 2 s after the change is stored, r1 reports it in
    place."""
    await EndpointService(store).deploy("llm", EndpointSpec(image=IMAGE_1), ["r1"])
    waiting = asyncio.create_task(run("scale", "llm", "3", "--wait", "--timeout", "30"))
    endpoint = await store.get_endpoint("llm")
    async with asyncio.timeout(30):
        while endpoint.spec.replicas != 3:
            await asyncio.sleep(0.05)
            endpoint = await store.get_endpoint("llm")
    await asyncio.sleep(2)
    await store.put_region_status(
        RegionStatus(
            endpoint="llm",
            region="r1",
            state=RegionState.READY,
            observed_generation=endpoint.generation,
            replicas_ready=3,
            replicas_desired=3,
            routed=True,
        )
    )
    return await waiting


async def test_wait_through_the_api_reads_on_events_and_prints_what_the_store_prints(
    tmp_path: Path,
) -> None:
    async with running_fleet(tmp_path) as fleet:
        await _compare_waits(fleet, tmp_path)


async def _compare_waits(fleet: Fleet, tmp_path: Path) -> None:
    local_url = f"sqlite:///{tmp_path / 'local.db'}"
    local = await prepared_store(local_url)
    try:
        through_api, on_store = await asyncio.gather(
            _scaled_and_reported(fleet.store, fleet.cli),
            _scaled_and_reported(
                local, lambda *args: fleet.run(*args, env={"SERVEFLEET_STORE": local_url})
            ),
        )
    finally:
        await local.close()

    assert through_api.code == 0, through_api
    assert timeless(through_api) == timeless(on_store)
    # Polling would have read the endpoint every 0.25 s for 2 s; the stream woke the
    # wait at its start (the current statuses) and on the report.
    assert await _requests(fleet.url, "/v1/watch") == 1
    assert await _requests(fleet.url, _ROUTE) <= 4


@contextlib.asynccontextmanager
async def _fake_api(
    watch: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """A server on loopback whose `/v1/watch` is `watch`."""
    app = web.Application()
    app.router.add_get("/v1/watch", watch)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _took(wait: Awaitable[None]) -> float:
    started = time.monotonic()
    await wait
    return time.monotonic() - started


async def test_an_event_of_the_endpoint_wakes_the_wait_and_others_do_not() -> None:
    sent = asyncio.Event()

    async def watch(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": ping\n\n")
        await sent.wait()
        other = {"endpoint": "other", "region": "r1"}
        await response.write(f"event: status\ndata: {json.dumps(other)}\n\n".encode())
        await response.write(b'event: purged\nid: 7\ndata: {"name": "llm"}\n\n')
        await asyncio.sleep(60)
        return response

    async with (
        _fake_api(watch) as url,
        aiohttp.ClientSession() as session,
        watched(session, url, {}, ["llm"]) as changes,
    ):
        quiet = await _took(changes.next(0.5))
        sent.set()
        woken = await _took(changes.next(10))

    assert quiet >= 0.5
    assert woken < 1


async def test_a_stream_that_cannot_open_or_ends_leaves_the_wait_polling() -> None:
    async def refused(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404)

    async def ended(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: unavailable\ndata: {}\n\n")
        return response

    for watch in (refused, ended):
        async with (
            _fake_api(watch) as url,
            aiohttp.ClientSession() as session,
            watched(session, url, {}, ["llm"]) as changes,
        ):
            await changes.next(10)  # woken as the stream is given up
            polls = [await _took(changes.next(10)) for _ in range(3)]

        assert all(POLL_INTERVAL * 0.8 <= took < 2 for took in polls), (watch, polls)
