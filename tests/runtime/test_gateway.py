"""The gateway: routing decisions (pure) and the proxy over real HTTP on loopback.

Upstreams here are small aiohttp apps in the test's own event loop, so each test
controls exactly what a replica does; `test_local_runtime.py` runs real processes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from ipaddress import IPv4Network, ip_network
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from servefleet.metrics import NO_VERSION, Metrics
from servefleet.runtime.local.gateway import (
    Backend,
    Gateway,
    GatewaySettings,
    Pick,
    Refusal,
    RouteConflict,
    Router,
    event_loop_factory,
)
from servefleet.runtime.local.routing import choose
from servefleet.runtime.local.supervisor import LocalRuntime
from tests.waiting import eventually


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
    assert router.pick(path) == Refusal(404, f"no endpoint serves the path {path!r}", "r1")


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
        503, "endpoint 'stopped': endpoint is stopped", "r1", "stopped"
    )
    assert router.pick("/inference/empty") == Refusal(
        503, "endpoint 'empty' has no ready replica", "r1", "empty"
    )


def test_exclude_leaves_out_one_replica() -> None:
    router = Router("r1")
    first, second = backend("llm/primary-0"), backend("llm/primary-1")
    route(router, primary=[first, second])
    assert {_picked(router, exclude=first).backend for _ in range(30)} == {second}
    route(router, primary=[first])
    assert router.pick("/inference/llm", exclude=first) == Refusal(
        503, "endpoint 'llm' has no ready replica", "r1", "llm"
    )


def test_set_route_replaces_and_moves_the_prefix_remove_route_forgets() -> None:
    router = Router("r1")
    route(router, prefix="/old", primary=[backend()])
    route(router, prefix="/new", primary=[backend()])
    assert isinstance(router.pick("/old"), Refusal)
    assert isinstance(router.pick("/new"), Pick)
    router.remove_route("llm")
    assert router.pick("/new") == Refusal(404, "no endpoint serves the path '/new'", "r1")
    router.remove_route("llm")  # removing what is not there is not an error


def test_a_prefix_belongs_to_one_endpoint() -> None:
    router = Router("r1")
    route(router, "a", "/shared")
    with pytest.raises(RouteConflict, match="already routed to endpoint 'a'"):
        route(router, "b", "/shared")
    assert isinstance(router.pick("/shared"), Refusal)


def test_a_stalled_replica_is_not_chosen_until_it_answers() -> None:
    router = Router("r1")
    stalled, busy = backend("llm/primary-0"), backend("llm/primary-1")
    busy.acquire()  # fewest requests in flight would choose the stalled one
    route(router, primary=[stalled, busy])
    stalled.stall()
    assert {_picked(router).backend for _ in range(30)} == {busy}
    route(router, primary=[stalled])
    assert router.pick("/inference/llm") == Refusal(
        503,
        "endpoint 'llm' has no ready replica that answers (1 stopped answering)",
        "r1",
        "llm",
    )
    stalled.answered()
    assert _picked(router).backend is stalled


def test_the_version_is_chosen_by_weight_across_regions_whatever_their_load() -> None:
    """Verify that the canary's share over several regions is its weight: choosing
    the version per region and then the least busy pick across regions gave an idle
    canary far more (1 - 0.9 * 0.9 = 19 % here for a 10 % canary)."""
    east, west = Router("east"), Router("west")
    for router, held in ((east, 6), (west, 3)):
        primary = backend(f"{router.region}/primary-0")
        for _ in range(held):
            primary.acquire()
        route(router, primary=[primary], canary=[backend(f"{router.region}/canary-0")], weight=10)
    picks = 20_000
    versions: collections.Counter[str] = collections.Counter()
    regions: collections.Counter[tuple[str, str]] = collections.Counter()
    for _ in range(picks):
        choice = choose([east, west], "/inference/llm")
        assert not isinstance(choice, Refusal)
        router, pick = choice
        versions[pick.version] += 1
        regions[router.region, pick.version] += 1
    # Binomial(20000, 0.1): sigma is 42; allow 5 sigma.
    assert abs(versions["canary"] - 2000) < 5 * 42
    # Within the version, the least busy replica of any region.
    assert regions["east", "primary"] == 0
    assert regions["east", "canary"] > 0
    assert regions["west", "canary"] > 0


def test_the_version_falls_back_when_no_region_has_the_chosen_one() -> None:
    east, west = Router("east"), Router("west")
    route(east, primary=[backend("east/primary-0")], weight=50)
    route(west, primary=[backend("west/primary-0")], weight=50)
    for _ in range(50):
        choice = choose([east, west], "/inference/llm")
        assert not isinstance(choice, Refusal)
        assert choice[1].version == "primary"


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

FAST = GatewaySettings(upstream_connect_timeout=1, shutdown_timeout=1)


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


Start = Callable[..., Awaitable[str]]
"""`gateways(routers, settings=FAST, metrics=None)`: start a gateway, return its base URL."""


@pytest.fixture
async def gateways() -> AsyncIterator[Start]:
    started: list[Gateway] = []

    async def start(
        routers: list[Router], settings: GatewaySettings = FAST, metrics: Metrics | None = None
    ) -> str:
        gateway = Gateway(routers, settings, metrics=metrics)
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
    gateways: Start,
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
    gateways: Start,
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


async def test_unknown_path_is_404_json(gateways: Start, client: aiohttp.ClientSession) -> None:
    url = await gateways([Router("r1")])
    async with client.get(f"{url}/inference/nothing/v1") as response:
        assert response.status == 404
        assert await response.json() == {
            "error": {"code": 404, "message": "no endpoint serves the path '/inference/nothing/v1'"}
        }


async def test_a_new_leaders_gateway_answers_503_until_every_endpoint_is_routed(
    gateways: Start, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A runtime has just opened (a new leader) and its reconciler has not looked at
    every endpoint yet: a path with no route may be an endpoint still to come, so
    the answer is 503 with Retry-After, not 404. Once the reconciler says it has
    looked at every one (`synced`), an unknown path is 404."""
    router = Router("r1", leading=False)
    runtime = LocalRuntime("r1", router, log_dir=tmp_path)
    try:
        url = await gateways([router])
        async with client.get(f"{url}/inference/llm/v1/models") as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            body = await response.json()
        assert body["error"]["message"] == (
            "region 'r1' is starting: not every endpoint is routed yet"
        )

        runtime.synced()
        async with client.get(f"{url}/inference/llm/v1/models") as response:
            assert response.status == 404
            assert "Retry-After" not in response.headers
    finally:
        await runtime.close()


async def test_response_streams_chunk_by_chunk(
    serve: Callable[[Handler], Awaitable[str]],
    gateways: Start,
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
    gateways: Start,
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
    gateways: Start,
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
    gateways: Start,
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
    metrics = Metrics()
    url = await gateways([router], metrics=metrics)
    response = await client.get(f"{url}/inference/llm/endless")
    assert await response.content.readline() == b"tick\n"
    response.close()  # drops the connection
    await asyncio.wait_for(upstream_gone.wait(), 5)
    await asyncio.wait_for(replica.idle(), 5)

    async def counted_as_client_gone() -> bool:
        labels = {"endpoint": "llm", "region": "r1", "version": "primary", "status_class": "4xx"}
        return metrics.registry.get_sample_value("servefleet_gateway_requests_total", labels) == 1

    await eventually(counted_as_client_gone)


async def test_global_gateway_sends_to_a_region_with_capacity(
    serve: Callable[[Handler], Awaitable[str]],
    gateways: Start,
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


async def test_global_gateway_gives_a_canary_its_weight_under_uneven_load(
    serve: Callable[[Handler], Awaitable[str]], gateways: Start
) -> None:
    """Verify that through the global entry a 10 % canary gets 10 % of requests while
    both regions' primaries hold requests in flight (6 in east, 3 in west): the idle
    canary used to win the comparison across regions, 14-19 % instead of 10 %."""
    release = asyncio.Event()

    async def replica(request: web.Request) -> web.StreamResponse:
        if request.path == "/hold":
            await release.wait()
        return web.json_response({})

    upstream = await serve(replica)
    east, west = Router("east"), Router("west")
    primary = {name: Backend(f"{name}/primary-0", upstream) for name in ("east", "west")}
    canary = {name: Backend(f"{name}/canary-0", upstream) for name in ("east", "west")}
    url = await gateways([east, west])
    held: list[asyncio.Task[None]] = []

    async def hold(session: aiohttp.ClientSession) -> None:
        async with session.get(f"{url}/inference/llm/hold") as response:
            assert response.status == 200

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        # Held requests go to the only primary routed at the time.
        for router, count in ((east, 6), (west, 3)):
            busy = primary[router.region]
            route(router, primary=[busy])
            held += [asyncio.create_task(hold(session)) for _ in range(count)]

            async def all_held(busy: Backend = busy, count: int = count) -> bool:
                return busy.outstanding == count

            await eventually(all_held)
        for router in (east, west):
            name = router.region
            route(router, primary=[primary[name]], canary=[canary[name]], weight=10)

        total, versions = 3000, collections.Counter[str]()
        requests = iter(range(total))

        async def send() -> None:
            for _ in requests:
                async with session.get(f"{url}/inference/llm/x") as response:
                    assert response.status == 200
                    versions[response.headers["x-servefleet-version"]] += 1

        await asyncio.gather(*(send() for _ in range(4)))
        release.set()
        await asyncio.gather(*held)
    # Binomial(3000, 0.1): sigma is 16.4; allow 5 sigma.
    assert versions["primary"] + versions["canary"] == total
    assert abs(versions["canary"] - 300) < 5 * 16.4


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


# Limits: no client and no replica holds the gateway forever.


async def _closed_by_peer(reader: asyncio.StreamReader) -> bytes:
    """Everything the gateway sends on a raw connection until it closes it."""
    received = b""
    try:
        while chunk := await reader.read(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


async def test_a_client_too_slow_to_send_its_headers_is_disconnected(
    serve: Callable[[Handler], Awaitable[str]], gateways: Start, client: aiohttp.ClientSession
) -> None:
    """Verify that slowloris connections (one header line at a time, never the end of
    the head) are closed after `header_timeout`, while a normal client is served."""
    router = Router("r1")
    route(router, primary=[Backend("llm/primary-0", await serve(echo))])
    url = URL(await gateways([router], GatewaySettings(header_timeout=0.5)))
    assert url.port is not None

    async def slowloris() -> bytes:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(b"GET /inference/llm/x HTTP/1.1\r\nHost: gateway\r\n")
        closed = asyncio.ensure_future(_closed_by_peer(reader))
        try:
            for line in range(1000):
                if closed.done():
                    break
                writer.write(b"X-Line-%d: slow\r\n" % line)
                await asyncio.wait({closed}, timeout=0.1)
            return await closed
        finally:
            closed.cancel()
            writer.close()

    # Generous: the deadline is 0.5 s; only "closed at all" is asserted.
    async with asyncio.timeout(20):
        answers = await asyncio.gather(*(slowloris() for _ in range(50)))
    assert all(not answer.startswith(b"HTTP/1.1 200") for answer in answers)
    async with client.get(f"{url}/inference/llm/x") as response:
        assert response.status == 200


async def test_connections_past_the_cap_are_refused_not_held(
    serve: Callable[[Handler], Awaitable[str]], gateways: Start
) -> None:
    """Verify that a connection past `max_connections` gets a 503 and is closed at
    once, and that a slot freed by a closed connection serves again."""
    router = Router("r1")
    route(router, primary=[Backend("llm/primary-0", await serve(echo))])
    url = URL(await gateways([router], GatewaySettings(max_connections=3, header_timeout=60)))
    assert url.port is not None
    idle = [await asyncio.open_connection(url.host, url.port) for _ in range(3)]
    try:
        reader, writer = await asyncio.open_connection(url.host, url.port)
        async with asyncio.timeout(10):
            refusal = await _closed_by_peer(reader)
        writer.close()
        head, _, body = refusal.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert json.loads(body) == {
            "error": {
                "code": 503,
                "message": "the gateway holds its maximum of 3 connections; retry later",
            }
        }
    finally:
        for _, idle_writer in idle:
            idle_writer.close()

    async def served() -> bool:
        connector = aiohttp.TCPConnector(force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as fresh,
            fresh.get(f"{url}/inference/llm/x") as response,
        ):
            return response.status == 200

    await eventually(served)


async def test_a_client_that_stalls_its_body_gets_408(
    serve: Callable[[Handler], Awaitable[str]], gateways: Start
) -> None:
    """Verify that a request body paused longer than `body_timeout` ends the request:
    the client gets 408 (JSON) and the replica's slot is freed."""
    replica = Backend("llm/primary-0", await serve(echo))
    router = Router("r1")
    route(router, primary=[replica])
    url = URL(await gateways([router], GatewaySettings(body_timeout=0.5)))
    assert url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(
        b"POST /inference/llm/x HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n\r\nten bytes."
    )
    try:
        async with asyncio.timeout(10):
            answer = await _closed_by_peer(reader)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"] == {
        "code": 408,
        "message": "the request body paused for more than 0.5s",
    }
    assert replica.outstanding == 0


async def test_a_hung_replica_answers_504_and_is_avoided_until_it_answers(
    serve: Callable[[Handler], Awaitable[str]], gateways: Start, client: aiohttp.ClientSession
) -> None:
    """Verify that a replica that accepts and never answers costs one request a 504
    after `upstream_read_timeout`, then gets none (though the least busy) until it
    answers again — here a health probe's success, `Backend.answered`."""
    awake = asyncio.Event()

    async def hangs_until_awake(request: web.Request) -> web.StreamResponse:
        await awake.wait()
        return await echo(request)

    hung = Backend("llm/primary-0", await serve(hangs_until_awake))
    busy = Backend("llm/primary-1", await serve(echo))
    busy.acquire()  # the hung replica is always the least busy one
    router = Router("r1")
    route(router, primary=[hung, busy])
    url = await gateways([router], GatewaySettings(upstream_read_timeout=0.5))
    async with client.get(f"{url}/inference/llm/x") as response:
        assert response.status == 504
        assert await response.json() == {
            "error": {
                "code": 504,
                "message": "replica llm/primary-0 sent nothing for 0.5s; "
                "it gets no more requests until it answers",
            }
        }
    assert hung.stalled
    assert hung.outstanding == 0
    for _ in range(5):
        async with client.get(f"{url}/inference/llm/x") as response:
            assert response.status == 200
            assert response.headers["x-servefleet-replica"] == "llm/primary-1"
    awake.set()
    hung.answered()
    async with client.get(f"{url}/inference/llm/x") as response:
        assert response.status == 200
        assert response.headers["x-servefleet-replica"] == "llm/primary-0"


async def test_a_hung_asyncio_replica_that_never_reads_answers_504(
    gateways: Start, client: aiohttp.ClientSession
) -> None:
    """A replica that accepts the connection and never reads nor writes a byte."""
    connections: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        router = Router("r1")
        route(router, primary=[Backend("llm/primary-0", f"http://127.0.0.1:{port}")])
        url = await gateways([router], GatewaySettings(upstream_read_timeout=0.5))
        async with (
            asyncio.timeout(10),
            client.post(f"{url}/inference/llm/x", data=b"{}") as response,
        ):
            assert response.status == 504
        async with client.get(f"{url}/inference/llm/x") as response:
            assert response.status == 503
            assert (await response.json())["error"]["message"] == (
                "endpoint 'llm' has no ready replica that answers (1 stopped answering)"
            )
    finally:
        for writer in connections:
            writer.close()
        server.close()


async def test_events_further_apart_than_nothing_but_the_read_timeout_get_through(
    serve: Callable[[Handler], Awaitable[str]], gateways: Start, client: aiohttp.ClientSession
) -> None:
    """Verify that the upstream read timeout bounds the gap between two chunks, not
    the whole answer: an event stream longer than it, with shorter gaps, arrives."""

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for number in range(12):
            await asyncio.sleep(0.25)
            await response.write(b"data: %d\n\n" % number)
        await response.write_eof()
        return response

    replica = Backend("llm/primary-0", await serve(events))
    router = Router("r1")
    route(router, primary=[replica])
    url = await gateways([router], GatewaySettings(upstream_read_timeout=2))
    async with client.get(f"{url}/inference/llm/stream") as response:
        assert response.status == 200
        assert await response.read() == b"".join(b"data: %d\n\n" % n for n in range(12))
    assert not replica.stalled


async def test_the_read_timeout_counts_from_each_request_on_a_kept_connection(
    serve: Callable[[Handler], Awaitable[str]], gateways: Start, client: aiohttp.ClientSession
) -> None:
    """Verify that on a connection to a replica kept across requests, the silence
    watch (made once, kept across them) counts from the end of each request: a body
    sent more slowly than the read timeout and an answer that takes most of it,
    both after an earlier request on the same connection, are answered, not 504."""
    peers: set[int] = set()

    async def slow(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername")[1])
        body = await request.read()
        await asyncio.sleep(float(request.query.get("delay", "0")))
        return web.Response(body=body)

    replica = Backend("llm/primary-0", await serve(slow))
    router = Router("r1")
    route(router, primary=[replica])
    url = await gateways([router], GatewaySettings(upstream_read_timeout=0.6))

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(4):
            await asyncio.sleep(0.25)
            yield b"x"

    async with client.get(f"{url}/inference/llm/x") as response:
        assert response.status == 200
    await asyncio.sleep(0.3)
    async with client.post(f"{url}/inference/llm/x", data=trickle()) as response:
        assert response.status == 200
        assert await response.read() == b"xxxx"
    async with client.get(f"{url}/inference/llm/x?delay=0.4") as response:
        assert response.status == 200
    await asyncio.sleep(0.3)
    async with client.get(f"{url}/inference/llm/x?delay=0.4") as response:
        assert response.status == 200
    assert len(peers) == 1  # one connection to the replica, kept throughout
    assert not replica.stalled


# Forwarding headers: what a replica learns about the client, and from whom.

SPOOFED = {
    "Host": "api.example.com",
    "X-Forwarded-For": "6.6.6.6",
    "Forwarded": "for=6.6.6.6",
    "X-Real-IP": "6.6.6.6",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "public.example.com",
    "X-Forwarded-Prefix": "/outer/",
}


async def _seen_by_replica(
    serve: Callable[[Handler], Awaitable[str]],
    gateways: Start,
    client: aiohttp.ClientSession,
    settings: GatewaySettings,
    prefix: str = "/inference/llm",
) -> dict[str, str]:
    router = Router("r1")
    route(router, prefix=prefix, primary=[Backend("llm/primary-0", await serve(echo))])
    url = await gateways([router], settings)
    path = prefix.rstrip("/") + "/v1/models"
    async with client.get(f"{url}{path}", headers=SPOOFED) as response:
        assert response.status == 200
        headers: dict[str, str] = (await response.json())["headers"]
    return headers


@pytest.mark.parametrize(
    "trusted",
    [
        pytest.param((), id="no-trusted-proxy"),
        pytest.param((ip_network("10.0.0.0/8"),), id="another-network-trusted"),
    ],
)
async def test_an_untrusted_clients_forwarding_headers_are_replaced(
    serve: Callable[[Handler], Awaitable[str]],
    gateways: Start,
    client: aiohttp.ClientSession,
    trusted: tuple[IPv4Network, ...],
) -> None:
    """Verify that forwarding headers from a client that is not a trusted proxy never
    reach the replica (they could spoof its rate limits or audit) and that the
    gateway writes its own, keeping the Host the client asked for."""
    seen = await _seen_by_replica(serve, gateways, client, replace(FAST, trusted_proxies=trusted))
    assert seen["host"] == "api.example.com"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "api.example.com"
    assert seen["x-forwarded-prefix"] == "/inference/llm"
    assert "forwarded" not in seen
    assert "x-real-ip" not in seen


async def test_a_trusted_proxys_forwarding_headers_are_kept_and_extended(
    serve: Callable[[Handler], Awaitable[str]],
    gateways: Start,
    client: aiohttp.ClientSession,
) -> None:
    settings = replace(FAST, trusted_proxies=(ip_network("127.0.0.0/8"),))
    seen = await _seen_by_replica(serve, gateways, client, settings)
    assert seen["host"] == "api.example.com"
    assert seen["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "public.example.com"
    assert seen["x-forwarded-prefix"] == "/outer/inference/llm"
    assert seen["forwarded"] == "for=6.6.6.6"
    assert seen["x-real-ip"] == "6.6.6.6"


async def test_a_root_route_strips_no_prefix_and_says_none(
    serve: Callable[[Handler], Awaitable[str]],
    gateways: Start,
    client: aiohttp.ClientSession,
) -> None:
    seen = await _seen_by_replica(serve, gateways, client, FAST, prefix="/")
    assert "x-forwarded-prefix" not in seen
    assert seen["x-forwarded-for"] == "127.0.0.1"


async def test_requests_are_counted_by_endpoint_region_version_and_status_class(
    serve: Callable[[Handler], Awaitable[str]], client: aiohttp.ClientSession
) -> None:
    """Verify the gateway's series: each answer under the version that served it,
    a refusal under its endpoint, and a request in flight while it is."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({})

    primary_url, canary_url, slow_url = await serve(echo), await serve(echo), await serve(slow)
    router = Router("r1")
    route(
        router,
        primary=[Backend("llm/primary-0", primary_url)],
        canary=[Backend("llm/canary-0", canary_url)],
        weight=50,
    )
    route(router, "stopped", "/inference/stopped", routed=False, reason="endpoint is stopped")
    route(router, "slow", "/inference/slow", primary=[Backend("slow/primary-0", slow_url)])
    metrics = Metrics()
    gateway = Gateway([router], FAST, metrics=metrics)
    url = await gateway.start("127.0.0.1", 0)
    try:
        served: collections.Counter[str] = collections.Counter()
        for _ in range(20):
            async with client.get(f"{url}/inference/llm/v1/models") as response:
                assert response.status == 200
                served[response.headers["x-servefleet-version"]] += 1
        async with client.get(f"{url}/inference/stopped/v1") as refused:
            assert refused.status == 503
        waiting = asyncio.create_task(client.get(f"{url}/inference/slow"))
        in_flight = {"endpoint": "slow", "region": "r1", "version": "primary"}

        async def counted_in_flight() -> bool:
            sample = "servefleet_gateway_requests_in_flight"
            return metrics.registry.get_sample_value(sample, in_flight) == 1

        await eventually(counted_in_flight)
        release.set()
        (await waiting).release()
    finally:
        await gateway.close()

    def requests(endpoint: str, version: str, status_class: str) -> float | None:
        labels = {"endpoint": endpoint, "region": "r1", "version": version}
        return metrics.registry.get_sample_value(
            "servefleet_gateway_requests_total", labels | {"status_class": status_class}
        )

    assert set(served) == {"primary", "canary"}  # 2**-19 to fail by chance
    for version in ("primary", "canary"):
        assert requests("llm", version, "2xx") == served[version]
        assert requests("llm", version, "5xx") == 0
    assert requests("stopped", NO_VERSION, "5xx") == 1
    assert requests("slow", "primary", "2xx") == 1
    assert (
        metrics.registry.get_sample_value("servefleet_gateway_requests_in_flight", in_flight) == 0
    )
