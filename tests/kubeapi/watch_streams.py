"""Watches over HTTP: the events a watch starts from (the current objects, or the
history after its resourceVersion: 410 Expired once compacted), then each change
as it is committed, BOOKMARKs, and the end at `timeoutSeconds`; and the open
streams, which the tests can end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from . import errors
from .request_parsing import selectors, truthy
from .resources import ResourceType
from .responses import write_event
from .routing import Route
from .selectors import FieldSelector
from .store import Event, Store, TooOld, Watcher


@dataclass(eq=False)
class _Stream:
    watcher: Watcher
    request: web.Request


class WatchStreams:
    """The watch streams of one server: `bookmark_interval` (seconds between
    BOOKMARKs) and `default_timeout` (for watches without `timeoutSeconds`)."""

    def __init__(self, store: Store, bookmark_interval: float, default_timeout: float) -> None:
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.default_timeout = default_timeout
        self._streams: set[_Stream] = set()

    def __len__(self) -> int:
        """The streams open."""
        return len(self._streams)

    def drop(self, abort: bool = False) -> int:
        """End every open watch stream: cleanly (EOF), or by closing the connection."""
        streams = list(self._streams)
        for stream in streams:
            if abort and stream.request.transport is not None:
                stream.request.transport.close()
            stream.watcher.close()
        return len(streams)

    async def serve(
        self, request: web.Request, route: Route, query: Mapping[str, str]
    ) -> web.StreamResponse:
        resource = route.resource
        labels, fields = selectors(query)
        if route.name is not None:
            fields = FieldSelector((*fields.terms, ("metadata.name", True, route.name)))
        raw_timeout = query.get("timeoutSeconds")
        try:
            timeout = float(raw_timeout) if raw_timeout else 0.0
        except ValueError as error:
            raise errors.bad_request(f"invalid timeoutSeconds: {raw_timeout}") from error
        if timeout <= 0:  # 0 or absent: the server picks (here: default_watch_timeout)
            timeout = self.default_timeout
        bookmarks = truthy(query.get("allowWatchBookmarks"))
        watcher = Watcher(resource, route.namespace, labels, fields)
        start = query.get("resourceVersion", "")
        expired: TooOld | None = None
        initial: list[Event] = []
        # Computed and registered without awaiting, so no write falls in between.
        if start in ("", "0"):
            for stored in self.store.items(resource, route.namespace, labels, fields):
                initial.append(Event(stored.resource_version, "ADDED", stored.obj))
        else:
            try:
                since = self.store.since(resource, int(start))
            except ValueError as error:
                raise errors.invalid(
                    "meta.k8s.io",
                    "ListOptions",
                    "",
                    [errors.FieldError("Invalid", "resourceVersion", start, "must be a number")],
                ) from error
            except TooOld as too_old:
                expired = too_old
            else:
                initial = [e for e in map(watcher.translate, since) if e is not None]
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        if expired is None:
            self.store.watchers.add(watcher)
        stream = _Stream(watcher, request)
        self._streams.add(stream)
        try:
            await response.prepare(request)
            if expired is not None:
                status = errors.expired(str(expired)).body()
                status.pop("details", None)
                await write_event(response, "ERROR", status)
            else:
                for event in initial:
                    await write_event(response, event.type, event.obj)
                await self._stream(response, watcher, resource, timeout, bookmarks)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.store.watchers.discard(watcher)
            self._streams.discard(stream)
        with contextlib.suppress(ConnectionResetError, ConnectionError):
            await response.write_eof()
        return response

    async def _stream(
        self,
        response: web.StreamResponse,
        watcher: Watcher,
        resource: ResourceType,
        duration: float,
        bookmarks: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + duration
        # Like the real watch cache: periodic bookmarks, and one shortly before the
        # timeout so the client can resume from an up-to-date resourceVersion.
        pretimeout = deadline - min(2.0, duration / 4)
        next_bookmark = min(started + self.bookmark_interval, pretimeout)
        sent_pretimeout = False
        while True:
            now = loop.time()
            if now >= deadline:
                return
            wake = min(deadline, next_bookmark) if bookmarks else deadline
            try:
                async with asyncio.timeout(max(wake - now, 0)):
                    event = await watcher.queue.get()
            except TimeoutError:
                if bookmarks and loop.time() >= next_bookmark and watcher.queue.empty():
                    await write_event(
                        response,
                        "BOOKMARK",
                        {
                            "kind": resource.kind,
                            "apiVersion": resource.group_version,
                            "metadata": {"resourceVersion": str(self.store.resource_version)},
                        },
                    )
                    if next_bookmark >= pretimeout:
                        sent_pretimeout = True
                    next_bookmark = loop.time() + self.bookmark_interval
                    if not sent_pretimeout:
                        next_bookmark = min(next_bookmark, pretimeout)
                continue
            if event is None:
                return
            await write_event(response, event.type, event.obj)
