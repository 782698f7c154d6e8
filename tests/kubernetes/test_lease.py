"""The Kubernetes Lease backend of leader election, over HTTP against the test API
server (or the real cluster of `SERVEFLEET_TEST_KUBECONFIG`).

Each candidate has a client of its own. Expiry is judged by each candidate from
when it saw the Lease change, so "not yet expired" checks are made on first
sight and need no clock control; tests that inject faults or force races need
the test server's controls.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from servefleet.reconcile.leader import LeaderElection, LeaseSettings, StoreFencedLeases
from servefleet.runtime.kubernetes.lease import Clock, HeldLease, KubernetesLease, lease_name
from servefleet.store import LeaseLost, open_store
from tests.kubeapi import matching
from tests.kubernetes.conftest import ApiTarget, api_client, api_target, read_object
from tests.waiting import eventually

REGION = "r1"
NAME = lease_name(REGION)
LONG = 15.0
"""A TTL that does not run out during a test."""


@dataclass
class Candidates:
    target: ApiTarget
    stack: AsyncExitStack

    async def new(self, holder: str, clock: Clock | None = None) -> KubernetesLease:
        """A candidate's view of the Lease, on a client of its own (its wall clock:
        `clock`, by default the real one)."""
        api = await api_client(self.target.kubeconfig, user_agent=f"candidate-{holder}")
        # Connected before it is used, so that candidates started together race.
        await read_object(api, "Lease", self.target.namespace, NAME)
        lease = KubernetesLease(
            api,
            self.target.namespace,
            REGION,
            owns_client=True,
            **({"clock": clock} if clock else {}),
        )
        self.stack.push_async_callback(lease.close)
        return lease

    async def read(self) -> dict[str, Any]:
        """The Lease as the API serves it."""
        api = await api_client(self.target.kubeconfig)
        try:
            lease = await read_object(api, "Lease", self.target.namespace, NAME)
        finally:
            await api.close()
        assert lease is not None
        return lease

    async def create(self, spec: client.V1LeaseSpec) -> None:
        """Write the Lease as some other program would."""
        api = await api_client(self.target.kubeconfig)
        try:
            lease = client.V1Lease(metadata=client.V1ObjectMeta(name=NAME), spec=spec)
            await client.CoordinationV1Api(api).create_namespaced_lease(
                self.target.namespace, lease
            )
        finally:
            await api.close()


@pytest.fixture
async def candidates(tmp_path: Path) -> AsyncIterator[Candidates]:
    async with api_target(tmp_path) as target, AsyncExitStack() as stack:
        yield Candidates(target, stack)


async def test_the_first_candidate_creates_the_lease(candidates: Candidates) -> None:
    a = await candidates.new("a")
    held = await a.acquire_or_renew("a", LONG)
    assert held is not None
    assert (held.holder, held.transitions) == ("a", 0)
    spec = (await candidates.read())["spec"]
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == LONG
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == spec["renewTime"]


async def test_a_renewal_keeps_the_holder_and_moves_renew_time(candidates: Candidates) -> None:
    a = await candidates.new("a")
    await a.acquire_or_renew("a", LONG)
    before = await candidates.read()
    reads = _count(candidates, "get")

    held = await a.acquire_or_renew("a", LONG)

    assert _count(candidates, "get") == reads  # a leader renews with one write, no read
    after = await candidates.read()
    assert held is not None
    assert held.holder == "a"
    assert after["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    assert after["spec"]["holderIdentity"] == "a"
    assert after["spec"]["acquireTime"] == before["spec"]["acquireTime"]
    assert _time(after["spec"]["renewTime"]) > _time(before["spec"]["renewTime"])
    assert after["spec"]["leaseTransitions"] == 0


async def test_a_live_lease_is_not_taken(candidates: Candidates) -> None:
    a, b = await candidates.new("a"), await candidates.new("b")
    await a.acquire_or_renew("a", LONG)

    assert await b.acquire_or_renew("b", LONG) is None
    assert await b.acquire_or_renew("b", LONG) is None
    assert (await candidates.read())["spec"]["holderIdentity"] == "a"
    assert await a.acquire_or_renew("a", LONG) is not None


async def test_an_expired_lease_is_taken_with_one_more_transition(
    candidates: Candidates,
) -> None:
    a, b = await candidates.new("a"), await candidates.new("b")
    await a.acquire_or_renew("a", 1)
    acquired = (await candidates.read())["spec"]["acquireTime"]
    assert await b.acquire_or_renew("b", 1) is None  # seen for the first time: live

    taken: list[HeldLease] = []

    async def takes_over() -> bool:
        held = await b.acquire_or_renew("b", 1)
        taken.extend([held] if held else [])
        return held is not None

    await eventually(takes_over, within=10)
    assert (taken[0].holder, taken[0].transitions) == ("b", 1)
    spec = (await candidates.read())["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)
    assert spec["acquireTime"] != acquired
    assert await a.acquire_or_renew("a", 1) is None  # the old holder has lost it


async def test_expiry_is_judged_by_the_local_clock_not_the_remote_renew_time(
    candidates: Candidates,
) -> None:
    """A holder whose clock runs an hour behind does not lose its lease early."""
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    await candidates.create(
        client.V1LeaseSpec(
            holder_identity="slow-clock",
            lease_duration_seconds=1,
            acquire_time=long_ago,
            renew_time=long_ago,
            lease_transitions=3,
        )
    )
    b = await candidates.new("b")
    assert await b.acquire_or_renew("b", 1) is None

    async def takes_over() -> bool:
        return await b.acquire_or_renew("b", 1) is not None

    await eventually(takes_over, within=10)
    assert (await candidates.read())["spec"]["leaseTransitions"] == 4


async def test_lease_times_are_written_by_the_clock_given_and_a_clock_ahead_takes_nothing(
    candidates: Candidates,
) -> None:
    """A candidate whose clock is 30 s ahead writes its times from that clock (as a
    host with that clock would), and neither it nor a candidate with the right time
    takes the other's live lease: expiry is never judged by the wall clock."""
    ahead = timedelta(seconds=30)
    a = await candidates.new("a", clock=lambda: datetime.now(UTC) + ahead)
    b = await candidates.new("b")
    assert await b.acquire_or_renew("b", LONG) is not None
    assert await a.acquire_or_renew("a", LONG) is None
    await b.release("b")
    before = datetime.now(UTC)
    assert await a.acquire_or_renew("a", LONG) is not None
    renewed = _time((await candidates.read())["spec"]["renewTime"])
    assert renewed >= before + ahead
    assert await b.acquire_or_renew("b", LONG) is None


async def test_a_released_lease_is_taken_at_once(candidates: Candidates) -> None:
    a, b = await candidates.new("a"), await candidates.new("b")
    await a.acquire_or_renew("a", LONG)
    assert await b.acquire_or_renew("b", LONG) is None

    await a.release("a")

    spec = (await candidates.read())["spec"]
    assert not spec.get("holderIdentity")
    assert spec["leaseDurationSeconds"] == 1
    held = await b.acquire_or_renew("b", LONG)
    assert held is not None
    assert held.transitions == 1


async def test_a_candidate_releases_only_a_lease_it_holds(candidates: Candidates) -> None:
    a, b = await candidates.new("a"), await candidates.new("b")
    await a.acquire_or_renew("a", LONG)
    await b.acquire_or_renew("b", LONG)

    await b.release("b")

    assert (await candidates.read())["spec"]["holderIdentity"] == "a"


async def test_candidates_racing_for_an_absent_lease_elect_exactly_one(
    candidates: Candidates,
) -> None:
    racers = [await candidates.new(holder) for holder in ("a", "b", "c")]
    if candidates.target.server is not None:
        # Hold the reads back so that the candidates find the Lease absent together.
        candidates.target.server.add_latency(0.5, matching(verb="get", resource="leases"))

    held = await _race(racers)

    assert len(held) == 1
    assert (await candidates.read())["spec"]["holderIdentity"] == held[0].holder
    if candidates.target.server is not None:
        assert _count(candidates, "create") >= 2  # one at least lost with 409 AlreadyExists


async def test_candidates_racing_for_a_released_lease_elect_exactly_one(
    candidates: Candidates,
) -> None:
    first = await candidates.new("first")
    await first.acquire_or_renew("first", LONG)
    await first.release("first")
    racers = [await candidates.new(holder) for holder in ("a", "b", "c")]
    if candidates.target.server is not None:
        candidates.target.server.add_latency(0.5, matching(verb="get", resource="leases"))

    held = await _race(racers)

    assert len(held) == 1
    spec = (await candidates.read())["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == (held[0].holder, 1)
    if candidates.target.server is not None:
        # The release, then two racers at least: one lost with 409 Conflict.
        assert _count(candidates, "update") >= 1 + 2


async def test_a_leader_cut_off_from_the_api_stops_at_its_renew_deadline(
    candidates: Candidates,
) -> None:
    kube = candidates.target.need_server()
    settings = LeaseSettings(ttl=2, renew_interval=0.2, retry_interval=0.1, renew_deadline=1)
    election = LeaderElection(await candidates.new("a"), "a", settings)
    leading = asyncio.Event()
    stopped = asyncio.Event()

    async def lead() -> None:
        leading.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    task = asyncio.create_task(election.run(lead))
    try:
        await asyncio.wait_for(leading.wait(), 10)
        assert election.fence() is None  # leading; nothing for the store to check

        kube.hang(times=None, match=matching(resource="leases"))
        await asyncio.wait_for(stopped.wait(), 10)
        with pytest.raises(LeaseLost):
            election.fence()

        # Once it is gone for good, the Lease it still names runs out for a standby.
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        kube.clear_faults()
        b = await candidates.new("b")

        async def takes_over() -> bool:
            return await b.acquire_or_renew("b", 2) is not None

        await eventually(takes_over, within=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _race(racers: list[KubernetesLease]) -> list[HeldLease]:
    outcomes = await asyncio.gather(
        *(racer.acquire_or_renew(holder, LONG) for racer, holder in zip(racers, "abc", strict=True))
    )
    return [held for held in outcomes if held is not None]


def _count(candidates: Candidates, verb: str) -> int:
    server = candidates.target.server
    return server.count(verb=verb, resource="leases") if server is not None else 0


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


async def test_requests_name_servefleet_and_this_process_in_their_user_agent(
    tmp_path: Path,
) -> None:
    """An audit log tells which reconciler wrote: `servefleet/<version> (<host>:<pid>)`,
    the `host:pid` that begins the Lease holder identity of `servefleet up`."""
    async with api_target(tmp_path) as target:
        kubeconfig = target.kubeconfig
        lease = await KubernetesLease.from_kubeconfig(target.namespace, REGION, kubeconfig)
        try:
            assert await lease.acquire_or_renew("a", LONG) is not None
        finally:
            await lease.close()
        if target.server is not None:
            agents = {info.user_agent for info in target.server.request_log}
            assert agents == {
                f"servefleet/{version('servefleet')} ({socket.gethostname()}:{os.getpid()})"
            }
        api = await api_client(kubeconfig)
        try:
            written = await read_object(api, "Lease", target.namespace, NAME)
        finally:
            await api.close()
        assert written is not None
        # The API server names the writer of a field after the User-Agent's product.
        managers = {entry["manager"] for entry in written["metadata"]["managedFields"]}
        assert managers == {"servefleet"}


async def test_a_lease_made_again_climbs_past_the_token_the_store_recorded(
    candidates: Candidates, sqlite_url: str
) -> None:
    store = await open_store(sqlite_url)
    candidates.stack.push_async_callback(store.close)
    # The Lease counted to 2 under "old" before someone deleted it.
    assert await store.record_fence("region/r1", "old", 2) is not None
    fenced = StoreFencedLeases(await candidates.new("a"), store, "region/r1")

    taken = None
    async with asyncio.timeout(30):
        while taken is None:
            taken = await fenced.acquire_or_renew("a", LONG)

    assert taken.fence.token == 3
    assert (await candidates.read())["spec"]["leaseTransitions"] == 3
