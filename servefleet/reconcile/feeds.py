"""When a region's controller looks at an endpoint: the feeds of its queue.

A pass (`Controller.reconcile`) depends on no earlier event; events only decide
*when* a name is looked at:

- the store's change feed (a spec change reaches the runtime without waiting),
- the runtime's events (a replica died or became ready),
- a periodic resync (default 5 minutes) as the safety net.

A listing (at the start, at each resync, and after falling behind the change
feed) queues every endpoint the store lists for the region, the runtime holds or
a report names, in the queue's backlog: behind the names that changes and events
queue (`queue.WorkQueue.add_backlog`). A change the controller's records take as
it is, with no pass (`records.KnownRecords.saw`), is not queued.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from servefleet.reconcile.queue import WorkQueue
from servefleet.reconcile.records import KnownRecords
from servefleet.reconcile.settings import ControllerSettings
from servefleet.runtime.base import Runtime
from servefleet.spec import RegionStatus
from servefleet.store import FeedCompacted, Store, StoreUnavailable

__all__ = ["Feeds"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Feeds:
    """What puts the names of one region's endpoints in its controller's queue
    (module docstring)."""

    def __init__(
        self,
        store: Store,
        runtime: Runtime,
        region: str,
        settings: ControllerSettings,
        *,
        queue: WorkQueue,
        records: KnownRecords,
        statuses: Mapping[str, RegionStatus],
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._region = region
        self._settings = settings
        self._queue = queue
        self._records = records
        self._statuses = statuses
        """The region's reports, by endpoint: its controller's, updated in place."""

    async def retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """What `call` returns once the store answers it, asked again every
        `store_retry` while the store is unavailable."""
        while True:
            try:
                return await call()
            except StoreUnavailable as error:
                log.warning(
                    "region %s: store unavailable, retrying: %s",
                    *(self._region, error),
                    extra={"region": self._region},
                )
                await asyncio.sleep(self._settings.store_retry)

    async def enqueue_everything(self) -> set[str]:
        """Queue every endpoint the store lists for the region, the runtime holds or
        a status names; those names."""
        names = await self._records.keep_listing(
            self.retrying(lambda: self._store.list_endpoints(region=self._region))
        )
        names |= await self._runtime.held()
        names |= self._statuses.keys()
        for name in sorted(names):
            self._queue.add_backlog(name)
        return names

    async def follow_feed(self, position: int) -> None:
        while True:
            try:
                async for change in self._store.watch(position):
                    position = change.seq
                    if await self._records.saw(change):
                        self._queue.add(change.name)
            except FeedCompacted:
                log.warning(
                    "region %s: fell behind the change feed; listing again",
                    self._region,
                    extra={"region": self._region},
                )
                position = await self.retrying(self._store.feed_position)
                await self.enqueue_everything()
            except StoreUnavailable as error:
                log.warning(
                    "region %s: change feed interrupted: %s",
                    *(self._region, error),
                    extra={"region": self._region},
                )
                await asyncio.sleep(self._settings.store_retry)

    async def follow_runtime(self) -> None:
        async for name in self._runtime.events():
            self._queue.add(name)

    async def resync(self) -> None:
        while True:
            await asyncio.sleep(self._settings.resync_interval)
            await self.enqueue_everything()
