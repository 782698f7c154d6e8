"""The promises every `Store` backend keeps (see `servefleet/store/base.py`).

Each test runs against a real SQLite file and a real PostgreSQL schema.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from servefleet.spec import STORED, DesiredState, Endpoint, Region, RegionKind, RegionState
from servefleet.store import (
    Change,
    ChangeKind,
    EndpointExists,
    EndpointNotFound,
    FeedCompacted,
    Lease,
    LeaseLost,
    RegionChanged,
    RegionNotFound,
    RevisionConflict,
    Store,
    open_store,
)
from servefleet.store.base import FENCE_EXPIRES_AT
from servefleet.store.dynamodb import DynamoStore
from servefleet.store.sql import SqlStore
from tests.conftest import EVERY_STORE
from tests.factories import make_endpoint, make_spec, make_status

pytestmark = EVERY_STORE


async def take(changes: AsyncIterator[Change], count: int) -> list[Change]:
    async with asyncio.timeout(10):
        return [await anext(changes) for _ in range(count)]


async def test_create_then_get_returns_the_record_at_revision_one(store: Store) -> None:
    created = await store.create_endpoint(make_endpoint("llm", ["r1", "r2"], replicas=3))

    fetched = await store.get_endpoint("llm")

    assert created.revision == 1
    assert fetched == created
    assert fetched.spec.replicas == 3
    assert fetched.target_regions == ["r1", "r2"]


async def test_create_refuses_a_taken_name_and_keeps_the_first(store: Store) -> None:
    await store.create_endpoint(make_endpoint("llm", replicas=1))

    with pytest.raises(EndpointExists, match="'llm' already exists"):
        await store.create_endpoint(make_endpoint("llm", replicas=5))

    assert (await store.get_endpoint("llm")).spec.replicas == 1


async def test_get_of_a_missing_endpoint_names_it(store: Store) -> None:
    with pytest.raises(EndpointNotFound, match="'ghost' not found"):
        await store.get_endpoint("ghost")


async def test_update_at_the_current_revision_moves_to_the_next(store: Store) -> None:
    created = await store.create_endpoint(make_endpoint())
    changed = created.model_copy(update={"spec": make_spec(replicas=7)})

    updated = await store.update_endpoint(changed, expected_revision=1)

    assert updated.revision == 2
    assert await store.get_endpoint("llm") == updated


async def test_update_at_a_stale_revision_conflicts_and_changes_nothing(store: Store) -> None:
    created = await store.create_endpoint(make_endpoint(replicas=1))
    first = await store.update_endpoint(
        created.model_copy(update={"spec": make_spec(replicas=2)}), expected_revision=1
    )

    with pytest.raises(RevisionConflict) as conflict:
        await store.update_endpoint(
            created.model_copy(update={"spec": make_spec(replicas=9)}), expected_revision=1
        )

    assert (conflict.value.expected, conflict.value.found) == (1, 2)
    assert await store.get_endpoint("llm") == first


async def test_update_of_a_missing_endpoint_conflicts(store: Store) -> None:
    with pytest.raises(RevisionConflict, match="no longer exists"):
        await store.update_endpoint(make_endpoint("ghost"), expected_revision=1)


async def test_list_filters_by_region_and_state_in_name_order(store: Store) -> None:
    await store.create_endpoint(make_endpoint("b", ["r1"]))
    await store.create_endpoint(make_endpoint("a", ["r1", "r2"]))
    stopped = await store.create_endpoint(make_endpoint("c", ["r2"]))
    await store.update_endpoint(
        stopped.model_copy(update={"desired_state": DesiredState.STOPPED}), expected_revision=1
    )

    assert [e.name for e in await store.list_endpoints()] == ["a", "b", "c"]
    assert [e.name for e in await store.list_endpoints(region="r2")] == ["a", "c"]
    stopped_names = [e.name for e in await store.list_endpoints(desired_state=DesiredState.STOPPED)]
    assert stopped_names == ["c"]


async def test_purge_removes_the_record_and_its_region_status(store: Store) -> None:
    await store.create_endpoint(make_endpoint("llm"))
    await store.create_endpoint(make_endpoint("other"))
    await store.put_region_status(make_status("llm", "r1"))
    await store.put_region_status(make_status("other", "r1"))

    await store.purge_endpoint("llm", expected_revision=1)

    with pytest.raises(EndpointNotFound):
        await store.get_endpoint("llm")
    assert [s.endpoint for s in await store.list_region_status()] == ["other"]


async def test_purge_at_a_stale_revision_conflicts_and_keeps_the_record(store: Store) -> None:
    created = await store.create_endpoint(make_endpoint("llm"))
    await store.update_endpoint(created, expected_revision=1)

    with pytest.raises(RevisionConflict):
        await store.purge_endpoint("llm", expected_revision=1)

    assert (await store.get_endpoint("llm")).revision == 2


async def test_region_status_is_one_record_per_endpoint_and_region(store: Store) -> None:
    await store.put_region_status(make_status("llm", "r1", replicas_ready=1))
    await store.put_region_status(make_status("llm", "r2", replicas_ready=2))
    await store.put_region_status(make_status("llm", "r1", replicas_ready=3, routed=True))
    await store.put_region_status(make_status("other", "r1"))

    mine = await store.list_region_status(endpoint="llm")
    in_r1 = await store.list_region_status(region="r1")

    assert [(s.region, s.replicas_ready, s.routed) for s in mine] == [
        ("r1", 3, True),
        ("r2", 2, False),
    ]
    assert [s.endpoint for s in in_r1] == ["llm", "other"]
    assert await store.list_region_status(endpoint="llm", region="r2") == [mine[1]]


async def test_regions_are_registered_listed_and_removed(store: Store) -> None:
    local = Region(name="r1", kind=RegionKind.LOCAL)
    cluster = Region(
        name="eu",
        kind=RegionKind.KUBERNETES,
        context="eu",
        namespace="llm",
        autoscaler="keda",
        prometheus_url="http://prometheus.monitoring:9090",
    )
    await store.put_region(local)
    await store.put_region(cluster)

    assert await store.list_regions() == [cluster, local]
    assert await store.get_region("eu") == cluster

    await store.delete_region("eu")
    assert await store.list_regions() == [local]
    with pytest.raises(RegionNotFound, match="'eu' is not registered"):
        await store.get_region("eu")
    with pytest.raises(RegionNotFound):
        await store.delete_region("eu")


async def test_a_region_is_replaced_only_from_the_record_its_writer_read(store: Store) -> None:
    eu = Region(name="eu", kind=RegionKind.KUBERNETES, ingress_url="https://eu.example.com")
    await store.replace_region(eu, expected=None)
    assert await store.get_region("eu") == eu

    moved = eu.model_copy(update={"namespace": "other"})
    with pytest.raises(RegionChanged, match="'eu' was changed by another writer"):
        await store.replace_region(moved, expected=None)  # registered meanwhile
    drained = eu.model_copy(update={"drained": True})
    await store.replace_region(drained, expected=eu)
    with pytest.raises(RegionChanged):
        await store.replace_region(moved, expected=eu)  # drained meanwhile

    assert await store.list_regions() == [drained]


async def test_feed_delivers_every_write_in_order(store: Store) -> None:
    start = await store.feed_position()
    created = await store.create_endpoint(make_endpoint("a"))
    await store.create_endpoint(make_endpoint("b"))
    await store.update_endpoint(created, expected_revision=1)
    await store.put_region_status(make_status("a", "r1"))  # a report is not a change of intent
    await store.purge_endpoint("b", expected_revision=1)

    changes = await take(aiter(store.watch(start)), 4)

    assert [(c.name, c.revision, c.kind) for c in changes] == [
        ("a", 1, ChangeKind.PUT),
        ("b", 1, ChangeKind.PUT),
        ("a", 2, ChangeKind.PUT),
        ("b", 2, ChangeKind.PURGED),
    ]
    assert [c.seq for c in changes] == sorted({c.seq for c in changes})
    assert changes[-1].seq == await store.feed_position()


async def test_feed_resumes_after_the_last_position_seen(store: Store) -> None:
    start = await store.feed_position()
    for name in ("a", "b", "c"):
        await store.create_endpoint(make_endpoint(name))
    first_two = await take(aiter(store.watch(start)), 2)

    rest = await take(aiter(store.watch(first_two[-1].seq)), 1)

    assert [c.name for c in first_two + rest] == ["a", "b", "c"]


async def test_feed_wakes_for_a_write_made_by_another_connection(
    store: Store, store_url: str
) -> None:
    changes = aiter(store.watch(await store.feed_position()))
    waiting = asyncio.ensure_future(take(changes, 1))
    await asyncio.sleep(0.2)
    assert not waiting.done()

    other = await open_store(store_url)
    try:
        await other.create_endpoint(make_endpoint("from-elsewhere"))
    finally:
        await other.close()

    assert [c.name for c in await waiting] == ["from-elsewhere"]


async def test_a_watcher_cancelled_as_a_change_wakes_it_ends(store: Store) -> None:
    """The write wakes the waiting watcher and the cancel comes in the same turn of
    the loop: Python 3.11's `asyncio.wait_for` returned the wake-up and dropped the
    cancel, so a reconciler being stopped kept following the feed forever."""
    changes = aiter(store.watch(await store.feed_position()))

    async def follow() -> None:
        async for _ in changes:
            pass

    following = asyncio.ensure_future(follow())
    await asyncio.sleep(0.5)  # waiting for a wake-up by now

    await store.create_endpoint(make_endpoint("a"))  # returns right after the wake-up
    following.cancel()

    await asyncio.wait({following}, timeout=10)
    assert following.cancelled()


async def test_feed_refuses_a_compacted_position(store: Store) -> None:
    assert isinstance(store, SqlStore | DynamoStore)
    store.feed_retention = 3
    start = await store.feed_position()
    for index in range(8):
        await store.create_endpoint(make_endpoint(f"e{index}"))

    with pytest.raises(FeedCompacted):
        await anext(aiter(store.watch(start)))
    recent = await take(aiter(store.watch(start + 5)), 3)
    assert [c.name for c in recent] == ["e5", "e6", "e7"]


async def test_concurrent_writers_lose_nothing(store: Store, store_url: str) -> None:
    """Twenty writers on their own connections, each adding its own env var by
    read-modify-CAS; every change must survive."""
    await store.create_endpoint(make_endpoint("llm"))

    async def writer(index: int) -> int:
        own = await open_store(store_url)
        conflicts = 0
        try:
            while True:
                current = await own.get_endpoint("llm")
                env = {**current.spec.env, f"WRITER_{index}": str(index)}
                changed = current.model_copy(
                    update={"spec": current.spec.model_copy(update={"env": env})}
                )
                try:
                    await own.update_endpoint(changed, expected_revision=current.revision)
                    return conflicts
                except RevisionConflict:
                    conflicts += 1
        finally:
            await own.close()

    await asyncio.gather(*(writer(index) for index in range(20)))

    final = await store.get_endpoint("llm")
    assert final.spec.env == {f"WRITER_{index}": str(index) for index in range(20)}
    assert final.revision == 21


async def test_lease_is_exclusive_until_its_ttl_passes(store: Store) -> None:
    first = await store.acquire_lease("region/r1", "a", ttl=0.5)
    assert first is not None

    assert await store.acquire_lease("region/r1", "b", ttl=0.5) is None
    renewed = await store.acquire_lease("region/r1", "a", ttl=0.5)
    assert renewed is not None
    assert renewed.token == first.token
    assert renewed.expires_at >= first.expires_at

    await asyncio.sleep(0.7)
    taken = await store.acquire_lease("region/r1", "b", ttl=5)
    assert taken is not None
    assert taken.token == first.token + 1
    assert await store.acquire_lease("region/r1", "a", ttl=5) is None


async def test_released_lease_can_be_taken_at_once(store: Store) -> None:
    held = await store.acquire_lease("region/r1", "a", ttl=30)
    assert held is not None

    await store.release_lease(held)

    assert await store.acquire_lease("region/r1", "b", ttl=30) is not None


async def test_leases_are_independent_by_name(store: Store) -> None:
    assert await store.acquire_lease("region/r1", "a", ttl=30) is not None
    assert await store.acquire_lease("region/r2", "b", ttl=30) is not None


async def test_a_deposed_holder_cannot_write_status(store: Store) -> None:
    deposed = await store.acquire_lease("region/r1", "a", ttl=0.3)
    assert deposed is not None
    await store.put_region_status(make_status(state=RegionState.READY), lease=deposed)
    await asyncio.sleep(0.5)
    successor = await store.acquire_lease("region/r1", "b", ttl=30)
    assert successor is not None

    with pytest.raises(LeaseLost, match="no longer held by 'a'"):
        await store.put_region_status(make_status(state=RegionState.FAILED), lease=deposed)
    await store.put_region_status(make_status(state=RegionState.DEGRADED), lease=successor)

    (status,) = await store.list_region_status()
    assert status.state is RegionState.DEGRADED


async def test_an_expired_lease_fences_even_before_anyone_takes_over(store: Store) -> None:
    lapsed = await store.acquire_lease("region/r1", "a", ttl=0.2)
    assert lapsed is not None
    await asyncio.sleep(0.4)

    with pytest.raises(LeaseLost):
        await store.put_region_status(make_status(), lease=lapsed)
    assert await store.list_region_status() == []


async def test_a_status_write_under_an_older_fence_token_is_refused(store: Store) -> None:
    older = await store.record_fence("kubernetes/r1", "a", 3)
    assert older is not None
    await store.put_region_status(make_status(state=RegionState.READY), lease=older)
    newer = await store.record_fence("kubernetes/r1", "b", 4)
    assert newer is not None

    with pytest.raises(LeaseLost, match="no longer held by 'a'"):
        await store.put_region_status(make_status(state=RegionState.FAILED), lease=older)

    (status,) = await store.list_region_status()
    assert status.state is RegionState.READY
    await store.put_region_status(make_status(state=RegionState.DEGRADED), lease=newer)
    (status,) = await store.list_region_status()
    assert status.state is RegionState.DEGRADED


async def test_a_fence_token_never_goes_down(store: Store) -> None:
    newer = await store.record_fence("kubernetes/r1", "b", 4)
    assert newer is not None

    assert await store.record_fence("kubernetes/r1", "a", 3) is None
    assert await store.record_fence("kubernetes/r1", "a", 4) is None
    assert await store.record_fence("kubernetes/r1", "b", 4) == newer
    with pytest.raises(LeaseLost):
        await store.put_region_status(
            make_status(), lease=Lease("kubernetes/r1", "a", 3, FENCE_EXPIRES_AT)
        )
    await store.put_region_status(make_status(), lease=newer)


async def test_concurrent_candidates_get_exactly_one_lease(store: Store, store_url: str) -> None:
    async def candidate(index: int) -> bool:
        own = await open_store(store_url)
        try:
            return await own.acquire_lease("region/r1", f"c{index}", ttl=30) is not None
        finally:
            await own.close()

    winners = await asyncio.gather(*(candidate(index) for index in range(10)))

    assert sum(winners) == 1


async def test_a_cancelled_write_leaves_no_transaction_open(store: Store, store_url: str) -> None:
    """A task cancelled mid-write (a lost leader, Ctrl-C) must not hold the database:
    every other connection can still write at once."""
    other = await open_store(store_url)
    try:
        for attempt in range(100):
            write = asyncio.ensure_future(store.acquire_lease("region/r1", "a", ttl=30))
            await asyncio.sleep(0.0005 * (attempt % 5))
            write.cancel()
            await asyncio.gather(write, return_exceptions=True)
            async with asyncio.timeout(5):
                assert await other.acquire_lease(f"region/x{attempt}", "b", ttl=30) is not None
    finally:
        await other.close()


LEGACY_SPECS = {
    # Accepted before scale to zero needed a request metric.
    "cpu_only_to_zero": (
        {
            "autoscaling": {
                "enabled": True,
                "min_replicas": 0,
                "max_replicas": 4,
                "metrics": [{"type": "cpu", "target": 70}],
            }
        },
        "min_replicas: 0 needs a concurrency or rps metric",
    ),
    # Accepted before a NUL was refused in what reaches exec().
    "nul_in_argv_and_env": (
        {"command": ["serve", "--tag=\x00"], "env": {"A": "x\x00y"}},
        "must not contain a NUL character",
    ),
}


@pytest.mark.parametrize(("changed", "refusal"), LEGACY_SPECS.values(), ids=LEGACY_SPECS.keys())
async def test_a_record_written_before_a_newer_input_rule_still_reads_back(
    store: Store, changed: dict[str, object], refusal: str
) -> None:
    """A record a newer input rule refuses must not stop every listing that holds it."""
    written = make_endpoint("legacy").model_dump(mode="json")
    written["spec"].update(changed)
    with pytest.raises(ValueError, match=refusal):
        Endpoint.model_validate(written)
    legacy = Endpoint.model_validate(written, context=STORED)
    await store.create_endpoint(legacy)

    assert (await store.get_endpoint("legacy")).spec == legacy.spec
    assert [endpoint.name for endpoint in await store.list_endpoints()] == ["legacy"]
