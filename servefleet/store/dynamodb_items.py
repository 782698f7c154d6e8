"""DynamoDB attribute values: writing the store's strings and numbers, keys and item
sizes, reading any value back as plain Python, and recognising a write's own
result after a lost answer (and the conditional write that relies on it). The store
itself is `servefleet.store.dynamodb`, whose docstring has the design."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from servefleet.store.dynamodb_client import Client, ConditionFailed

__all__ = [
    "is_own_write",
    "item_bytes",
    "item_key",
    "number_value",
    "plain",
    "put_conditionally",
    "string_value",
]


def string_value(value: str) -> dict[str, str]:
    return {"S": value}


def number_value(value: float) -> dict[str, str]:
    return {"N": repr(value) if isinstance(value, float) else str(value)}


def item_key(kind: str, name: str) -> dict[str, dict[str, str]]:
    return {"pk": string_value(kind), "sk": string_value(name)}


def item_bytes(item: dict[str, dict[str, str]]) -> int:
    """DynamoDB's size of an item of string and number attributes: names plus values."""
    return sum(
        len(name.encode()) + len(next(iter(value.values())).encode())
        for name, value in item.items()
    )


def plain(value: dict[str, Any]) -> Any:
    """A DynamoDB attribute value (`{"N": "2"}`, `{"M": {...}}`, ...) as plain Python."""
    ((kind, data),) = value.items()
    if kind == "M":
        return {key: plain(item) for key, item in data.items()}
    if kind == "L":
        return [plain(item) for item in data]
    if kind in ("N", "NS"):
        numbers = [Decimal(number) for number in (data if kind == "NS" else [data])]
        converted = [int(n) if n == n.to_integral_value() else float(n) for n in numbers]
        return converted if kind == "NS" else converted[0]
    if kind == "NULL":
        return None
    if kind == "SS":
        return list(data)
    return data


def is_own_write(failed: ConditionFailed, written: dict[str, Any]) -> bool:
    """Whether the condition failed only because an earlier attempt of this very write
    was applied: after a lost answer, the item holds exactly what it wrote (compared as
    values, since DynamoDB normalises how numbers are written)."""
    return (
        failed.may_be_own_write
        and failed.item is not None
        and plain({"M": failed.item}) == plain({"M": written})
    )


async def put_conditionally(
    client: Client, table: str, item: dict[str, Any], condition: str, **expression: Any
) -> ConditionFailed | None:
    """Put `item` into `table` if `condition` holds (`expression`: its attribute names
    and values); None once the item is stored — by this call, or by an earlier
    attempt of it whose answer was lost (`is_own_write`) — else the failure, which
    carries the item found."""
    try:
        await client.call(
            "put_item",
            TableName=table,
            Item=item,
            ConditionExpression=condition,
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
            **expression,
        )
    except ConditionFailed as failed:
        if not is_own_write(failed, item):
            return failed
    return None
