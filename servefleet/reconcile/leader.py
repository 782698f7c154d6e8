"""Leader election per region, over a lease kept by a `LeaseBackend`.

Two backends exist: `StoreLeases` (the store's leases, for every region by
default) and, for Kubernetes regions, a `coordination.k8s.io/v1` Lease in the
region's namespace (`servefleet.runtime.kubernetes.lease`, passed in by the
composition root, since this package does not know the Kubernetes runtime).

Renewal runs on its own task, independent of reconcile work: the reference
design renewed its Lease only between passes, so once a pass outlasted the lease
two replicas reconciled at once. Here a slow pass cannot delay a renewal. As in
client-go, three durations govern the lease (`LeaseSettings`): a leader renews
every `renew_interval`, retrying a failed renewal every `retry_interval`; one
that has not renewed within `renew_deadline` stops leading (its `lead()` is
cancelled); a standby takes over only once `ttl` has passed without a renewal.
`renew_deadline < ttl`, so the old leader has stopped before anyone can start.

`fence()` is called before every write to a runtime: it refuses (`LeaseLost`)
once the renew deadline has passed, counted from when the last successful
renewal was *sent*, so the answer errs on the safe side and does not wait for
the renewal task to notice. Status writes are fenced again inside the store's
transaction by the lease's token — for store leases only, the one kind of lease
whose token the store can check; with another backend `fence()` hands the store
no lease and status writes rest on the local check alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from servefleet.runtime.base import RuntimeUnavailable
from servefleet.store import Lease, LeaseLost, Store, StoreError

__all__ = ["LeaderElection", "LeaseBackend", "LeaseSettings", "StoreLeases"]

log = logging.getLogger(__name__)

#: What a backend raises when its lease cannot be reached now; the election retries.
UNREACHABLE = (StoreError, RuntimeUnavailable, TimeoutError)


@dataclass(frozen=True)
class LeaseSettings:
    ttl: float = 15.0
    """How long a lease lasts without renewal before a standby may take it."""
    renew_interval: float = 5.0
    retry_interval: float = 2.0
    """How often a standby tries to take the lease, and a leader retries a renewal."""
    renew_deadline: float | None = None
    """A leader that has not renewed for this long stops leading (default: 2/3 of
    `ttl`, as client-go's 10 s of 15 s)."""

    def __post_init__(self) -> None:
        if not 0 < self.renew_interval < self.deadline <= self.ttl:
            raise ValueError(
                "lease: needs 0 < renew_interval < renew_deadline <= ttl (got renew_interval "
                f"{self.renew_interval}, renew_deadline {self.deadline}, ttl {self.ttl})"
            )

    @property
    def deadline(self) -> float:
        return self.renew_deadline if self.renew_deadline is not None else self.ttl * 2 / 3


class LeaseBackend(Protocol):
    """Where one region's lease is kept, reachable by every candidate.

    Both calls raise `StoreError`, `RuntimeUnavailable` or `TimeoutError` when the
    lease cannot be reached now.
    """

    @property
    def name(self) -> str: ...

    async def acquire_or_renew(self, holder: str, ttl: float) -> object | None:
        """Take the lease for `holder`, or renew it if `holder` has it, for `ttl`
        seconds; the held lease, or None while another holder's is live (or another
        candidate won this round)."""
        ...

    async def release(self, holder: str) -> None:
        """Give the lease up, if `holder` still has it, so a standby need not wait
        for it to run out."""
        ...


class StoreLeases:
    """The `LeaseBackend` of the store's leases (token-fenced)."""

    def __init__(self, store: Store, name: str) -> None:
        self._store = store
        self._name = name
        self._held: Lease | None = None

    @property
    def name(self) -> str:
        return self._name

    async def acquire_or_renew(self, holder: str, ttl: float) -> Lease | None:
        self._held = await self._store.acquire_lease(self._name, holder, ttl)
        return self._held

    async def release(self, holder: str) -> None:
        held, self._held = self._held, None
        if held is not None:
            await self._store.release_lease(held)


class LeaderElection:
    def __init__(
        self,
        backend: LeaseBackend,
        holder: str,
        settings: LeaseSettings,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        on_leading: Callable[[bool], None] = lambda _leading: None,
    ) -> None:
        """`on_leading(leading)` hears every answer of the election: True when this
        process takes the lease, False when a round finds another holder and when
        it stops leading (metrics and readiness follow it)."""
        if not backend.name or not holder:
            raise ValueError("leader election needs a lease name and a holder id")
        self._backend = backend
        self._name = backend.name
        self._holder = holder
        self._settings = settings
        self._monotonic = monotonic
        self._on_leading = on_leading
        self._held: object | None = None
        self._valid_until = 0.0
        self.is_leader = False

    def fence(self) -> Lease | None:
        """Raise `LeaseLost` unless this process may still act on the lease; the
        store lease to fence status writes with, when the lease is the store's."""
        if self._held is None or self._monotonic() >= self._valid_until:
            raise LeaseLost(self._name, self._holder)
        return self._held if isinstance(self._held, Lease) else None

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Wait for the lease and run `lead()` while holding it; when the lease is
        lost, cancel `lead()` and stand by again. Returns when `lead()` does."""
        while True:
            await self._acquire()
            log.info("%s: %s is the leader", self._name, self._holder)
            self.is_leader = True
            self._on_leading(True)
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
                self._on_leading(False)
                await asyncio.shield(self._release())

    async def _try(self, within: float) -> bool:
        """One attempt, bounded by `within` seconds so that a hung request cannot
        keep a leader past its renew deadline."""
        sent = self._monotonic()
        async with asyncio.timeout(within):
            held = await self._backend.acquire_or_renew(self._holder, self._settings.ttl)
        if held is None:
            self._held = None
            return False
        self._held = held
        self._valid_until = sent + self._settings.deadline
        return True

    async def _acquire(self) -> None:
        while True:
            try:
                if await self._try(within=self._settings.deadline):
                    return
                self._on_leading(False)
            except UNREACHABLE as error:
                log.warning("%s: cannot reach the lease: %s", self._name, error or "timed out")
            await asyncio.sleep(self._settings.retry_interval)

    async def _keep(self) -> None:
        delay = self._settings.renew_interval
        while True:
            await asyncio.sleep(delay)
            try:
                if not await self._try(within=self._valid_until - self._monotonic()):
                    raise LeaseLost(self._name, self._holder)
                delay = self._settings.renew_interval
            except UNREACHABLE as error:
                if self._monotonic() >= self._valid_until:
                    raise LeaseLost(self._name, self._holder) from error
                log.warning("%s: lease renewal failed, retrying: %s", self._name, error)
                delay = min(self._settings.retry_interval, self._valid_until - self._monotonic())

    async def _release(self) -> None:
        self._held = None
        with contextlib.suppress(*UNREACHABLE):
            async with asyncio.timeout(self._settings.deadline):
                await self._backend.release(self._holder)
