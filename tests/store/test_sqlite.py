"""What only the SQLite store does: one-statement calls made while its connection
is busy run together, in one transaction on one hop to the connection's thread,
and each still answers (or fails) on its own."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from servefleet.spec import RegionState
from servefleet.store import open_store
from servefleet.store.sqlite import SqliteStore
from tests.factories import make_status


@pytest.fixture
async def sqlite_store(sqlite_url: str) -> AsyncIterator[SqliteStore]:
    store = await open_store(sqlite_url)
    assert isinstance(store, SqliteStore)
    try:
        yield store
    finally:
        await store.close()


def count_hops(store: SqliteStore) -> list[int]:
    """Counts the store's trips to its connection's thread (one element per trip)."""
    connection = store._connection
    run = connection.run
    hops: list[int] = []

    async def counted(work: Callable[[sqlite3.Connection], Any]) -> Any:
        hops.append(1)
        return await run(work)

    connection.run = counted  # type: ignore[method-assign]
    return hops


async def test_status_writes_made_at_once_share_a_few_hops_and_all_land(
    sqlite_store: SqliteStore, sqlite_url: str
) -> None:
    hops = count_hops(sqlite_store)
    statuses = [make_status(f"e{index}", "r1", state=RegionState.READY) for index in range(200)]

    await asyncio.gather(*(sqlite_store.put_region_status(status) for status in statuses))

    assert len(hops) <= 3  # the first alone, the rest queued behind it
    reader = await open_store(sqlite_url)  # another connection: committed, not cached
    try:
        stored = await reader.list_region_status(region="r1")
    finally:
        await reader.close()
    assert sorted(status.endpoint for status in stored) == sorted(f"e{i}" for i in range(200))


async def test_a_read_queued_after_a_write_sees_it(sqlite_store: SqliteStore) -> None:
    await sqlite_store.put_region_status(make_status("busy", "r1", state=RegionState.READY))
    write = make_status("llm", "r1", state=RegionState.PROGRESSING)

    _, _, seen = await asyncio.gather(
        sqlite_store.list_region_status(),  # takes the connection; the rest queue
        sqlite_store.put_region_status(write),
        sqlite_store.list_region_status(endpoint="llm"),
    )

    assert seen == [write]


async def test_a_failing_statement_fails_alone_and_the_others_in_its_batch_commit(
    sqlite_store: SqliteStore,
) -> None:
    first = make_status("first", "r1", state=RegionState.READY)
    last = make_status("last", "r1", state=RegionState.READY)

    outcomes = await asyncio.gather(
        sqlite_store.list_region_status(),  # takes the connection; the rest queue
        sqlite_store.put_region_status(first),
        sqlite_store._write("INSERT INTO regions (name, record) VALUES ($1, NULL)", "broken"),
        sqlite_store.put_region_status(last),
        return_exceptions=True,
    )

    assert isinstance(outcomes[2], sqlite3.IntegrityError)
    assert "NOT NULL" in str(outcomes[2])
    assert [o for i, o in enumerate(outcomes) if i != 2 and isinstance(o, BaseException)] == []
    stored = {status.endpoint for status in await sqlite_store.list_region_status()}
    assert stored == {"first", "last"}
    assert await sqlite_store._read("SELECT name FROM regions WHERE name = $1", "broken") == []


async def test_a_cancelled_caller_does_not_keep_the_others_from_their_answers(
    sqlite_store: SqliteStore,
) -> None:
    async with sqlite_store._transaction():  # the connection is busy: calls queue
        cancelled = asyncio.ensure_future(
            sqlite_store.put_region_status(make_status("gone", "r1", state=RegionState.READY))
        )
        kept = asyncio.ensure_future(
            sqlite_store.put_region_status(make_status("kept", "r1", state=RegionState.READY))
        )
        await asyncio.sleep(0.01)
        cancelled.cancel()

    await kept

    assert cancelled.cancelled()
    assert [s.endpoint for s in await sqlite_store.list_region_status()] == ["kept"]
