"""The global entry over real HTTP on loopback, with upstreams that are small aiohttp
apps in the test's event loop (replicas of local regions, and stand-ins for the
Ingress of Kubernetes regions), so each test controls exactly what they do.
`tests/scenarios/test_global_entry.py` runs it inside `servefleet up`."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from servefleet.runtime.local.gateway import Backend, GatewaySettings, Router
from servefleet.runtime.local.global_entry import (
    EntrySettings,
    GlobalEntry,
    RegionTable,
    RemoteRoute,
)
from tests.runtime.test_gateway import (  # the fixtures too, used by name
    FAST,
    Handler,
    client,
    echo,
    route,
    serve,
    unused_port,
)
from tests.waiting import eventually

# Named so that pytest finds the fixtures imported above (and ruff sees them used).
__all__ = ["client", "serve", "unused_port"]

PREFIX = "/inference/llm"

Open = Callable[..., Awaitable[tuple[GlobalEntry, str]]]


@pytest.fixture
async def entries() -> AsyncIterator[Open]:
    started: list[GlobalEntry] = []

    async def start(
        routers: list[Router],
        table: RegionTable,
        settings: EntrySettings | None = None,
        gateway: GatewaySettings = FAST,
    ) -> tuple[GlobalEntry, str]:
        entry = GlobalEntry(routers, gateway, settings or EntrySettings(probe_interval=3600))
        entry.update(table)
        started.append(entry)
        return entry, await entry.start("127.0.0.1", 0)

    yield start
    for entry in started:
        await entry.close()


def clusters(*names: str, ingress: dict[str, str]) -> RegionTable:
    """The table when `names` serve endpoint llm through `ingress`."""
    return RegionTable(
        ingress=ingress, routes={PREFIX: RemoteRoute("llm", PREFIX, "/health", tuple(names))}
    )


async def test_a_cluster_gets_the_whole_path_with_its_ingress_host(
    serve: Callable[[Handler], Awaitable[str]], entries: Open, client: aiohttp.ClientSession
) -> None:
    ingress = await serve(echo)
    _, url = await entries([], clusters("k1", ingress={"k1": ingress}))

    async with client.post(f"{url}{PREFIX}/v1/completions?n=1", data=b"hello") as response:
        assert response.status == 200
        assert response.headers["x-servefleet-region"] == "k1"
        seen = await response.json()
    assert (seen["method"], seen["path"], seen["body"]) == (
        "POST",
        f"{PREFIX}/v1/completions?n=1",
        "hello",
    )
    assert seen["headers"]["host"] == URL(ingress).raw_authority
    assert seen["headers"]["x-forwarded-host"] == URL(url).raw_authority


async def test_a_refused_local_region_hands_a_post_to_a_cluster(
    serve: Callable[[Handler], Awaitable[str]],
    entries: Open,
    client: aiohttp.ClientSession,
    unused_port: int,
) -> None:
    router = Router("l1")
    route(router, primary=[Backend("llm/primary-0", f"http://127.0.0.1:{unused_port}")])
    ingress = await serve(echo)
    _, url = await entries([router], clusters("k1", ingress={"k1": ingress}))

    # Local regions or k1 first at random; whichever, nothing reached the dead
    # replica, so the POST goes on to k1 within the same request.
    for _ in range(10):
        async with client.post(f"{url}{PREFIX}/x", data=b"body") as response:
            assert response.status == 200
            assert response.headers["x-servefleet-region"] == "k1"
            assert (await response.json())["body"] == "body"


@pytest.fixture
def unanswered() -> Iterator[str]:
    """The URL of a listener that never accepts, its queue full: a connection to it
    is neither refused nor made (as to a host whose packets are dropped)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = [socket.socket() for _ in range(3)]
        for waiting in queued:
            waiting.setblocking(False)
            waiting.connect_ex(("127.0.0.1", port))
        yield f"http://127.0.0.1:{port}"
        for waiting in queued:
            waiting.close()


async def test_a_cluster_that_does_not_take_the_connection_in_time_is_replaced(
    serve: Callable[[Handler], Awaitable[str]],
    entries: Open,
    client: aiohttp.ClientSession,
    unanswered: str,
) -> None:
    ingress = {"k1": unanswered, "k2": await serve(echo)}
    _, url = await entries(
        [],
        clusters("k1", "k2", ingress=ingress),
        gateway=replace(FAST, upstream_connect_timeout=0.3),
    )

    # k1 or k2 first at random until k1 has failed once; a POST whose connection
    # was never made goes on to k2 within the same request.
    for _ in range(10):
        async with client.post(f"{url}{PREFIX}/x", data=b"body") as response:
            assert response.status == 200
            assert response.headers["x-servefleet-region"] == "k2"


async def test_a_drained_local_region_is_not_where_a_refused_request_goes(
    serve: Callable[[Handler], Awaitable[str]],
    entries: Open,
    client: aiohttp.ClientSession,
    unused_port: int,
) -> None:
    drained, dead = Router("l1"), Router("l2")
    alive = Backend("llm/primary-0", await serve(echo))
    route(drained, primary=[alive])
    route(dead, primary=[Backend("llm/primary-1", f"http://127.0.0.1:{unused_port}")])
    _, url = await entries([drained, dead], RegionTable(drained=frozenset({"l1"})))

    async with client.get(f"{url}{PREFIX}/x") as response:
        assert response.status == 502
        assert "llm/primary-1 refused the connection" in (await response.json())["error"]["message"]


async def test_a_cluster_whose_health_probe_fails_is_tried_after_the_others(
    serve: Callable[[Handler], Awaitable[str]], entries: Open, client: aiohttp.ClientSession
) -> None:
    async def sick(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/health"):
            return web.Response(status=503)
        return await echo(request)

    ingress = {"k1": await serve(sick), "k2": await serve(echo)}
    _, url = await entries(
        [], clusters("k1", "k2", ingress=ingress), EntrySettings(probe_interval=0.05)
    )

    async def only_k2() -> bool:
        regions = []
        for _ in range(20):
            async with client.get(f"{url}{PREFIX}/x") as response:
                regions.append(response.headers["x-servefleet-region"])
        return set(regions) == {"k2"}

    await eventually(only_k2)


async def test_a_cluster_ready_now_serves_before_local_regions_start_from_zero(
    serve: Callable[[Handler], Awaitable[str]], entries: Open, client: aiohttp.ClientSession
) -> None:
    router = Router("l1")
    router.set_route(
        "llm", PREFIX, routed=True, reason="", weight=0, primary=[], canary=[], wakes=["primary"]
    )
    woken: list[str] = []
    router.on_wake = lambda endpoint, version: woken.append(endpoint)
    _, url = await entries([router], clusters("k1", ingress={"k1": await serve(echo)}))

    for _ in range(5):
        async with client.get(f"{url}{PREFIX}/x") as response:
            assert (response.status, response.headers["x-servefleet-region"]) == (200, "k1")
    assert woken == []
