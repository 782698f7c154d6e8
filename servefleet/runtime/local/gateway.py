"""The local HTTP gateway: an HTTP reverse proxy over one or more routing tables.

One `Gateway` serves one region (one `Router`) or, as the global entry point, every
local region at once; `routing.choose` decides where each request goes, and
`forwarding` which headers cross. The proxy streams both ways: the request body is
forwarded as it arrives and the answer is written chunk by chunk as the replica
produces it, so server-sent events reach the client unbuffered; an answer that is
complete when its headers arrive goes out in one write. Refusals are JSON that say
why: `{"error": {"code": 503, "message": "endpoint 'llm': endpoint is stopped"}}`.

The HTTP is servefleet's own on both sides: `downstream` serves the clients and
`servefleet.http` talks to the replicas, each `httptools` under an asyncio `Protocol`.
Every path is proxied: the gateway has no endpoints of its own.

Nothing waits forever (`GatewaySettings`): a client must send a request's head
within `header_timeout` of its connection opening or of its previous answer, and
may pause its body for at most `body_timeout` (408); at most `max_connections` are
open at once (a connection past that gets a 503 and is closed); heads are bounded
(`max_request_line`, 414; `max_head_size`, 431); a replica may stay silent for at
most `upstream_read_timeout` (504), after which it is chosen no more until it
answers again. A request for an endpoint starting from zero replicas is held until
one is ready (`activator`), at most `hold_timeout`, at most `max_held` of them per
endpoint.

Each request is counted once (`servefleet.metrics`): by endpoint, the region and
version first chosen for it, and status class; a refusal under the region that
refused and the endpoint whose route matched, if any (never its path). A client
that goes away before its answer counts as 4xx (nginx's 499). It is also counted
as load of the version first chosen for it (`load.LoadMeter`), which the local
autoscaler scales on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from servefleet.http.pool import (
    Answer,
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
)
from servefleet.metrics import NO_ENDPOINT, NO_VERSION, GatewaySeries, Metrics
from servefleet.runtime.local.activator import Activator
from servefleet.runtime.local.downstream import ClientRequest, DownstreamServer
from servefleet.runtime.local.forwarding import (
    HOP_BY_HOP,
    ProxyNetwork,
    answer_fields,
    is_trusted,
    upstream_fields,
)
from servefleet.runtime.local.region_choice import LOCAL_REGIONS
from servefleet.runtime.local.routing import (
    Backend,
    Hold,
    Pick,
    Refusal,
    RouteConflict,
    Router,
    choose,
)

__all__ = [
    "Backend",
    "Gateway",
    "GatewaySettings",
    "Hold",
    "Pick",
    "Refusal",
    "RegionUnreachable",
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
    max_request_line: int = 8190
    """The longest request target in bytes (414 past it); aiohttp's limit."""
    max_head_size: int = 65536
    """The largest request head in bytes, its fields together (431 past it)."""
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


_TAGS = frozenset({b"x-servefleet-region", b"x-servefleet-version", b"x-servefleet-replica"})
_NOT_RELAYED = HOP_BY_HOP | _TAGS
"""Answer fields of a replica that do not reach the client: hop-by-hop ones, and the
gateway's own tags, which it writes instead."""


class RegionUnreachable(Exception):
    """No replica of a region took the request's connection: nothing reached one, so
    the global entry may send the request to another region."""


CLIENT_GONE = 499
"""The status counted for a request whose client went away first (nginx's)."""


class ClientBody:
    """A request's body as the client sends it, given up on once the client pauses
    longer than `gap` seconds between two chunks; `stalled` then says so.

    A client that sent `Expect: 100-continue` waits for an interim 100 before its
    body (curl: a second, others forever); it gets it when the body is first asked
    for, that is once a replica has taken the request."""

    def __init__(self, request: ClientRequest, gap: float) -> None:
        self._request = request
        self._gap = gap
        self.stalled = False

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self._gap):
                    chunk = await self._request.read()
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

    _needs_router = True
    """A regional gateway serves its routers' regions only; the global entry may
    serve other regions with no local one."""

    def __init__(
        self,
        routers: Sequence[Router],
        settings: GatewaySettings | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        if not routers and self._needs_router:
            raise ValueError("a gateway needs at least one router")
        self._routers = tuple(routers)
        self._settings = settings or GatewaySettings()
        self._metrics = metrics or Metrics()
        self._upstream: UpstreamPool | None = None
        self._server: DownstreamServer | None = None
        self._tags: dict[tuple[str, str, str], bytes] = {}
        """The tag lines of each region x version x replica, formatted once."""
        self._activator = Activator(
            self._serving_routers,
            timeout=self._settings.hold_timeout,
            max_held=self._settings.max_held,
        )

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on `host:port` (0: any free port) and return the base URL."""
        if self._server is not None:
            raise RuntimeError("the gateway is already started")
        settings = self._settings
        self._upstream = UpstreamPool(
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
        )
        self._server = DownstreamServer(
            self._handle,
            max_connections=settings.max_connections,
            header_timeout=settings.header_timeout,
            max_request_line=settings.max_request_line,
            max_head_size=settings.max_head_size,
            shutdown_timeout=settings.shutdown_timeout,
        )
        try:
            bound_host, bound_port = await self._server.listen(host, port)
        except BaseException:
            await self.close()
            raise
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        return f"http://{shown}:{bound_port}"

    async def close(self) -> None:
        """Stop listening, let requests in flight finish (up to `shutdown_timeout`)."""
        if self._server is not None:
            await self._server.close()
            self._server = None
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None

    async def _handle(self, request: ClientRequest) -> None:
        started = time.perf_counter()
        choice = choose(self._serving_routers(), request.path)
        if isinstance(choice, Refusal):
            self._refuse(request, choice, started)
            return
        await self._serve_local(request, choice, self._body(request), started)

    def _serving_routers(self) -> Sequence[Router]:
        """The routers a request may be sent to now: all of them here; the global
        entry leaves drained regions out."""
        return self._routers

    def _body(self, request: ClientRequest) -> ClientBody:
        return ClientBody(request, self._settings.body_timeout)

    async def _serve_local(
        self,
        request: ClientRequest,
        choice: tuple[Router, Pick] | Hold,
        body: ClientBody,
        started: float,
        *,
        last_resort: bool = True,
    ) -> None:
        """Serve the request in the local regions as `choice` says; unless it is the
        `last_resort`, `RegionUnreachable` when no replica took the connection, so
        that the caller may try another region (nothing is counted then)."""
        # Counted, as load too, for the version first chosen, held or not.
        first = choice if isinstance(choice, Hold) else choice[1]
        region = choice.router.region if isinstance(choice, Hold) else choice[0].region
        series = self._metrics.gateway_series(first.endpoint, region, first.version)
        meter = first.meter
        series.in_flight += 1
        meter.arrive()
        counted = True
        try:
            if isinstance(choice, Hold):
                held = await self._activator.hold(request.path, choice)
                if isinstance(held, Refusal):
                    request.refuse(held.status, held.reason, retry_after=held.retry_after)
                    return
                choice = held
            await self._forward(request, body, *choice, last_resort=last_resort)
        except RegionUnreachable:
            counted = False
            raise
        except asyncio.CancelledError:
            request.status = CLIENT_GONE
            raise
        finally:
            meter.depart()
            series.in_flight -= 1
            if counted:
                self._count(series, request, started)

    @staticmethod
    def _count(series: GatewaySeries, request: ClientRequest, started: float) -> None:
        # An exception escaping before any answer gets a 500 (`downstream`).
        series.answered(request.status or 500, time.perf_counter() - started)

    def _refuse(self, request: ClientRequest, refusal: Refusal, started: float) -> None:
        series = self._metrics.gateway_series(
            refusal.endpoint or NO_ENDPOINT, refusal.region, NO_VERSION
        )
        series.answered(refusal.status, time.perf_counter() - started)
        request.refuse(refusal.status, refusal.reason, retry_after=refusal.retry_after)

    async def _forward(
        self,
        request: ClientRequest,
        body: ClientBody,
        router: Router,
        pick: Pick,
        *,
        last_resort: bool = True,
    ) -> None:
        """Proxy the request to `pick`, or to one other replica if `pick` refuses the
        connection; the answer, or the gateway's own for a failure (but see
        `_serve_local` for `last_resort`)."""
        pick.backend.acquire()
        try:
            try:
                await self._proxy(request, body, router, pick)
            except UpstreamConnectError as error:
                # Nothing reached the replica: one more try on another one.
                failed = pick.backend
                retry = choose(self._serving_routers(), request.path, exclude=failed)
                if not isinstance(retry, tuple):  # no other replica is ready
                    self._unreachable(
                        request,
                        f"replica {failed.name} refused the connection: {error}",
                        last_resort=last_resort,
                    )
                    return
                pick.backend.release()
                router, pick = retry
                pick.backend.acquire()
                try:
                    await self._proxy(request, body, router, pick)
                except UpstreamConnectError as again:
                    self._unreachable(
                        request,
                        f"replicas {failed.name} and {pick.backend.name} refused: {again}",
                        last_resort=last_resort,
                    )
        except (UpstreamError, TimeoutError) as error:
            # Before any byte of the answer.
            if not self._stalled_body(request, body):
                self._failure(request, pick.backend, error)
        finally:
            pick.backend.release()

    @staticmethod
    def _unreachable(request: ClientRequest, reason: str, *, last_resort: bool) -> None:
        if not last_resort:
            raise RegionUnreachable(reason)
        request.refuse(502, reason)

    def _stalled_body(self, request: ClientRequest, body: ClientBody) -> bool:
        """Refuse with 408 if the request failed because its body paused too long."""
        if not body.stalled:
            return False
        # The connection closes after it: the rest of the body is not worth waiting
        # for from a client that has just shown it sends it too slowly.
        request.refuse(
            408, f"the request body paused for more than {self._settings.body_timeout:g}s"
        )
        return True

    def _failure(self, request: ClientRequest, backend: Backend, error: Exception) -> None:
        if isinstance(error, UpstreamTimeout):
            self._stall(backend)
            request.refuse(
                504,
                f"replica {backend.name} sent nothing for "
                f"{self._settings.upstream_read_timeout:g}s; it gets no more requests "
                "until it answers",
            )
            return
        request.refuse(502, f"replica {backend.name} failed: {error!r}")

    def _stall(self, backend: Backend) -> None:
        backend.stall()
        log.warning(
            "gateway: replica %s sent nothing for %gs; no more requests to it until it answers",
            backend.name,
            self._settings.upstream_read_timeout,
        )

    async def _proxy(
        self, request: ClientRequest, body: ClientBody, router: Router, pick: Pick
    ) -> None:
        assert self._upstream is not None
        query = request.query
        target = pick.path + ("?" + query if query else "")
        peer = request.peer
        fields = upstream_fields(
            request.fields,
            peer=peer,
            scheme=b"http",
            prefix=pick.prefix,
            trusted=is_trusted(peer, self._settings.trusted_proxies),
        )
        sent = time.perf_counter()
        upstream = await self._upstream.request(
            pick.backend.url,
            request.method,
            target,
            fields,
            body.chunks() if request.has_body else None,
        )
        try:
            self._first_byte(LOCAL_REGIONS, time.perf_counter() - sent)
            pick.backend.answered()
            await self._relay(
                request,
                upstream,
                self._tag_lines(router.region, pick.version, pick.backend.name),
                _NOT_RELAYED,
                stalled=lambda: self._stall(pick.backend),
            )
        finally:
            upstream.release()

    def _tag_lines(self, region: str, version: str, replica: str) -> bytes:
        """`x-servefleet-region`, `-version` and `-replica`, as header lines."""
        key = (region, version, replica)
        lines = self._tags.get(key)
        if lines is None:
            lines = self._tags[key] = (
                f"x-servefleet-region: {region}\r\nx-servefleet-version: {version}\r\n"
                f"x-servefleet-replica: {replica}\r\n"
            ).encode("utf-8", "surrogateescape")
        return lines

    def _first_byte(self, region: str, seconds: float) -> None:
        """An answer's head came `seconds` after its request was sent to `region` (or
        `LOCAL_REGIONS`): the global entry's latency estimate takes it."""

    async def _relay(
        self,
        request: ClientRequest,
        upstream: Answer,
        tags: bytes,
        not_relayed: frozenset[bytes],
        *,
        stalled: Callable[[], None],
    ) -> None:
        """Forward the answer to the client: its header fields but `not_relayed` ones
        (`forwarding.answer_fields`), then the gateway's `tags` (header lines);
        `stalled` is called when the upstream goes silent midway."""
        lines, length = answer_fields(upstream.fields, not_relayed)
        items = lines + tags
        if upstream.complete():
            # The whole answer is already here (small JSON, an error, a short
            # stream): headers and body leave in one write instead of one each.
            request.respond(
                upstream.status,
                items,
                await upstream.read(),
                reason=upstream.reason,
                length=length,
            )
            return
        await request.start(upstream.status, items, reason=upstream.reason, length=length)
        try:
            await upstream.relay(request)
            request.finish()
        except UpstreamError as error:
            # The upstream broke off or went silent mid-answer. The status is
            # already sent, so the only honest signal left is to cut the
            # client's connection.
            if isinstance(error, UpstreamTimeout):
                stalled()
            request.abort()
