"""The DynamoDB store's endpoint records: `endpoint` items written by compare-and-set
on `revision`, a purge taking the endpoint's region statuses with it. Appending each
write to the feed is the store's part. The store itself is
`servefleet.store.dynamodb`, whose docstring has the design."""

from __future__ import annotations

import uuid
from typing import Any

from servefleet.spec import STORED, DesiredState, Endpoint, InvalidInput
from servefleet.store.base import EndpointExists, EndpointNotFound, RevisionConflict
from servefleet.store.dynamodb_client import Cancelled, Client
from servefleet.store.dynamodb_items import (
    item_bytes,
    item_key,
    number_value,
    plain,
    put_conditionally,
    string_value,
)
from servefleet.store.dynamodb_statuses import DynamoStatuses

__all__ = ["MAX_ITEM_BYTES", "DynamoEndpoints"]

MAX_ITEM_BYTES = 400 * 1024
_TRANSACTION_ACTIONS = 100


def _conflict(name: str, expected: int, item: dict[str, Any] | None) -> RevisionConflict:
    return RevisionConflict(name, expected, None if item is None else int(plain(item["revision"])))


class DynamoEndpoints:
    """The `endpoint` items of one table; `statuses` are purged with their endpoint."""

    def __init__(self, client: Client, statuses: DynamoStatuses) -> None:
        self._client = client
        self._table = client.location.table
        self._statuses = statuses

    def _endpoint_item(self, endpoint: Endpoint) -> dict[str, dict[str, str]]:
        item = {
            **item_key("endpoint", endpoint.name),
            "revision": number_value(endpoint.revision),
            "desired_state": string_value(endpoint.desired_state.value),
            "record": string_value(endpoint.model_dump_json()),
        }
        size = item_bytes(item)
        if size > MAX_ITEM_BYTES:
            raise InvalidInput(
                [
                    f"spec: endpoint {endpoint.name!r} takes {size:,} bytes stored, more than a "
                    f"DynamoDB item holds ({MAX_ITEM_BYTES:,}); make env, args, labels or "
                    "resources smaller"
                ]
            )
        return item

    def check(self, endpoint: Endpoint) -> None:
        # Every write stores the record with its revision set to the next one.
        self._endpoint_item(endpoint.model_copy(update={"revision": endpoint.revision + 1}))

    async def create(self, endpoint: Endpoint) -> Endpoint:
        stored = endpoint.model_copy(update={"revision": 1})
        item = self._endpoint_item(stored)
        taken = await put_conditionally(self._client, self._table, item, "attribute_not_exists(pk)")
        if taken is not None:
            raise EndpointExists(stored.name)
        return stored

    async def get(self, name: str) -> Endpoint:
        answer = await self._client.call(
            "get_item", TableName=self._table, Key=item_key("endpoint", name), ConsistentRead=True
        )
        if "Item" not in answer:
            raise EndpointNotFound(name)
        return Endpoint.model_validate_json(answer["Item"]["record"]["S"], context=STORED)

    async def query(
        self, *, region: str | None = None, desired_state: DesiredState | None = None
    ) -> list[Endpoint]:
        params: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :kind",
            "ExpressionAttributeValues": {":kind": string_value("endpoint")},
            "ConsistentRead": True,
        }
        if desired_state is not None:
            params["FilterExpression"] = "desired_state = :state"
            params["ExpressionAttributeValues"][":state"] = string_value(desired_state.value)
        items = await self._client.query_all(**params)
        endpoints = [
            Endpoint.model_validate_json(item["record"]["S"], context=STORED) for item in items
        ]
        if region is not None:
            endpoints = [endpoint for endpoint in endpoints if region in endpoint.target_regions]
        return endpoints

    async def update(self, endpoint: Endpoint, *, expected_revision: int) -> Endpoint:
        stored = endpoint.model_copy(update={"revision": expected_revision + 1})
        item = self._endpoint_item(stored)
        failed = await put_conditionally(
            self._client,
            self._table,
            item,
            "revision = :expected",
            ExpressionAttributeValues={":expected": number_value(expected_revision)},
        )
        if failed is not None:
            raise _conflict(stored.name, expected_revision, failed.item)
        return stored

    async def purge(self, name: str, *, expected_revision: int) -> None:
        statuses = [
            {"pk": item["pk"], "sk": item["sk"]}
            for item in await self._statuses.items(endpoint=name)
        ]
        record = {
            "TableName": self._table,
            "Key": item_key("endpoint", name),
            "ConditionExpression": "revision = :expected",
            "ExpressionAttributeValues": {":expected": number_value(expected_revision)},
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
                "get_item",
                TableName=self._table,
                Key=item_key("endpoint", name),
                ConsistentRead=True,
            )
            # Gone after an answer was lost: that attempt deleted it, statuses and all.
            if not (cancelled.may_be_own_write and "Item" not in answer):
                raise _conflict(name, expected_revision, answer.get("Item")) from None
        for key in after:
            await self._client.call("delete_item", TableName=self._table, Key=key)
