"""The DynamoDB side of a scenario: moto in server mode (`bench.moto_host`, a process
of its own) with a table of the scenario's own, and the region statuses as seen.

DynamoDB has no triggers to log every write the way `chaos.postgres` does, so the
statuses are sampled instead: read straight from moto (never through the proxy)
every `SAMPLE` seconds, each change of a status kept as one `StatusWrite` (writer
"sampled", no lease). A status that went back to an older generation is seen if it
stays for a sample; who wrote it is not known (the store itself fences every
status write by the lease, in one transaction with a condition on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.child import child
from chaos.postgres import StatusWrite
from servefleet.store import Store, StoreUnavailable, open_store

REGION = "us-east-1"
SAMPLE = 0.05


@dataclass
class MotoTable:
    endpoint_url: str
    table: str

    def url(self, endpoint_url: str | None = None) -> str:
        """The store URL of the table, through `endpoint_url` (default: moto itself)."""
        return (
            f"dynamodb://{self.table}?region={REGION}"
            f"&endpoint_url={endpoint_url or self.endpoint_url}"
        )


@asynccontextmanager
async def moto_table(workdir: Path) -> AsyncIterator[MotoTable]:
    """moto started in a process of its own with an initialised table; stopped (its
    process by id) on the way out."""
    # moto takes any credentials; these name no real account.
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(variable, "chaos")
    async with child("bench.moto_host", log=workdir / "moto.log") as moto:
        table = MotoTable(moto.hello["endpoint_url"], f"chaos-{uuid.uuid4().hex[:12]}")
        store = await open_store(table.url(), init=True)
        await store.close()
        yield table


@dataclass
class StatusSampler:
    store: Store
    seen: list[StatusWrite] = field(default_factory=list)

    async def follow(self) -> None:
        last: dict[tuple[str, str], str] = {}
        while True:
            with contextlib.suppress(StoreUnavailable):
                for status in await self.store.list_region_status():
                    key = (status.endpoint, status.region)
                    record = status.model_dump_json()
                    if last.get(key) != record:
                        last[key] = record
                        self.seen.append(
                            StatusWrite(
                                len(self.seen) + 1, time.time(), "sampled", status, None, None
                            )
                        )
            await asyncio.sleep(SAMPLE)


@asynccontextmanager
async def sampled_statuses(store: Store) -> AsyncIterator[StatusSampler]:
    sampler = StatusSampler(store)
    async with AsyncExitStack() as stack:
        task = asyncio.create_task(sampler.follow(), name="chaos-status-sampler")

        async def cancelled() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        stack.push_async_callback(cancelled)
        yield sampler
