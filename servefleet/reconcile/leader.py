"""Leader election per region through the store's leases.

Renewal runs on its own task, independent of reconcile work: the reference
design renewed its Lease only between passes, so once a pass outlasted the lease
two replicas reconciled at once. Here a slow pass cannot delay a renewal, and a
renewal that fails past the lease's end cancels the leader's work.

`fence()` is called before every write to a runtime: it refuses (`LeaseLost`)
once the lease may have expired as far as this process can tell, counted from
when the last successful renewal was *sent*, so the answer errs on the safe side.
Status writes are fenced again inside the store's transaction by the lease token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from servefleet.store import Lease, LeaseLost, Store, StoreError

__all__ = ["LeaderElection", "LeaseSettings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    ttl: float = 15.0
    renew_interval: float = 5.0
    retry_interval: float = 2.0
    """How often a standby tries to take the lease."""


class LeaderElection:
    def __init__(
        self,
        store: Store,
        name: str,
        holder: str,
        settings: LeaseSettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not name or not holder:
            raise ValueError("leader election needs a lease name and a holder id")
        self._store = store
        self._name = name
        self._holder = holder
        self._settings = settings
        self._monotonic = monotonic
        self._lease: Lease | None = None
        self._valid_until = 0.0
        self.is_leader = False

    def fence(self) -> Lease:
        """The lease, while this process may still act on it."""
        if self._lease is None or self._monotonic() >= self._valid_until:
            raise LeaseLost(self._name, self._holder)
        return self._lease

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Wait for the lease and run `lead()` while holding it; when the lease is
        lost, cancel `lead()` and stand by again. Returns when `lead()` does."""
        while True:
            await self._acquire()
            log.info("%s: %s is the leader", self._name, self._holder)
            self.is_leader = True
            try:
                async with asyncio.TaskGroup() as tasks:
                    keeper = tasks.create_task(self._keep())
                    await lead()
                    keeper.cancel()
                return
            except* LeaseLost:
                log.warning("%s: %s lost the lease; standing by", self._name, self._holder)
            finally:
                self.is_leader = False
                await asyncio.shield(self._release())

    async def _try(self) -> bool:
        sent = self._monotonic()
        lease = await self._store.acquire_lease(self._name, self._holder, self._settings.ttl)
        if lease is None:
            return False
        self._lease = lease
        self._valid_until = sent + self._settings.ttl
        return True

    async def _acquire(self) -> None:
        while True:
            try:
                if await self._try():
                    return
            except StoreError as error:
                log.warning("%s: cannot reach the store for the lease: %s", self._name, error)
            await asyncio.sleep(self._settings.retry_interval)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._settings.renew_interval)
            try:
                if not await self._try():
                    raise LeaseLost(self._name, self._holder)
            except StoreError as error:
                if self._monotonic() >= self._valid_until:
                    raise LeaseLost(self._name, self._holder) from error
                log.warning("%s: lease renewal failed, retrying: %s", self._name, error)

    async def _release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(StoreError):
                await self._store.release_lease(lease)
