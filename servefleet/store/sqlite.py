"""The embedded default store: one SQLite file, shared safely by many processes.

WAL mode lets readers run beside the writer; every write transaction starts with
`BEGIN IMMEDIATE` so two processes never both read, then both try to upgrade to
writing (which SQLite would answer with "database is locked" for one of them),
and a busy timeout makes a second writer wait its turn instead of failing.

The connection lives on a thread of its own, so waiting never blocks the loop. A
hop to that thread costs the loop far more than a statement costs SQLite, and a
busy loop (a reconciler with thousands of passes in flight) holds the connection
for a whole loop turn per hop: one statement at a time, a store would top out at
a few hundred statements a second. So one-statement calls (`_read`, `_write`: most
of the traffic, status writes above all) queue up while the connection is busy
and then run together, in order, in one transaction on one hop. A statement that
fails inside that transaction is undone alone (SQLite backs out a failing
statement and keeps the transaction); if the transaction itself fails, every
statement in it fails.

Another process's commit cannot be pushed to us, so watchers look at the feed
every `poll_interval` seconds (one indexed query); writes made through this same
store object wake watchers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from servefleet.store.base import StoreUnavailable
from servefleet.store.sql import SCHEMA, Row, Session, SqlStore

_PLACEHOLDER = re.compile(r"\$(\d+)")
_BUSY_TIMEOUT_MS = 30_000

_T = TypeVar("_T")


@functools.lru_cache(maxsize=256)
def _sqlite_sql(sql: str) -> str:
    """`sql` with PostgreSQL's `$n` placeholders as SQLite's `?n`: the store's few
    statement texts, each rewritten once (a region status write is one per pass)."""
    return _PLACEHOLDER.sub(r"?\1", sql)


class _Connection:
    """A sqlite3 connection used only on its own thread."""

    def __init__(self, raw: sqlite3.Connection, thread: ThreadPoolExecutor) -> None:
        self._raw = raw
        self._thread = thread

    @classmethod
    async def open(cls, path: Path) -> _Connection:
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")

        def connect() -> sqlite3.Connection:
            raw = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000)
            try:
                raw.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                raw.execute("PRAGMA journal_mode = WAL")
                raw.execute("PRAGMA synchronous = NORMAL")
            except BaseException:
                raw.close()
                raise
            return raw

        try:
            raw = await asyncio.get_running_loop().run_in_executor(thread, connect)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(raw, thread)

    async def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """`work(connection)` on the connection's thread. Once asked for, it runs even
        if the caller is cancelled: a COMMIT or ROLLBACK dropped from the queue would
        leave a transaction open and every other writer of the file locked out."""
        done = asyncio.wrap_future(self._thread.submit(work, self._raw))
        return await asyncio.shield(done)

    async def close(self) -> None:
        try:
            await self.run(sqlite3.Connection.close)
        finally:
            self._thread.shutdown(wait=False)


def _rows(raw: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> list[Row]:
    return list(raw.execute(sql, args).fetchall())


def _changed(raw: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> int:
    """The number of rows the statement changed."""
    return raw.execute(sql, args).rowcount


def _unavailable(error: sqlite3.Error) -> StoreUnavailable:
    return StoreUnavailable(f"SQLite store is unavailable: {error}")


def _as_raised(error: sqlite3.Error) -> Exception:
    """What a store call raises for `error`: an operational one (locked, I/O, a
    missing file) means the store is unavailable; the rest (a constraint) as it is."""
    return _unavailable(error) if isinstance(error, sqlite3.OperationalError) else error


class _SqliteSession:
    def __init__(self, connection: _Connection) -> None:
        self._connection = connection

    async def fetch(self, sql: str, *args: object) -> list[Row]:
        return await self._run(_rows, sql, args)

    async def execute(self, sql: str, *args: object) -> int:
        return await self._run(_changed, sql, args)

    async def _run(
        self,
        statement: Callable[[sqlite3.Connection, str, tuple[object, ...]], _T],
        sql: str,
        args: tuple[object, ...],
    ) -> _T:
        try:
            return await self._connection.run(lambda raw: statement(raw, _sqlite_sql(sql), args))
        except sqlite3.OperationalError as error:
            raise _unavailable(error) from error


@dataclass
class _Statement:
    """A one-statement call waiting for its turn on the connection."""

    sql: str
    args: tuple[object, ...]
    reads: bool
    """Its answer is its rows (else the number of rows it changed)."""
    answer: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def run(self, raw: sqlite3.Connection) -> Any:
        return (_rows if self.reads else _changed)(raw, self.sql, self.args)


def _run_together(raw: sqlite3.Connection, batch: list[_Statement]) -> list[Any]:
    """On the connection's thread: each statement's answer or the `sqlite3.Error` it
    raised, all in one transaction (module docstring); raises what fails it whole."""
    if len(batch) == 1:  # autocommit: a transaction of its own, no BEGIN/COMMIT
        try:
            return [batch[0].run(raw)]
        except sqlite3.Error as error:
            return [error]
    raw.execute("BEGIN" if all(statement.reads for statement in batch) else "BEGIN IMMEDIATE")
    try:
        answers: list[Any] = []
        for statement in batch:
            try:
                answers.append(statement.run(raw))
            except sqlite3.Error as error:
                if not raw.in_transaction:  # SQLite rolled back the whole transaction
                    raise
                answers.append(error)
        raw.execute("COMMIT")
    except BaseException:
        if raw.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                raw.execute("ROLLBACK")
        raise
    return answers


def _prepare_directory(location: str) -> Path:
    path = Path(location).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


class SqliteStore(SqlStore):
    def __init__(self, connection: _Connection, poll_interval: float) -> None:
        super().__init__()
        self._connection = connection
        # One connection serves every task of this store; a lock keeps their
        # transactions from interleaving on it.
        self._lock = asyncio.Lock()
        self._queued: list[_Statement] = []
        self._runners: set[asyncio.Task[None]] = set()
        self.poll_interval = poll_interval

    @classmethod
    async def open(cls, location: str, *, poll_interval: float = 0.05) -> SqliteStore:
        path = await asyncio.to_thread(_prepare_directory, location)
        try:
            connection = await _Connection.open(path)
        except sqlite3.Error as error:
            raise StoreUnavailable(f"cannot open SQLite store {str(path)!r}: {error}") from error
        store = cls(connection, poll_interval)
        try:
            async with store._transaction() as session:
                for statement in SCHEMA:
                    await session.execute(statement)
        except BaseException:
            await connection.close()
            raise
        return store

    async def close(self) -> None:
        await asyncio.gather(*self._runners, return_exceptions=True)
        await self._connection.close()

    async def _read(self, sql: str, *args: object) -> list[Row]:
        rows: list[Row] = await self._queue(_Statement(_sqlite_sql(sql), args, reads=True))
        return rows

    async def _write(self, sql: str, *args: object) -> int:
        changed: int = await self._queue(_Statement(_sqlite_sql(sql), args, reads=False))
        return changed

    async def _queue(self, statement: _Statement) -> Any:
        self._queued.append(statement)
        if len(self._queued) == 1:  # no runner is waiting for the connection yet
            runner = asyncio.get_running_loop().create_task(self._run_queued())
            self._runners.add(runner)
            runner.add_done_callback(self._runners.discard)
        return await statement.answer

    async def _run_queued(self) -> None:
        async with self._lock:
            # Everything queued while this runner waited for the connection goes now.
            batch = [statement for statement in self._queued if not statement.answer.done()]
            self._queued = []
            if not batch:
                return
            try:
                answers = await self._connection.run(lambda raw: _run_together(raw, batch))
            except sqlite3.Error as error:
                answers = [error] * len(batch)
            except BaseException as error:  # cancelled (the store closing) or a bug
                for statement in batch:
                    if not statement.answer.done():
                        statement.answer.set_exception(StoreUnavailable(f"SQLite store: {error!r}"))
                raise
        for statement, answer in zip(batch, answers, strict=True):
            if statement.answer.done():  # its caller was cancelled; the statement ran
                continue
            if isinstance(answer, sqlite3.Error):
                statement.answer.set_exception(_as_raised(answer))
            else:
                statement.answer.set_result(answer)

    @property
    def _now_sql(self) -> str:
        return "((julianday('now') - 2440587.5) * 86400.0)"

    @asynccontextmanager
    async def _transaction(self, *, readonly: bool = False) -> AsyncIterator[Session]:
        async with self._lock:
            session = _SqliteSession(self._connection)
            try:
                try:
                    await session.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
                except sqlite3.Error as error:
                    raise _unavailable(error) from error
                yield session
            except BaseException:
                # Also when cancelled while waiting for BEGIN: the thread runs it
                # anyway, and an open write transaction would lock every other process
                # out of the file. The ROLLBACK queues behind it on the same thread.
                await asyncio.shield(self._rollback())
                raise
            try:
                await session.execute("COMMIT")
            except sqlite3.Error as error:
                raise StoreUnavailable(f"SQLite commit failed: {error}") from error

    async def _rollback(self) -> None:
        def rollback(raw: sqlite3.Connection) -> None:
            if raw.in_transaction:  # else BEGIN never ran
                raw.execute("ROLLBACK")

        with contextlib.suppress(sqlite3.Error):
            await self._connection.run(rollback)
