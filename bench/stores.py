"""Fresh, empty stores to measure on: a SQLite file in a temporary directory, or a
PostgreSQL schema `bench_<random>` of its own that is dropped afterwards."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from servefleet.spec import Endpoint, EndpointSpec, Region, RegionKind
from servefleet.store import Store, open_store

REGION = "r1"


def _with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["schema"] = schema
    return urlunsplit(parts._replace(query=urlencode(query)))


def _without_schema(url: str) -> str:
    parts = urlsplit(url)
    query = {k: v for k, v in parse_qsl(parts.query) if k != "schema"}
    return urlunsplit(parts._replace(query=urlencode(query)))


async def postgres_problem(url: str) -> str | None:
    """Why PostgreSQL at `url` cannot be used, or None when it answers."""
    try:
        connection = await asyncpg.connect(_without_schema(url), timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        return f"{type(error).__name__}: {error}"
    await connection.close()
    return None


DYNAMODB_REGION = "us-east-1"


@asynccontextmanager
async def fresh_store(kind: str, server_url: str) -> AsyncIterator[str]:
    """The URL of a new, initialised, empty store of `kind`: "sqlite" (a file),
    "postgresql" (a schema of its own on the server at `server_url`) or "dynamodb" (a
    table of its own on the moto server at `server_url`)."""
    if kind == "dynamodb":
        # moto takes any credentials; these name no real account.
        for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.setdefault(variable, "bench")
        table = f"bench-{uuid.uuid4().hex[:12]}"
        url = f"dynamodb://{table}?region={DYNAMODB_REGION}&endpoint_url={server_url}"
        store = await open_store(url, init=True)
        await store.close()
        yield url
        return
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="servefleet-bench-") as directory:
            url = f"sqlite:///{Path(directory) / 'store.db'}"
            store = await open_store(url, init=True)
            await store.close()
            yield url
        return
    postgres_url = server_url
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    url = _with_schema(postgres_url, schema)
    try:
        store = await open_store(url, init=True)
        await store.close()
        yield url
    finally:
        connection = await asyncpg.connect(_without_schema(postgres_url))
        try:
            await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await connection.close()


def endpoint_name(index: int) -> str:
    return f"ep-{index:05d}"


async def populate(store: Store, count: int) -> list[str]:
    """Register region r1 and create `count` endpoints targeting it (2 replicas each)."""
    await store.put_region(Region(name=REGION, kind=RegionKind.LOCAL))
    now = datetime.now(UTC)
    spec = EndpointSpec(image="ghcr.io/example/server:1.0", replicas=2)
    names = [endpoint_name(i) for i in range(count)]
    for name in names:
        await store.create_endpoint(
            Endpoint(name=name, spec=spec, target_regions=[REGION], created_at=now, updated_at=now)
        )
    return names
