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

`fence()` is called before every write to a runtime: it refuses once the renew
deadline has passed, counted from when the last successful renewal was *sent*,
so the answer errs on the safe side and does not wait for the renewal task to
notice. Status writes are fenced again inside the store's transaction by a
token: a store lease's own; for a lease kept elsewhere (a Kubernetes Lease), the
lease's fencing token as its holder recorded it in the store on taking the lease
(`StoreFencedLeases`), so a write that passed `fence()` in time but reaches the
store after a successor recorded its token is refused.

What a leader does at its renew deadline depends on why it could not renew:

- Told that another holder has the lease (the backend answers None): it stops
  leading (`lead()` is cancelled, and the region's runtime closes).
- With a store lease that cannot be reached (the store is away): it stops
  *acting* — `fence()` refuses with `LeaseUnconfirmed`, a `StoreUnavailable` the
  reconciler retries, so nothing is applied and no status is written — but
  `lead()` goes on, so what the region runs keeps serving (a local region's
  replicas would otherwise stop with their runtime: the whole region dark for
  an outage of the store alone). It keeps trying to renew every
  `retry_interval`. Renewed under the same token (nobody held the lease in
  between: each change of holder increments it), it acts again and
  `on_leading(True)` says so; answered None (another holder), or renewed under
  a newer token (someone held it meanwhile, so what this process remembers of
  the region is stale), it stops leading. A process that took the lease during
  the outage writes under a newer token, so anything the stale leader still
  sends is refused by the store.
- With a Kubernetes Lease, as client-go: it stops leading at the deadline
  (closing a Kubernetes runtime stops nothing in the cluster, so a region keeps
  serving anyway).
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
from servefleet.store import Lease, LeaseLost, Store, StoreError, StoreUnavailable

__all__ = [
    "Fenced",
    "LeaderElection",
    "LeaseBackend",
    "LeaseSettings",
    "LeaseUnconfirmed",
    "StoreFencedLeases",
    "StoreLeases",
    "TokenLease",
    "TokenLeaseBackend",
]

log = logging.getLogger(__name__)

#: What a backend raises when its lease cannot be reached now; the election retries.
UNREACHABLE = (StoreError, RuntimeUnavailable, TimeoutError)


class LeaseUnconfirmed(StoreUnavailable):
    """The store lease could not be renewed by its deadline because the store did
    not answer: this process may not act on the region now, nor has it lost it."""

    def __init__(self, name: str, holder: str) -> None:
        super().__init__(
            f"lease {name!r} of {holder!r} not renewed by its deadline (the store does not "
            "answer); not acting until it does"
        )


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


class TokenLease(Protocol):
    """A held lease whose keeper hands out a fencing token that grows at every
    change of holder (a Kubernetes Lease's `leaseTransitions`)."""

    @property
    def holder(self) -> str: ...

    @property
    def token(self) -> int: ...


class TokenLeaseBackend(LeaseBackend, Protocol):
    async def acquire_or_renew(self, holder: str, ttl: float) -> TokenLease | None: ...


@dataclass(frozen=True)
class Fenced:
    """A lease kept outside the store, held, with its token recorded in the store."""

    fence: Lease
    """The store's record of the token, which status writes are fenced with."""


class StoreFencedLeases:
    """The `LeaseBackend` of a lease the store cannot check (a Kubernetes Lease),
    whose status writes the store fences all the same: whenever this process takes
    the lease under a new token, the token is recorded in the store under `fence`
    (`Store.record_fence`, which only raises it) before `acquire_or_renew` answers,
    so before the leader acts; `fence()` then hands the store that record. A status
    write still in flight from a deposed leader reaches the store after its
    successor recorded a higher token, and is refused."""

    def __init__(self, backend: TokenLeaseBackend, store: Store, fence: str) -> None:
        self._backend = backend
        self._store = store
        self._fence = fence
        self._held: Fenced | None = None

    @property
    def name(self) -> str:
        return self._backend.name

    async def acquire_or_renew(self, holder: str, ttl: float) -> Fenced | None:
        held = await self._backend.acquire_or_renew(holder, ttl)
        if held is None:
            self._held = None
        elif self._held is None or self._held.fence.token != held.token:
            fence = await self._store.record_fence(self._fence, holder, held.token)
            self._held = None if fence is None else Fenced(fence)
            if fence is None:
                # Let go rather than renew: each take counts one more, so a lease
                # that started over (deleted and made again) climbs past the record.
                log.error(
                    "%s: %s took the lease under token %d, but the store holds a higher one "
                    "for %s (someone took it since, or the lease was deleted and started "
                    "over): letting it go without acting",
                    *(self.name, holder, held.token, self._fence),
                )
                await self._backend.release(holder)
        return self._held

    async def release(self, holder: str) -> None:
        self._held = None
        await self._backend.release(holder)


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
        """Raise `LeaseLost` unless this process may still act on the lease
        (`LeaseUnconfirmed` while a store lease cannot be renewed); the store lease
        to fence status writes with: the lease itself when it is the store's, its
        recorded token when it is `StoreFencedLeases`'."""
        if self._held is None:
            raise LeaseLost(self._name, self._holder)
        if self._monotonic() >= self._valid_until:
            if isinstance(self._held, Lease):
                raise LeaseUnconfirmed(self._name, self._holder)
            raise LeaseLost(self._name, self._holder)
        if isinstance(self._held, Fenced):
            return self._held.fence
        return self._held if isinstance(self._held, Lease) else None

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Wait for the lease and run `lead()` while holding it; when the lease is
        lost, cancel `lead()` and stand by again. Returns when `lead()` does."""
        while True:
            await self._acquire()
            log.info("%s: %s is the leader", self._name, self._holder)
            self._leading(True)
            try:
                async with asyncio.TaskGroup() as tasks:
                    keeper = tasks.create_task(self._keep())
                    await lead()
                    keeper.cancel()
                return
            except* LeaseLost:
                log.warning("%s: %s lost the lease; standing by", self._name, self._holder)
            finally:
                self._leading(False)
                await asyncio.shield(self._release())

    def _leading(self, leading: bool) -> None:
        self.is_leader = leading
        self._on_leading(leading)

    async def _try(self, within: float, *, continuing: Lease | None = None) -> bool:
        """One attempt, bounded by `within` seconds so that a hung request cannot
        keep a leader past its renew deadline. With `continuing`, a lease renewed
        under another token than its own counts as lost: someone held it between."""
        sent = self._monotonic()
        async with asyncio.timeout(within):
            held = await self._backend.acquire_or_renew(self._holder, self._settings.ttl)
        if held is None or (
            continuing is not None
            and not (isinstance(held, Lease) and held.token == continuing.token)
        ):
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
        """Renew until the lease is lost (`LeaseLost`); past the renew deadline with
        a store lease that cannot be reached, keep trying without acting (see the
        module doc)."""
        delay = self._settings.renew_interval
        unconfirmed: Lease | None = None
        """The store lease last held, while it is past its deadline and not reached."""
        while True:
            await asyncio.sleep(delay)
            within = (
                self._settings.deadline
                if unconfirmed is not None
                else self._valid_until - self._monotonic()
            )
            try:
                if not await self._try(within=within, continuing=unconfirmed):
                    raise LeaseLost(self._name, self._holder)
            except UNREACHABLE as error:
                if self._monotonic() < self._valid_until:
                    log.warning("%s: lease renewal failed, retrying: %s", self._name, error)
                    delay = min(
                        self._settings.retry_interval, self._valid_until - self._monotonic()
                    )
                    continue
                if not isinstance(self._held, Lease):
                    raise LeaseLost(self._name, self._holder) from error
                if unconfirmed is None:
                    unconfirmed = self._held
                    log.warning(
                        "%s: %s could not renew the lease by its deadline (%s); acting no more, "
                        "keeping what runs until the store answers",
                        *(self._name, self._holder, error or "timed out"),
                    )
                    self._leading(False)
                delay = self._settings.retry_interval
                continue
            if unconfirmed is not None:
                unconfirmed = None
                log.warning("%s: %s renewed the lease; acting again", self._name, self._holder)
                self._leading(True)
            delay = self._settings.renew_interval

    async def _release(self) -> None:
        self._held = None
        with contextlib.suppress(*UNREACHABLE):
            async with asyncio.timeout(self._settings.deadline):
                await self._backend.release(self._holder)
