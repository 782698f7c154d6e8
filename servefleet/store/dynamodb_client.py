"""DynamoDB requests with the store's retries and error mapping.

What is transient (throttling, 5xx answers, transaction conflicts, broken
connections: retried with jittered exponential backoff, then `StoreUnavailable`),
what is refused for good (`Refused`), and how a failed condition is reported
(`ConditionFailed`, `Cancelled`), including whether it may have failed on the
request's own earlier attempt, applied although its answer was lost. The store
itself is `servefleet.store.dynamodb`, whose docstring has the design.
"""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import cache
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from servefleet.store.base import StoreError, StoreUnavailable

__all__ = [
    "Cancelled",
    "Client",
    "ConditionFailed",
    "DynamoLocation",
    "Refused",
    "TableMissing",
]

_RETRYABLE = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",
        "TransactionInProgressException",
    }
)
_RETRYABLE_CANCELLATIONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"}
)
_ATTEMPTS = 8
_BACKOFF_INITIAL = 0.05
_BACKOFF_MAX = 2.0


class TableMissing(StoreError):
    def __init__(self, table: str, region: str) -> None:
        super().__init__(
            f"DynamoDB table {table!r} in {region} has no servefleet store: "
            "run `servefleet store init`"
        )


class Refused(StoreUnavailable):
    """DynamoDB answered with an error that retrying will not change; `code` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ConditionFailed(Exception):
    """A condition expression did not hold; `item` is what was stored, if anything.

    `may_be_own_write`: an earlier attempt of the same call failed without saying
    whether it was applied, so what broke the condition may be that attempt's write."""

    def __init__(self, item: dict[str, Any] | None, *, may_be_own_write: bool) -> None:
        super().__init__("condition failed")
        self.item = item
        self.may_be_own_write = may_be_own_write


class Cancelled(Exception):
    """A transaction was refused; `codes` has one entry per action ("None" if it held).
    `may_be_own_write` as for `ConditionFailed`."""

    def __init__(self, codes: list[str], *, may_be_own_write: bool) -> None:
        super().__init__(f"transaction cancelled: {codes}")
        self.codes = codes
        self.may_be_own_write = may_be_own_write


@dataclass(frozen=True, slots=True)
class DynamoLocation:
    table: str
    region: str
    endpoint_url: str | None = None
    poll_interval: float = 0.1


@cache
def _session() -> Any:
    """One botocore session per process: it parses DynamoDB's service model (most of a
    second) once, however many stores are opened."""
    # Imported here: other stores' commands need not pay for loading it.
    from aiobotocore.session import get_session  # type: ignore[import-untyped]

    return get_session()


class Client:
    """One aiobotocore client with the store's retries and error mapping."""

    def __init__(self, client: Any, exits: AsyncExitStack, location: DynamoLocation) -> None:
        self.raw = client
        self._exits = exits
        self.location = location

    @classmethod
    async def open(cls, location: DynamoLocation) -> Client:
        from aiobotocore.config import AioConfig  # type: ignore[import-untyped]

        config = AioConfig(
            connect_timeout=5,
            read_timeout=20,
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=20,
        )
        exits = AsyncExitStack()
        try:
            client = await exits.enter_async_context(
                _session().create_client(
                    "dynamodb",
                    region_name=location.region,
                    endpoint_url=location.endpoint_url,
                    config=config,
                )
            )
        except (BotoCoreError, ValueError) as error:
            await exits.aclose()
            raise StoreUnavailable(f"cannot open DynamoDB store: {error}") from error
        return cls(client, exits, location)

    async def close(self) -> None:
        await self._exits.aclose()

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """Run `operation`, retrying what is transient; conditions fail as `ConditionFailed`
        or `Cancelled`, everything else that persists as `StoreUnavailable`."""
        delay = _BACKOFF_INITIAL
        # A 5xx answer or a broken connection does not say whether the write was
        # applied (DynamoDB documents applied writes answered 500), so a condition
        # failure on a later attempt may be this call's own earlier write.
        may_be_own_write = False
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                answer: dict[str, Any] = await getattr(self.raw, operation)(**params)
                return answer
            except ClientError as error:
                code = str(error.response.get("Error", {}).get("Code", ""))
                if code == "ConditionalCheckFailedException":
                    raise ConditionFailed(
                        error.response.get("Item"), may_be_own_write=may_be_own_write
                    ) from None
                if code == "ResourceNotFoundException":
                    raise TableMissing(self.location.table, self.location.region) from None
                transient = code in _RETRYABLE
                if code == "TransactionCanceledException":
                    codes = [
                        str(reason.get("Code", "None"))
                        for reason in error.response.get("CancellationReasons", [])
                    ]
                    if not _RETRYABLE_CANCELLATIONS & set(codes):
                        raise Cancelled(codes, may_be_own_write=may_be_own_write) from None
                    transient = True
                status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                if not transient and status < 500:
                    raise Refused(code, f"DynamoDB refused {operation}: {error}") from error
                may_be_own_write = may_be_own_write or status >= 500
                problem: Exception = error
            except BotoCoreError as error:
                may_be_own_write = True
                problem = error
            if attempt == _ATTEMPTS:
                raise StoreUnavailable(
                    f"DynamoDB table {self.location.table!r} is unavailable after "
                    f"{_ATTEMPTS} attempts: {problem}"
                ) from problem
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
            delay = min(delay * 2, _BACKOFF_MAX)
        raise AssertionError("unreachable")

    async def query_all(self, **params: Any) -> list[dict[str, Any]]:
        """Every item a `Query` matches, page after page until `LastEvaluatedKey` is gone."""
        items: list[dict[str, Any]] = []
        start: dict[str, Any] | None = None
        while True:
            page = await self.call(
                "query",
                **params,
                **({"ExclusiveStartKey": start} if start else {}),
            )
            items.extend(page.get("Items", []))
            start = page.get("LastEvaluatedKey")
            if not start:
                return items
