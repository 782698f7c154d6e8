"""`/healthz` and `/readyz` of the API (`serve`) and of the reconcilers' monitoring
listener (`up`, `reconcile`), over HTTP, against a PostgreSQL store that goes away:
the store is reached through a relay on a port of the test's own, which the test
closes (a PostgreSQL URL whose port refuses connections)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from servefleet.cli.monitoring import MonitoringServer
from servefleet.metrics import Metrics
from servefleet.store import open_store
from tests.api.conftest import running_api
from tests.conftest import POSTGRES_URL, _drop_schema

pytestmark = pytest.mark.postgres


class Relay:
    """A TCP relay from a loopback port to PostgreSQL; `close()` ends every relayed
    connection and refuses new ones."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        target = URL(POSTGRES_URL)
        assert target.host is not None

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while chunk := await reader.read(65536):
                    writer.write(chunk)
                    await writer.drain()
            writer.close()

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                target.host, target.port
            )
            self._writers |= {writer, upstream_writer}
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

        self._server = await asyncio.start_server(relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, schema: str) -> str:
        return str(URL(POSTGRES_URL).with_port(self.port).with_query(schema=schema))

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        return response.status, await response.json()


@contextlib.asynccontextmanager
async def _relayed_store() -> AsyncIterator[tuple[Any, Relay, str]]:
    relay = Relay()
    await relay.start()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    store = await open_store(relay.url(schema), init=True)
    try:
        yield store, relay, schema
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await store.close()
        await _drop_schema(schema)


async def test_the_api_is_ready_while_its_store_answers() -> None:
    """Verify /healthz always, and /readyz 200 then 503 once the store is unreachable."""
    async with _relayed_store() as (store, relay, _schema), running_api(store) as (url, _app):
        assert await _get(f"{url}/healthz") == (200, {"alive": True})
        assert await _get(f"{url}/readyz") == (200, {"ready": True, "store": "ok"})

        await relay.close()

        status, body = await _get(f"{url}/readyz")
        assert status == 503
        assert body["ready"] is False
        assert body["store"].startswith("unreachable: ")
        assert await _get(f"{url}/healthz") == (200, {"alive": True})


async def test_the_reconcilers_are_ready_with_the_store_and_every_leader_known() -> None:
    """Verify /readyz of `up`'s listener: 503 until each region's election has
    answered, 200 then, 503 again once the store is unreachable."""
    metrics = Metrics()
    async with _relayed_store() as (store, relay, _schema):
        monitoring = MonitoringServer(metrics, store, ["r1", "r2"])
        url = await monitoring.start("127.0.0.1", 0)
        try:
            assert await _get(f"{url}/healthz") == (200, {"alive": True})
            metrics.set_leader("r1", True)
            assert await _get(f"{url}/readyz") == (
                503,
                {"ready": False, "store": "ok", "regions": {"r1": "leader", "r2": "unknown"}},
            )
            metrics.set_leader("r2", False)
            assert await _get(f"{url}/readyz") == (
                200,
                {"ready": True, "store": "ok", "regions": {"r1": "leader", "r2": "standby"}},
            )

            await relay.close()

            status, body = await _get(f"{url}/readyz")
            assert status == 503
            assert body["store"].startswith("unreachable: ")
        finally:
            await monitoring.close()
