"""The DynamoDB store's region statuses: `status` items keyed `endpoint#region`, apart
from the endpoint so reports never race the spec, and fenced by a lease when written
with one. The store itself is `servefleet.store.dynamodb`, whose docstring has the
design."""

from __future__ import annotations

import uuid
from typing import Any

from servefleet.spec import RegionStatus
from servefleet.store.base import Lease, LeaseLost
from servefleet.store.dynamodb_client import Cancelled, Client
from servefleet.store.dynamodb_items import item_key, string_value
from servefleet.store.dynamodb_leases import DynamoLeases

__all__ = ["DynamoStatuses"]


class DynamoStatuses:
    """The `status` items of one table; `leases` fence the writes made with a lease."""

    def __init__(self, client: Client, leases: DynamoLeases) -> None:
        self._client = client
        self._table = client.location.table
        self._leases = leases

    async def put(self, status: RegionStatus, *, lease: Lease | None = None) -> None:
        put = {
            "TableName": self._table,
            "Item": {
                **item_key("status", f"{status.endpoint}#{status.region}"),
                "region": string_value(status.region),
                "record": string_value(status.model_dump_json()),
            },
        }
        if lease is None:
            await self._client.call("put_item", **put)
            return
        try:
            await self._client.call(
                "transact_write_items",
                TransactItems=[{"ConditionCheck": self._leases.fencing_check(lease)}, {"Put": put}],
                ClientRequestToken=str(uuid.uuid4()),
            )
        except Cancelled:
            raise LeaseLost(lease.name, lease.holder) from None

    async def items(
        self, *, endpoint: str | None = None, region: str | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :kind",
            "ExpressionAttributeValues": {":kind": string_value("status")},
            "ConsistentRead": True,
        }
        if endpoint is not None:
            params["KeyConditionExpression"] += " AND begins_with(sk, :endpoint)"
            params["ExpressionAttributeValues"][":endpoint"] = string_value(f"{endpoint}#")
        if region is not None:
            params["FilterExpression"] = "#region = :region"
            params["ExpressionAttributeNames"] = {"#region": "region"}
            params["ExpressionAttributeValues"][":region"] = string_value(region)
        return await self._client.query_all(**params)

    async def query(
        self, *, endpoint: str | None = None, region: str | None = None
    ) -> list[RegionStatus]:
        items = await self.items(endpoint=endpoint, region=region)
        return [RegionStatus.model_validate_json(item["record"]["S"]) for item in items]
