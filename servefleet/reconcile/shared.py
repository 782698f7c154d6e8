"""What the region controllers of one process share of one store.

`servefleet up` runs one controller per region in one process, on one store
connection, and every endpoint write reaches each of them through the change feed.
Two of those writes are the controllers' own, and sharing what they know spares
the others a pass and a read:

- The write that turns an endpoint from `deploying` to `running` (`settle.Settler`,
  once every region is READY) changes nothing any region runs or reports
  (`plan.only_settled`). The controller that wrote it leaves the record here
  (`settled`); every controller of the process, the writer included, takes it when
  the feed brings that revision, instead of a pass that would read it again and
  find nothing to do (without this, the third pass of every endpoint-region of a
  converging fleet; bench/: Kubernetes convergence).
- Each controller's latest reports (`lead`): a region that turns READY asks
  the store for every region's report only when no region led here still keeps
  the fleet from `running` (`plan.ready_in`); the last region to turn READY does,
  and only if some target region is led elsewhere (else the reports here are all
  of them: 10,000 reads fewer in a 10,000-endpoint start).
  Only a controller that may still act counts: while it leads, its region's
  reports are written by it alone, and it keeps them here once written, before it
  looks at the others', so of two regions turning READY at once the later sees
  the earlier.

- The records themselves (`one_copy`): every region's controller keeps the record
  of each endpoint it runs, and a record never changes once read (the models are
  frozen), so the controllers of a process keep one copy of an identical record
  instead of one each (10,000 endpoints in 3 regions: ~120 MB, bench/: Kubernetes
  convergence). A copy is shared only while some controller still holds it.

A record is left here only from a write that succeeded, so it was the store's at
that revision. The feed may bring the write before its writer has left the record
here (the store wakes the watchers as it commits): a change of a name whose
settling is under way waits for it (`settling`). A purge of the name, seen by any
controller, drops it; a record written before a purge that some controller has
seen is not kept (`epoch`), so a name created again never meets the record of its
earlier life.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from servefleet.spec import Endpoint, RegionStatus
from servefleet.store import Store

__all__ = ["SharedRecords", "shared_records"]


@dataclass(frozen=True, slots=True)
class _Led:
    statuses: Mapping[str, RegionStatus]
    """Its controller's reports, by endpoint, updated in place."""
    acting: Callable[[], bool]
    """Whether its controller may still act (holds the region's lease)."""


class SharedRecords:
    """One store's records and reports, as the controllers of this process know them
    (module docstring)."""

    def __init__(self) -> None:
        self._settled: dict[str, Endpoint] = {}
        self._settling: dict[str, asyncio.Future[None]] = {}
        """Names whose settling write is under way: done once it ended."""
        self._led: dict[str, _Led] = {}
        """The regions whose controllers run in this process."""
        self.epoch = 0
        """Purges seen so far; a write that began before one is not kept."""
        self._copies: weakref.WeakValueDictionary[str, Endpoint] = weakref.WeakValueDictionary()
        """By name, the copy of its record the controllers here hold, while they do."""

    def one_copy(self, endpoint: Endpoint) -> Endpoint:
        """The copy of `endpoint` another controller here already holds if it is the
        same record (every field equal), else `endpoint`, now the copy to share."""
        held = self._copies.get(endpoint.name)
        if held is not None and held == endpoint:
            return held
        self._copies[endpoint.name] = endpoint
        return endpoint

    def settled(self, name: str) -> Endpoint | None:
        """The record a controller of this process wrote when it settled `name` as
        running, if no purge was seen since."""
        return self._settled.get(name)

    def settling(self, name: str) -> asyncio.Future[None]:
        """A controller of this process is about to write `name` as running; what
        to hand `settled_as` when the write ends."""
        ended = self._settling[name] = asyncio.get_running_loop().create_future()
        return ended

    def settled_as(
        self, name: str, ended: asyncio.Future[None], endpoint: Endpoint | None, *, epoch: int
    ) -> None:
        """The settling write of `name` ended: `endpoint` is what it wrote (None: it
        did not); `ended` is what `settling` gave; `epoch` was current when it began."""
        if endpoint is not None and epoch == self.epoch:
            self._settled[name] = endpoint
        if self._settling.get(name) is ended:
            del self._settling[name]
        ended.set_result(None)

    async def after_settling(self, name: str) -> None:
        """Once the settling write of `name` under way, if any, has ended."""
        ended = self._settling.get(name)
        if ended is not None:
            await asyncio.shield(ended)

    def changed(self, name: str, revision: int) -> None:
        """The feed showed `name` at `revision`: a record settled before it is of no
        more use (a controller yet to see it reads the record instead)."""
        settled = self._settled.get(name)
        if settled is not None and settled.revision < revision:
            del self._settled[name]

    def purged(self, name: str) -> None:
        """The feed showed `name` purged."""
        self.epoch += 1
        self._settled.pop(name, None)

    def lead(
        self, region: str, statuses: Mapping[str, RegionStatus], acting: Callable[[], bool]
    ) -> None:
        """`region`'s controller keeps its reports in `statuses` (updated in place)
        and may act while `acting()`."""
        self._led[region] = _Led(statuses, acting)

    def step_down(self, region: str, statuses: Mapping[str, RegionStatus]) -> None:
        """`region`'s controller stopped; a newer one's reports stay."""
        led = self._led.get(region)
        if led is not None and led.statuses is statuses:
            del self._led[region]

    def reports(self, endpoint: str) -> dict[str, RegionStatus | None]:
        """The latest report on `endpoint` of every region whose controller here may
        still act (None: it has reported nothing)."""
        return {
            region: led.statuses.get(endpoint) for region, led in self._led.items() if led.acting()
        }


_BY_STORE: weakref.WeakKeyDictionary[Store, SharedRecords] = weakref.WeakKeyDictionary()


def shared_records(store: Store) -> SharedRecords:
    """The `SharedRecords` of `store` in this process."""
    shared = _BY_STORE.get(store)
    if shared is None:
        shared = _BY_STORE[store] = SharedRecords()
    return shared
