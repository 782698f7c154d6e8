from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from servefleet.collector import pace_for_a_server
from servefleet.store import Store, open_store
from tests.scenarios.harness import Fleet, local_fleet
from tests.store.moto import drop_table, fresh_table_url, moto_server

POSTGRES_URL = os.environ.get(
    "SERVEFLEET_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


# A test worker holds test API servers, stores and fleets for minutes, as a server
# does: at CPython's default pace a quarter of its CPU went to the collector.
pace_for_a_server()


async def _drop_schema(schema: str) -> None:
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await connection.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The `slow` tests first, the longest first: the workers take tests in this
    order (one at a time with `--maxschedchunk 1`, as scripts/test runs them), and a
    long test picked up last would keep one worker busy after the others have finished."""

    def expected_seconds(item: pytest.Item) -> float:
        slow = item.get_closest_marker("slow")
        return float(slow.kwargs["seconds"]) if slow is not None else 0.0

    items.sort(key=expected_seconds, reverse=True)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's DynamoDB in server mode on a free loopback port, for the whole session."""
    with moto_server() as endpoint:
        yield endpoint


#: Every backend. The store-level suites (the contract, the service) run on all of
#: them through `pytestmark = EVERY_STORE`; the rest, whose subject is not the store,
#: on the two SQL backends, which keeps moto's start-up cost out of every CLI test.
EVERY_STORE = pytest.mark.parametrize(
    "store_url", ["sqlite", "postgres", "dynamodb"], indirect=True
)


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty, initialised store: a SQLite file, a PostgreSQL schema or a
    DynamoDB table (on moto) of its own that is dropped afterwards."""
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    elif request.param == "dynamodb":
        url = fresh_table_url(request.getfixturevalue("moto_endpoint"))
    else:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        url = f"{POSTGRES_URL}?schema={schema}"
    store = await open_store(url, init=True)
    await store.close()
    yield url
    if schema is not None:
        await _drop_schema(schema)
    if request.param == "dynamodb":
        await drop_table(url)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    yield opened
    await opened.close()


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    """An initialised SQLite store of the test's own."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = await open_store(url, init=True)
    await store.close()
    return url


@pytest.fixture
async def fleet(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    """`servefleet up --regions r1` in this process on `sqlite_url`."""
    async with local_fleet(sqlite_url, tmp_path) as started:
        yield started
