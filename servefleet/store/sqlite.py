"""The embedded default store: one SQLite file, shared safely by many processes.

WAL mode lets readers run beside the writer; every write transaction starts with
`BEGIN IMMEDIATE` so two processes never both read, then both try to upgrade to
writing (which SQLite would answer with "database is locked" for one of them),
and a busy timeout makes a second writer wait its turn instead of failing.
aiosqlite runs each statement on its own thread, so waiting never blocks the loop.

Another process's commit cannot be pushed to us, so watchers look at the feed
every `poll_interval` seconds (one indexed query); writes made through this same
store object wake watchers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from servefleet.store.base import StoreUnavailable
from servefleet.store.sql import SCHEMA, Row, Session, SqlStore

_PLACEHOLDER = re.compile(r"\$(\d+)")
_BUSY_TIMEOUT_MS = 30_000


class _SqliteSession:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        try:
            # One hop to aiosqlite's thread, not three (execute, fetchall, close).
            rows = await self._connection.execute_fetchall(_PLACEHOLDER.sub(r"?\1", sql), args)
            return list(rows)
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"SQLite store is unavailable: {error}") from error

    async def execute(self, sql: str, *args: object) -> int:
        try:
            # Not closed through aiosqlite (a second hop): dropping it closes it, as
            # the cursors of BEGIN and COMMIT are.
            cursor = await self._connection.execute(_PLACEHOLDER.sub(r"?\1", sql), args)
            return cursor.rowcount
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(f"SQLite store is unavailable: {error}") from error


def _prepare_directory(location: str) -> Path:
    path = Path(location).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class SqliteStore(SqlStore):
    def __init__(self, connection: aiosqlite.Connection, poll_interval: float) -> None:
        super().__init__()
        self._connection = connection
        # One connection serves every task of this store; a lock keeps their
        # transactions from interleaving on it.
        self._lock = asyncio.Lock()
        self.poll_interval = poll_interval

    @classmethod
    async def open(cls, location: str, *, poll_interval: float = 0.05) -> SqliteStore:
        path = await asyncio.to_thread(_prepare_directory, location)
        try:
            connection = await aiosqlite.connect(
                path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000
            )
            await connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            await connection.execute("PRAGMA journal_mode = WAL")
            await connection.execute("PRAGMA synchronous = NORMAL")
            store = cls(connection, poll_interval)
            async with store._transaction() as session:
                for statement in SCHEMA:
                    await session.execute(statement)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"cannot open SQLite store {str(path)!r}: {error}") from error
        return store

    async def close(self) -> None:
        await self._connection.close()

    # A statement outside BEGIN ... COMMIT is a transaction of its own (autocommit; a
    # writing one takes the write lock before it reads, as BEGIN IMMEDIATE does): one
    # hop to aiosqlite's thread instead of three.

    async def _read(self, sql: str, *args: object) -> list[Row]:
        async with self._lock:
            return await _SqliteSession(self._connection).fetch(sql, *args)

    async def _write(self, sql: str, *args: object) -> int:
        async with self._lock:
            return await _SqliteSession(self._connection).execute(sql, *args)

    @property
    def _now_sql(self) -> str:
        return "((julianday('now') - 2440587.5) * 86400.0)"

    @asynccontextmanager
    async def _transaction(self, *, readonly: bool = False) -> AsyncIterator[Session]:
        async with self._lock:
            try:
                try:
                    await self._connection.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
                except sqlite3.Error as error:
                    raise StoreUnavailable(f"SQLite store is unavailable: {error}") from error
                yield _SqliteSession(self._connection)
            except BaseException:
                # Also when cancelled while waiting for BEGIN: aiosqlite's thread runs it
                # anyway, and an open write transaction would lock every other process
                # out of the file. The ROLLBACK queues behind it on the same thread.
                await asyncio.shield(self._rollback())
                raise
            try:
                await self._connection.execute("COMMIT")
            except sqlite3.Error as error:
                raise StoreUnavailable(f"SQLite commit failed: {error}") from error

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):  # no transaction: BEGIN never ran
            await self._connection.execute("ROLLBACK")
