"""The world a Kubernetes benchmark case runs in (`bench.kubernetes`, `bench.kubedrift`):
a SQLite store, one test API server process per region (`bench.kubeapi_host`), the
endpoints, the reconciler process (`bench.reconciler_host`), and waiting for them."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.child import Child, child
from bench.progress import show
from bench.stores import endpoint_name
from servefleet.spec import DesiredState, Endpoint, EndpointSpec, Region, RegionKind
from servefleet.store import Store, open_store

NAMESPACE = "servefleet"
IMAGE = "vllm/vllm-openai:v0.6.3"
LATENCY = 0.005
"""Injected per request by every test API server, as a nearby real one would take."""
AUTO_READY = 0.05

_READY_COUNT = """
    SELECT count(*) FROM region_status AS s JOIN endpoints AS e ON e.name = s.endpoint
    WHERE json_extract(s.record, '$.state') = 'ready'
      AND json_extract(s.record, '$.observed_generation') = json_extract(e.record, '$.generation')
"""


def _count_ready(path: Path) -> int:
    """Region statuses READY at their endpoint's current generation, counted in SQL: a
    benchmark's peek at the SQLite file, so that watching 30,000 statuses costs the
    CPU the reconciler shares almost nothing."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        row = connection.execute(_READY_COUNT).fetchone()
        return int(row[0])
    finally:
        connection.close()


@dataclass
class Fleet:
    """The store and the test API servers of one case; the reconciler comes later."""

    directory: Path
    store_path: Path
    writer: Store
    servers: dict[str, Child]

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.store_path}"

    async def counts(self) -> dict[str, dict[str, Any]]:
        answers = await asyncio.gather(*(server.ask("counts") for server in self.servers.values()))
        return dict(zip(self.servers, answers, strict=True))

    async def reset(self) -> None:
        await asyncio.gather(*(server.ask("reset") for server in self.servers.values()))


@asynccontextmanager
async def fleet(regions: int, max_in_flight: int | None = None) -> AsyncIterator[Fleet]:
    with tempfile.TemporaryDirectory(prefix="servefleet-bench-k8s-") as name:
        directory = Path(name)
        store_path = directory / "store.db"
        writer = await open_store(f"sqlite:///{store_path}", init=True)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(writer.close)
            names = [f"k{index + 1}" for index in range(regions)]
            started = await asyncio.gather(
                *(
                    stack.enter_async_context(
                        child(
                            "bench.kubeapi_host",
                            str(directory / f"{region}.kubeconfig"),
                            NAMESPACE,
                            "--latency",
                            str(LATENCY),
                            "--auto-ready",
                            str(AUTO_READY),
                            *(("--max-in-flight", str(max_in_flight)) if max_in_flight else ()),
                            log=directory / f"{region}.log",
                        )
                    )
                    for region in names
                )
            )
            servers = dict(zip(names, started, strict=True))
            for region, server in servers.items():
                await writer.put_region(
                    Region(
                        name=region,
                        kind=RegionKind.KUBERNETES,
                        kubeconfig=server.hello["kubeconfig"],
                        namespace=NAMESPACE,
                    )
                )
            yield Fleet(directory, store_path, writer, servers)


async def create_endpoints(store: Store, count: int, regions: list[str]) -> float:
    """Create `count` image-only endpoints (2 replicas) targeting `regions`; seconds taken."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    spec = EndpointSpec(image=IMAGE, replicas=2)
    for index in range(count):
        await store.create_endpoint(
            Endpoint(
                name=endpoint_name(index),
                spec=spec,
                target_regions=regions,
                created_at=now,
                updated_at=now,
            )
        )
        if index % 500 == 0:
            show(f"creating endpoints {index:,}/{count:,}")
    return time.perf_counter() - started


@asynccontextmanager
async def reconciler(place: Fleet) -> AsyncIterator[Child]:
    async with child(
        "bench.reconciler_host",
        place.store_url,
        *place.servers,
        log=place.directory / "reconciler.log",
        within=120,
    ) as host:
        yield host


async def wait_ready(
    place: Fleet, host: Child, target: int, within: float, what: str
) -> tuple[float, int]:
    """Wait until `target` statuses are READY at the current generation, or `within`
    seconds; perf_counter() then and how many were READY."""
    started = time.perf_counter()
    while True:
        if host.process.returncode is not None:
            raise RuntimeError(f"the reconciler exited with {host.process.returncode}")
        ready = await asyncio.to_thread(_count_ready, place.store_path)
        now = time.perf_counter()
        if ready >= target or now - started >= within:
            return now, ready
        show(f"{what}: {ready:,}/{target:,} ready · {now - started:.0f} s")
        await asyncio.sleep(0.2)


async def settled(place: Fleet, host: Child, within: float = 60.0) -> None:
    """Wait until no endpoint is still `deploying` and every queue is idle."""
    async with asyncio.timeout(within):
        while True:
            deploying = await place.writer.list_endpoints(desired_state=DesiredState.DEPLOYING)
            if not deploying and (await host.ask("snapshot"))["idle"]:
                return
            await asyncio.sleep(0.1)
