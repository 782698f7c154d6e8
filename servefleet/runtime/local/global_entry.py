"""The global entry: one address for every region of the fleet (issue 17).

`servefleet up` runs it in front of its local regions' routers, and it reaches every
Kubernetes region with an `ingress_url` through that region's Ingress. The rule
that mixes them, for a request whose path an endpoint's route matches:

1. The candidates are this process's local regions *taken together* — offered when
   a router of an undrained local region has a route for the path with a ready
   replica (or one that wakes from zero) — and each Kubernetes region whose status
   for the endpoint is ready and routed, that is not drained and has an Ingress
   address (`RegionTable`, read from the store by `up` every second or so, never per
   request).
2. `region_choice.rank_regions` orders them: drawn by measured latency (a moving
   average of each one's time to first byte, from requests and from the active
   probe), then the rest fastest first.
3. Inside the local regions, `routing.choose` decides as in a regional gateway: the
   version by the canary's weight across them, then the replica with the fewest
   requests in flight, held while a version wakes from zero. Inside a Kubernetes
   region its Ingress decides (its own canary weights included).
4. A candidate that does not take the connection (refused, or not within the
   connect timeout) is marked doubted and the next one is tried, within the same
   request; so is one that lost a request which may be repeated (GET, HEAD or
   OPTIONS without a body) before any byte of its answer (`UpstreamConnectError`).
   A request whose bytes may have reached a replica is never sent twice: its
   failure is the client's answer (502, or 504 after the read timeout).

With no Kubernetes region serving the path, the entry is exactly the local gateway
over the undrained local routers (404 and 503 bodies, the activator). The path a
Kubernetes region is sent is the whole path: its Ingress routes on the endpoint's
`ingress_path` prefix and rewrites nothing (`runtime.kubernetes.render_routing`),
so the request goes to `<ingress_url>/inference/<name>/...` with the Ingress's
own Host (the client's is in `X-Forwarded-Host`).

Every `probe_interval` the entry GETs each serving Kubernetes region's health path
of each endpoint through its Ingress (`<ingress_url><ingress_path><health_path>`):
a 2xx clears the doubt (and times a region no request has measured yet), anything
else (or nothing within `probe_timeout`) doubts the region for that endpoint. A
doubted region is tried only after every undoubted one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from servefleet.http.fields import Fields
from servefleet.http.pool import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)
from servefleet.metrics import NO_VERSION, Metrics
from servefleet.runtime.local.downstream import ClientRequest
from servefleet.runtime.local.forwarding import HOP_BY_HOP, is_trusted, upstream_fields
from servefleet.runtime.local.gateway import (
    CLIENT_GONE,
    ClientBody,
    Gateway,
    GatewaySettings,
    RegionUnreachable,
)
from servefleet.runtime.local.region_choice import LOCAL_REGIONS, RegionView, rank_regions
from servefleet.runtime.local.routing import Hold, Refusal, Router, choose, longest_prefix

__all__ = ["EntrySettings", "GlobalEntry", "RegionTable", "RemoteRoute"]

log = logging.getLogger(__name__)
_NOT_RELAYED = HOP_BY_HOP | {b"x-servefleet-region"}
"""Answer fields of a region's Ingress that do not reach the client: the region tag
is the entry's to write."""

GLOBAL = "global"
"""The region its own refusals are counted under (no region refused)."""


@dataclass(frozen=True)
class EntrySettings:
    """How the global entry learns about the other regions (seconds)."""

    refresh_interval: float = 1.0
    """How often `up` reads regions, drain flags and statuses from the store."""
    probe_interval: float = 2.0
    probe_timeout: float = 2.0
    smoothing: float = 0.3
    """The weight of the newest time-to-first-byte sample in a region's average."""


@dataclass(frozen=True, slots=True)
class RemoteRoute:
    """One endpoint as the Kubernetes regions serve it."""

    endpoint: str
    prefix: str
    """Its `ingress_path`, e.g. "/inference/llm"."""
    health_path: str
    regions: tuple[str, ...]
    """The Kubernetes regions with an Ingress address whose status is ready and routed."""


@dataclass(frozen=True)
class RegionTable:
    """What the store says of the regions, replaced whole at each refresh."""

    drained: frozenset[str] = frozenset()
    ingress: Mapping[str, str] = field(default_factory=dict)
    """Each Kubernetes region with an `ingress_url`, to it."""
    routes: Mapping[str, RemoteRoute] = field(default_factory=dict)
    """By prefix; only endpoints that some Kubernetes region serves."""


class GlobalEntry(Gateway):
    """The gateway over every region (see the module docstring)."""

    _needs_router = False

    def __init__(
        self,
        routers: Sequence[Router],
        settings: GatewaySettings | None = None,
        entry: EntrySettings | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(routers, settings, metrics=metrics)
        self._entry = entry or EntrySettings()
        self._table = RegionTable()
        self._latency: dict[str, float] = {}
        """Each candidate's moving average of requests' time to first byte."""
        self._probed: dict[str, float] = {}
        """The same of the active probes, which stands in for a region with no
        request measured yet (a health path answers faster than a completion, so
        the two are not mixed)."""
        self._doubted: set[tuple[str, str]] = set()
        """(region, endpoint) pairs whose last probe or connection failed."""
        self._prober: asyncio.Task[None] | None = None

    def update(self, table: RegionTable) -> None:
        """Take what the store says now (`up` calls it at every refresh)."""
        self._table = table

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        url = await super().start(host, port)
        self._prober = asyncio.create_task(self._probe_forever(), name="global-entry-probes")
        return url

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
            self._prober = None
        await super().close()

    def latency(self, region: str) -> float | None:
        """The moving average of the time to first byte in `region` (or the local
        regions, `LOCAL_REGIONS`), in seconds, of requests, else of probes; None
        before any answer."""
        measured = self._latency.get(region)
        return measured if measured is not None else self._probed.get(region)

    def _first_byte(self, region: str, seconds: float) -> None:
        self._average(self._latency, region, seconds)

    def _average(self, averages: dict[str, float], region: str, seconds: float) -> None:
        previous = averages.get(region)
        weight = self._entry.smoothing
        averages[region] = (
            seconds if previous is None else weight * seconds + (1 - weight) * previous
        )

    async def _handle(self, request: ClientRequest) -> None:
        started = time.perf_counter()
        table = self._table
        path = request.path
        routers = self._serving_routers()
        local = choose(routers, path) if routers else None
        route = longest_prefix(table.routes, path)
        remote = [
            region
            for region in (route.regions if route is not None else ())
            if region not in table.drained and region in table.ingress
        ]
        if route is None or not remote:
            if local is None or isinstance(local, Refusal):
                self._refuse(request, local or self._nowhere(path, route), started)
            else:
                await self._serve_local(request, local, self._body(request), started)
            return
        views = [
            RegionView(
                region,
                serving=True,
                healthy=(region, route.endpoint) not in self._doubted,
                latency=self.latency(region),
            )
            for region in remote
        ]
        local_pick = None if isinstance(local, Refusal) else local
        if local_pick is not None:
            # Local regions that would only hold the request while a replica starts
            # from zero come after every cluster ready now, as a doubted one does.
            views.append(
                RegionView(
                    LOCAL_REGIONS,
                    serving=True,
                    healthy=not isinstance(local_pick, Hold),
                    latency=self.latency(LOCAL_REGIONS),
                )
            )
        order = rank_regions(views, random.random())
        body = self._body(request)
        for tried, region in enumerate(order, start=1):
            last_resort = tried == len(order)
            try:
                if region == LOCAL_REGIONS:
                    assert local_pick is not None
                    await self._serve_local(
                        request, local_pick, body, started, last_resort=last_resort
                    )
                else:
                    await self._serve_remote(
                        request, body, region, route, started, last_resort=last_resort
                    )
                return
            except RegionUnreachable as unreachable:
                log.info("global entry: %s; trying the next region", unreachable)

    def _serving_routers(self) -> Sequence[Router]:
        drained = self._table.drained
        if not drained:
            return self._routers
        return [router for router in self._routers if router.region not in drained]

    def _nowhere(self, path: str, route: RemoteRoute | None) -> Refusal:
        """Why no region can serve `path` when no local router could say."""
        if route is None:
            return Refusal(404, f"no endpoint serves the path {path!r}", GLOBAL)
        return Refusal(
            503,
            f"endpoint {route.endpoint!r}: no region that serves it is ready, routed "
            "and not drained",
            GLOBAL,
            route.endpoint,
        )

    async def _serve_remote(
        self,
        request: ClientRequest,
        body: ClientBody,
        region: str,
        route: RemoteRoute,
        started: float,
        *,
        last_resort: bool,
    ) -> None:
        """Forward the request to `region`'s Ingress (see `_serve_local` for
        `last_resort`)."""
        assert self._upstream is not None
        base = self._table.ingress[region]
        series = self._metrics.gateway_series(route.endpoint, region, NO_VERSION)
        series.in_flight += 1
        counted = True
        try:
            query = request.query
            fields = upstream_fields(
                request.fields,
                peer=request.peer,
                scheme=b"http",
                prefix="/",
                trusted=is_trusted(request.peer, self._settings.trusted_proxies),
            )
            # The Ingress's own name (virtual hosts, TLS): the upstream client adds it.
            fields = [(name, value) for name, value in fields if name.lower() != b"host"]
            try:
                await self._exchange(request, body, region, route, base, query, fields)
            except UpstreamConnectError as error:
                self._doubted.add((region, route.endpoint))
                self._unreachable(
                    request,
                    f"region {region!r} ({base}) did not take the request: {error}",
                    last_resort=last_resort,
                )
            except (UpstreamError, TimeoutError) as error:
                # Before any byte of the answer, and maybe after the request reached
                # a replica: never sent again.
                if self._stalled_body(request, body):
                    pass
                elif isinstance(error, UpstreamTimeout):
                    self._doubted.add((region, route.endpoint))
                    request.refuse(
                        504,
                        f"region {region!r} sent nothing for "
                        f"{self._settings.upstream_read_timeout:g}s",
                    )
                else:
                    request.refuse(502, f"region {region!r} failed: {error!r}")
        except RegionUnreachable:
            counted = False
            raise
        except asyncio.CancelledError:
            request.status = CLIENT_GONE
            raise
        finally:
            series.in_flight -= 1
            if counted:
                self._count(series, request, started)

    async def _exchange(
        self,
        request: ClientRequest,
        body: ClientBody,
        region: str,
        route: RemoteRoute,
        base: str,
        query: str,
        fields: Fields,
    ) -> None:
        assert self._upstream is not None
        sent = time.perf_counter()
        answer = await self._upstream.request(
            base,
            request.method,
            request.path + ("?" + query if query else ""),
            fields,
            body.chunks() if request.has_body else None,
        )
        try:
            self._first_byte(region, time.perf_counter() - sent)
            await self._relay(
                request,
                answer,
                b"x-servefleet-region: %s\r\n" % region.encode("utf-8", "surrogateescape"),
                _NOT_RELAYED,
                stalled=lambda: self._doubted.add((region, route.endpoint)),
            )
        finally:
            answer.release()

    async def _probe_forever(self) -> None:
        while True:
            table = self._table
            await asyncio.gather(
                *(
                    self._probe(region, route, table.ingress[region])
                    for route in table.routes.values()
                    for region in route.regions
                    if region in table.ingress and region not in table.drained
                )
            )
            await asyncio.sleep(self._entry.probe_interval)

    async def _probe(self, region: str, route: RemoteRoute, base: str) -> None:
        """GET the endpoint's health path through the region's Ingress."""
        if self._upstream is None:
            return
        target = route.prefix.rstrip("/") + route.health_path
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(self._entry.probe_timeout):
                answer = await self._upstream.request(base, "GET", target, [], None)
                try:
                    self._average(self._probed, region, time.perf_counter() - sent)
                    while not answer.done:
                        await answer.read()
                    healthy = 200 <= answer.status < 300
                finally:
                    answer.release()
        except (UpstreamError, TimeoutError):
            healthy = False
        key = (region, route.endpoint)
        if healthy:
            self._doubted.discard(key)
        elif key not in self._doubted:
            log.warning(
                "global entry: %s's health path fails through region %s's Ingress (%s); "
                "tried after the others",
                route.endpoint,
                region,
                base,
            )
            self._doubted.add(key)
