"""What `servefleet up` gives the global entry (`cli/region_table.py`), read from a
real SQLite store: only Kubernetes regions with an Ingress address whose status is
ready and routed, drain flags, and the endpoints' routes kept from the change feed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from servefleet.cli.region_table import EndpointRoutes, read_region_table
from servefleet.runtime.local.global_entry import RegionTable, RemoteRoute
from servefleet.service import EndpointService
from servefleet.spec import EndpointManifest, Region, RegionKind, RegionState, RegionStatus
from servefleet.store import Store, open_store
from tests.waiting import eventually

IMAGE = "ghcr.io/example/server:1.0"


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[Store]:
    opened = await open_store(sqlite_url)
    yield opened
    await opened.close()


def declaration(name: str, regions: list[str], **spec: object) -> EndpointManifest:
    return EndpointManifest.model_validate(
        {"metadata": {"name": name}, "regions": regions, "spec": {"image": IMAGE, **spec}}
    )


async def ready(store: Store, endpoint: str, region: str, *, routed: bool = True) -> None:
    await store.put_region_status(
        RegionStatus(endpoint=endpoint, region=region, state=RegionState.READY, routed=routed)
    )


async def test_the_table_holds_ready_clusters_with_an_address_and_follows_the_feed(
    store: Store,
) -> None:
    service = EndpointService(store)
    await service.add_region(Region(name="local", kind=RegionKind.LOCAL))
    await service.add_region(
        Region(name="k1", kind=RegionKind.KUBERNETES, ingress_url="http://k1.example")
    )
    await service.add_region(Region(name="k2", kind=RegionKind.KUBERNETES))  # no address
    await service.add_region(
        Region(name="k3", kind=RegionKind.KUBERNETES, ingress_url="http://k3.example")
    )
    await service.apply(declaration("llm", ["local", "k1", "k2", "k3"]))
    for region in ("k1", "k2"):
        await ready(store, "llm", region)
    await ready(store, "llm", "k3", routed=False)
    routes = EndpointRoutes(store, retry=0.05)
    try:
        table = await read_region_table(store, routes)
        assert table == RegionTable(
            ingress={"k1": "http://k1.example", "k3": "http://k3.example"},
            routes={"/inference/llm": RemoteRoute("llm", "/inference/llm", "/health", ("k1",))},
        )

        # Changes of the record arrive through the feed, not by listing again.
        await service.apply(declaration("llm", ["local", "k1"], ingress_path="/v2/llm"))
        await service.apply(declaration("new", ["k1"]))
        await ready(store, "new", "k1")
        await service.drain_region("local")

        async def followed() -> bool:
            table = await read_region_table(store, routes)
            return set(table.routes) == {"/v2/llm", "/inference/new"} and table.drained == {"local"}

        await eventually(followed)
    finally:
        await routes.close()
