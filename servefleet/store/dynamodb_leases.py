"""The DynamoDB store's leases and fences: `lease` items, written on condition that
they are still as read, and the condition check that fences a write made with one.
The store itself is `servefleet.store.dynamodb`, whose docstring has the design."""

from __future__ import annotations

import time
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from servefleet.store.base import FENCE_EXPIRES_AT, Lease
from servefleet.store.dynamodb_client import Client, ConditionFailed
from servefleet.store.dynamodb_items import (
    item_key,
    number_value,
    plain,
    put_conditionally,
    string_value,
)
from servefleet.store.dynamodb_table import TTL_ATTRIBUTE

__all__ = ["DynamoLeases"]

_LEASE_PURGE_DELAY = 86_400.0


def _timestamp(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


class DynamoLeases:
    """The `lease` items of one table. Expiry is this host's clock: DynamoDB has none."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._table = client.location.table

    def fencing_check(self, lease: Lease) -> dict[str, Any]:
        """The `ConditionCheck` of a transaction that must not apply once `lease` is no
        longer held: another holder, a newer token, or expired."""
        return {
            "TableName": self._table,
            "Key": item_key("lease", lease.name),
            "ConditionExpression": "holder = :holder AND #token = :token AND expires_at > :now",
            "ExpressionAttributeNames": {"#token": "token"},
            "ExpressionAttributeValues": {
                ":holder": string_value(lease.holder),
                ":token": number_value(lease.token),
                ":now": number_value(time.time()),
            },
        }

    async def acquire(self, name: str, holder: str, ttl: float) -> Lease | None:
        answer = await self._client.call(
            "get_item", TableName=self._table, Key=item_key("lease", name), ConsistentRead=True
        )
        current = answer.get("Item")
        now = time.time()
        expires_at = now + ttl
        token = 1
        condition = "attribute_not_exists(pk)"
        values: dict[str, Any] = {}
        if current is not None:
            token = int(plain(current["token"]))
            if current["holder"]["S"] != holder:
                if float(plain(current["expires_at"])) > now:
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
            **item_key("lease", name),
            "holder": string_value(holder),
            "token": number_value(token),
            "expires_at": number_value(expires_at),
            TTL_ATTRIBUTE: number_value(int(expires_at + _LEASE_PURGE_DELAY)),
        }
        # A renewal applied but answered 500 fails its condition when retried: still
        # ours (`put_conditionally`), and standing down for it would move leadership
        # for nothing.
        failed = await put_conditionally(
            self._client,
            self._table,
            item,
            condition,
            **({"ExpressionAttributeNames": {"#token": "token"}} if values else {}),
            **({"ExpressionAttributeValues": values} if values else {}),
        )
        if failed is not None:
            return None
        return Lease(name, holder, token, _timestamp(expires_at))

    async def release(self, lease: Lease) -> None:
        with suppress(ConditionFailed):
            await self._client.call(
                "update_item",
                TableName=self._table,
                Key=item_key("lease", lease.name),
                UpdateExpression="SET expires_at = :now",
                ConditionExpression="holder = :holder AND #token = :token",
                ExpressionAttributeNames={"#token": "token"},
                ExpressionAttributeValues={
                    ":now": number_value(time.time()),
                    ":holder": string_value(lease.holder),
                    ":token": number_value(lease.token),
                },
            )

    async def record_fence(self, name: str, holder: str, token: int) -> Lease | None:
        # A lease item without `purge_after`: the table's TTL never removes a fence,
        # whose token must never go down.
        item = {
            **item_key("lease", name),
            "holder": string_value(holder),
            "token": number_value(token),
            "expires_at": number_value(FENCE_EXPIRES_AT.timestamp()),
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
                ExpressionAttributeValues={
                    ":token": number_value(token),
                    ":holder": string_value(holder),
                },
            )
        except ConditionFailed:
            return None
        return Lease(name, holder, token, FENCE_EXPIRES_AT)
