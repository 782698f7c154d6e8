"""Leader election over the store's leases (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from unittest.mock import ANY

import pytest

from servefleet.reconcile.leader import (
    LeaderElection,
    LeaseSettings,
    LeaseUnconfirmed,
    StoreLeases,
)
from servefleet.spec import RegionStatus
from servefleet.store import LeaseLost, Store, StoreUnavailable, open_store
from tests.waiting import eventually

QUICK = LeaseSettings(ttl=0.6, renew_interval=0.15, retry_interval=0.05)


class Leading:
    """A `lead` callable that records whether it is running."""

    def __init__(self) -> None:
        self.running = False
        self.started = 0

    async def __call__(self) -> None:
        self.running, self.started = True, self.started + 1
        try:
            await asyncio.Event().wait()
        finally:
            self.running = False


async def is_running(leading: Leading) -> bool:
    return leading.running


async def test_only_one_candidate_leads_and_a_standby_takes_over(store_url: str) -> None:
    stores = [await open_store(store_url) for _ in range(2)]
    elections = [
        LeaderElection(StoreLeases(store, "region/r1"), f"holder-{index}", QUICK)
        for index, store in enumerate(stores)
    ]
    leads = [Leading(), Leading()]
    tasks = [asyncio.create_task(e.run(lead)) for e, lead in zip(elections, leads, strict=True)]
    try:
        await eventually(lambda: _any_running(leads))
        await asyncio.sleep(3 * QUICK.ttl)  # renewals keep the first leader in place
        assert [lead.running for lead in leads].count(True) == 1
        first = 0 if leads[0].running else 1

        tasks[first].cancel()
        await asyncio.gather(tasks[first], return_exceptions=True)
        await eventually(lambda: is_running(leads[1 - first]), within=QUICK.ttl * 3)
        assert not leads[first].running
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for store in stores:
            await store.close()


class Unreachable:
    """A store whose lease calls fail from a given moment, as in a network partition."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.cut = False

    async def acquire_lease(self, name: str, holder: str, ttl: float):  # type: ignore[no-untyped-def]
        if self.cut:
            raise StoreUnavailable("partitioned")
        return await self._store.acquire_lease(name, holder, ttl)

    async def release_lease(self, lease):  # type: ignore[no-untyped-def]
        if self.cut:
            raise StoreUnavailable("partitioned")
        await self._store.release_lease(lease)


@asynccontextmanager
async def cut_off_leader(
    store: Store,
) -> AsyncIterator[tuple[LeaderElection, Leading, Unreachable]]:
    """Holder "a" leading region r1 through a store the test can cut."""
    partitioned = Unreachable(store)
    election = LeaderElection(StoreLeases(partitioned, "region/r1"), "a", QUICK)  # type: ignore[arg-type]
    lead = Leading()
    task = asyncio.create_task(election.run(lead))
    try:
        await eventually(lambda: is_running(lead))
        yield election, lead, partitioned
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def fenced(election: LeaderElection) -> type[Exception] | None:
    """What `fence()` refuses with now (None: it lets the leader act)."""
    try:
        election.fence()
    except (LeaseLost, LeaseUnconfirmed) as refusal:
        return type(refusal)
    return None


async def refused_with(election: LeaderElection, refusal: type[Exception] | None) -> bool:
    return fenced(election) is refusal


async def test_a_leader_cut_off_from_the_store_stops_acting_but_keeps_leading(
    store: Store,
) -> None:
    async with cut_off_leader(store) as (election, lead, partitioned):
        lease = election.fence()
        assert lease is not None  # the store lease, whose token the store checks

        partitioned.cut = True
        # Past its renew deadline it may not act (no apply, no status write)...
        await eventually(lambda: refused_with(election, LeaseUnconfirmed), within=QUICK.ttl * 5)
        # ...but `lead()` goes on: what the region runs keeps serving.
        assert (lead.running, lead.started) == (True, 1)

        partitioned.cut = False
        await eventually(lambda: refused_with(election, None), within=QUICK.ttl * 5)
        assert (lead.running, lead.started) == (True, 1)  # never stopped
        assert election.fence() == replace(lease, expires_at=ANY)  # the same token


async def test_a_cut_off_leader_stands_down_once_the_store_shows_another_holder(
    store: Store, store_url: str
) -> None:
    other_store = await open_store(store_url)
    try:
        async with cut_off_leader(store) as (election, lead, partitioned):
            stale = election.fence()
            assert stale is not None
            partitioned.cut = True

            # Once the lease has run out, another process takes it, with a newer token
            # that the store checks: a status write under the old one is refused.
            async def taken_over() -> bool:
                return await other_store.acquire_lease("region/r1", "b", ttl=30) is not None

            await eventually(taken_over, within=QUICK.ttl * 5)
            with pytest.raises(LeaseLost):
                await other_store.put_region_status(
                    RegionStatus(endpoint="llm", region="r1"), lease=stale
                )
            assert lead.running  # it does not know yet, and keeps what it runs

            partitioned.cut = False
            await eventually(lambda: _stopped(lead), within=QUICK.ttl * 5)
            assert fenced(election) is LeaseLost
    finally:
        await other_store.close()


async def test_a_cut_off_leader_whose_lease_another_held_meanwhile_starts_over(
    store: Store, store_url: str
) -> None:
    other_store = await open_store(store_url)
    try:
        async with cut_off_leader(store) as (election, lead, partitioned):
            stale = election.fence()
            assert stale is not None
            partitioned.cut = True

            async def held_and_released() -> bool:
                lease = await other_store.acquire_lease("region/r1", "b", ttl=30)
                if lease is None:
                    return False
                await other_store.release_lease(lease)
                return True

            await eventually(held_and_released, within=QUICK.ttl * 5)
            partitioned.cut = False

            # It gets the lease again, under a newer token: what it remembers of the
            # region may be stale, so it stops leading and leads afresh.
            async def led_again() -> bool:
                return lead.started == 2 and lead.running

            await eventually(led_again, within=QUICK.ttl * 5)
            lease = election.fence()
            assert lease is not None
            assert lease.token > stale.token
    finally:
        await other_store.close()


async def test_an_election_needs_a_name_and_holder(store: Store) -> None:
    with pytest.raises(ValueError, match="lease name and a holder"):
        LeaderElection(StoreLeases(store, "region/r1"), "", QUICK)


async def _any_running(leads: list[Leading]) -> bool:
    return any(lead.running for lead in leads)


async def _stopped(lead: Leading) -> bool:
    return not lead.running


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"ttl": 15, "renew_deadline": 20}, id="deadline-past-ttl"),
        pytest.param({"ttl": 15, "renew_interval": 12}, id="renewing-after-the-deadline"),
        pytest.param({"ttl": 0, "renew_interval": 0}, id="zero"),
    ],
)
def test_lease_settings_keep_the_renew_deadline_between_renewals_and_the_ttl(
    fields: dict[str, float],
) -> None:
    with pytest.raises(ValueError, match="renew_interval < renew_deadline <= ttl"):
        LeaseSettings(**fields)
