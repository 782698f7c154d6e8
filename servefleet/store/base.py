"""The `Store` protocol: desired state, region reports, the change feed and leases.

Every backend keeps the same promises, proven by one contract suite
(`tests/store/test_contract.py`):

- Endpoint writes are compare-and-set on `revision`; a stale write raises
  `RevisionConflict` and changes nothing. Region records have no revision:
  `replace_region` compares the stored record itself (`RegionChanged`).
- A record the backend cannot hold (DynamoDB: an item over 400 KB) is refused with
  `InvalidInput` and changes nothing; `check_endpoint` applies the same rule
  without writing, so a batch can be refused whole.
- Every endpoint write (create, update, purge) appends one `Change` to a feed, in
  the same transaction on the SQL backends (DynamoDB: right after it, see
  `dynamodb.py`). Feed positions (`Change.seq`) are store-wide, strictly
  increasing and visible in commit order, so `watch(since)` never skips a write
  and can resume from the last position it delivered.
- Region status is kept apart from the endpoint so a region's report never races
  a user's change of the spec, and never moves the feed.
- API tokens are kept by name; a name is held by one token at a time.
- Leases are exclusive until their TTL passes. Each change of holder increments
  the lease's `token`; a write made with a lease (`put_region_status(..., lease=)`)
  is refused with `LeaseLost` once the token is no longer current, which is the
  fencing that keeps a deposed leader from writing.
- A lock kept outside the store (a Kubernetes Lease) fences status writes the same
  way through `record_fence`: its holder records the lock's own fencing token as a
  lease of the store that never expires there, and a token recorded only ever goes
  up, so a write under an older token is refused once a newer one is recorded.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from servefleet.spec import ApiToken, DesiredState, Endpoint, Region, RegionStatus

__all__ = [
    "Change",
    "ChangeKind",
    "EndpointExists",
    "EndpointNotFound",
    "FeedCompacted",
    "Lease",
    "LeaseLost",
    "PolledFeed",
    "RegionChanged",
    "RegionNotFound",
    "RevisionConflict",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TokenExists",
    "TokenNotFound",
]


class StoreError(Exception):
    """Base of every error a store raises on purpose."""


class StoreUnavailable(StoreError):
    """The backend could not be reached or answered with an error; retry later."""


class EndpointNotFound(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"endpoint {name!r} not found")
        self.name = name


class EndpointExists(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"endpoint {name!r} already exists")
        self.name = name


class RegionNotFound(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"region {name!r} is not registered")
        self.name = name


class RegionChanged(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"region {name!r} was changed by another writer meanwhile")
        self.name = name


class TokenExists(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"token {name!r} already exists; revoke it or choose another name")
        self.name = name


class TokenNotFound(StoreError):
    def __init__(self, name: str) -> None:
        super().__init__(f"token {name!r} not found")
        self.name = name


class RevisionConflict(StoreError):
    def __init__(self, name: str, expected: int, found: int | None) -> None:
        now = "it no longer exists" if found is None else f"it is at revision {found}"
        super().__init__(
            f"endpoint {name!r} changed since it was read: expected revision {expected}, {now}"
        )
        self.name = name
        self.expected = expected
        self.found = found


class FeedCompacted(StoreError):
    """The feed no longer holds changes after `since`; list everything and watch from now."""

    def __init__(self, since: int, oldest_kept: int) -> None:
        super().__init__(
            f"change feed position {since} was compacted; the oldest kept is {oldest_kept}"
        )
        self.since = since
        self.oldest_kept = oldest_kept


class LeaseLost(StoreError):
    def __init__(self, name: str, holder: str) -> None:
        super().__init__(f"lease {name!r} is no longer held by {holder!r}")
        self.name = name
        self.holder = holder


class ChangeKind(StrEnum):
    PUT = "put"
    PURGED = "purged"


@dataclass(frozen=True, slots=True)
class Change:
    """One endpoint write, as seen by the change feed. Consumers re-read the record:
    reconciliation is level-based, the feed only says *which* endpoint to look at."""

    seq: int
    name: str
    revision: int
    kind: ChangeKind


FENCE_EXPIRES_AT = datetime(9999, 12, 31, tzinfo=UTC)
"""The expiry of a fence's lease (`Store.record_fence`): none the store checks."""


@dataclass(frozen=True, slots=True)
class Lease:
    name: str
    holder: str
    token: int
    expires_at: datetime


class Store(Protocol):
    """Desired state of the fleet. See the module docstring for the guarantees."""

    async def close(self) -> None: ...

    # Endpoints: the user's intent.
    async def create_endpoint(self, endpoint: Endpoint) -> Endpoint:
        """Store a new record at revision 1; `EndpointExists` if the name is taken."""
        ...

    def check_endpoint(self, endpoint: Endpoint) -> None:
        """Refuse (`InvalidInput`) a record this store cannot hold, as writing it at its
        next revision would, but without writing: so a batch of changes can be
        checked whole before any of it is written."""
        ...

    async def get_endpoint(self, name: str) -> Endpoint: ...

    async def list_endpoints(
        self, *, region: str | None = None, desired_state: DesiredState | None = None
    ) -> list[Endpoint]:
        """Every record (optionally those targeting `region` or in `desired_state`), by name."""
        ...

    async def update_endpoint(self, endpoint: Endpoint, *, expected_revision: int) -> Endpoint:
        """Replace the record if it is still at `expected_revision`; return it at the next one."""
        ...

    async def purge_endpoint(self, name: str, *, expected_revision: int) -> None:
        """Remove the record and its region statuses for good."""
        ...

    # Region status: one record per (endpoint, region), written by that region.
    async def put_region_status(self, status: RegionStatus, *, lease: Lease | None = None) -> None:
        """Upsert; with `lease`, refused (`LeaseLost`) unless that lease is still current."""
        ...

    async def list_region_status(
        self, *, endpoint: str | None = None, region: str | None = None
    ) -> list[RegionStatus]: ...

    # Regions.
    async def put_region(self, region: Region) -> None: ...

    async def replace_region(self, region: Region, *, expected: Region | None) -> None:
        """Write `region` if its stored record still reads as `expected` (None: no
        record by that name), else raise `RegionChanged` and write nothing: the
        compare-and-set of region records, which carry no revision."""
        ...

    async def get_region(self, name: str) -> Region: ...

    async def list_regions(self) -> list[Region]: ...

    async def delete_region(self, name: str) -> None: ...

    # API tokens: records holding only a hash of each secret.
    async def create_token(self, token: ApiToken) -> None:
        """Store a new token; `TokenExists` if the name is taken."""
        ...

    async def get_token(self, name: str) -> ApiToken:
        """`TokenNotFound` if there is none by that name."""
        ...

    async def list_tokens(self) -> list[ApiToken]:
        """Every token, by name."""
        ...

    async def delete_token(self, name: str) -> None:
        """`TokenNotFound` if there is none by that name."""
        ...

    # Change feed.
    async def feed_position(self) -> int:
        """The position of the newest change; watch from here to see only later ones."""
        ...

    def watch(self, since: int) -> AsyncIterator[Change]:
        """Every change after position `since`, in order, waiting for new ones forever.

        Raises `FeedCompacted` when `since` is older than what the feed keeps.
        """
        ...

    # Leases.
    async def acquire_lease(self, name: str, holder: str, ttl: float) -> Lease | None:
        """Take or extend the lease for `ttl` seconds; None while another holder's is live."""
        ...

    async def release_lease(self, lease: Lease) -> None:
        """Give the lease up early so a standby need not wait for the TTL."""
        ...

    async def record_fence(self, name: str, holder: str, token: int) -> Lease | None:
        """Record that `holder` holds the lock `name`, kept outside the store, under
        the lock's fencing `token` (which grows at every change of holder), unless a
        higher token is recorded, or the same one for another holder. The lease to
        fence status writes with (it never expires in the store: the lock's own
        expiry is its keeper's business), or None when this holder is deposed already.
        """
        ...


class PolledFeed(ABC):
    """`watch()` for a backend whose feed is read by polling: a watcher reads the
    changes after its position, then waits `poll_interval`, or less when a write
    through this object (or a backend notification) wakes it."""

    poll_interval: float
    """How long a watcher waits for a wake-up before looking at the feed anyway."""

    def __init__(self) -> None:
        self._watchers: set[asyncio.Event] = set()

    @abstractmethod
    async def _changes_after(self, since: int) -> list[Change]:
        """The next changes after position `since`, in order (`FeedCompacted` when
        the feed no longer holds the one right after it)."""

    def _wake_watchers(self) -> None:
        for event in self._watchers:
            event.set()

    async def watch(self, since: int) -> AsyncIterator[Change]:
        wake = asyncio.Event()
        self._watchers.add(wake)
        try:
            position = since
            while True:
                wake.clear()
                changes = await self._changes_after(position)
                for change in changes:
                    yield change
                    position = change.seq
                if not changes:
                    # Not `wait_for`: on Python 3.11 it drops a cancel that arrives
                    # with the wake-up, and the watcher would never end.
                    with suppress(TimeoutError):
                        async with asyncio.timeout(self.poll_interval):
                            await wake.wait()
        finally:
            self._watchers.discard(wake)
