"""The PostgreSQL side of a scenario: a schema of its own with a log of every
region status write. An outage is `tests.scenarios.proxy.TcpProxy` in front of
the server, cut: the machine's PostgreSQL server is never stopped.

Who wrote a status is known from the writer's own connection: each process under
test gets a store URL with its own `application_name` (asyncpg passes unknown URL
parameters to the server as settings), and a trigger on `region_status` copies every
write into `chaos_status_writes` with that name, the region's lease holder and
fencing token at the moment of the write, and the database's clock.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import asyncpg

from servefleet.spec import RegionStatus
from servefleet.store import open_store

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"

_AUDIT = """
CREATE TABLE "{schema}".chaos_status_writes (
    seq BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL DEFAULT extract(epoch from clock_timestamp()),
    writer TEXT NOT NULL DEFAULT current_setting('application_name'),
    region TEXT NOT NULL,
    record TEXT NOT NULL,
    lease_holder TEXT,
    lease_token BIGINT
);
CREATE FUNCTION "{schema}".chaos_log_status() RETURNS trigger AS $$
BEGIN
    INSERT INTO "{schema}".chaos_status_writes (region, record, lease_holder, lease_token)
    SELECT NEW.region, NEW.record, lease.holder, lease.token
    FROM (SELECT 1) AS one
    LEFT JOIN "{schema}".leases AS lease ON lease.name = 'region/' || NEW.region;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER chaos_log_status AFTER INSERT OR UPDATE ON "{schema}".region_status
    FOR EACH ROW EXECUTE FUNCTION "{schema}".chaos_log_status();
"""


@dataclass(frozen=True)
class StatusWrite:
    seq: int
    at: float
    writer: str
    """The `application_name` of the connection that wrote it."""
    status: RegionStatus
    lease_holder: str | None
    lease_token: int | None


@dataclass(frozen=True)
class Schema:
    server_url: str
    name: str
    connection: asyncpg.Connection
    """The scenario's own connection, straight to the server (never through a proxy)."""

    @property
    def url(self) -> str:
        """The store URL of this schema, straight to the server."""
        return with_query(self.server_url, schema=self.name)

    def url_for(self, writer: str) -> str:
        """The store URL a process under test gets: its writes are logged as `writer`."""
        return with_query(self.server_url, schema=self.name, application_name=writer)

    async def status_writes(self) -> list[StatusWrite]:
        """Every status write so far, in the order they were made."""
        rows = await self.connection.fetch(
            "SELECT seq, at, writer, record, lease_holder, lease_token "
            f'FROM "{self.name}".chaos_status_writes ORDER BY seq'
        )
        return [
            StatusWrite(
                row["seq"],
                row["at"],
                row["writer"],
                RegionStatus.model_validate_json(row["record"]),
                row["lease_holder"],
                row["lease_token"],
            )
            for row in rows
        ]

    async def lease_holder(self, region: str) -> str | None:
        """Who holds the region's lease now (None: nobody, or it has run out)."""
        holder: str | None = await self.connection.fetchval(
            f'SELECT holder FROM "{self.name}".leases WHERE name = $1 '
            "AND expires_at > extract(epoch from clock_timestamp())",
            f"region/{region}",
        )
        return holder


def with_query(url: str, **parameters: str) -> str:
    parts = urlsplit(url)
    query = f"{parts.query}&{urlencode(parameters)}" if parts.query else urlencode(parameters)
    return urlunsplit(parts._replace(query=query))


@asynccontextmanager
async def chaos_schema(server_url: str) -> AsyncIterator[Schema]:
    """A fresh servefleet schema `chaos_<random>` with the status write log, dropped
    on the way out."""
    name = f"chaos_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(server_url)
    try:
        schema = Schema(server_url, name, connection)
        store = await open_store(schema.url, init=True)
        await store.close()
        await connection.execute(_AUDIT.format(schema=name))
        yield schema
    finally:
        await connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await connection.close()


async def reachable(server_url: str) -> str | None:
    """None when PostgreSQL answers at `server_url`, else why not."""
    try:
        connection = await asyncpg.connect(server_url, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        return f"{type(error).__name__}: {error}"
    await connection.close()
    return None
