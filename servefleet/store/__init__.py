"""Store backends by URL: a path or `sqlite:///path` (the default), `postgresql://...`,
`dynamodb://TABLE?region=...`."""

from __future__ import annotations

from servefleet.store.base import (
    Change,
    ChangeKind,
    EndpointExists,
    EndpointNotFound,
    FeedCompacted,
    Lease,
    LeaseLost,
    RegionChanged,
    RegionNotFound,
    RevisionConflict,
    Store,
    StoreError,
    StoreUnavailable,
    TokenExists,
    TokenNotFound,
)

__all__ = [
    "Change",
    "ChangeKind",
    "EndpointExists",
    "EndpointNotFound",
    "FeedCompacted",
    "Lease",
    "LeaseLost",
    "RegionChanged",
    "RegionNotFound",
    "RevisionConflict",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TokenExists",
    "TokenNotFound",
    "open_store",
]


async def open_store(url: str, *, init: bool = False) -> Store:
    """Open the store at `url`. SQLite creates its schema itself; PostgreSQL's schema
    and DynamoDB's table are created or migrated only with `init` (`servefleet store init`)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "sqlite", url
    if scheme == "sqlite":
        from servefleet.store.sqlite import SqliteStore

        return await SqliteStore.open(rest)
    if scheme in ("postgresql", "postgres"):
        from servefleet.store.postgres import PostgresStore

        return await PostgresStore.open(url, init=init)
    if scheme == "dynamodb":
        from servefleet.store.dynamodb import DynamoStore

        return await DynamoStore.open(url, init=init)
    raise ValueError(
        f"store: unknown backend {scheme!r} in {url!r}; use one of: "
        "a file path, sqlite:///path, postgresql://user@host/db, dynamodb://TABLE?region=NAME"
    )
