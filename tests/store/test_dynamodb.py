"""What the DynamoDB store does beyond the contract suite, against moto in server mode:
listings past DynamoDB's 1 MB page, racing conditional writers, throttling answered
by a real HTTP proxy in front of moto, and records too large for one item (refused
when written, and by `check_endpoint` before anything is)."""

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
    RevisionConflict,
    Store,
    StoreError,
    StoreUnavailable,
    open_store,
)
from servefleet.store.dynamodb import TableMissing, cloudformation_definition, parse_url
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
    """1,500 reports of about 1 KB are well over DynamoDB's 1 MB page: every one comes back."""
    message = "x" * 1000
    names = [f"e{index:04d}" for index in range(1500)]
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


@dataclass
class ThrottlingProxy:
    """Forwards to moto, but answers the next `throttle` requests with DynamoDB's
    throttling error, as an overloaded table does."""

    upstream: str
    throttle: int = 0
    error: str = "ThrottlingException"
    status: int = 400
    throttled: int = 0
    forwarded: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.throttle > 0:
            self.throttle -= 1
            self.throttled += 1
            body = {
                "__type": f"com.amazonaws.dynamodb.v20120810#{self.error}",
                "message": "Rate of requests exceeds the allowed throughput.",
            }
            return web.Response(
                status=self.status,
                text=json.dumps(body),
                content_type="application/x-amz-json-1.0",
            )
        self.forwarded += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            ClientSession() as session,
            session.post(self.upstream, data=await request.read(), headers=headers) as answer,
        ):
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                headers={"content-type": answer.headers.get("content-type", "")},
            )


@pytest.fixture
async def proxy(moto_endpoint: str) -> AsyncIterator[tuple[ThrottlingProxy, str]]:
    throttling = ThrottlingProxy(moto_endpoint)
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
    table_url: str, proxy: tuple[ThrottlingProxy, str], error: str, status: int
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
    table_url: str, proxy: tuple[ThrottlingProxy, str]
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
