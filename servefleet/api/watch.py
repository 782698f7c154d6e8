"""`GET /v1/watch`: endpoint and status changes as server-sent events.

Endpoint changes come from the store's change feed: each event's `id` is its feed
position, so a client that reconnects with `Last-Event-ID` misses nothing. Region
statuses never move the feed (a region's report must not race the spec), so they
are looked at every `status_interval` seconds and sent when they changed; they
carry the position of the last endpoint change, and every connection starts with
the current statuses, so a resumed client is level again at once.

Events (`data` is JSON):

- `endpoint`: the declaration, as `GET /v1/endpoints/{name}` shows it without status;
- `purged`: `{"name"}`, the record is gone for good;
- `status`: one region's report, as `RegionStatus`;
- `compacted`: `{"message"}`, the position is older than the feed keeps: list again
  and watch without `Last-Event-ID`. The stream ends;
- `unavailable`: `{"message"}`, the store failed: reconnect with `Last-Event-ID`.
  The stream ends.

A connection without `Last-Event-ID` starts with an `endpoint` event for every
endpoint (at the current position), so a watch alone gives the whole picture.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from servefleet.api.auth import allow
from servefleet.api.context import store_of
from servefleet.api.errors import ERROR_RESPONSES
from servefleet.spec import EndpointManifest, InvalidInput, Problem, RegionStatus, Role
from servefleet.store import (
    Change,
    ChangeKind,
    EndpointNotFound,
    FeedCompacted,
    Store,
    StoreError,
)

__all__ = ["router", "watch_events"]

router = APIRouter(prefix="/v1", tags=["watch"], responses=ERROR_RESPONSES)

_QUEUED = 1000
"""Items waiting for a slow client before the feed and the status look pause."""

_Item = Change | list[RegionStatus] | StoreError
"""What the feed and the status look hand the stream: a change, the statuses, or why
the store failed."""


async def _resume_position(
    store: Annotated[Store, Depends(store_of)],
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            description="The id of the last event received: resume right after it.",
        ),
    ] = None,
) -> int | None:
    """The feed position to resume from; checked before the stream starts, so a bad
    one is a 422 rather than a broken stream."""
    if last_event_id is None:
        return None
    newest = await store.feed_position()
    text = last_event_id.strip()
    if not (text.isascii() and text.isdigit() and int(text) <= newest):
        raise InvalidInput(
            [
                Problem(
                    "Last-Event-ID",
                    f"must be the id of an earlier event, at most {newest} (got {last_event_id!r})",
                    last_event_id,
                )
            ]
        )
    return int(text)


@router.get(
    "/watch",
    dependencies=[allow(Role.VIEWER)],
    response_class=EventSourceResponse,
    summary="Endpoint and status changes as server-sent events (resumable)",
)
async def watch(
    request: Request, since: Annotated[int | None, Depends(_resume_position)]
) -> AsyncIterator[ServerSentEvent]:
    interval: float = request.app.state.status_interval
    async for event in watch_events(store_of(request), since, status_interval=interval):
        yield event


def _endpoint_event(document: EndpointManifest, position: int) -> ServerSentEvent:
    return ServerSentEvent(event="endpoint", id=str(position), data=document.document())


async def watch_events(
    store: Store, since: int | None, *, status_interval: float
) -> AsyncIterator[ServerSentEvent]:
    """The events after feed position `since` (from now, with every endpoint first,
    when None); see the module docstring."""
    position = await store.feed_position() if since is None else since
    if since is None:
        for endpoint in await store.list_endpoints():
            yield _endpoint_event(EndpointManifest.of(endpoint), position)
    queue: asyncio.Queue[_Item] = asyncio.Queue(_QUEUED)
    producers = [
        asyncio.create_task(_reporting(_follow_feed(store, position, queue), queue)),
        asyncio.create_task(_reporting(_look_at_statuses(store, status_interval, queue), queue)),
    ]
    seen: dict[tuple[str, str], RegionStatus] = {}
    try:
        while True:
            item = await queue.get()
            if isinstance(item, FeedCompacted):
                message = f"{item}: list again (GET /v1/endpoints) and watch without Last-Event-ID"
                yield ServerSentEvent(event="compacted", data={"message": message})
                return
            if isinstance(item, StoreError):
                message = f"{item}: reconnect with Last-Event-ID {position}"
                yield ServerSentEvent(
                    event="unavailable", id=str(position), data={"message": message}
                )
                return
            if isinstance(item, Change):
                position = item.seq
                if item.kind is ChangeKind.PURGED:  # its statuses went with it
                    seen = {key: status for key, status in seen.items() if key[0] != item.name}
                event = await _change_event(store, item)
                if event is not None:
                    yield event
                continue
            for status in item:
                key = (status.endpoint, status.region)
                if seen.get(key) != status:
                    seen[key] = status
                    yield ServerSentEvent(
                        event="status", id=str(position), data=status.model_dump(mode="json")
                    )
    finally:
        for producer in producers:
            producer.cancel()
        for producer in producers:
            with contextlib.suppress(asyncio.CancelledError):
                await producer


async def _change_event(store: Store, change: Change) -> ServerSentEvent | None:
    if change.kind is ChangeKind.PURGED:
        return ServerSentEvent(event="purged", id=str(change.seq), data={"name": change.name})
    try:
        endpoint = await store.get_endpoint(change.name)
    except EndpointNotFound:
        return None  # purged since: its own change follows
    return _endpoint_event(EndpointManifest.of(endpoint), change.seq)


async def _reporting(work: Awaitable[None], queue: asyncio.Queue[_Item]) -> None:
    """Run `work`; a store failure is queued, so the stream ends saying why."""
    try:
        await work
    except StoreError as error:
        await queue.put(error)


async def _follow_feed(store: Store, since: int, queue: asyncio.Queue[_Item]) -> None:
    async for change in store.watch(since):
        await queue.put(change)


async def _look_at_statuses(store: Store, interval: float, queue: asyncio.Queue[_Item]) -> None:
    while True:
        await queue.put(await store.list_region_status())
        await asyncio.sleep(interval)
