"""The local HTTP gateway: an HTTP reverse proxy over one or more routing tables.

One `Gateway` serves one region (one `Router`) or, as the global entry point, every
local region at once; `routing.choose` decides where each request goes, and
`forwarding` which headers cross. The proxy streams both ways: the request body is
forwarded as it arrives and the answer is written chunk by chunk as the replica
produces it, so server-sent events reach the client unbuffered; an answer that is
complete when its headers arrive goes out in one write. Refusals are JSON that say
why: `{"error": {"code": 503, "message": "endpoint 'llm': endpoint is stopped"}}`.

Nothing waits forever (`GatewaySettings`): a client must send a request's head
within `header_timeout` (aiohttp's keep-alive timer, armed from the moment a
connection opens, does this) and may pause its body for at most `body_timeout`
(408); at most `max_connections` are open at once (a connection past that gets a
503 and is closed); a replica may stay silent for at most `upstream_read_timeout`
(504), after which it is chosen no more until it answers again. A request for an
endpoint starting from zero replicas is held until one is ready (`activator`), at
most `hold_timeout`, at most `max_held` of them per endpoint.

Each request is counted once (`servefleet.metrics`): by endpoint, the region and
version first chosen for it, and status class; a refusal under the region that
refused and the endpoint whose route matched, if any (never its path). A client
that goes away before its answer counts as 4xx (nginx's 499). It is also counted
as load of the version first chosen for it (`load.LoadMeter`), which the local
autoscaler scales on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from servefleet.metrics import NO_ENDPOINT, NO_VERSION, Metrics, status_class
from servefleet.runtime.local.activator import Activator
from servefleet.runtime.local.forwarding import (
    HOP_BY_HOP,
    ProxyNetwork,
    is_trusted,
    upstream_headers,
    without,
)
from servefleet.runtime.local.routing import (
    Backend,
    Hold,
    Pick,
    Refusal,
    RouteConflict,
    Router,
    choose,
)
from servefleet.runtime.local.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
)

__all__ = [
    "Backend",
    "Gateway",
    "GatewaySettings",
    "Hold",
    "Pick",
    "Refusal",
    "RouteConflict",
    "Router",
    "event_loop_factory",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GatewaySettings:
    """Limits and timeouts of one gateway (seconds unless said otherwise)."""

    header_timeout: float = 20.0
    """How long a connection may take to send a complete request head, counted from
    when it opens or its previous answer ends, so an idle keep-alive connection closes
    after it too. A client that sends one header line at a time (slowloris) holds a
    connection this long at most. Apache's default."""
    body_timeout: float = 30.0
    """The longest pause between two chunks of a request body; past it the client
    gets 408 and the request to the replica is abandoned."""
    max_connections: int = 1024
    """Client connections held open at once. A connection past it gets a 503 and is
    closed at once, so the gateway runs out of neither file descriptors nor memory
    (each proxied request holds a second descriptor toward its replica)."""
    upstream_connect_timeout: float = 5.0
    upstream_read_timeout: float = 600.0
    """The longest a replica may stay silent: before its answer starts and between
    two chunks of it (server-sent events may come any less than this apart). Ten
    minutes, the OpenAI client's own default, because a completion that is not
    streamed says nothing until it is done. A replica silent longer gets the client
    a 504 and is chosen no more until it answers again (a request, a health probe)."""
    shutdown_timeout: float = 10.0
    """How long requests in flight may finish when the gateway closes."""
    hold_timeout: float = 60.0
    """How long a request may wait for an endpoint starting from zero replicas (see
    `activator`) before a 503 that says the endpoint is starting. A minute covers a
    small model server's start; one that loads a large model for longer needs more,
    or `min_replicas: 1`."""
    max_held: int = 100
    """Requests held at once per endpoint while it starts from zero; one more gets
    the 503 at once instead of a place in the queue."""
    trusted_proxies: tuple[ProxyNetwork, ...] = ()
    """Networks of the front proxies whose forwarding headers (`X-Forwarded-*`,
    `Forwarded`, `X-Real-IP`) are believed and extended; from any other address they
    are dropped (see `forwarding`). Empty: the gateway is the first hop."""


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop where it is installed (a dependency everywhere but
    Windows), else asyncio's own. Under load the gateway spends most of its time in
    socket calls and loop callbacks, which uvloop makes about a fifth cheaper."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


_CLIENT_GONE = 499
"""The status counted for a request whose client went away first (nginx's)."""


def _error(status: int, message: str, *, retry_after: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return web.json_response(
        {"error": {"code": status, "message": message}}, status=status, headers=headers
    )


class _CappedServer(web.Server):
    """aiohttp's low-level server, holding at most `max_connections` connections. A
    connection past that is answered 503 as soon as it is accepted and closed, rather
    than left waiting: its client learns at once to go elsewhere or retry."""

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        *,
        max_connections: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._max_connections = max_connections
        self._open: set[RequestHandler] = set()
        body = json.dumps(
            {
                "error": {
                    "code": 503,
                    "message": f"the gateway holds its maximum of {max_connections} "
                    "connections; retry later",
                }
            }
        ).encode()
        self._refusal = (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        if len(self._open) >= self._max_connections:
            transport.write(self._refusal)
            handler.force_close()  # closes the transport once the answer is out
            return
        self._open.add(handler)
        super().connection_made(handler, transport)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self._open.discard(handler)
        super().connection_lost(handler, exc)


class _ClientBody:
    """A request's body as the client sends it, given up on once the client pauses
    longer than `gap` seconds between two chunks; `stalled` then says so.

    A client that sent `Expect: 100-continue` waits for an interim 100 before its
    body (curl: a second, others forever); it gets it when the body is first asked
    for, that is once a replica has taken the request."""

    def __init__(self, request: web.BaseRequest, gap: float) -> None:
        self._content = request.content
        self._writer = request.writer
        self._expects_continue = (
            request.version >= aiohttp.HttpVersion11
            and request.headers.get("expect", "").lower() == "100-continue"
        )
        self._gap = gap
        self.stalled = False

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._expects_continue:
            await self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            try:
                async with asyncio.timeout(self._gap):
                    chunk = await self._content.readany()
            except TimeoutError:
                self.stalled = True
                raise
            if not chunk:
                return
            yield chunk


class Gateway:
    """An HTTP reverse proxy over one or more Routers (see `routing.choose`).

    With several routers (the global entry point) a request may go to any region
    with a ready replica for its path: the version is chosen by weight over all of
    them, then that version's replica with the fewest requests in flight. When no
    region has one, the answer is the first router's refusal that says 503 (else
    its 404).
    """

    def __init__(
        self,
        routers: Sequence[Router],
        settings: GatewaySettings | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        if not routers:
            raise ValueError("a gateway needs at least one router")
        self._routers = tuple(routers)
        self._settings = settings or GatewaySettings()
        self._metrics = metrics or Metrics()
        self._upstream: UpstreamPool | None = None
        self._runner: web.ServerRunner | None = None
        self._activator = Activator(
            self._routers, timeout=self._settings.hold_timeout, max_held=self._settings.max_held
        )

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (0: any free port) and return the base URL."""
        if self._runner is not None:
            raise RuntimeError("the gateway is already started")
        settings = self._settings
        self._upstream = UpstreamPool(
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
        )
        server = _CappedServer(
            self._handle,
            max_connections=settings.max_connections,
            # A client that goes away cancels its handler, and with it the request
            # to the replica.
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=settings.header_timeout,
        )
        runner = web.ServerRunner(server, shutdown_timeout=settings.shutdown_timeout)
        self._runner = runner
        try:
            await runner.setup()
            # A listen backlog as deep as the connections it may hold: a burst of
            # new clients (thousands of streams opening at once) then waits in the
            # kernel's queue for the accept, not for a SYN retried 1, 3, 7 s later
            # (the default backlog of 128 dropped the rest).
            await web.TCPSite(runner, host, port, backlog=settings.max_connections).start()
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
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        choice = choose(self._routers, request.rel_url.raw_path)
        if isinstance(choice, Refusal):
            return self._refuse(choice, started)
        # Counted, as load too, for the version first chosen, held or not.
        first = choice if isinstance(choice, Hold) else choice[1]
        region = choice.router.region if isinstance(choice, Hold) else choice[0].region
        series = self._metrics.gateway_series(first.endpoint, region, first.version)
        meter = first.meter
        series.in_flight.inc()
        meter.arrive()
        status = 500  # what aiohttp answers for an exception escaping the handler
        try:
            if isinstance(choice, Hold):
                held = await self._activator.hold(request.rel_url.raw_path, choice)
                if isinstance(held, Refusal):
                    status = held.status
                    return _error(held.status, held.reason, retry_after=held.retry_after)
                choice = held
            response = await self._forward(request, *choice)
            status = response.status
            return response
        except asyncio.CancelledError:
            status = _CLIENT_GONE
            raise
        finally:
            meter.depart()
            series.in_flight.dec()
            series.requests[status_class(status)].inc()
            series.latency.observe(time.perf_counter() - started)

    def _refuse(self, refusal: Refusal, started: float) -> web.Response:
        series = self._metrics.gateway_series(
            refusal.endpoint or NO_ENDPOINT, refusal.region, NO_VERSION
        )
        series.requests[status_class(refusal.status)].inc()
        series.latency.observe(time.perf_counter() - started)
        return _error(refusal.status, refusal.reason, retry_after=refusal.retry_after)

    async def _forward(
        self, request: web.BaseRequest, router: Router, pick: Pick
    ) -> web.StreamResponse:
        """Proxy the request to `pick`, or to one other replica if `pick` refuses the
        connection; the answer, or the gateway's own for a failure."""
        path = request.rel_url.raw_path
        body = _ClientBody(request, self._settings.body_timeout)
        pick.backend.acquire()
        try:
            try:
                return await self._proxy(request, body, router, pick)
            except UpstreamConnectError as error:
                # Nothing reached the replica: one more try on another one.
                failed = pick.backend
                retry = choose(self._routers, path, exclude=failed)
                if not isinstance(retry, tuple):  # no other replica is ready
                    return _error(502, f"replica {failed.name} refused the connection: {error}")
                pick.backend.release()
                router, pick = retry
                pick.backend.acquire()
                try:
                    return await self._proxy(request, body, router, pick)
                except UpstreamConnectError as again:
                    return _error(
                        502, f"replicas {failed.name} and {pick.backend.name} refused: {again}"
                    )
        except (UpstreamError, TimeoutError) as error:
            # Before any byte of the answer.
            if body.stalled:
                return await self._body_too_slow(request)
            return self._failure(pick.backend, error)
        finally:
            pick.backend.release()

    async def _body_too_slow(self, request: web.BaseRequest) -> web.StreamResponse:
        response = _error(
            408, f"the request body paused for more than {self._settings.body_timeout:g}s"
        )
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        # Close now: aiohttp would otherwise linger, reading the rest of the body for
        # up to 10 s, from a client that has just shown it sends it too slowly.
        request.protocol.force_close()
        return response

    def _failure(self, backend: Backend, error: Exception) -> web.Response:
        if isinstance(error, UpstreamTimeout):
            self._stall(backend)
            return _error(
                504,
                f"replica {backend.name} sent nothing for "
                f"{self._settings.upstream_read_timeout:g}s; it gets no more requests "
                "until it answers",
            )
        return _error(502, f"replica {backend.name} failed: {error!r}")

    def _stall(self, backend: Backend) -> None:
        backend.stall()
        log.warning(
            "gateway: replica %s sent nothing for %gs; no more requests to it until it answers",
            backend.name,
            self._settings.upstream_read_timeout,
        )

    async def _proxy(
        self, request: web.BaseRequest, body: _ClientBody, router: Router, pick: Pick
    ) -> web.StreamResponse:
        assert self._upstream is not None
        query = request.rel_url.raw_query_string
        target = pick.path + ("?" + query if query else "")
        peer = request.remote
        headers = upstream_headers(
            request.headers,
            peer=peer,
            scheme=request.scheme,
            prefix=pick.prefix,
            trusted=is_trusted(peer, self._settings.trusted_proxies),
        )
        async with self._upstream.request(
            pick.backend.url,
            request.method,
            target,
            headers,
            body.chunks() if request.body_exists else None,
        ) as upstream:
            pick.backend.answered()
            answer_headers = without(upstream.headers, HOP_BY_HOP)
            answer_headers["x-servefleet-region"] = router.region
            answer_headers["x-servefleet-version"] = pick.version
            answer_headers["x-servefleet-replica"] = pick.backend.name
            if upstream.complete():
                # The whole answer is already here (small JSON, an error, a short
                # stream): headers and body leave in one write instead of one each.
                return web.Response(
                    status=upstream.status,
                    reason=upstream.reason or None,
                    headers=answer_headers,
                    body=await upstream.read(),
                )
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason or None, headers=answer_headers
            )
            await response.prepare(request)
            try:
                while True:
                    chunk = await upstream.read()
                    if upstream.done:
                        # The last chunk and the end of the answer in one write.
                        await response.write_eof(chunk)
                        return response
                    await response.write(chunk)
            except UpstreamError as error:
                # The replica broke off or went silent mid-answer. The status is
                # already sent, so the only honest signal left is to cut the
                # client's connection.
                if isinstance(error, UpstreamTimeout):
                    self._stall(pick.backend)
                if request.transport is not None:
                    request.transport.abort()
                return response
