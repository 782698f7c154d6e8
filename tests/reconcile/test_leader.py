"""Leader election over the store's leases (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest

from servefleet.reconcile.leader import LeaderElection, LeaseSettings, StoreLeases
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


async def test_a_leader_that_cannot_renew_stops_before_a_standby_can_start(
    store: Store, store_url: str
) -> None:
    partitioned = Unreachable(store)
    leases = StoreLeases(partitioned, "region/r1")  # type: ignore[arg-type]
    cut_off = LeaderElection(leases, "a", QUICK)
    lead = Leading()
    task = asyncio.create_task(cut_off.run(lead))
    other_store = await open_store(store_url)
    try:
        await eventually(lambda: is_running(lead))
        assert cut_off.fence() is not None  # the store lease, whose token the store checks

        partitioned.cut = True
        await eventually(lambda: _stopped(lead), within=QUICK.ttl * 3)
        with pytest.raises(LeaseLost):
            cut_off.fence()

        # It stopped at its renew deadline, before the TTL; once that has run out too,
        # whoever takes over gets a newer token, so the old one is fenced in the store.
        async def taken_over() -> bool:
            return await other_store.acquire_lease("region/r1", "b", ttl=30) is not None

        await eventually(taken_over, within=QUICK.ttl * 3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
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
