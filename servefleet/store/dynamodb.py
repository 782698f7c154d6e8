"""The AWS store: one DynamoDB table (a global table, if you like) through aiobotocore.

URL: `dynamodb://TABLE?region=us-east-1[&endpoint_url=http://...][&poll_interval=0.1]`.
`servefleet store init` creates the table; `store init --print-definition` prints it
as a CloudFormation resource for infrastructure-as-code users (`dynamodb_table.py`,
with the URL).

Layout: every kind of record is one partition of the table, keyed by name, so every
listing is one `Query` that pages (`LastEvaluatedKey`) until it is exhausted:

| pk         | sk                   | holds                                     |
|------------|----------------------|-------------------------------------------|
| `endpoint` | name                 | revision, desired_state, record (JSON)    |
| `status`   | `endpoint#region`    | one region's report                       |
| `region`   | name                 | a registered region                       |
| `lease`    | name                 | holder, token, expires_at, purge_after    |
| `token`    | name                 | an API token's record (a salted hash)     |
| `feed`     | `feed`               | seq, changes: the last `feed_retention`   |

`#` sorts before every character of a name, so statuses come back ordered by
endpoint, then region.

- **Compare-and-set** (`dynamodb_endpoints.py`): endpoint writes are a `PutItem`
  with a condition on `revision` (the old item comes back with a failure, so a
  conflict names the revision found); a purge deletes the record and its statuses
  in one transaction with the same condition, so no report outlives its endpoint.
- **Change feed** (`dynamodb_feed.py`): the `feed` item holds the position and the
  recent changes as a map from position to change. A change is appended by one
  `UpdateItem` conditional on the position it read, so positions are dense,
  strictly increasing and visible in order. The append follows the endpoint write
  (`DynamoStore` does one, then the other), shielded from cancellation. Not one
  transaction with it, although that would close the window between the two: it
  would double the write cost (the feed item, ~15 KB, already bills 15 units an
  append), turn every collision on the feed item into a cancelled transaction that
  resends the record, and moto (which the tests and the benchmark run on) copies
  the whole table, with every stream record it ever kept, for each transaction:
  after 1,500 creates one transaction took 3 s against 9 ms for a `PutItem`.
  Should a process die between the two writes, or DynamoDB stay unavailable
  through every retry of the append, the reconcilers find that write at their
  periodic resync instead of through the feed.
  A watcher reads the one `feed` item per poll (`poll_interval`, default 100 ms, to
  keep propagation well under 250 ms like the SQL stores): one strongly consistent
  `GetItem` projected to the next 50 positions, never a scan. DynamoDB bills the
  whole item (256 changes of at most ~60 bytes: at most 4 read units), so a watcher
  costs 26 million reads, at most ~104 million read units, a month; a larger
  `poll_interval` trades delay for cost linearly (1 s: a tenth). Writes through the
  same store object wake the watcher at once. The feed keeps `feed_retention`
  changes; a watcher further behind
  (a gap below the oldest kept position) gets `FeedCompacted` and lists again.
- **Region status** items (`dynamodb_statuses.py`) are apart from the endpoint, so
  reports never race the spec. A write with a lease is a transaction whose condition
  check reads the lease item (holder, token, expiry), so a deposed or lapsed leader
  cannot write.
- **Leases** (`dynamodb_leases.py`): read, then a conditional write that holds only
  if the lease is still as read; a change of holder increments `token`. Expiry uses
  this host's clock (DynamoDB has none to offer), so hosts need synchronised clocks
  (NTP), which AWS provides. `purge_after` is the table's TTL attribute: abandoned
  leases are removed a day after they lapse. A fence (`record_fence`: a Kubernetes
  Lease's token) is a lease item without `purge_after`, written by one `PutItem`
  conditional on the token it replaces being lower.
- **Item size**: a record larger than a DynamoDB item (400 KB) is refused with
  `InvalidInput` before anything is written; `check_endpoint` is the same refusal
  without a write, for checking a whole `apply -f` first.
- **Lost answers**: DynamoDB may apply a write and still answer 500, and a broken
  connection leaves it unknown. The retry of a conditional write then fails its
  condition on its own result; so after such an answer, a condition failure whose
  item holds exactly what the write wrote (the failure returns it, no extra read)
  is that write's success (`is_own_write`, in `dynamodb_items.py`). Without this,
  an update read as a conflict: the service re-read, found its change stored and
  wrote nothing, and the change never reached the feed; a lease renewal read as
  lost and the leader stood down. The same rule makes a create, an update, a feed
  append and a lease write succeed once, and a purge or region delete that finds
  its item gone succeed. Transactions (purge,
  status with a lease) send one `ClientRequestToken` on every retry, so DynamoDB
  itself answers a retried, applied one as done for 10 minutes; moto ignores the
  token, and there the purge's read-back decides. A status write run twice stores
  the same report, so it needs no rule.
- **Retries** (`dynamodb_client.py`, with the error mapping): throttling
  (`ProvisionedThroughputExceededException`, `ThrottlingException`, ...), 5xx
  answers, transaction conflicts and connection errors are retried with jittered
  exponential backoff (50 ms doubling to 2 s, 8 attempts), then raise
  `StoreUnavailable`; botocore's own retries are off so the two do not multiply.

Global tables: CAS holds within one region's replica, so every writer should use the
same region in its URL; the other replicas serve as read copies and for failover.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from servefleet.spec import ApiToken, DesiredState, Endpoint, Region, RegionStatus
from servefleet.store.base import (
    Change,
    ChangeKind,
    Lease,
    PolledFeed,
    RegionChanged,
    RegionNotFound,
    TokenExists,
    TokenNotFound,
)
from servefleet.store.dynamodb_client import Client, ConditionFailed
from servefleet.store.dynamodb_endpoints import DynamoEndpoints
from servefleet.store.dynamodb_feed import DynamoFeed
from servefleet.store.dynamodb_items import item_key, put_conditionally, string_value
from servefleet.store.dynamodb_leases import DynamoLeases
from servefleet.store.dynamodb_statuses import DynamoStatuses
from servefleet.store.dynamodb_table import create_table, parse_url

__all__ = ["DynamoStore"]


class DynamoStore(PolledFeed):
    """The `Store` on DynamoDB; see the module docstring for the layout and choices."""

    feed_retention = 256
    """Changes kept in the feed item (at most ~60 bytes each); a watcher further behind relists."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._table = client.location.table
        self.poll_interval = client.location.poll_interval
        super().__init__()
        self._feed = DynamoFeed(client)
        self._leases = DynamoLeases(client)
        self._statuses = DynamoStatuses(client, self._leases)
        self._endpoints = DynamoEndpoints(client, self._statuses)

    @classmethod
    async def open(cls, url: str, *, init: bool = False) -> DynamoStore:
        location = parse_url(url)
        store = cls(await Client.open(location))
        try:
            if init:
                await create_table(store._client)
                await store._feed.create()
            await store._feed.read()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        await self._client.close()

    # Endpoints: each write, then its change in the feed.

    def check_endpoint(self, endpoint: Endpoint) -> None:
        self._endpoints.check(endpoint)

    async def create_endpoint(self, endpoint: Endpoint) -> Endpoint:
        stored = await self._endpoints.create(endpoint)
        await self._append_change(stored.name, 1, ChangeKind.PUT)
        return stored

    async def get_endpoint(self, name: str) -> Endpoint:
        return await self._endpoints.get(name)

    async def list_endpoints(
        self, *, region: str | None = None, desired_state: DesiredState | None = None
    ) -> list[Endpoint]:
        return await self._endpoints.query(region=region, desired_state=desired_state)

    async def update_endpoint(self, endpoint: Endpoint, *, expected_revision: int) -> Endpoint:
        stored = await self._endpoints.update(endpoint, expected_revision=expected_revision)
        await self._append_change(stored.name, stored.revision, ChangeKind.PUT)
        return stored

    async def purge_endpoint(self, name: str, *, expected_revision: int) -> None:
        await self._endpoints.purge(name, expected_revision=expected_revision)
        await self._append_change(name, expected_revision + 1, ChangeKind.PURGED)

    # Region status.

    async def put_region_status(self, status: RegionStatus, *, lease: Lease | None = None) -> None:
        await self._statuses.put(status, lease=lease)

    async def list_region_status(
        self, *, endpoint: str | None = None, region: str | None = None
    ) -> list[RegionStatus]:
        return await self._statuses.query(endpoint=endpoint, region=region)

    # Regions.

    async def put_region(self, region: Region) -> None:
        await self._client.call(
            "put_item",
            TableName=self._table,
            Item={
                **item_key("region", region.name),
                "record": string_value(region.model_dump_json()),
            },
        )

    async def replace_region(self, region: Region, *, expected: Region | None) -> None:
        try:
            stored: str | None = await self._record("region", region.name, RegionNotFound)
        except RegionNotFound:
            stored = None
        if (Region.model_validate_json(stored) if stored is not None else None) != expected:
            raise RegionChanged(region.name)
        condition: dict[str, Any] = (
            {"ConditionExpression": "attribute_not_exists(pk)"}
            if stored is None
            else {
                "ConditionExpression": "#record = :stored",
                "ExpressionAttributeNames": {"#record": "record"},
                "ExpressionAttributeValues": {":stored": string_value(stored)},
            }
        )
        try:
            await self._client.call(
                "put_item",
                TableName=self._table,
                Item={
                    **item_key("region", region.name),
                    "record": string_value(region.model_dump_json()),
                },
                **condition,
            )
        except ConditionFailed as failed:
            # After an answer was lost, the condition may have failed on this very
            # write, applied by the attempt before.
            if not failed.may_be_own_write:
                raise RegionChanged(region.name) from None

    async def get_region(self, name: str) -> Region:
        return Region.model_validate_json(await self._record("region", name, RegionNotFound))

    async def list_regions(self) -> list[Region]:
        return [Region.model_validate_json(record) for record in await self._records("region")]

    async def delete_region(self, name: str) -> None:
        await self._delete_record("region", name, RegionNotFound)

    # API tokens: items of their own kind, so no schema change came with them.

    async def create_token(self, token: ApiToken) -> None:
        item = {**item_key("token", token.name), "record": string_value(token.model_dump_json())}
        taken = await put_conditionally(self._client, self._table, item, "attribute_not_exists(pk)")
        if taken is not None:
            raise TokenExists(token.name)

    async def get_token(self, name: str) -> ApiToken:
        return ApiToken.model_validate_json(await self._record("token", name, TokenNotFound))

    async def list_tokens(self) -> list[ApiToken]:
        return [ApiToken.model_validate_json(record) for record in await self._records("token")]

    async def delete_token(self, name: str) -> None:
        await self._delete_record("token", name, TokenNotFound)

    # Records kept whole as JSON under a kind of their own (regions, tokens).

    async def _record(self, kind: str, name: str, missing: Callable[[str], Exception]) -> str:
        answer = await self._client.call(
            "get_item", TableName=self._table, Key=item_key(kind, name), ConsistentRead=True
        )
        if "Item" not in answer:
            raise missing(name)
        record: str = answer["Item"]["record"]["S"]
        return record

    async def _records(self, kind: str) -> list[str]:
        items = await self._client.query_all(
            TableName=self._table,
            KeyConditionExpression="pk = :kind",
            ExpressionAttributeValues={":kind": string_value(kind)},
            ConsistentRead=True,
        )
        return [item["record"]["S"] for item in items]

    async def _delete_record(
        self, kind: str, name: str, missing: Callable[[str], Exception]
    ) -> None:
        try:
            await self._client.call(
                "delete_item",
                TableName=self._table,
                Key=item_key(kind, name),
                ConditionExpression="attribute_exists(pk)",
            )
        except ConditionFailed as failed:
            # Missing after an answer was lost: that attempt deleted it.
            if not failed.may_be_own_write:
                raise missing(name) from None

    # Change feed.

    async def _append_change(self, name: str, revision: int, kind: ChangeKind) -> None:
        """Add one change at the next position. Shielded: a caller cancelled after its
        endpoint write (Ctrl-C, a lost leadership) still gets its change into the feed."""
        await asyncio.shield(self._append(name, revision, kind))

    async def _append(self, name: str, revision: int, kind: ChangeKind) -> None:
        await self._feed.append(name, revision, kind, retention=self.feed_retention)
        self._wake_watchers()

    async def feed_position(self) -> int:
        return await self._feed.position()

    async def _changes_after(self, since: int) -> list[Change]:
        return await self._feed.changes_after(since, retention=self.feed_retention)

    # Leases.

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> Lease | None:
        return await self._leases.acquire(name, holder, ttl)

    async def release_lease(self, lease: Lease) -> None:
        await self._leases.release(lease)

    async def record_fence(self, name: str, holder: str, token: int) -> Lease | None:
        return await self._leases.record_fence(name, holder, token)
