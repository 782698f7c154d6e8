"""A `Store` that counts every call made through it, then delegates.

Feed polls happen inside the store's `watch()` (a SQL store looks at its `changes`
table every `poll_interval` when nothing wakes it), out of a proxy's sight; for
SQL stores the proxy also counts those looks by wrapping the store's internal
`_changes_after` on that one instance. That is a benchmark's peek, not an API.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

from servefleet.spec import ApiToken, DesiredState, Endpoint, Region, RegionStatus
from servefleet.store import Change, Lease, Store

FEED_POLL = "feed poll (SELECT changes after N)"
FEED_CHANGE = "feed change delivered"
WRITES = frozenset(
    {
        "create_endpoint",
        "update_endpoint",
        "purge_endpoint",
        "put_region_status",
        "put_region",
        "replace_region",
        "delete_region",
        "create_token",
        "delete_token",
        "acquire_lease",
        "release_lease",
    }
)


class CountingStore:
    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.delivered: dict[tuple[str, int], float] = {}
        """perf_counter() when the feed first yielded each (endpoint, revision)."""
        changes_after = getattr(inner, "_changes_after", None)
        if changes_after is not None:
            self._count_feed_polls(changes_after)

    def _count_feed_polls(self, changes_after: Callable[[int], Awaitable[list[Change]]]) -> None:
        async def counted(since: int) -> list[Change]:
            self.calls[FEED_POLL] += 1
            return await changes_after(since)

        setattr(self.inner, "_changes_after", counted)  # noqa: B010 - instance patch

    def snapshot(self) -> Counter[str]:
        return Counter(self.calls)

    async def close(self) -> None:
        await self.inner.close()

    async def create_endpoint(self, endpoint: Endpoint) -> Endpoint:
        self.calls["create_endpoint"] += 1
        return await self.inner.create_endpoint(endpoint)

    def check_endpoint(self, endpoint: Endpoint) -> None:
        self.inner.check_endpoint(endpoint)

    async def get_endpoint(self, name: str) -> Endpoint:
        self.calls["get_endpoint"] += 1
        return await self.inner.get_endpoint(name)

    async def list_endpoints(
        self, *, region: str | None = None, desired_state: DesiredState | None = None
    ) -> list[Endpoint]:
        self.calls["list_endpoints"] += 1
        return await self.inner.list_endpoints(region=region, desired_state=desired_state)

    async def update_endpoint(self, endpoint: Endpoint, *, expected_revision: int) -> Endpoint:
        self.calls["update_endpoint"] += 1
        return await self.inner.update_endpoint(endpoint, expected_revision=expected_revision)

    async def purge_endpoint(self, name: str, *, expected_revision: int) -> None:
        self.calls["purge_endpoint"] += 1
        await self.inner.purge_endpoint(name, expected_revision=expected_revision)

    async def put_region_status(self, status: RegionStatus, *, lease: Lease | None = None) -> None:
        self.calls["put_region_status"] += 1
        await self.inner.put_region_status(status, lease=lease)

    async def list_region_status(
        self, *, endpoint: str | None = None, region: str | None = None
    ) -> list[RegionStatus]:
        self.calls["list_region_status"] += 1
        return await self.inner.list_region_status(endpoint=endpoint, region=region)

    async def put_region(self, region: Region) -> None:
        self.calls["put_region"] += 1
        await self.inner.put_region(region)

    async def replace_region(self, region: Region, *, expected: Region | None) -> None:
        self.calls["replace_region"] += 1
        await self.inner.replace_region(region, expected=expected)

    async def get_region(self, name: str) -> Region:
        self.calls["get_region"] += 1
        return await self.inner.get_region(name)

    async def list_regions(self) -> list[Region]:
        self.calls["list_regions"] += 1
        return await self.inner.list_regions()

    async def delete_region(self, name: str) -> None:
        self.calls["delete_region"] += 1
        await self.inner.delete_region(name)

    async def create_token(self, token: ApiToken) -> None:
        self.calls["create_token"] += 1
        await self.inner.create_token(token)

    async def get_token(self, name: str) -> ApiToken:
        self.calls["get_token"] += 1
        return await self.inner.get_token(name)

    async def list_tokens(self) -> list[ApiToken]:
        self.calls["list_tokens"] += 1
        return await self.inner.list_tokens()

    async def delete_token(self, name: str) -> None:
        self.calls["delete_token"] += 1
        await self.inner.delete_token(name)

    async def feed_position(self) -> int:
        self.calls["feed_position"] += 1
        return await self.inner.feed_position()

    async def watch(self, since: int) -> AsyncIterator[Change]:
        self.calls["watch"] += 1
        async for change in self.inner.watch(since):
            self.calls[FEED_CHANGE] += 1
            self.delivered.setdefault((change.name, change.revision), time.perf_counter())
            yield change

    async def acquire_lease(self, name: str, holder: str, ttl: float) -> Lease | None:
        self.calls["acquire_lease"] += 1
        return await self.inner.acquire_lease(name, holder, ttl)

    async def release_lease(self, lease: Lease) -> None:
        self.calls["release_lease"] += 1
        await self.inner.release_lease(lease)

    async def record_fence(self, name: str, holder: str, token: int) -> Lease | None:
        self.calls["record_fence"] += 1
        return await self.inner.record_fence(name, holder, token)
