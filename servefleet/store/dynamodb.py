"""The AWS store: one DynamoDB table (a global table, if you like) through aiobotocore.

URL: `dynamodb://TABLE?region=us-east-1[&endpoint_url=http://...][&poll_interval=0.1]`.
`servefleet store init` creates the table; `store init --print-definition` prints it
as a CloudFormation resource for infrastructure-as-code users.

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

- **Compare-and-set**: endpoint writes are a `PutItem` with a condition on
  `revision` (the old item comes back with a failure, so a conflict names the
  revision found); a purge deletes the record and its statuses in one transaction
  with the same condition, so no report outlives its endpoint.
- **Change feed**: the `feed` item holds the position and the recent changes as a map
  from position to change. A change is appended by one `UpdateItem` conditional on
  the position it read, so positions are dense, strictly increasing and visible in
  order. The append follows the endpoint write, shielded from cancellation. Not one
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
- **Region status** items are apart from the endpoint, so reports never race the
  spec. A write with a lease is a transaction whose condition check reads the lease
  item (holder, token, expiry), so a deposed or lapsed leader cannot write.
- **Leases**: read, then a conditional write that holds only if the lease is still
  as read; a change of holder increments `token`. Expiry uses this host's clock
  (DynamoDB has none to offer), so hosts need synchronised clocks (NTP), which AWS
  provides. `purge_after` is the table's TTL attribute: abandoned leases are removed
  a day after they lapse. A fence (`record_fence`: a Kubernetes Lease's token) is a
  lease item without `purge_after`, written by one `PutItem` conditional on the
  token it replaces being lower.
- **Item size**: a record larger than a DynamoDB item (400 KB) is refused with
  `InvalidInput` before anything is written; `check_endpoint` is the same refusal
  without a write, for checking a whole `apply -f` first.
- **Lost answers**: DynamoDB may apply a write and still answer 500, and a broken
  connection leaves it unknown. The retry of a conditional write then fails its
  condition on its own result; so after such an answer, a condition failure whose
  item holds exactly what the write wrote (the failure returns it, no extra read)
  is that write's success. Without this, an update read as a conflict: the service
  re-read, found its change stored and wrote nothing, and the change never reached
  the feed; a lease renewal read as lost and the leader stood down. The same rule
  makes a create, an update, a feed append and a lease write succeed once, and a
  purge or region delete that finds its item gone succeed. Transactions (purge,
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
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from servefleet.spec import (
    STORED,
    ApiToken,
    DesiredState,
    Endpoint,
    InvalidInput,
    Region,
    RegionStatus,
)
from servefleet.store.base import (
    FENCE_EXPIRES_AT,
    Change,
    ChangeKind,
    EndpointExists,
    EndpointNotFound,
    FeedCompacted,
    Lease,
    LeaseLost,
    PolledFeed,
    RegionChanged,
    RegionNotFound,
    RevisionConflict,
    StoreError,
    StoreUnavailable,
    TokenExists,
    TokenNotFound,
)
from servefleet.store.dynamodb_client import (
    Cancelled,
    Client,
    ConditionFailed,
    DynamoLocation,
    Refused,
    TableMissing,
)

__all__ = [
    "DynamoLocation",
    "DynamoStore",
    "TableMissing",
    "cloudformation_definition",
    "parse_url",
    "scan_items",
]

SCHEMA_VERSION = 1
MAX_ITEM_BYTES = 400 * 1024
TTL_ATTRIBUTE = "purge_after"
_LEASE_PURGE_DELAY = 86_400.0
_FEED_KEY = {"pk": {"S": "feed"}, "sk": {"S": "feed"}}
_TABLE_NAME_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
)
_TRANSACTION_ACTIONS = 100
_TABLE_READY_SECONDS = 300
_FEED_PAGE = 50
"""Changes a watcher asks for per read; behind by more, it reads again at once."""


def parse_url(url: str) -> DynamoLocation:
    """`dynamodb://TABLE?region=...&endpoint_url=...&poll_interval=...` as its parts."""
    parts = urlsplit(url)
    if parts.scheme != "dynamodb":
        raise ValueError(f"store: not a dynamodb:// URL (got {url!r})")
    table = parts.netloc
    if not 3 <= len(table) <= 255 or not set(table) <= _TABLE_NAME_CHARACTERS:
        raise ValueError(
            "store: the DynamoDB table name must be 3-255 letters, digits, '_', '.' or '-' "
            f"(got {table!r})"
        )
    query = dict(parse_qsl(parts.query))
    unknown = sorted(query.keys() - {"region", "endpoint_url", "poll_interval"})
    if unknown:
        raise ValueError(
            f"store: unknown DynamoDB URL parameter(s) {', '.join(unknown)}; "
            "use region, endpoint_url, poll_interval"
        )
    region = query.get("region")
    if not region:
        raise ValueError(f"store: a DynamoDB URL needs ?region=NAME (got {url!r})")
    try:
        poll_interval = float(query.get("poll_interval", "0.1"))
    except ValueError:
        poll_interval = 0.0
    if not 0.01 <= poll_interval <= 3600:
        raise ValueError(
            "store: poll_interval must be seconds between 0.01 and 3600 "
            f"(got {query.get('poll_interval')!r})"
        )
    return DynamoLocation(table, region, query.get("endpoint_url") or None, poll_interval)


def table_definition(table: str) -> dict[str, Any]:
    """The `CreateTable` request for the store's table."""
    return {
        "TableName": table,
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
        # Global tables replicate through the stream, and need both images.
        "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    }


def cloudformation_definition(url: str) -> dict[str, Any]:
    """The table as a CloudFormation `AWS::DynamoDB::Table` resource (Terraform's
    `aws_dynamodb_table` takes the same settings)."""
    definition = table_definition(parse_url(url).table)
    return {
        "Type": "AWS::DynamoDB::Table",
        "Properties": {
            **definition,
            "StreamSpecification": {"StreamViewType": "NEW_AND_OLD_IMAGES"},
            "TimeToLiveSpecification": {"AttributeName": TTL_ATTRIBUTE, "Enabled": True},
        },
    }


def _string(value: str) -> dict[str, str]:
    return {"S": value}


def _number(value: float) -> dict[str, str]:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def _key(kind: str, name: str) -> dict[str, dict[str, str]]:
    return {"pk": _string(kind), "sk": _string(name)}


def _item_bytes(item: dict[str, dict[str, str]]) -> int:
    """DynamoDB's size of an item of string and number attributes: names plus values."""
    return sum(
        len(name.encode()) + len(next(iter(value.values())).encode())
        for name, value in item.items()
    )


def _timestamp(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


def _change_text(name: str, revision: int, kind: ChangeKind) -> str:
    return f"{name} {revision} {kind.value}"


def _change(seq: int, text: str) -> Change:
    name, revision, kind = text.split(" ")
    return Change(seq, name, int(revision), ChangeKind(kind))


def _plain(value: dict[str, Any]) -> Any:
    """A DynamoDB attribute value (`{"N": "2"}`, `{"M": {...}}`, ...) as plain Python."""
    ((kind, data),) = value.items()
    if kind == "M":
        return {key: _plain(item) for key, item in data.items()}
    if kind == "L":
        return [_plain(item) for item in data]
    if kind in ("N", "NS"):
        numbers = [Decimal(number) for number in (data if kind == "NS" else [data])]
        converted = [int(n) if n == n.to_integral_value() else float(n) for n in numbers]
        return converted if kind == "NS" else converted[0]
    if kind == "NULL":
        return None
    if kind == "SS":
        return list(data)
    return data


class DynamoStore(PolledFeed):
    """The `Store` on DynamoDB; see the module docstring for the layout and choices."""

    feed_retention = 256
    """Changes kept in the feed item (at most ~60 bytes each); a watcher further behind relists."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._table = client.location.table
        self.poll_interval = client.location.poll_interval
        super().__init__()
        self._known_seq = 0

    @classmethod
    async def open(cls, url: str, *, init: bool = False) -> DynamoStore:
        location = parse_url(url)
        store = cls(await Client.open(location))
        try:
            if init:
                await store._create_table()
            await store._read_feed()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        await self._client.close()

    async def _create_table(self) -> None:
        definition = table_definition(self._table)
        try:
            await self._client.call("create_table", **definition)
        except Refused as refused:
            if refused.code != "ResourceInUseException":
                raise
        for _ in range(_TABLE_READY_SECONDS):
            described = await self._client.call("describe_table", TableName=self._table)
            table = described["Table"]
            if table["TableStatus"] == "ACTIVE":
                break
            await asyncio.sleep(1)
        else:
            raise StoreUnavailable(
                f"DynamoDB table {self._table!r} is still {table['TableStatus']} after "
                f"{_TABLE_READY_SECONDS}s; run `servefleet store init` again later"
            )
        if table["KeySchema"] != definition["KeySchema"]:
            raise StoreError(
                f"DynamoDB table {self._table!r} exists with key schema {table['KeySchema']}, "
                "not a servefleet store's (pk: HASH, sk: RANGE); choose another table name"
            )
        if not table.get("StreamSpecification", {}).get("StreamEnabled"):
            await self._client.call(
                "update_table",
                TableName=self._table,
                StreamSpecification=definition["StreamSpecification"],
            )
        ttl = await self._client.call("describe_time_to_live", TableName=self._table)
        if ttl["TimeToLiveDescription"].get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            await self._client.call(
                "update_time_to_live",
                TableName=self._table,
                TimeToLiveSpecification={"AttributeName": TTL_ATTRIBUTE, "Enabled": True},
            )
        with suppress(ConditionFailed):
            await self._client.call(
                "put_item",
                TableName=self._table,
                Item={
                    **_FEED_KEY,
                    "seq": _number(0),
                    "changes": {"M": {}},
                    "schema": _number(SCHEMA_VERSION),
                },
                ConditionExpression="attribute_not_exists(pk)",
            )

    # Endpoints.

    def _endpoint_item(self, endpoint: Endpoint) -> dict[str, dict[str, str]]:
        item = {
            **_key("endpoint", endpoint.name),
            "revision": _number(endpoint.revision),
            "desired_state": _string(endpoint.desired_state.value),
            "record": _string(endpoint.model_dump_json()),
        }
        size = _item_bytes(item)
        if size > MAX_ITEM_BYTES:
            raise InvalidInput(
                [
                    f"spec: endpoint {endpoint.name!r} takes {size:,} bytes stored, more than a "
                    f"DynamoDB item holds ({MAX_ITEM_BYTES:,}); make env, args, labels or "
                    "resources smaller"
                ]
            )
        return item

    def check_endpoint(self, endpoint: Endpoint) -> None:
        # Every write stores the record with its revision set to the next one.
        self._endpoint_item(endpoint.model_copy(update={"revision": endpoint.revision + 1}))

    async def create_endpoint(self, endpoint: Endpoint) -> Endpoint:
        stored = endpoint.model_copy(update={"revision": 1})
        item = self._endpoint_item(stored)
        try:
            await self._client.call(
                "put_item",
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ConditionFailed as failed:
            if not _is_own_write(failed, item):
                raise EndpointExists(stored.name) from None
        await self._append_change(stored.name, 1, ChangeKind.PUT)
        return stored

    async def get_endpoint(self, name: str) -> Endpoint:
        answer = await self._client.call(
            "get_item", TableName=self._table, Key=_key("endpoint", name), ConsistentRead=True
        )
        if "Item" not in answer:
            raise EndpointNotFound(name)
        return Endpoint.model_validate_json(answer["Item"]["record"]["S"], context=STORED)

    async def list_endpoints(
        self, *, region: str | None = None, desired_state: DesiredState | None = None
    ) -> list[Endpoint]:
        params: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :kind",
            "ExpressionAttributeValues": {":kind": _string("endpoint")},
            "ConsistentRead": True,
        }
        if desired_state is not None:
            params["FilterExpression"] = "desired_state = :state"
            params["ExpressionAttributeValues"][":state"] = _string(desired_state.value)
        items = await self._client.query_all(**params)
        endpoints = [
            Endpoint.model_validate_json(item["record"]["S"], context=STORED) for item in items
        ]
        if region is not None:
            endpoints = [endpoint for endpoint in endpoints if region in endpoint.target_regions]
        return endpoints

    async def update_endpoint(self, endpoint: Endpoint, *, expected_revision: int) -> Endpoint:
        stored = endpoint.model_copy(update={"revision": expected_revision + 1})
        item = self._endpoint_item(stored)
        try:
            await self._client.call(
                "put_item",
                TableName=self._table,
                Item=item,
                ConditionExpression="revision = :expected",
                ExpressionAttributeValues={":expected": _number(expected_revision)},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ConditionFailed as failed:
            if not _is_own_write(failed, item):
                raise _conflict(stored.name, expected_revision, failed.item) from None
        await self._append_change(stored.name, stored.revision, ChangeKind.PUT)
        return stored

    async def purge_endpoint(self, name: str, *, expected_revision: int) -> None:
        statuses = [
            {"pk": item["pk"], "sk": item["sk"]} for item in await self._status_items(endpoint=name)
        ]
        record = {
            "TableName": self._table,
            "Key": _key("endpoint", name),
            "ConditionExpression": "revision = :expected",
            "ExpressionAttributeValues": {":expected": _number(expected_revision)},
        }
        # One transaction holds 100 actions: the record and the statuses of 99 regions
        # go together, so no report outlives its endpoint; any further ones follow.
        together, after = statuses[: _TRANSACTION_ACTIONS - 1], statuses[_TRANSACTION_ACTIONS - 1 :]
        try:
            await self._client.call(
                "transact_write_items",
                TransactItems=[
                    {"Delete": record},
                    *({"Delete": {"TableName": self._table, "Key": key}} for key in together),
                ],
                ClientRequestToken=str(uuid.uuid4()),
            )
        except Cancelled as cancelled:
            answer = await self._client.call(
                "get_item", TableName=self._table, Key=_key("endpoint", name), ConsistentRead=True
            )
            # Gone after an answer was lost: that attempt deleted it, statuses and all.
            if not (cancelled.may_be_own_write and "Item" not in answer):
                raise _conflict(name, expected_revision, answer.get("Item")) from None
        for key in after:
            await self._client.call("delete_item", TableName=self._table, Key=key)
        await self._append_change(name, expected_revision + 1, ChangeKind.PURGED)

    # Region status.

    async def put_region_status(self, status: RegionStatus, *, lease: Lease | None = None) -> None:
        put = {
            "TableName": self._table,
            "Item": {
                **_key("status", f"{status.endpoint}#{status.region}"),
                "region": _string(status.region),
                "record": _string(status.model_dump_json()),
            },
        }
        if lease is None:
            await self._client.call("put_item", **put)
            return
        check = {
            "TableName": self._table,
            "Key": _key("lease", lease.name),
            "ConditionExpression": "holder = :holder AND #token = :token AND expires_at > :now",
            "ExpressionAttributeNames": {"#token": "token"},
            "ExpressionAttributeValues": {
                ":holder": _string(lease.holder),
                ":token": _number(lease.token),
                ":now": _number(time.time()),
            },
        }
        try:
            await self._client.call(
                "transact_write_items",
                TransactItems=[{"ConditionCheck": check}, {"Put": put}],
                ClientRequestToken=str(uuid.uuid4()),
            )
        except Cancelled:
            raise LeaseLost(lease.name, lease.holder) from None

    async def _status_items(
        self, *, endpoint: str | None = None, region: str | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :kind",
            "ExpressionAttributeValues": {":kind": _string("status")},
            "ConsistentRead": True,
        }
        if endpoint is not None:
            params["KeyConditionExpression"] += " AND begins_with(sk, :endpoint)"
            params["ExpressionAttributeValues"][":endpoint"] = _string(f"{endpoint}#")
        if region is not None:
            params["FilterExpression"] = "#region = :region"
            params["ExpressionAttributeNames"] = {"#region": "region"}
            params["ExpressionAttributeValues"][":region"] = _string(region)
        return await self._client.query_all(**params)

    async def list_region_status(
        self, *, endpoint: str | None = None, region: str | None = None
    ) -> list[RegionStatus]:
        items = await self._status_items(endpoint=endpoint, region=region)
        return [RegionStatus.model_validate_json(item["record"]["S"]) for item in items]

    # Regions.

    async def put_region(self, region: Region) -> None:
        await self._client.call(
            "put_item",
            TableName=self._table,
            Item={**_key("region", region.name), "record": _string(region.model_dump_json())},
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
                "ExpressionAttributeValues": {":stored": _string(stored)},
            }
        )
        try:
            await self._client.call(
                "put_item",
                TableName=self._table,
                Item={**_key("region", region.name), "record": _string(region.model_dump_json())},
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
        item = {**_key("token", token.name), "record": _string(token.model_dump_json())}
        try:
            await self._client.call(
                "put_item",
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ConditionFailed as failed:
            if not _is_own_write(failed, item):
                raise TokenExists(token.name) from None

    async def get_token(self, name: str) -> ApiToken:
        return ApiToken.model_validate_json(await self._record("token", name, TokenNotFound))

    async def list_tokens(self) -> list[ApiToken]:
        return [ApiToken.model_validate_json(record) for record in await self._records("token")]

    async def delete_token(self, name: str) -> None:
        await self._delete_record("token", name, TokenNotFound)

    # Records kept whole as JSON under a kind of their own (regions, tokens).

    async def _record(self, kind: str, name: str, missing: Callable[[str], Exception]) -> str:
        answer = await self._client.call(
            "get_item", TableName=self._table, Key=_key(kind, name), ConsistentRead=True
        )
        if "Item" not in answer:
            raise missing(name)
        record: str = answer["Item"]["record"]["S"]
        return record

    async def _records(self, kind: str) -> list[str]:
        items = await self._client.query_all(
            TableName=self._table,
            KeyConditionExpression="pk = :kind",
            ExpressionAttributeValues={":kind": _string(kind)},
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
                Key=_key(kind, name),
                ConditionExpression="attribute_exists(pk)",
            )
        except ConditionFailed as failed:
            # Missing after an answer was lost: that attempt deleted it.
            if not failed.may_be_own_write:
                raise missing(name) from None

    # Change feed.

    async def _read_feed(self, *changes: int) -> dict[str, Any]:
        """The feed's position and schema, and the changes at positions `changes` that
        it still holds; projecting them keeps each poll's answer small."""
        names = {"#seq": "seq", "#schema": "schema"}
        if changes:
            names["#changes"] = "changes"
            names.update({f"#c{seq}": str(seq) for seq in changes})
        answer = await self._client.call(
            "get_item",
            TableName=self._table,
            Key=_FEED_KEY,
            ConsistentRead=True,
            ProjectionExpression=", ".join(
                ["#seq", "#schema", *(f"#changes.#c{seq}" for seq in changes)]
            ),
            ExpressionAttributeNames=names,
        )
        feed: dict[str, Any] | None = answer.get("Item")
        if feed is None or _plain(feed.get("schema", {"N": "0"})) != SCHEMA_VERSION:
            raise TableMissing(self._table, self._client.location.region)
        self._known_seq = max(self._known_seq, int(_plain(feed["seq"])))
        return feed

    async def _append_change(self, name: str, revision: int, kind: ChangeKind) -> None:
        """Add one change at the next position. Shielded: a caller cancelled after its
        endpoint write (Ctrl-C, a lost leadership) still gets its change into the feed."""
        await asyncio.shield(self._append(name, revision, kind))

    async def _append(self, name: str, revision: int, kind: ChangeKind) -> None:
        """The append itself: compare-and-set on the feed's position."""
        change = _string(_change_text(name, revision, kind))
        while True:
            seq = self._known_seq + 1
            names = {"#new": str(seq), "#old": str(seq - self.feed_retention)}
            try:
                await self._client.call(
                    "update_item",
                    TableName=self._table,
                    Key=_FEED_KEY,
                    UpdateExpression="SET seq = :seq, changes.#new = :change REMOVE changes.#old",
                    ConditionExpression="seq = :previous",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues={
                        ":seq": _number(seq),
                        ":previous": _number(seq - 1),
                        ":change": change,
                    },
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ConditionFailed as failed:
                if failed.item is None:
                    raise TableMissing(self._table, self._client.location.region) from None
                self._known_seq = int(_plain(failed.item["seq"]))
                appended = failed.item.get("changes", {}).get("M", {}).get(str(seq))
                if failed.may_be_own_write and appended == change:
                    break  # an earlier attempt appended it; only its answer was lost
                continue  # another writer appended first: retry after what it wrote
            self._known_seq = seq
            break
        self._wake_watchers()

    async def feed_position(self) -> int:
        return int(_plain((await self._read_feed())["seq"]))

    async def _changes_after(self, since: int) -> list[Change]:
        wanted = range(since + 1, since + 1 + _FEED_PAGE)
        feed = await self._read_feed(*wanted)
        newest = int(_plain(feed["seq"]))
        if newest <= since:
            return []
        kept = {int(seq): text["S"] for seq, text in feed.get("changes", {}).get("M", {}).items()}
        if since + 1 not in kept:
            raise FeedCompacted(since, max(1, newest - self.feed_retention + 1))
        return [_change(seq, kept[seq]) for seq in wanted if seq in kept]

    # Leases.

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> Lease | None:
        answer = await self._client.call(
            "get_item", TableName=self._table, Key=_key("lease", name), ConsistentRead=True
        )
        current = answer.get("Item")
        now = time.time()
        expires_at = now + ttl
        token = 1
        condition = "attribute_not_exists(pk)"
        values: dict[str, Any] = {}
        if current is not None:
            token = int(_plain(current["token"]))
            if current["holder"]["S"] != holder:
                if float(_plain(current["expires_at"])) > now:
                    return None
                token += 1
            # Only if nobody changed it since we read it: two candidates cannot both win.
            condition = "holder = :holder AND #token = :token AND expires_at = :expires"
            values = {
                ":holder": current["holder"],
                ":token": current["token"],
                ":expires": current["expires_at"],
            }
        item = {
            **_key("lease", name),
            "holder": _string(holder),
            "token": _number(token),
            "expires_at": _number(expires_at),
            TTL_ATTRIBUTE: _number(int(expires_at + _LEASE_PURGE_DELAY)),
        }
        try:
            await self._client.call(
                "put_item",
                TableName=self._table,
                Item=item,
                ConditionExpression=condition,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **({"ExpressionAttributeNames": {"#token": "token"}} if values else {}),
                **({"ExpressionAttributeValues": values} if values else {}),
            )
        except ConditionFailed as failed:
            # A renewal applied but answered 500 fails its condition when retried:
            # still ours, and standing down for it would move leadership for nothing.
            if not _is_own_write(failed, item):
                return None
        return Lease(name, holder, token, _timestamp(expires_at))

    async def release_lease(self, lease: Lease) -> None:
        with suppress(ConditionFailed):
            await self._client.call(
                "update_item",
                TableName=self._table,
                Key=_key("lease", lease.name),
                UpdateExpression="SET expires_at = :now",
                ConditionExpression="holder = :holder AND #token = :token",
                ExpressionAttributeNames={"#token": "token"},
                ExpressionAttributeValues={
                    ":now": _number(time.time()),
                    ":holder": _string(lease.holder),
                    ":token": _number(lease.token),
                },
            )

    async def record_fence(self, name: str, holder: str, token: int) -> Lease | None:
        # A lease item without `purge_after`: the table's TTL never removes a fence,
        # whose token must never go down.
        item = {
            **_key("lease", name),
            "holder": _string(holder),
            "token": _number(token),
            "expires_at": _number(FENCE_EXPIRES_AT.timestamp()),
        }
        try:
            # The same token and holder again (a retry after a lost answer) holds.
            await self._client.call(
                "put_item",
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk) OR #token < :token "
                "OR (#token = :token AND holder = :holder)",
                ExpressionAttributeNames={"#token": "token"},
                ExpressionAttributeValues={":token": _number(token), ":holder": _string(holder)},
            )
        except ConditionFailed:
            return None
        return Lease(name, holder, token, FENCE_EXPIRES_AT)


def _is_own_write(failed: ConditionFailed, written: dict[str, Any]) -> bool:
    """Whether the condition failed only because an earlier attempt of this very write
    was applied: after a lost answer, the item holds exactly what it wrote (compared as
    values, since DynamoDB normalises how numbers are written)."""
    return (
        failed.may_be_own_write
        and failed.item is not None
        and _plain({"M": failed.item}) == _plain({"M": written})
    )


def _conflict(name: str, expected: int, item: dict[str, Any] | None) -> RevisionConflict:
    return RevisionConflict(name, expected, None if item is None else int(_plain(item["revision"])))


async def scan_items(table: str, *, region: str, endpoint_url: str | None) -> list[dict[str, Any]]:
    """Every item of another DynamoDB table (e.g. the reference design's), as plain
    Python values, page after page until `LastEvaluatedKey` is gone."""
    client = await Client.open(DynamoLocation(table, region, endpoint_url))
    try:
        items: list[dict[str, Any]] = []
        start: dict[str, Any] | None = None
        while True:
            page = await client.call(
                "scan",
                TableName=table,
                ConsistentRead=True,
                **({"ExclusiveStartKey": start} if start else {}),
            )
            items.extend(_plain({"M": item}) for item in page.get("Items", []))
            start = page.get("LastEvaluatedKey")
            if not start:
                return items
    except TableMissing:
        raise StoreError(f"DynamoDB table {table!r} does not exist in {region}") from None
    finally:
        await client.close()
