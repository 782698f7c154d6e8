"""The DynamoDB store's change feed: one `feed` item holding the position, the
table's schema version and the most recent changes, appended to by compare-and-set
on the position. The store itself is `servefleet.store.dynamodb`, whose docstring
has the design (and why the append is not one transaction with the endpoint write)."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from servefleet.store.base import Change, ChangeKind, FeedCompacted
from servefleet.store.dynamodb_client import Client, ConditionFailed, TableMissing
from servefleet.store.dynamodb_items import number_value, plain, string_value

__all__ = ["SCHEMA_VERSION", "DynamoFeed"]

SCHEMA_VERSION = 1
_FEED_KEY = {"pk": {"S": "feed"}, "sk": {"S": "feed"}}
_FEED_PAGE = 50
"""Changes a watcher asks for per read; behind by more, it reads again at once."""


def _change_text(name: str, revision: int, kind: ChangeKind) -> str:
    return f"{name} {revision} {kind.value}"


def _change(seq: int, text: str) -> Change:
    name, revision, kind = text.split(" ")
    return Change(seq, name, int(revision), ChangeKind(kind))


class DynamoFeed:
    """The `feed` item of one table, and the highest position this process has seen
    of it (where the next append tries first)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._table = client.location.table
        self._known_seq = 0

    async def create(self) -> None:
        """An empty feed at this schema version, unless the table has one already."""
        with suppress(ConditionFailed):
            await self._client.call(
                "put_item",
                TableName=self._table,
                Item={
                    **_FEED_KEY,
                    "seq": number_value(0),
                    "changes": {"M": {}},
                    "schema": number_value(SCHEMA_VERSION),
                },
                ConditionExpression="attribute_not_exists(pk)",
            )

    async def read(self, *changes: int) -> dict[str, Any]:
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
        if feed is None or plain(feed.get("schema", {"N": "0"})) != SCHEMA_VERSION:
            raise TableMissing(self._table, self._client.location.region)
        self._known_seq = max(self._known_seq, int(plain(feed["seq"])))
        return feed

    async def append(self, name: str, revision: int, kind: ChangeKind, *, retention: int) -> None:
        """The append itself: compare-and-set on the feed's position."""
        change = string_value(_change_text(name, revision, kind))
        while True:
            seq = self._known_seq + 1
            names = {"#new": str(seq), "#old": str(seq - retention)}
            try:
                await self._client.call(
                    "update_item",
                    TableName=self._table,
                    Key=_FEED_KEY,
                    UpdateExpression="SET seq = :seq, changes.#new = :change REMOVE changes.#old",
                    ConditionExpression="seq = :previous",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues={
                        ":seq": number_value(seq),
                        ":previous": number_value(seq - 1),
                        ":change": change,
                    },
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ConditionFailed as failed:
                if failed.item is None:
                    raise TableMissing(self._table, self._client.location.region) from None
                self._known_seq = int(plain(failed.item["seq"]))
                appended = failed.item.get("changes", {}).get("M", {}).get(str(seq))
                if failed.may_be_own_write and appended == change:
                    break  # an earlier attempt appended it; only its answer was lost
                continue  # another writer appended first: retry after what it wrote
            self._known_seq = seq
            break

    async def position(self) -> int:
        return int(plain((await self.read())["seq"]))

    async def changes_after(self, since: int, *, retention: int) -> list[Change]:
        wanted = range(since + 1, since + 1 + _FEED_PAGE)
        feed = await self.read(*wanted)
        newest = int(plain(feed["seq"]))
        if newest <= since:
            return []
        kept = {int(seq): text["S"] for seq, text in feed.get("changes", {}).get("M", {}).items()}
        if since + 1 not in kept:
            raise FeedCompacted(since, max(1, newest - retention + 1))
        return [_change(seq, kept[seq]) for seq in wanted if seq in kept]
