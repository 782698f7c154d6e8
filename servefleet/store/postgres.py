"""The team store: PostgreSQL through asyncpg, with LISTEN/NOTIFY behind the feed.

Each write transaction sends `NOTIFY` on the store's channel; PostgreSQL delivers it
only after commit, so a woken watcher always finds the change. The listener holds
a connection of its own (a pooled connection drops its listeners when released)
and is re-opened after a disconnect; watchers also look at the feed every
`poll_interval` seconds, so a lost notification costs latency, never a change.

The URL may carry `?schema=NAME` to keep several installations (or test runs) in
one database; the schema is created by `init` and the NOTIFY channel is per schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from servefleet.store.base import Change, StoreError, StoreUnavailable
from servefleet.store.sql import SCHEMA, SCHEMA_VERSION, Row, Session, SqlStore

log = logging.getLogger(__name__)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")
_RECONNECT_DELAY = 1.0


class SchemaMissing(StoreError):
    def __init__(self, schema: str, found: int | None) -> None:
        what = "has no servefleet tables" if found is None else f"is at version {found}"
        super().__init__(
            f"PostgreSQL schema {schema!r} {what}, this servefleet needs version "
            f"{SCHEMA_VERSION}: run `servefleet store init`"
        )


class _PostgresSession:
    def __init__(self, connection: asyncpg.pool.PoolConnectionProxy) -> None:
        self._connection = connection

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return [tuple(record) for record in await self._connection.fetch(sql, *args)]

    async def execute(self, sql: str, *args: object) -> int:
        status = await self._connection.execute(sql, *args)
        # asyncpg answers with the command tag, e.g. "UPDATE 1" or "INSERT 0 1".
        return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0


def _split_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    schema = query.pop("schema", "public")
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(
            f"store: schema must be lowercase letters, digits and '_' (got {schema!r})"
        )
    return urlunsplit(parts._replace(query=urlencode(query))), schema


class PostgresStore(SqlStore):
    poll_interval = 5.0

    def __init__(self, pool: asyncpg.Pool, dsn: str, schema: str) -> None:
        super().__init__()
        self._pool = pool
        self._dsn = dsn
        self._schema = schema
        self._channel = f"servefleet_changes_{schema}"
        self._listener: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, *, init: bool = False) -> PostgresStore:
        dsn, schema = _split_url(url)
        try:
            if init:
                connection = await asyncpg.connect(dsn)
                try:
                    await connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                finally:
                    await connection.close()
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=10, server_settings={"search_path": schema}
            )
        except (OSError, asyncpg.PostgresError) as error:
            raise StoreUnavailable(f"cannot reach PostgreSQL store: {error}") from error
        store = cls(pool, dsn, schema)
        try:
            if init:
                async with store._transaction() as session:
                    await session.execute("SELECT pg_advisory_xact_lock(7311)")
                    for statement in SCHEMA:
                        await session.execute(statement)
            await store._check_schema()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _check_schema(self) -> None:
        try:
            async with self._transaction(readonly=True) as session:
                rows = await session.fetch("SELECT version FROM servefleet_schema")
        except asyncpg.UndefinedTableError:
            raise SchemaMissing(self._schema, None) from None
        found = int(rows[0][0]) if rows else None
        if found != SCHEMA_VERSION:
            raise SchemaMissing(self._schema, found)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._pool.close()

    @property
    def _now_sql(self) -> str:
        return "extract(epoch from clock_timestamp())::double precision"

    @asynccontextmanager
    async def _transaction(self, *, readonly: bool = False) -> AsyncIterator[Session]:
        try:
            async with (
                self._pool.acquire() as connection,
                connection.transaction(readonly=readonly),
            ):
                yield _PostgresSession(connection)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as error:
            raise StoreUnavailable(f"PostgreSQL store is unavailable: {error}") from error

    async def _announce(self, session: Session) -> None:
        await session.execute(f"NOTIFY {self._channel}")

    async def watch(self, since: int) -> AsyncIterator[Change]:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="servefleet-pg-listen")
        async for change in super().watch(since):
            yield change

    async def _listen(self) -> None:
        while True:
            try:
                connection = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as error:
                log.warning("change feed listener cannot connect, retrying: %s", error)
                await asyncio.sleep(_RECONNECT_DELAY)
                continue
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _connection, lost=lost: lost.set())
            try:
                await connection.add_listener(self._channel, lambda *_: self._wake_watchers())
                # Anything committed while we were not listening is found by this look.
                self._wake_watchers()
                await lost.wait()
            finally:
                with contextlib.suppress(Exception):
                    await connection.close()
            log.warning("change feed listener lost its connection, reconnecting")
            await asyncio.sleep(_RECONNECT_DELAY)
