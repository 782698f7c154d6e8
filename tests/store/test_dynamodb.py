"""What the DynamoDB store does beyond the contract suite, against moto in server mode:
listings past DynamoDB's 1 MB page, racing conditional writers, throttling and
writes applied but answered 500 (by a real HTTP proxy in front of moto), and records
too large for one item (refused when written, and by `check_endpoint` before
anything is)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import ClientSession, web

from servefleet.service import EndpointService
from servefleet.spec import Endpoint, EndpointManifest, InvalidInput, Region, RegionKind
from servefleet.store import (
    Change,
    ChangeKind,
    RevisionConflict,
    Store,
    StoreError,
    StoreUnavailable,
    open_store,
)
from servefleet.store.dynamodb_client import TableMissing
from servefleet.store.dynamodb_table import cloudformation_definition, parse_url
from tests.factories import make_endpoint, make_spec, make_status
from tests.store.moto import drop_table, fresh_table_url, session

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def table_url(moto_endpoint: str) -> AsyncIterator[str]:
    url = fresh_table_url(moto_endpoint)
    store = await open_store(url, init=True)
    await store.close()
    yield url
    await drop_table(url)


@pytest.fixture
async def store(table_url: str) -> AsyncIterator[Store]:
    opened = await open_store(table_url)
    yield opened
    await opened.close()


async def test_listings_page_past_one_megabyte(store: Store) -> None:
    """300 reports of about 5 KB are well over DynamoDB's 1 MB page: every one comes back.
    (Not 1,500 of 1 KB: the same two pages, at five times moto's CPU for the writes.)"""
    message = "x" * 5000
    names = [f"e{index:04d}" for index in range(300)]
    gate = asyncio.Semaphore(8)

    async def report(name: str) -> None:
        async with gate:
            await store.put_region_status(make_status(name, "r1", message=message))

    await asyncio.gather(*(report(name) for name in names))
    await store.put_region_status(make_status("e0000", "r2", message=message))

    listed = await store.list_region_status()
    in_r1 = await store.list_region_status(region="r1")

    assert [(s.endpoint, s.region) for s in listed] == [
        ("e0000", "r1"),
        ("e0000", "r2"),
        *[(name, "r1") for name in names[1:]],
    ]
    assert [s.endpoint for s in in_r1] == names


async def test_of_twenty_writers_at_one_revision_exactly_one_wins(
    store: Store, table_url: str
) -> None:
    created = await store.create_endpoint(make_endpoint("llm", replicas=1))
    writers = [await open_store(table_url) for _ in range(20)]
    try:

        async def write(index: int, own: Store) -> int:
            changed = created.model_copy(update={"spec": make_spec(replicas=index + 2)})
            await own.update_endpoint(changed, expected_revision=1)
            return index

        results = await asyncio.gather(
            *(write(i, own) for i, own in enumerate(writers)), return_exceptions=True
        )
    finally:
        for own in writers:
            await own.close()

    winners = [result for result in results if isinstance(result, int)]
    conflicts = [result for result in results if isinstance(result, RevisionConflict)]
    assert len(winners) == 1
    assert len(conflicts) == 19
    assert {conflict.found for conflict in conflicts} == {2}
    final = await store.get_endpoint("llm")
    assert (final.revision, final.spec.replicas) == (2, winners[0] + 2)
    start = await store.feed_position() - 2
    changes = [change async for change in _take(store, start, 2)]
    assert [(c.name, c.revision) for c in changes] == [("llm", 1), ("llm", 2)]


async def _take(store: Store, since: int, count: int) -> AsyncIterator[Change]:
    async with asyncio.timeout(10):
        changes = aiter(store.watch(since))
        for _ in range(count):
            yield await anext(changes)


def _error(status: int, code: str, message: str) -> web.Response:
    """An error answer as DynamoDB writes it."""
    body = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message}
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/x-amz-json-1.0"
    )


@dataclass
class FaultProxy:
    """Forwards to moto, but answers the next `throttle` requests with DynamoDB's
    throttling error, as an overloaded table does; and the next `lose_answers`
    requests of operation `lose_answers_to` (e.g. "PutItem") with a 500 after moto
    has applied them, as DynamoDB documents it may."""

    upstream: str
    throttle: int = 0
    error: str = "ThrottlingException"
    status: int = 400
    throttled: int = 0
    forwarded: int = 0
    lose_answers_to: str = ""
    lose_answers: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.throttle > 0:
            self.throttle -= 1
            self.throttled += 1
            return _error(
                self.status, self.error, "Rate of requests exceeds the allowed throughput."
            )
        self.forwarded += 1
        operation = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            ClientSession() as session,
            session.post(self.upstream, data=await request.read(), headers=headers) as answer,
        ):
            body = await answer.read()
        if operation == self.lose_answers_to and answer.status == 200 and self.lose_answers > 0:
            self.lose_answers -= 1
            return _error(500, "InternalServerError", "Internal server error")
        return web.Response(
            status=answer.status,
            body=body,
            headers={"content-type": answer.headers.get("content-type", "")},
        )


@pytest.fixture
async def proxy(moto_endpoint: str) -> AsyncIterator[tuple[FaultProxy, str]]:
    throttling = FaultProxy(moto_endpoint)
    app = web.Application()
    app.router.add_route("POST", "/", throttling.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield throttling, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    ("error", "status"),
    [
        ("ThrottlingException", 400),
        ("ProvisionedThroughputExceededException", 400),
        ("InternalServerError", 500),
    ],
)
async def test_throttled_and_failed_requests_are_retried_until_they_pass(
    table_url: str, proxy: tuple[FaultProxy, str], error: str, status: int
) -> None:
    throttling, proxy_url = proxy
    through_proxy = table_url.replace(parse_url(table_url).endpoint_url or "", proxy_url)
    store = await open_store(through_proxy)
    try:
        throttling.error, throttling.status = error, status
        throttling.throttle = 4

        await store.create_endpoint(make_endpoint("llm"))

        assert throttling.throttled == 4
        assert (await store.get_endpoint("llm")).revision == 1
    finally:
        await store.close()


async def test_throttling_that_does_not_end_is_store_unavailable(
    table_url: str, proxy: tuple[FaultProxy, str]
) -> None:
    throttling, proxy_url = proxy
    through_proxy = table_url.replace(parse_url(table_url).endpoint_url or "", proxy_url)
    store = await open_store(through_proxy)
    try:
        throttling.throttle = 1_000

        with pytest.raises(StoreUnavailable, match="ThrottlingException"):
            await store.create_endpoint(make_endpoint("llm"))

        throttling.throttle = 0
        assert await store.list_endpoints() == []
        assert await store.feed_position() == 0
    finally:
        await store.close()


@pytest.fixture
async def faulty(
    table_url: str, proxy: tuple[FaultProxy, str]
) -> AsyncIterator[tuple[FaultProxy, Store]]:
    """The proxy, and a store that reaches moto only through it."""
    fault, proxy_url = proxy
    store = await open_store(table_url.replace(parse_url(table_url).endpoint_url or "", proxy_url))
    yield fault, store
    await store.close()


async def test_a_scale_applied_but_answered_500_is_announced(
    store: Store, faulty: tuple[FaultProxy, Store]
) -> None:
    """The retry of an update whose 500 hid its success finds the update stored: that
    is success, so the change reaches the feed, and a reconciler watching elsewhere
    hears of it at its next poll rather than at the resync minutes later."""
    fault, through_proxy = faulty
    service = EndpointService(through_proxy)
    await service.add_region(Region(name="r1", kind=RegionKind.LOCAL))
    await service.deploy("llm", make_spec(replicas=1))
    position = await store.feed_position()
    fault.lose_answers_to, fault.lose_answers = "PutItem", 1

    scaled = await service.scale("llm", 4)

    assert fault.lose_answers == 0
    assert scaled.spec.replicas == 4
    assert await store.get_endpoint("llm") == scaled
    changes = [change async for change in _take(store, position, 1)]
    assert [(c.name, c.revision) for c in changes] == [("llm", scaled.revision)]
    assert await store.feed_position() == position + 1


async def test_a_create_applied_but_answered_500_is_created_and_announced(
    store: Store, faulty: tuple[FaultProxy, Store]
) -> None:
    fault, through_proxy = faulty
    fault.lose_answers_to, fault.lose_answers = "PutItem", 1

    created = await through_proxy.create_endpoint(make_endpoint("llm"))

    assert fault.lose_answers == 0
    assert await store.get_endpoint("llm") == created
    changes = [change async for change in _take(store, 0, 1)]
    assert [(c.name, c.revision, c.kind) for c in changes] == [("llm", 1, ChangeKind.PUT)]


async def test_a_purge_applied_but_answered_500_is_done_and_announced(
    store: Store, faulty: tuple[FaultProxy, Store]
) -> None:
    fault, through_proxy = faulty
    created = await store.create_endpoint(make_endpoint("llm"))
    await store.put_region_status(make_status("llm", "r1"))
    position = await store.feed_position()
    fault.lose_answers_to, fault.lose_answers = "TransactWriteItems", 1

    await through_proxy.purge_endpoint("llm", expected_revision=created.revision)

    assert fault.lose_answers == 0
    assert await store.list_endpoints() == []
    assert await store.list_region_status() == []
    changes = [change async for change in _take(store, position, 1)]
    assert [(c.name, c.kind) for c in changes] == [("llm", ChangeKind.PURGED)]


async def test_a_feed_append_applied_but_answered_500_is_appended_once(
    store: Store, faulty: tuple[FaultProxy, Store]
) -> None:
    fault, through_proxy = faulty
    fault.lose_answers_to, fault.lose_answers = "UpdateItem", 1

    await through_proxy.create_endpoint(make_endpoint("llm"))

    assert fault.lose_answers == 0
    assert await store.feed_position() == 1


async def test_a_region_deleted_but_answered_500_is_deleted(
    store: Store, faulty: tuple[FaultProxy, Store]
) -> None:
    fault, through_proxy = faulty
    await store.put_region(Region(name="r1", kind=RegionKind.LOCAL))
    fault.lose_answers_to, fault.lose_answers = "DeleteItem", 1

    await through_proxy.delete_region("r1")

    assert fault.lose_answers == 0
    assert await store.list_regions() == []


async def test_a_lease_taken_or_renewed_but_answered_500_is_held(
    store: Store, faulty: tuple[FaultProxy, Store]
) -> None:
    """A lease write whose success was lost still holds the lease: read as lost, the
    leader would stand down for nothing and leadership move to another host."""
    fault, through_proxy = faulty
    fault.lose_answers_to, fault.lose_answers = "PutItem", 1
    taken = await through_proxy.acquire_lease("region-r1", "host-a", ttl=30)
    fault.lose_answers = 1

    renewed = await through_proxy.acquire_lease("region-r1", "host-a", ttl=30)

    assert fault.lose_answers == 0
    assert taken is not None
    assert renewed is not None
    assert (renewed.holder, renewed.token) == ("host-a", taken.token)
    assert renewed.expires_at > taken.expires_at
    assert await store.acquire_lease("region-r1", "host-b", ttl=30) is None


async def test_after_a_500_a_write_that_was_not_applied_still_conflicts(
    store: Store, faulty: tuple[FaultProxy, Store]
) -> None:
    """Only an item holding exactly what this write wrote counts as its success."""
    fault, through_proxy = faulty
    created = await store.create_endpoint(make_endpoint("llm", replicas=1))
    await store.update_endpoint(
        created.model_copy(update={"spec": make_spec(replicas=2)}), expected_revision=1
    )
    fault.error, fault.status, fault.throttle = "InternalServerError", 500, 1

    with pytest.raises(RevisionConflict) as conflict:
        await through_proxy.update_endpoint(
            created.model_copy(update={"spec": make_spec(replicas=3)}), expected_revision=1
        )

    assert fault.throttled == 1
    assert conflict.value.found == 2


async def test_a_record_too_large_for_one_item_is_refused_before_any_write(store: Store) -> None:
    huge = make_endpoint("llm", env={f"VAR_{index}": "v" * 1000 for index in range(420)})
    await store.create_endpoint(make_endpoint("small"))
    position = await store.feed_position()

    with pytest.raises(InvalidInput, match=r"spec: endpoint 'llm' takes [\d,]+ bytes"):
        await store.create_endpoint(huge)

    assert [e.name for e in await store.list_endpoints()] == ["small"]
    assert await store.feed_position() == position


async def test_check_endpoint_refuses_as_the_write_would(store: Store) -> None:
    """`check_endpoint` is the writes' own refusal without the write: a record of the
    first size it refuses is refused by a create, and by an update (stored at the next
    revision, here 10), in the same words."""

    def padded(endpoint: Endpoint, padding: int) -> Endpoint:
        return endpoint.model_copy(update={"spec": make_spec(env={"PADDING": "p" * padding})})

    def refusal(endpoint: Endpoint) -> list[str] | None:
        try:
            store.check_endpoint(endpoint)
        except InvalidInput as refused:
            return refused.problems
        return None

    def smallest_refused(endpoint: Endpoint) -> Endpoint:
        fits, refused = 0, 500_000
        while refused - fits > 1:
            middle = (fits + refused) // 2
            if refusal(padded(endpoint, middle)) is None:
                fits = middle
            else:
                refused = middle
        return padded(endpoint, refused)

    new = smallest_refused(make_endpoint("llm"))
    with pytest.raises(InvalidInput) as created:
        await store.create_endpoint(new)
    assert created.value.problems == refusal(new)

    stored = await store.create_endpoint(make_endpoint("llm"))
    for _ in range(8):
        stored = await store.update_endpoint(stored, expected_revision=stored.revision)
    grown = smallest_refused(stored)
    with pytest.raises(InvalidInput) as updated:
        await store.update_endpoint(grown, expected_revision=9)
    assert updated.value.problems == refusal(grown)

    assert await store.get_endpoint("llm") == stored


async def test_checking_an_apply_refuses_a_record_too_large_for_an_item(store: Store) -> None:
    """`EndpointService.check`, which `apply -f` runs on every document before it
    writes any, asks the store about the record each would write, new or grown."""
    service = EndpointService(store)
    await service.add_region(Region(name="r1", kind=RegionKind.LOCAL))
    small = await service.deploy("small", make_spec())
    position = await store.feed_position()
    spec = make_spec(env={"PADDING": "p" * 410_000}).model_dump()

    for name in ("small", "new"):
        declared = EndpointManifest.model_validate({"metadata": {"name": name}, "spec": spec})
        with pytest.raises(InvalidInput) as refused:
            await service.check(declared)
        (problem,) = refused.value.problems
        assert re.fullmatch(
            rf"spec: endpoint '{name}' takes 410,\d{{3}} bytes stored, more than a DynamoDB "
            r"item holds \(409,600\); make env, args, labels or resources smaller",
            problem,
        ), problem

    assert await store.list_endpoints() == [small]
    assert await store.feed_position() == position


async def test_init_is_idempotent_and_the_definition_matches_the_table(table_url: str) -> None:
    again = await open_store(table_url, init=True)
    await again.close()

    resource = cloudformation_definition(table_url)

    assert resource["Type"] == "AWS::DynamoDB::Table"
    properties = resource["Properties"]
    assert properties["TableName"] == parse_url(table_url).table
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert properties["TimeToLiveSpecification"] == {
        "AttributeName": "purge_after",
        "Enabled": True,
    }


async def test_init_refuses_a_table_that_is_not_a_store(moto_endpoint: str) -> None:
    url = fresh_table_url(moto_endpoint)
    location = parse_url(url)
    async with session().create_client(
        "dynamodb", region_name=location.region, endpoint_url=moto_endpoint
    ) as client:
        await client.create_table(
            TableName=location.table,
            KeySchema=[{"AttributeName": "endpoint_name", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "endpoint_name", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    try:
        with pytest.raises(StoreError, match=r"exists with key schema .* choose another table"):
            await open_store(url, init=True)
    finally:
        await drop_table(url)


async def test_a_missing_table_says_to_run_init(moto_endpoint: str) -> None:
    with pytest.raises(TableMissing, match="run `servefleet store init`"):
        await open_store(fresh_table_url(moto_endpoint))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("dynamodb://ab?region=us-east-1", "table name must be 3-255"),
        ("dynamodb://table", "needs \\?region=NAME"),
        ("dynamodb://table?region=us-east-1&colour=red", "unknown DynamoDB URL parameter"),
        ("dynamodb://table?region=us-east-1&poll_interval=soon", "poll_interval"),
    ],
)
def test_bad_urls_are_refused_naming_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_url(url)
