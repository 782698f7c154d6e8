"""Everything the SQL backends share: schema, statements, rows <-> records, and the
store logic itself. A backend supplies only a way to run a transaction, its SQL
clock, and a way to hear of other writers' commits (`SqliteStore` polls the feed,
`PostgresStore` listens for NOTIFY).

Statements use `$1`-style placeholders (asyncpg's); SQLite reads `?1` for them.

Why a feed counter row: a plain sequence hands out numbers at insert time, so a
transaction holding position 5 can commit after one holding 6, and a watcher that
already moved past 6 would never see 5. Bumping one counter row inside each write
transaction holds its row lock until commit, so positions become visible in order.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any, Protocol

from servefleet.spec import STORED, ApiToken, DesiredState, Endpoint, Region, RegionStatus
from servefleet.store.base import (
    FENCE_EXPIRES_AT,
    Change,
    ChangeKind,
    EndpointExists,
    EndpointNotFound,
    FeedCompacted,
    Lease,
    LeaseLost,
    PolledFeed,
    RegionChanged,
    RegionNotFound,
    RevisionConflict,
    TokenExists,
    TokenNotFound,
)

SCHEMA_VERSION = 2
"""1: endpoints, statuses, regions, feed, leases. 2: api_tokens. `store init` runs
every statement again (each is idempotent), which migrates an older schema."""
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS servefleet_schema (
        id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS endpoints (
        name TEXT PRIMARY KEY, revision BIGINT NOT NULL, desired_state TEXT NOT NULL,
        record TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS region_status (
        endpoint TEXT NOT NULL, region TEXT NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (endpoint, region))""",
    "CREATE INDEX IF NOT EXISTS region_status_by_region ON region_status (region)",
    "CREATE TABLE IF NOT EXISTS regions (name TEXT PRIMARY KEY, record TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS changes (
        seq BIGINT PRIMARY KEY, name TEXT NOT NULL, revision BIGINT NOT NULL,
        kind TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS feed (
        id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL, compacted BIGINT NOT NULL)""",
    "INSERT INTO feed (id, seq, compacted) VALUES (1, 0, 0) ON CONFLICT (id) DO NOTHING",
    """CREATE TABLE IF NOT EXISTS leases (
        name TEXT PRIMARY KEY, holder TEXT NOT NULL, token BIGINT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS api_tokens (name TEXT PRIMARY KEY, record TEXT NOT NULL)",
    f"""INSERT INTO servefleet_schema (id, version) VALUES (1, {SCHEMA_VERSION})
        ON CONFLICT (id) DO UPDATE SET version = excluded.version""",
]

Row = Sequence[Any]


class Session(Protocol):
    """One open transaction."""

    async def fetch(self, sql: str, *args: object) -> list[Row]: ...

    async def execute(self, sql: str, *args: object) -> int:
        """Run a statement and return the number of rows it changed."""
        ...


def _endpoint_record(endpoint: Endpoint) -> str:
    return endpoint.model_dump_json()


def _timestamp(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


class SqlStore(PolledFeed):
    """The `Store` logic over any SQL backend that can run `Session`s."""

    feed_retention = 100_000
    """Changes kept in the feed; a watcher further behind than this must re-list."""

    @abstractmethod
    def _transaction(self, *, readonly: bool = False) -> AbstractAsyncContextManager[Session]:
        """A transaction; `readonly` ones may run beside writers."""

    @property
    @abstractmethod
    def _now_sql(self) -> str:
        """SQL for the database's clock in epoch seconds: leases never trust a host's clock."""

    @abstractmethod
    async def close(self) -> None: ...

    async def _read(self, sql: str, *args: object) -> list[Row]:
        """One statement that only reads: atomic by itself, so a backend may run it
        outside an explicit transaction."""
        async with self._transaction(readonly=True) as session:
            return await session.fetch(sql, *args)

    async def _write(self, sql: str, *args: object) -> int:
        """One statement that writes (and reads only what it writes with): atomic by
        itself, so a backend may run it outside an explicit transaction."""
        async with self._transaction() as session:
            return await session.execute(sql, *args)

    async def _announce(self, session: Session) -> None:
        """Tell other processes' watchers, where the backend can; they poll otherwise."""

    async def _append_change(self, session: Session, name: str, revision: int, kind: str) -> None:
        (row,) = await session.fetch("UPDATE feed SET seq = seq + 1 WHERE id = 1 RETURNING seq")
        seq = int(row[0])
        await session.execute(
            "INSERT INTO changes (seq, name, revision, kind) VALUES ($1, $2, $3, $4)",
            seq,
            name,
            revision,
            kind,
        )
        await self._announce(session)
        # Compacting in batches keeps the common write at two statements.
        if seq % max(1, self.feed_retention // 100) == 0 and seq > self.feed_retention:
            horizon = seq - self.feed_retention
            await session.execute("DELETE FROM changes WHERE seq <= $1", horizon)
            await session.execute("UPDATE feed SET compacted = $1 WHERE id = 1", horizon)

    # Endpoints.

    def check_endpoint(self, endpoint: Endpoint) -> None:
        """Nothing to refuse: a record is one TEXT value, which holds up to a gigabyte."""

    async def create_endpoint(self, endpoint: Endpoint) -> Endpoint:
        stored = endpoint.model_copy(update={"revision": 1})
        async with self._transaction() as session:
            inserted = await session.execute(
                "INSERT INTO endpoints (name, revision, desired_state, record) "
                "VALUES ($1, 1, $2, $3) ON CONFLICT (name) DO NOTHING",
                stored.name,
                stored.desired_state.value,
                _endpoint_record(stored),
            )
            if not inserted:
                raise EndpointExists(stored.name)
            await self._append_change(session, stored.name, 1, ChangeKind.PUT)
        self._wake_watchers()
        return stored

    async def get_endpoint(self, name: str) -> Endpoint:
        rows = await self._read("SELECT record FROM endpoints WHERE name = $1", name)
        if not rows:
            raise EndpointNotFound(name)
        return Endpoint.model_validate_json(rows[0][0], context=STORED)

    async def list_endpoints(
        self, *, region: str | None = None, desired_state: DesiredState | None = None
    ) -> list[Endpoint]:
        if desired_state is None:
            rows = await self._read("SELECT record FROM endpoints ORDER BY name")
        else:
            rows = await self._read(
                "SELECT record FROM endpoints WHERE desired_state = $1 ORDER BY name",
                desired_state.value,
            )
        endpoints = [Endpoint.model_validate_json(row[0], context=STORED) for row in rows]
        if region is not None:
            endpoints = [endpoint for endpoint in endpoints if region in endpoint.target_regions]
        return endpoints

    async def update_endpoint(self, endpoint: Endpoint, *, expected_revision: int) -> Endpoint:
        stored = endpoint.model_copy(update={"revision": expected_revision + 1})
        async with self._transaction() as session:
            updated = await session.execute(
                "UPDATE endpoints SET revision = $2, desired_state = $3, record = $4 "
                "WHERE name = $1 AND revision = $5",
                stored.name,
                stored.revision,
                stored.desired_state.value,
                _endpoint_record(stored),
                expected_revision,
            )
            if not updated:
                raise await self._conflict(session, stored.name, expected_revision)
            await self._append_change(session, stored.name, stored.revision, ChangeKind.PUT)
        self._wake_watchers()
        return stored

    async def purge_endpoint(self, name: str, *, expected_revision: int) -> None:
        async with self._transaction() as session:
            deleted = await session.execute(
                "DELETE FROM endpoints WHERE name = $1 AND revision = $2", name, expected_revision
            )
            if not deleted:
                raise await self._conflict(session, name, expected_revision)
            await session.execute("DELETE FROM region_status WHERE endpoint = $1", name)
            await self._append_change(session, name, expected_revision + 1, ChangeKind.PURGED)
        self._wake_watchers()

    async def _conflict(self, session: Session, name: str, expected: int) -> RevisionConflict:
        rows = await session.fetch("SELECT revision FROM endpoints WHERE name = $1", name)
        return RevisionConflict(name, expected, int(rows[0][0]) if rows else None)

    # Region status.

    async def put_region_status(self, status: RegionStatus, *, lease: Lease | None = None) -> None:
        insert = "INSERT INTO region_status (endpoint, region, record)"
        upsert = "ON CONFLICT (endpoint, region) DO UPDATE SET record = excluded.record"
        record = (status.endpoint, status.region, status.model_dump_json())
        if lease is None:
            await self._write(f"{insert} VALUES ($1, $2, $3) {upsert}", *record)
            return
        # The lease check and the write in one statement: one round trip.
        written = await self._write(
            f"{insert} SELECT $1, $2, $3 "
            "WHERE EXISTS (SELECT 1 FROM leases WHERE name = $4 AND holder = $5 AND token = $6 "
            f"AND expires_at > {self._now_sql}) {upsert}",
            *record,
            lease.name,
            lease.holder,
            lease.token,
        )
        if not written:
            raise LeaseLost(lease.name, lease.holder)

    async def list_region_status(
        self, *, endpoint: str | None = None, region: str | None = None
    ) -> list[RegionStatus]:
        conditions, args = [], []
        for column, value in (("endpoint", endpoint), ("region", region)):
            if value is not None:
                args.append(value)
                conditions.append(f"{column} = ${len(args)}")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = await self._read(
            f"SELECT record FROM region_status{where} ORDER BY endpoint, region", *args
        )
        return [RegionStatus.model_validate_json(row[0]) for row in rows]

    # Regions.

    async def put_region(self, region: Region) -> None:
        async with self._transaction() as session:
            await session.execute(
                "INSERT INTO regions (name, record) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET record = excluded.record",
                region.name,
                region.model_dump_json(),
            )

    async def replace_region(self, region: Region, *, expected: Region | None) -> None:
        async with self._transaction() as session:
            rows = await session.fetch("SELECT record FROM regions WHERE name = $1", region.name)
            stored = rows[0][0] if rows else None
            if (Region.model_validate_json(stored) if stored is not None else None) != expected:
                raise RegionChanged(region.name)
            # Conditional on the text read, so it holds at any isolation level.
            if stored is None:
                written = await session.execute(
                    "INSERT INTO regions (name, record) VALUES ($1, $2) "
                    "ON CONFLICT (name) DO NOTHING",
                    region.name,
                    region.model_dump_json(),
                )
            else:
                written = await session.execute(
                    "UPDATE regions SET record = $2 WHERE name = $1 AND record = $3",
                    region.name,
                    region.model_dump_json(),
                    stored,
                )
            if not written:
                raise RegionChanged(region.name)

    async def get_region(self, name: str) -> Region:
        rows = await self._read("SELECT record FROM regions WHERE name = $1", name)
        if not rows:
            raise RegionNotFound(name)
        return Region.model_validate_json(rows[0][0])

    async def list_regions(self) -> list[Region]:
        rows = await self._read("SELECT record FROM regions ORDER BY name")
        return [Region.model_validate_json(row[0]) for row in rows]

    async def delete_region(self, name: str) -> None:
        async with self._transaction() as session:
            if not await session.execute("DELETE FROM regions WHERE name = $1", name):
                raise RegionNotFound(name)

    # API tokens.

    async def create_token(self, token: ApiToken) -> None:
        inserted = await self._write(
            "INSERT INTO api_tokens (name, record) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            token.name,
            token.model_dump_json(),
        )
        if not inserted:
            raise TokenExists(token.name)

    async def get_token(self, name: str) -> ApiToken:
        rows = await self._read("SELECT record FROM api_tokens WHERE name = $1", name)
        if not rows:
            raise TokenNotFound(name)
        return ApiToken.model_validate_json(rows[0][0])

    async def list_tokens(self) -> list[ApiToken]:
        rows = await self._read("SELECT record FROM api_tokens ORDER BY name")
        return [ApiToken.model_validate_json(row[0]) for row in rows]

    async def delete_token(self, name: str) -> None:
        if not await self._write("DELETE FROM api_tokens WHERE name = $1", name):
            raise TokenNotFound(name)

    # Change feed.

    async def feed_position(self) -> int:
        (row,) = await self._read("SELECT seq FROM feed WHERE id = 1")
        return int(row[0])

    async def _changes_after(self, since: int) -> list[Change]:
        # One statement, so the horizon and the changes are read at the same moment.
        rows = await self._read(
            "SELECT feed.compacted, changes.seq, changes.name, changes.revision, changes.kind "
            "FROM feed LEFT JOIN changes ON changes.seq > $1 WHERE feed.id = 1 "
            "ORDER BY changes.seq LIMIT 1000",
            since,
        )
        compacted = int(rows[0][0])
        if since < compacted:
            raise FeedCompacted(since, compacted + 1)
        return [
            Change(int(seq), name, int(rev), ChangeKind(kind))
            for _, seq, name, rev, kind in rows
            if seq is not None
        ]

    # Leases.

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> Lease | None:
        now = self._now_sql
        async with self._transaction() as session:
            # One statement decides, so two candidates can never both win.
            rows = await session.fetch(
                f"INSERT INTO leases (name, holder, token, expires_at) "
                f"VALUES ($1, $2, 1, {now} + $3) "
                f"ON CONFLICT (name) DO UPDATE SET "
                f"token = CASE WHEN leases.holder = excluded.holder THEN leases.token "
                f"ELSE leases.token + 1 END, "
                f"holder = excluded.holder, expires_at = excluded.expires_at "
                f"WHERE leases.holder = excluded.holder OR leases.expires_at <= {now} "
                f"RETURNING token, expires_at",
                name,
                holder,
                float(ttl),
            )
        if not rows:
            return None
        token, expires_at = rows[0]
        return Lease(name, holder, int(token), _timestamp(float(expires_at)))

    async def release_lease(self, lease: Lease) -> None:
        async with self._transaction() as session:
            await session.execute(
                f"UPDATE leases SET expires_at = {self._now_sql} "
                "WHERE name = $1 AND holder = $2 AND token = $3",
                lease.name,
                lease.holder,
                lease.token,
            )

    async def record_fence(self, name: str, holder: str, token: int) -> Lease | None:
        # One statement raises the token, so a lower one can never overwrite a higher;
        # the same token and holder again (a retry) writes what is there.
        async with self._transaction() as session:
            rows = await session.fetch(
                "INSERT INTO leases (name, holder, token, expires_at) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
                "token = excluded.token, expires_at = excluded.expires_at "
                "WHERE leases.token < excluded.token "
                "OR (leases.token = excluded.token AND leases.holder = excluded.holder) "
                "RETURNING token",
                name,
                holder,
                token,
                FENCE_EXPIRES_AT.timestamp(),
            )
        return Lease(name, holder, token, FENCE_EXPIRES_AT) if rows else None
