"""What the global entry of `servefleet up` knows of the regions, read from the store.

The entry routes on it for every request, so it is read here, never per request:
every `EntrySettings.refresh_interval` (a second by default) the drain flags of
every region and, for each Kubernetes region with an `ingress_url`, its statuses
(which move no change feed, `store.base`: hence the period); the endpoints' routes
(`ingress_path`, health path, target regions, whether they run) are kept from the
change feed instead, re-reading only the records that change, and are listed only
once some Kubernetes region has an `ingress_url`. A read that fails keeps the table
the entry has: the regions it knew ready stay tried, and a region gone meanwhile
is caught by the entry's failover and probes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass

from servefleet.runtime.local.global_entry import GlobalEntry, RegionTable, RemoteRoute
from servefleet.spec import Endpoint, RegionKind, RegionState
from servefleet.store import (
    ChangeKind,
    EndpointNotFound,
    FeedCompacted,
    Store,
    StoreError,
)

__all__ = ["EndpointRoutes", "read_region_table", "refresh_region_table"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Route:
    """What the entry needs of one endpoint."""

    prefix: str
    health_path: str
    targets: frozenset[str]
    runs: bool


def _route(endpoint: Endpoint) -> _Route:
    return _Route(
        endpoint.ingress_path,
        endpoint.spec.health_path,
        frozenset(endpoint.target_regions),
        endpoint.desired_state.runs,
    )


class EndpointRoutes:
    """Every endpoint's route, listed once, then kept from the change feed."""

    def __init__(self, store: Store, retry: float = 1.0) -> None:
        self._store = store
        self._retry = retry
        self._routes: dict[str, _Route] | None = None
        self._follower: asyncio.Task[None] | None = None

    async def current(self) -> dict[str, _Route]:
        """The routes now: listed at the first call, which starts following the feed."""
        if self._routes is None:
            position = await self._store.feed_position()
            self._routes = {e.name: _route(e) for e in await self._store.list_endpoints()}
            self._follower = asyncio.create_task(self._follow(position), name="entry-routes")
        return self._routes

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)

    async def _follow(self, position: int) -> None:
        while True:
            try:
                async for change in self._store.watch(position):
                    position = change.seq
                    await self._reread(change.name, purged=change.kind is ChangeKind.PURGED)
            except (FeedCompacted, StoreError) as error:
                # Listed again from a new position: nothing between is missed.
                log.warning("global entry: the change feed broke off (%s); listing again", error)
                await asyncio.sleep(self._retry)
                try:
                    position = await self._store.feed_position()
                    listed = await self._store.list_endpoints()
                except StoreError:
                    continue
                self._routes = {endpoint.name: _route(endpoint) for endpoint in listed}

    async def _reread(self, name: str, *, purged: bool) -> None:
        assert self._routes is not None
        try:
            endpoint = None if purged else await self._store.get_endpoint(name)
        except EndpointNotFound:
            endpoint = None
        if endpoint is None:
            self._routes.pop(name, None)
        else:
            self._routes[name] = _route(endpoint)


async def read_region_table(store: Store, endpoints: EndpointRoutes) -> RegionTable:
    """The regions as the global entry routes on them now."""
    regions = await store.list_regions()
    ingress = {
        region.name: region.ingress_url
        for region in regions
        if region.kind is RegionKind.KUBERNETES and region.ingress_url
    }
    drained = frozenset(region.name for region in regions if region.drained)
    if not ingress:
        return RegionTable(drained=drained)
    serving: defaultdict[str, list[str]] = defaultdict(list)
    for region in sorted(ingress):
        for status in await store.list_region_status(region=region):
            if status.state is RegionState.READY and status.routed:
                serving[status.endpoint].append(region)
    known = await endpoints.current()
    routes: dict[str, RemoteRoute] = {}
    for name, regions_ready in serving.items():
        route = known.get(name)
        if route is None or not route.runs:
            continue
        ready = tuple(region for region in regions_ready if region in route.targets)
        if ready:
            routes[route.prefix] = RemoteRoute(name, route.prefix, route.health_path, ready)
    return RegionTable(drained=drained, ingress=ingress, routes=routes)


async def refresh_region_table(
    store: Store, entry: GlobalEntry, endpoints: EndpointRoutes, interval: float
) -> None:
    """Give `entry` the regions as the store says, every `interval` seconds, forever."""
    failing = False
    try:
        while True:
            try:
                entry.update(await read_region_table(store, endpoints))
            except StoreError as error:
                if not failing:
                    log.warning(
                        "global entry: cannot read the regions (%s); routing as before", error
                    )
                failing = True
            else:
                failing = False
            await asyncio.sleep(interval)
    finally:
        await endpoints.close()
