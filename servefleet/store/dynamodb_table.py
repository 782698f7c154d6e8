"""The store's DynamoDB table: its URL, its definition (for `CreateTable`, and as a
CloudFormation resource for infrastructure-as-code users), creating or checking it
for `servefleet store init`, and `scan_items`, which reads another table whole for
`servefleet import`. The store itself is `servefleet.store.dynamodb`, whose
docstring has the design."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from servefleet.store.base import StoreError, StoreUnavailable
from servefleet.store.dynamodb_client import Client, DynamoLocation, Refused, TableMissing
from servefleet.store.dynamodb_items import plain

__all__ = [
    "TTL_ATTRIBUTE",
    "cloudformation_definition",
    "create_table",
    "parse_url",
    "scan_items",
    "table_definition",
]

TTL_ATTRIBUTE = "purge_after"
_TABLE_NAME_CHARACTERS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
)
_TABLE_READY_SECONDS = 300


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


async def create_table(client: Client) -> None:
    """Create the client's table, or check the one there is and turn on what it lacks
    (the stream, the TTL), waiting until it is active."""
    name = client.location.table
    definition = table_definition(name)
    try:
        await client.call("create_table", **definition)
    except Refused as refused:
        if refused.code != "ResourceInUseException":
            raise
    for _ in range(_TABLE_READY_SECONDS):
        described = await client.call("describe_table", TableName=name)
        table = described["Table"]
        if table["TableStatus"] == "ACTIVE":
            break
        await asyncio.sleep(1)
    else:
        raise StoreUnavailable(
            f"DynamoDB table {name!r} is still {table['TableStatus']} after "
            f"{_TABLE_READY_SECONDS}s; run `servefleet store init` again later"
        )
    if table["KeySchema"] != definition["KeySchema"]:
        raise StoreError(
            f"DynamoDB table {name!r} exists with key schema {table['KeySchema']}, "
            "not a servefleet store's (pk: HASH, sk: RANGE); choose another table name"
        )
    if not table.get("StreamSpecification", {}).get("StreamEnabled"):
        await client.call(
            "update_table",
            TableName=name,
            StreamSpecification=definition["StreamSpecification"],
        )
    ttl = await client.call("describe_time_to_live", TableName=name)
    if ttl["TimeToLiveDescription"].get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        await client.call(
            "update_time_to_live",
            TableName=name,
            TimeToLiveSpecification={"AttributeName": TTL_ATTRIBUTE, "Enabled": True},
        )


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
            items.extend(plain({"M": item}) for item in page.get("Items", []))
            start = page.get("LastEvaluatedKey")
            if not start:
                return items
    except TableMissing:
        raise StoreError(f"DynamoDB table {table!r} does not exist in {region}") from None
    finally:
        await client.close()
