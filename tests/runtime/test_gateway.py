"""The gateway: routing decisions (pure) and the proxy over real HTTP on loopback.

Upstreams here are small aiohttp apps in the test's own event loop, so each test
controls exactly what a replica does; `test_local_runtime.py` runs real processes.
"""

from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from servefleet.runtime.local.gateway import (
    Backend,
    Gateway,
    Pick,
    Refusal,
    RouteConflict,
    Router,
    event_loop_factory,
)
from servefleet.runtime.local.supervisor import LocalRuntime


def route(
    router: Router,
    endpoint: str = "llm",
    prefix: str = "/inference/llm",
    *,
    primary: list[Backend] | None = None,
    canary: list[Backend] | None = None,
    weight: int = 0,
    routed: bool = True,
    reason: str = "",
) -> None:
    router.set_route(
        endpoint,
        prefix,
        routed=routed,
        reason=reason,
        weight=weight,
        primary=primary or [],
        canary=canary or [],
    )


def backend(name: str = "llm/primary-0", port: int = 1) -> Backend:
    return Backend(name, f"http://127.0.0.1:{port}")


# Router: pure decisions.


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/inference/llm", "/", id="exact"),
        pytest.param("/inference/llm/", "/", id="trailing-slash"),
        pytest.param("/inference/llm/v1/models", "/v1/models", id="below"),
        pytest.param("/inference/llm/a/b/c", "/a/b/c", id="deep"),
    ],
)
def test_prefix_matches_the_path_and_below_and_strips_it(path: str, expected: str) -> None:
    router = Router("r1")
    route(router, primary=[backend()])
    pick = router.pick(path)
    assert isinstance(pick, Pick)
    assert (pick.endpoint, pick.path) == ("llm", expected)


@pytest.mark.parametrize("path", ["/inference/llmx", "/inference", "/", "/other/llm"])
def test_prefix_never_matches_a_longer_name_or_a_parent(path: str) -> None:
    router = Router("r1")
    route(router, primary=[backend()])
    assert router.pick(path) == Refusal(404, f"no endpoint serves the path {path!r}")


def test_longest_prefix_wins_and_root_catches_the_rest() -> None:
    router = Router("r1")
    outer, inner, root = backend("a/primary-0"), backend("b/primary-0"), backend("c/primary-0")
    route(router, "a", "/inference", primary=[outer])
    route(router, "b", "/inference/llm", primary=[inner])
    route(router, "c", "/", primary=[root])
    picks = {path: router.pick(path) for path in ["/inference/llm/x", "/inference/x", "/x", "/"]}
    assert {path: p.backend for path, p in picks.items() if isinstance(p, Pick)} == {
        "/inference/llm/x": inner,
        "/inference/x": outer,
        "/x": root,
        "/": root,
    }
    root_pick = picks["/x"]
    assert isinstance(root_pick, Pick)
    assert root_pick.path == "/x"


def test_least_outstanding_replica_is_chosen() -> None:
    router = Router("r1")
    busy, idle = backend("llm/primary-0"), backend("llm/primary-1")
    busy.acquire()
    route(router, primary=[busy, idle])
    assert {_picked(router).backend for _ in range(50)} == {idle}


def test_ties_are_broken_at_random() -> None:
    router = Router("r1")
    replicas = [backend(f"llm/primary-{n}") for n in range(3)]
    route(router, primary=replicas)
    assert {_picked(router).backend for _ in range(200)} == set(replicas)


def test_weight_splits_between_primary_and_canary() -> None:
    router = Router("r1")
    route(router, primary=[backend()], canary=[backend("llm/canary-0")], weight=30)
    versions = collections.Counter(_picked(router).version for _ in range(4000))
    # Binomial(4000, 0.3): sigma is 29; allow 5 sigma.
    assert abs(versions["canary"] - 1200) < 145


@pytest.mark.parametrize(("weight", "ready"), [(99, "primary"), (0, "canary")])
def test_a_version_without_ready_replicas_gives_way_to_the_other(weight: int, ready: str) -> None:
    router = Router("r1")
    only = backend(f"llm/{ready}-0")
    if ready == "primary":
        route(router, primary=[only], weight=weight)
    else:
        route(router, canary=[only], weight=weight)
    assert {(p.version, p.backend) for p in (_picked(router) for _ in range(50))} == {(ready, only)}


def test_refusals_say_why() -> None:
    router = Router("r1")
    route(router, "stopped", "/inference/stopped", routed=False, reason="endpoint is stopped")
    route(router, "empty", "/inference/empty")
    assert router.pick("/inference/stopped/v1") == Refusal(
        503, "endpoint 'stopped': endpoint is stopped"
    )
    assert router.pick("/inference/empty") == Refusal(503, "endpoint 'empty' has no ready replica")


def test_has_capacity_by_name_or_path() -> None:
    router = Router("r1")
    route(router, "up", "/inference/up", primary=[backend()])
    route(router, "down", "/inference/down")
    route(router, "off", "/inference/off", primary=[backend()], routed=False, reason="stopped")
    assert router.has_capacity("up")
    assert router.has_capacity("/inference/up/v1/models")
    assert not router.has_capacity("down")
    assert not router.has_capacity("off")
    assert not router.has_capacity("/inference/unknown")


def test_exclude_leaves_out_one_replica() -> None:
    router = Router("r1")
    first, second = backend("llm/primary-0"), backend("llm/primary-1")
    route(router, primary=[first, second])
    assert {_picked(router, exclude=first).backend for _ in range(30)} == {second}
    route(router, primary=[first])
    assert router.pick("/inference/llm", exclude=first) == Refusal(
        503, "endpoint 'llm' has no ready replica"
    )


def test_set_route_replaces_and_moves_the_prefix_remove_route_forgets() -> None:
    router = Router("r1")
    route(router, prefix="/old", primary=[backend()])
    route(router, prefix="/new", primary=[backend()])
    assert isinstance(router.pick("/old"), Refusal)
    assert isinstance(router.pick("/new"), Pick)
    router.remove_route("llm")
    assert router.pick("/new") == Refusal(404, "no endpoint serves the path '/new'")
    router.remove_route("llm")  # removing what is not there is not an error


def test_a_prefix_belongs_to_one_endpoint() -> None:
    router = Router("r1")
    route(router, "a", "/shared")
    with pytest.raises(RouteConflict, match="already routed to endpoint 'a'"):
        route(router, "b", "/shared")
    assert router.has_capacity("a") is False
    assert isinstance(router.pick("/shared"), Refusal)


async def test_backend_idle_waits_for_the_last_request() -> None:
    replica = backend()
    await asyncio.wait_for(replica.idle(), 1)
    replica.acquire()
    replica.acquire()
    waiter = asyncio.ensure_future(replica.idle())
    replica.release()
    await asyncio.sleep(0)
    assert not waiter.done()
    replica.release()
    await asyncio.wait_for(waiter, 1)
    assert replica.outstanding == 0


def _picked(router: Router, path: str = "/inference/llm", exclude: Backend | None = None) -> Pick:
    pick = router.pick(path, exclude=exclude)
    assert isinstance(pick, Pick)
    return pick


def test_servefleet_up_runs_on_uvloop_where_it_is_installed() -> None:
    pytest.importorskip("uvloop")
    loop = event_loop_factory()()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


# Gateway: a real server in front of in-process upstreams.


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start an upstream app answering every path with a handler; returns its URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1, handler_cancellation=True)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
async def gateways() -> AsyncIterator[Callable[[list[Router]], Awaitable[str]]]:
    started: list[Gateway] = []

    async def start(routers: list[Router]) -> str:
        gateway = Gateway(routers, connect_timeout=1, shutdown_timeout=1)
        started.append(gateway)
        return await gateway.start("127.0.0.1", 0)

    yield start
    for gateway in started:
        await gateway.close()


async def echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "body": body.decode(),
            "headers": {k.lower(): v for k, v in request.headers.items()},
        },
        headers={"x-upstream": "yes", "Keep-Alive": "timeout=99"},
    )


async def test_proxy_passes_method_path_query_body_and_headers(
    serve: Callable[[Handler], Awaitable[str]],
    gateways: Callable[[list[Router]], Awaitable[str]],
    client: aiohttp.ClientSession,
) -> None:
    router = Router("r1")
    route(router, primary=[Backend("llm/primary-0", await serve(echo))])
    url = await gateways([router])

    async def body() -> AsyncIterator[bytes]:
        for part in (b"hello ", b"streamed ", b"world"):
            yield part

    async with client.put(
        URL(f"{url}/inference/llm/v1/x%20y?a=1&b=%2F", encoded=True),
        data=body(),
        headers={"x-custom": "kept", "Connection": "keep-alive, x-hop", "x-hop": "dropped"},
    ) as response:
        seen = await response.json()
        assert response.status == 200
        assert response.headers["x-upstream"] == "yes"
        assert "Keep-Alive" not in response.headers
        assert response.headers["x-servefleet-region"] == "r1"
        assert response.headers["x-servefleet-version"] == "primary"
        assert response.headers["x-servefleet-replica"] == "llm/primary-0"
    assert seen["method"] == "PUT"
    assert seen["path"] == "/v1/x%20y?a=1&b=%2F"
    assert seen["body"] == "hello streamed world"
    assert seen["headers"]["x-custom"] == "kept"
    assert "x-hop" not in seen["headers"]

    async with client.get(f"{url}/inference/llm") as response:
        assert (await response.json())["path"] == "/"


async def test_a_replicas_cookie_is_not_kept_for_other_requests(
    serve: Callable[[Handler], Awaitable[str]],
    gateways: Callable[[list[Router]], Awaitable[str]],
) -> None:
    async def login(request: web.Request) -> web.StreamResponse:
        response = await echo(request)
        if request.path == "/login":
            response.set_cookie("session", "alice")
        return response

    # By name, not IP: a cookie jar keeps cookies from names (not from bare IPs).
    replica = URL(await serve(login)).with_host("localhost")
    router = Router("r1")
    route(router, primary=[Backend("llm/primary-0", str(replica))])
    url = await gateways([router])
    # A fresh client each time, as two different users would be.
    async with (
        aiohttp.ClientSession() as alice,
        alice.get(f"{url}/inference/llm/login") as response,
    ):
        assert response.cookies["session"].value == "alice"
    async with (
        aiohttp.ClientSession() as bob,
        bob.get(f"{url}/inference/llm/whoami") as response,
    ):
        seen = await response.json()
    assert "cookie" not in seen["headers"]


async def test_unknown_path_is_404_json(
    gateways: Callable[[list[Router]], Awaitable[str]], client: aiohttp.ClientSession
) -> None:
    url = await gateways([Router("r1")])
    async with client.get(f"{url}/inference/nothing/v1") as response:
        assert response.status == 404
        assert await response.json() == {
            "error": {"code": 404, "message": "no endpoint serves the path '/inference/nothing/v1'"}
        }


async def test_response_streams_chunk_by_chunk(
    serve: Callable[[Handler], Awaitable[str]],
    gateways: Callable[[list[Router]], Awaitable[str]],
    client: aiohttp.ClientSession,
) -> None:
    go_on = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await go_on.wait()  # the rest waits until the client has seen the first event
        await response.write(b"data: second\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    router = Router("r1")
    route(router, primary=[Backend("llm/primary-0", await serve(events))])
    url = await gateways([router])
    async with client.get(f"{url}/inference/llm/stream") as response:
        assert response.headers["content-type"] == "text/event-stream"
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        assert first == b"data: first\n\n"
        go_on.set()
        assert await response.read() == b"data: second\n\ndata: [DONE]\n\n"


async def test_refused_connection_is_retried_on_another_replica(
    serve: Callable[[Handler], Awaitable[str]],
    gateways: Callable[[list[Router]], Awaitable[str]],
    client: aiohttp.ClientSession,
    unused_port: int,
) -> None:
    dead = Backend("llm/primary-0", f"http://127.0.0.1:{unused_port}")
    alive = Backend("llm/primary-1", await serve(echo))
    alive.acquire()  # so the dead replica, less busy, is always tried first
    router = Router("r1")
    route(router, primary=[dead, alive])
    url = await gateways([router])
    for _ in range(3):
        async with client.get(f"{url}/inference/llm/x") as response:
            assert response.status == 200
            assert response.headers["x-servefleet-replica"] == "llm/primary-1"
    alive.release()
    assert dead.outstanding == alive.outstanding == 0


async def test_no_replica_to_retry_is_502_json(
    gateways: Callable[[list[Router]], Awaitable[str]],
    client: aiohttp.ClientSession,
    unused_port: int,
) -> None:
    router = Router("r1")
    route(router, primary=[Backend("llm/primary-0", f"http://127.0.0.1:{unused_port}")])
    url = await gateways([router])
    async with client.get(f"{url}/inference/llm/x") as response:
        assert response.status == 502
        error = (await response.json())["error"]
        assert error["code"] == 502
        assert "llm/primary-0 refused the connection" in error["message"]


async def test_client_disconnect_cancels_the_upstream_request(
    serve: Callable[[Handler], Awaitable[str]],
    gateways: Callable[[list[Router]], Awaitable[str]],
    client: aiohttp.ClientSession,
) -> None:
    upstream_gone = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"tick\n")
        try:
            await asyncio.sleep(3600)  # silent: only a cancelled upstream request ends this
        except asyncio.CancelledError:
            upstream_gone.set()
            raise
        return response

    replica = Backend("llm/primary-0", await serve(endless))
    router = Router("r1")
    route(router, primary=[replica])
    url = await gateways([router])
    response = await client.get(f"{url}/inference/llm/endless")
    assert await response.content.readline() == b"tick\n"
    response.close()  # drops the connection
    await asyncio.wait_for(upstream_gone.wait(), 5)
    await asyncio.wait_for(replica.idle(), 5)


async def test_global_gateway_sends_to_a_region_with_capacity(
    serve: Callable[[Handler], Awaitable[str]],
    gateways: Callable[[list[Router]], Awaitable[str]],
    client: aiohttp.ClientSession,
) -> None:
    east, west = Router("east"), Router("west")
    route(east, primary=[Backend("llm/primary-0", await serve(echo))])
    route(west)  # the endpoint exists there, with no ready replica
    url = await gateways([west, east])
    for _ in range(20):
        async with client.get(f"{url}/inference/llm/x") as response:
            assert response.status == 200
            assert response.headers["x-servefleet-region"] == "east"

    route(west, primary=[Backend("llm/primary-0", await serve(echo))])
    regions: collections.Counter[str] = collections.Counter()
    for _ in range(40):
        async with client.get(f"{url}/inference/llm/x") as response:
            regions[response.headers["x-servefleet-region"]] += 1
    assert set(regions) == {"east", "west"}

    route(east, routed=False, reason="endpoint is stopped")
    route(west, routed=False, reason="traffic withdrawn by the health watchdog")
    async with client.get(f"{url}/inference/llm/x") as response:
        assert response.status == 503
        message = (await response.json())["error"]["message"]
        assert message == "endpoint 'llm': traffic withdrawn by the health watchdog"


def test_a_standby_router_says_another_process_serves_the_region() -> None:
    standby = Router("r1", leading=False)

    refusal = standby.pick("/inference/llm/v1/models")

    assert isinstance(refusal, Refusal)
    assert refusal.status == 503
    assert "served by another servefleet process" in refusal.reason


async def test_a_router_leads_while_a_runtime_holds_it(tmp_path: Path) -> None:
    router = Router("r1", leading=False)

    runtime = LocalRuntime("r1", router, log_dir=tmp_path)
    assert router.leading
    await runtime.close()

    assert not router.leading
    refusal = router.pick("/inference/llm")
    assert isinstance(refusal, Refusal)
    assert refusal.status == 503
