"""What the global entry of `servefleet up` knows of the regions, read from the store.

The entry routes on it for every request, so it is read here on a period
(`EntrySettings.refresh_interval`, a second by default), never per request: the
drain flags of every region, and for each Kubernetes region with an `ingress_url`
the endpoints whose status there is ready and routed. Region statuses move no
change feed (`store.base`), hence the period rather than the feed. A read that fails
keeps the table the entry has: the regions it knew ready stay tried, and a region
gone meanwhile is caught by the entry's failover and probes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from servefleet.runtime.local.global_entry import GlobalEntry, RegionTable, RemoteRoute
from servefleet.spec import RegionKind, RegionState
from servefleet.store import Store, StoreError

__all__ = ["read_region_table", "refresh_region_table"]

log = logging.getLogger(__name__)


async def read_region_table(store: Store) -> RegionTable:
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
    routes: dict[str, RemoteRoute] = {}
    for endpoint in await store.list_endpoints():
        regions_ready = [r for r in serving.get(endpoint.name, ()) if r in endpoint.target_regions]
        if regions_ready and endpoint.desired_state.runs:
            routes[endpoint.ingress_path] = RemoteRoute(
                endpoint.name,
                endpoint.ingress_path,
                endpoint.spec.health_path,
                tuple(regions_ready),
            )
    return RegionTable(drained=drained, ingress=ingress, routes=routes)


async def refresh_region_table(store: Store, entry: GlobalEntry, interval: float) -> None:
    """Give `entry` the regions as the store says, every `interval` seconds, forever."""
    failing = False
    while True:
        try:
            entry.update(await read_region_table(store))
        except StoreError as error:
            if not failing:
                log.warning("global entry: cannot read the regions (%s); routing as before", error)
            failing = True
        else:
            failing = False
        await asyncio.sleep(interval)
