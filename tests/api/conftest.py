"""One real API server per test module, on loopback, over a store of its own (a
SQLite file, then a PostgreSQL schema), with a token of each role.

Module-scoped, so the tests of a module share the server, the store and the event
loop (`pytestmark = API_LOOP` in each module): each test uses names of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from fastapi import FastAPI

from servefleet.api.server import ServerSettings, api_server
from servefleet.service import EndpointService
from servefleet.spec import Endpoint, EndpointManifest, Region, RegionKind, Role
from servefleet.store import Store, open_store
from servefleet.tokens import TokenService
from tests.conftest import POSTGRES_URL, _drop_schema

API_LOOP = pytest.mark.asyncio(loop_scope="module")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: Any

    @property
    def problem(self) -> dict[str, Any]:
        """The one problem of an error answer."""
        (problem,) = self.body["problems"]
        return dict(problem)


@dataclass
class Api:
    """The running API: its URL, its store (for arranging and checking) and tokens."""

    url: str
    app: FastAPI
    store: Store
    tokens: dict[Role, str]
    revoked: str
    session: aiohttp.ClientSession
    regions: list[str] = field(default_factory=lambda: ["r1", "r2"])

    @property
    def service(self) -> EndpointService:
        return EndpointService(self.store)

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        role: Role | None = Role.ADMIN,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        data: str | bytes | None = None,
    ) -> Answer:
        """Send a request with the token of `role` (or `token`; none if both are None)."""
        sent = dict(headers or {})
        bearer = token if token is not None else (self.tokens[role] if role else None)
        if bearer is not None:
            sent["Authorization"] = f"Bearer {bearer}"
        if data is not None:
            sent["Content-Type"] = "application/json"
        async with self.session.request(
            method,
            self.url + path,
            json=body if data is None and body is not None else None,
            data=data,
            headers=sent,
        ) as response:
            text = await response.text()
            return Answer(
                response.status,
                response.headers.copy(),
                json.loads(text) if text else None,
            )

    @contextlib.asynccontextmanager
    async def watch(
        self, *, role: Role = Role.VIEWER, last_event_id: str | None = None
    ) -> AsyncIterator[EventStream]:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        async with self.session.get(f"{self.url}/v1/watch", headers=headers) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"].startswith("text/event-stream")
            yield EventStream(response)

    async def snapshot(self) -> tuple[Any, ...]:
        """Everything a request could change, to prove a refused one changed nothing."""
        return (
            await self.store.list_endpoints(),
            await self.store.list_regions(),
            await self.store.list_tokens(),
            await self.store.feed_position(),
        )

    async def endpoint(self, name: str, **spec: Any) -> Endpoint:
        """A new endpoint, made through the service."""
        manifest = {"metadata": {"name": name}, "spec": {"image": "ghcr.io/org/server:1.0", **spec}}
        return await self.service.create(EndpointManifest.model_validate(manifest))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgres"])
async def api_store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('api') / 'store.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    url = f"{POSTGRES_URL}?schema={schema}"
    await (await open_store(url, init=True)).close()
    yield url
    await _drop_schema(schema)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def api(api_store_url: str) -> AsyncIterator[Api]:
    store = await open_store(api_store_url, init=True)
    tokens = TokenService(store)
    issued = {role: (await tokens.create(f"{role.value}-token", role.value))[1] for role in Role}
    _, revoked = await tokens.create("revoked-token", "admin")
    await tokens.revoke("revoked-token")
    for region in ("r1", "r2"):
        await store.put_region(Region(name=region, kind=RegionKind.LOCAL))
    async with running_api(store) as (url, app), aiohttp.ClientSession() as session:
        yield Api(url=url, app=app, store=store, tokens=issued, revoked=revoked, session=session)
    await store.close()


@contextlib.asynccontextmanager
async def running_api(store: Store, **settings: Any) -> AsyncIterator[tuple[str, FastAPI]]:
    """The API over `store` on a free loopback port, until the block ends; `settings`
    override `ServerSettings`."""
    server_settings = ServerSettings(
        **{"port": 0, "access_log": False, "watch_status_interval": 0.05, **settings}
    )
    server = api_server(store, server_settings)
    serving = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn has a flag, not an event
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", server.config.app
    finally:
        server.should_exit = True
        await serving


@dataclass(frozen=True)
class Event:
    event: str
    id: str | None
    data: Any


class EventStream:
    """The events of an open `text/event-stream` answer, one at a time."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, within: float = 5) -> Event | None:
        """The next event; None when the stream ends."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(within):
            while True:
                line = (await self.response.content.readline()).decode()
                if not line:
                    return None
                line = line.rstrip("\n")
                if not line:
                    if fields:
                        return Event(
                            fields.get("event", "message"),
                            fields.get("id"),
                            json.loads(fields["data"]) if "data" in fields else None,
                        )
                    continue
                if line.startswith(":"):
                    continue  # a keep-alive comment
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")

    async def until(self, wanted: Any, within: float = 5) -> list[Event]:
        """Events up to and including the first for which `wanted(event)` holds."""
        seen: list[Event] = []
        async with asyncio.timeout(within):
            while True:
                event = await self.next(within)
                assert event is not None, f"the stream ended after {seen}"
                seen.append(event)
                if wanted(event):
                    return seen
