"""The local HTTP gateway: path → endpoint → weighted primary/canary → ready replica.

Two parts, kept apart so routing is testable without a socket:

- `Router` is one region's routing table. The supervisor that owns the region's
  replicas is its only writer (`set_route`, `remove_route`); every request reads it
  (`pick`). A pick is synchronous, so choosing a replica and counting the request
  against it (`Backend.acquire`) happen without an `await` in between: a replica
  removed from the table can never receive a request after its drain began.
- `Gateway` is the aiohttp server in front of one Router (a region gateway) or
  several (the global entry point, which sends each request to a region with a
  ready replica for its path and fails over to another region when one has none).

The proxy streams both ways: the request body is forwarded as it arrives and the
answer is written chunk by chunk as the replica produces it, so server-sent events
reach the client unbuffered; an answer that is complete when its headers arrive
goes out in one write. Refusals are JSON that say why:
`{"error": {"code": 503, "message": "endpoint 'llm': endpoint is stopped"}}`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

__all__ = [
    "Backend",
    "Gateway",
    "Pick",
    "Refusal",
    "RouteConflict",
    "Router",
    "event_loop_factory",
]

Role = Literal["primary", "canary"]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Not forwarded upstream on top of the hop-by-hop set: the client session writes
# its own Host, and this server has already answered any `Expect: 100-continue`.
_REQUEST_ONLY = _HOP_BY_HOP | {"host", "expect"}


class Backend:
    """One replica process as the gateway sees it, with its requests in flight.

    The supervisor makes one per started process and keeps it while the process
    lives, so the count follows the replica across route updates; `idle()` is how
    it waits for a retiring replica's last request before stopping the process.
    """

    __slots__ = ("_idle", "name", "outstanding", "url")

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        """Shown to clients in `x-servefleet-replica`, e.g. "llm/primary-0"."""
        self.url = url
        """Base URL without a trailing slash, e.g. "http://127.0.0.1:41234"."""
        self.outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def acquire(self) -> None:
        self.outstanding += 1
        self._idle.clear()

    def release(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self._idle.set()

    async def idle(self) -> None:
        """Return once no request is in flight on this replica."""
        await self._idle.wait()

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self.url!r}, outstanding={self.outstanding})"


@dataclass(frozen=True, slots=True)
class Pick:
    """Where one request goes."""

    endpoint: str
    version: Role
    backend: Backend
    path: str
    """The request path with the route prefix taken off ("/v1/models", or "/")."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request cannot be served: 404 (no such endpoint) or 503 (none ready)."""

    status: int
    reason: str


class RouteConflict(ValueError):
    """Two endpoints asked for the same path prefix in one region."""


@dataclass(frozen=True, slots=True)
class _Route:
    endpoint: str
    prefix: str
    routed: bool
    reason: str
    weight: int
    primary: tuple[Backend, ...]
    canary: tuple[Backend, ...]


class Router:
    """One region's routing table, read on every request and written on every change."""

    def __init__(self, region: str, *, leading: bool = True) -> None:
        self.region = region
        self.leading = leading
        """Whether a runtime of this process serves the region; a standby's gateway
        has no routes and says so instead of answering 404."""
        self._by_prefix: dict[str, _Route] = {}
        self._by_endpoint: dict[str, _Route] = {}

    def set_route(
        self,
        endpoint: str,
        path_prefix: str,
        *,
        routed: bool,
        reason: str,
        weight: int,
        primary: Sequence[Backend],
        canary: Sequence[Backend],
    ) -> None:
        """Route `path_prefix` (and everything below it) to `endpoint`'s ready replicas,
        replacing its earlier route. `weight` is the canary's percent (0-99); `reason`
        is what an unrouted endpoint's 503 says."""
        owner = self._by_prefix.get(path_prefix)
        if owner is not None and owner.endpoint != endpoint:
            raise RouteConflict(
                f"path {path_prefix!r} is already routed to endpoint {owner.endpoint!r} "
                f"in region {self.region!r}"
            )
        if not 0 <= weight <= 99:
            raise ValueError(f"weight must be a percent from 0 to 99 (got {weight})")
        route = _Route(endpoint, path_prefix, routed, reason, weight, tuple(primary), tuple(canary))
        previous = self._by_endpoint.get(endpoint)
        if previous is not None and previous.prefix != path_prefix:
            del self._by_prefix[previous.prefix]
        self._by_endpoint[endpoint] = route
        self._by_prefix[path_prefix] = route

    def remove_route(self, endpoint: str) -> None:
        """Stop routing to `endpoint`; its path answers 404 from now on."""
        route = self._by_endpoint.pop(endpoint, None)
        if route is not None:
            del self._by_prefix[route.prefix]

    def has_capacity(self, endpoint_or_path: str) -> bool:
        """Whether a request for this endpoint (by name) or path would find a ready replica."""
        if endpoint_or_path.startswith("/"):
            route = self._match(endpoint_or_path)
        else:
            route = self._by_endpoint.get(endpoint_or_path)
        return route is not None and route.routed and bool(route.primary or route.canary)

    def pick(self, path: str, *, exclude: Backend | None = None) -> Pick | Refusal:
        """The replica for a request to `path`: the longest matching route, primary or
        canary at random by weight (the other one when the chosen has no ready
        replica), then the replica with the fewest requests in flight. `exclude`
        leaves out a replica that just refused a connection."""
        route = self._match(path)
        if route is None and not self.leading:
            return Refusal(
                503,
                f"region {self.region!r} is served by another servefleet process; "
                "this one is standing by",
            )
        if route is None:
            return Refusal(404, f"no endpoint serves the path {path!r}")
        if not route.routed:
            return Refusal(503, f"endpoint {route.endpoint!r}: {route.reason}")
        primary, canary = route.primary, route.canary
        if exclude is not None:
            primary = tuple(backend for backend in primary if backend is not exclude)
            canary = tuple(backend for backend in canary if backend is not exclude)
        version: Role
        if canary and (not primary or random.random() * 100 < route.weight):
            version, backends = "canary", canary
        elif primary:
            version, backends = "primary", primary
        else:
            return Refusal(503, f"endpoint {route.endpoint!r} has no ready replica")
        rest = path[len(route.prefix) :] if route.prefix != "/" else path
        return Pick(route.endpoint, version, _least_busy(backends), rest or "/")

    def _match(self, path: str) -> _Route | None:
        # Try the path itself, then each parent at a "/" boundary, longest first:
        # "/inference/llm/v1" matches "/inference/llm" but "/inference/llmx" does not.
        candidate = path
        while True:
            route = self._by_prefix.get(candidate)
            if route is not None:
                return route
            cut = candidate.rfind("/")
            if cut <= 0:
                return self._by_prefix.get("/")
            candidate = candidate[:cut]


def _least_busy(backends: tuple[Backend, ...]) -> Backend:
    if len(backends) == 1:
        return backends[0]
    low = min(backend.outstanding for backend in backends)
    tied = [backend for backend in backends if backend.outstanding == low]
    return tied[0] if len(tied) == 1 else random.choice(tied)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop where it is installed (a dependency everywhere but
    Windows), else asyncio's own. Under load the gateway spends most of its time in
    socket calls and loop callbacks, which uvloop makes about a fifth cheaper."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _forwarded(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    """`headers` without hop-by-hop fields, including any the Connection header names."""
    # Copying whole and deleting the few present is cheaper than a Python loop
    # over every field, and this runs twice per request.
    kept = CIMultiDict(headers)
    connection = headers.get("connection")
    if connection:
        drop = drop | {token.strip().lower() for token in connection.split(",")}
    for name in drop:
        if name in kept:
            del kept[name]
    return kept


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message}}, status=status)


class Gateway:
    """An HTTP reverse proxy over one or more Routers.

    With several routers (the global entry point) each request goes to a region
    with a ready replica for its path; among those, the one whose chosen replica
    has the fewest requests in flight, ties taken in turn. When no region has one,
    the answer is the first router's refusal that says 503 (else its 404).
    """

    def __init__(
        self,
        routers: Sequence[Router],
        *,
        connect_timeout: float = 5.0,
        shutdown_timeout: float = 10.0,
    ) -> None:
        if not routers:
            raise ValueError("a gateway needs at least one router")
        self._routers = tuple(routers)
        self._connect_timeout = connect_timeout
        self._shutdown_timeout = shutdown_timeout
        self._turn = 0
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (0: any free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("the gateway is already started")
        self._session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout),
            connector=aiohttp.TCPConnector(limit=0),
            # Forward the client's headers as they are, adding none of our own.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            # A replica's cookies belong to the client that got them, not to
            # every later request through this shared session.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a client that goes away cancels its handler, and
        # with it the request to the replica.
        runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout,
        )
        self._runner = runner
        try:
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await self.close()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        return f"http://{shown}:{bound_port}"

    async def close(self) -> None:
        """Stop listening, let requests in flight finish (up to `shutdown_timeout`)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _choose(self, path: str, exclude: Backend | None) -> tuple[Router, Pick] | Refusal:
        if len(self._routers) == 1:
            router = self._routers[0]
            pick = router.pick(path, exclude=exclude)
            return pick if isinstance(pick, Refusal) else (router, pick)
        count = len(self._routers)
        start = self._turn
        self._turn = (start + 1) % count
        best: tuple[Router, Pick] | None = None
        for offset in range(count):
            router = self._routers[(start + offset) % count]
            if not router.has_capacity(path):
                continue
            pick = router.pick(path, exclude=exclude)
            if isinstance(pick, Pick) and (
                best is None or pick.backend.outstanding < best[1].backend.outstanding
            ):
                best = (router, pick)
        if best is not None:
            return best
        refusals = [router.pick(path) for router in self._routers]
        for refusal in refusals:
            if isinstance(refusal, Refusal) and refusal.status == 503:
                return refusal
        first = refusals[0]
        # Every router has a route with capacity only for `exclude`.
        return first if isinstance(first, Refusal) else Refusal(503, "no ready replica left")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        choice = self._choose(path, None)
        if isinstance(choice, Refusal):
            return _error(choice.status, choice.reason)
        router, pick = choice
        pick.backend.acquire()
        try:
            try:
                return await self._proxy(request, router, pick)
            except aiohttp.ClientConnectorError as error:
                # Nothing reached the replica: one more try on another one.
                failed = pick.backend
                retry = self._choose(path, failed)
                if isinstance(retry, Refusal):
                    return _error(502, f"replica {failed.name} refused the connection: {error}")
                pick.backend.release()
                router, pick = retry
                pick.backend.acquire()
                try:
                    return await self._proxy(request, router, pick)
                except aiohttp.ClientConnectorError as again:
                    return _error(
                        502, f"replicas {failed.name} and {pick.backend.name} refused: {again}"
                    )
        except (aiohttp.ClientError, TimeoutError) as error:
            # Before any byte of the answer: the replica dropped the connection.
            return _error(502, f"replica {pick.backend.name} failed: {error!r}")
        finally:
            pick.backend.release()

    async def _proxy(self, request: web.Request, router: Router, pick: Pick) -> web.StreamResponse:
        assert self._session is not None
        query = request.rel_url.raw_query_string
        target = pick.backend.url + pick.path + ("?" + query if query else "")
        async with self._session.request(
            request.method,
            URL(target, encoded=True),
            headers=_forwarded(request.headers, _REQUEST_ONLY),
            data=request.content if request.body_exists else None,
            allow_redirects=False,
        ) as upstream:
            headers = _forwarded(upstream.headers, _HOP_BY_HOP)
            headers["x-servefleet-region"] = router.region
            headers["x-servefleet-version"] = pick.version
            headers["x-servefleet-replica"] = pick.backend.name
            body = upstream.content
            if body.is_eof():
                # The whole answer is already here (small JSON, an error, a short
                # stream): headers and body leave in one write instead of one each.
                return web.Response(
                    status=upstream.status,
                    reason=upstream.reason,
                    headers=headers,
                    body=body.read_nowait(),
                )
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=headers
            )
            await response.prepare(request)
            try:
                while True:
                    chunk = await body.readany()
                    if body.at_eof():
                        # The last chunk and the end of the answer in one write.
                        await response.write_eof(chunk)
                        return response
                    await response.write(chunk)
            except (aiohttp.ClientError, TimeoutError):
                # The replica broke off mid-answer. The status is already sent, so
                # the only honest signal left is to cut the client's connection.
                if request.transport is not None:
                    request.transport.abort()
                return response
