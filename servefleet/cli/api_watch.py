"""`--wait` through the API: the watch stream (`GET /v1/watch`, server-sent events)
says when an endpoint being waited for, or one of its region statuses, changed, so
the wait looks again then instead of every `POLL_INTERVAL`.

An event only wakes the wait; what it shows is read as before (`Fleet.status`), so
the output is the same as on the store. Events of other endpoints are ignored. A
stream that cannot be opened, or breaks, or ends (the server stopping, the store
failing), leaves the wait polling every `POLL_INTERVAL` until it is over.

A stream opened without `Last-Event-ID` starts with every endpoint and status as
they are, so a change made between the first look and the stream's start still
wakes the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any

import aiohttp

from servefleet.cli.fleet import Changes, Polled

__all__ = ["watched"]

_STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=60.0)
"""The stream lasts as long as the wait; the server sends a keep-alive comment
every 15 s, so a minute of silence is a dead connection."""

_NAMED: Mapping[str, Callable[[Any], Any]] = {
    "endpoint": lambda data: data["metadata"]["name"],
    "status": lambda data: data["endpoint"],
    "purged": lambda data: data["name"],
}
"""Where each kind of event names its endpoint."""


@contextlib.asynccontextmanager
async def watched(
    session: aiohttp.ClientSession,
    base_url: str,
    headers: Mapping[str, str],
    names: Collection[str],
) -> AsyncIterator[Changes]:
    """The changes of endpoints `names`, as the API at `base_url` streams them, while
    the block runs."""
    streamed = _Streamed(set(names))
    following = asyncio.create_task(streamed.follow(session, f"{base_url}/v1/watch", headers))
    try:
        yield streamed
    finally:
        following.cancel()
        await asyncio.wait([following])


class _Streamed:
    def __init__(self, names: set[str]) -> None:
        self._names = names
        self._woken = asyncio.Event()
        self._ended = False

    async def next(self, within: float) -> None:
        if self._ended:
            await Polled().next(within)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._woken.wait()
        self._woken.clear()

    async def follow(
        self, session: aiohttp.ClientSession, url: str, headers: Mapping[str, str]
    ) -> None:
        try:
            async with session.get(url, headers=headers, timeout=_STREAM_TIMEOUT) as response:
                if response.status != 200:
                    return
                async for kind, data in _events(response.content):
                    if _endpoint_of(kind, data) in self._names:
                        self._woken.set()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            pass  # polling from now on
        finally:
            self._ended = True
            self._woken.set()


def _endpoint_of(kind: str, data: Any) -> Any:
    try:
        return _NAMED[kind](data)
    except (KeyError, TypeError):
        return None


async def _events(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str, Any]]:
    """Each event's kind and JSON data; comments and events without data skipped."""
    kind, data = "message", list[str]()
    async for raw in content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", list[str]()
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                kind = value
            elif field == "data":
                data.append(value)
