from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from servefleet.store import Store, open_store

POSTGRES_URL = os.environ.get(
    "SERVEFLEET_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


async def _drop_schema(schema: str) -> None:
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty, initialised store: a SQLite file, or a PostgreSQL schema
    of its own that is dropped afterwards."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        schema = None
    else:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        url = f"{POSTGRES_URL}?schema={schema}"
    store = await open_store(url, init=True)
    await store.close()
    yield url
    if schema is not None:
        await _drop_schema(schema)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    yield opened
    await opened.close()
