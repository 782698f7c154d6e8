"""The `pods/log` subresource over HTTP: one answer, or with `follow` a stream of
what the container writes until it ends, the pod goes or the server stops (what
is answered: `podlog.py`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import UTC, datetime

from aiohttp import web

from . import errors, podlog
from .engine import Engine
from .podlog import ContainerLogs, LogOptions
from .resources import PODS
from .routing import Route


class PodLogStreams:
    """The `pods/log` answers of one server; its `stopping` ends the streams that
    follow."""

    def __init__(self, engine: Engine, logs: ContainerLogs, stopping: asyncio.Event) -> None:
        self._engine = engine
        self._logs = logs
        self._stopping = stopping

    async def serve(
        self, request: web.Request, route: Route, query: Mapping[str, str]
    ) -> web.StreamResponse:
        if request.method != "GET" or route.name is None or route.watch_path:
            raise errors.method_not_allowed()
        options = podlog.parse_options(route.name, query)
        pod = self._engine.get(PODS, route.namespace or "", route.name)
        instance = podlog.locate(pod, options)
        if instance is None:  # no node: the real server has no location to stream from
            return web.Response(status=204)
        lines = self._logs.lines(instance)
        body = podlog.render(lines, options, datetime.now(UTC))
        if not options.follow:
            return web.Response(body=body, content_type="text/plain")
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError, ConnectionError):
            await response.write(body)
            await self._follow(response, instance, options, len(lines), len(body))
            await response.write_eof()
        return response

    async def _follow(
        self,
        response: web.StreamResponse,
        instance: str,
        options: LogOptions,
        seen: int,
        sent: int,
    ) -> None:
        """Stream what `instance` writes after its first `seen` lines, until it ends
        (or the pod goes, or the server stops), within `limitBytes`."""
        budget = None if options.limit_bytes is None else options.limit_bytes - sent
        while budget is None or budget > 0:
            running = self._logs.running(instance)  # before reading: no line is missed
            lines = self._logs.lines(instance)
            chunk = podlog.join(lines[seen:], options.timestamps)
            seen = len(lines)
            if budget is not None:
                chunk, budget = chunk[:budget], budget - len(chunk)
            if chunk:
                await response.write(chunk)
            if not running:
                return
            changed = asyncio.ensure_future(self._logs.changed())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({changed, stopping}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            stopping.cancel()
            if self._stopping.is_set():
                return
