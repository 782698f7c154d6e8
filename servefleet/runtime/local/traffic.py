"""What a local region's gateway answered per version, for the region's reports.

The gateways of this process already count every request into the Prometheus
series of `servefleet.metrics` (`gateway_series`: by endpoint, region, role and
status class, with a latency histogram). Those series count a *role* (primary,
canary) for as long as this process serves the region, across versions; a
rollout's guard rails need a *version*. So when a role starts running another
version (`TrafficCounts.adopt`, on every apply), the series are read once as that
version's offset, with the time (`since`), and the version's figures are the
series minus the offset from then on (`observed`): a new canary never inherits
its predecessor's answers, and a new leader, whose series start at zero, reports
a new `since` that readers take as a counter reset.

The reconciler writes a region's report when it changes, on a runtime event; the
figures change with every request, so rather than an event per request, once a
second (`REPORT_INTERVAL`) an endpoint running a canary whose figures moved is
announced as changed. The report carries them only while a rollout has reached
the region (`plan.region_status`), so a manual canary costs a pass a second but
no write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from servefleet.metrics import GatewaySeries, Metrics
from servefleet.runtime.local.records import ROLES, EndpointRecord, Role, spec_key, version_of
from servefleet.spec import LATENCY_BOUNDS, RegionTraffic, VersionTraffic

__all__ = ["REPORT_INTERVAL", "TrafficCounts", "read_series"]

REPORT_INTERVAL = 1.0
"""Seconds between announcements of an endpoint whose canary's figures moved."""


@dataclass(frozen=True)
class Reading:
    """A version's series at one moment: requests, 5xx answers, answers per bucket."""

    requests: int
    errors: int
    latency: tuple[int, ...]

    def below(self, other: Reading) -> bool:
        return self.requests < other.requests or any(
            mine < theirs for mine, theirs in zip(self.latency, other.latency, strict=True)
        )

    def minus(self, other: Reading) -> Reading:
        return Reading(
            self.requests - other.requests,
            self.errors - other.errors,
            tuple(mine - theirs for mine, theirs in zip(self.latency, other.latency, strict=True)),
        )


ZERO = Reading(0, 0, (0,) * (len(LATENCY_BOUNDS) + 1))


def read_series(series: GatewaySeries) -> Reading:
    """What the series of one endpoint version hold now."""
    if series.BOUNDS != LATENCY_BOUNDS:
        raise ValueError(f"the gateway's latency buckets {series.BOUNDS} are not {LATENCY_BOUNDS}")
    answers = series.answers
    return Reading(sum(answers), answers[-1], tuple(series.buckets))


@dataclass
class _Counting:
    """One role's current version, counted from `offset`, read at `since`."""

    version: str
    image: str | None
    since: datetime
    offset: Reading

    def traffic(self, now: Reading) -> VersionTraffic:
        if now.below(self.offset):
            # The series began again (dropped and made anew): so does the count.
            self.since, self.offset = datetime.now(UTC), ZERO
        counted = now.minus(self.offset)
        return VersionTraffic(
            image=self.image,
            since=self.since,
            requests=counted.requests,
            errors=counted.errors,
            latency=counted.latency,
        )


class TrafficCounts:
    """Each endpoint version's answers through this region's gateways, from the
    process's metrics (none counted without them)."""

    def __init__(self, region: str, metrics: Metrics | None, notify: Callable[[str], None]) -> None:
        """`notify(endpoint)` tells the reconciler the endpoint's report changed."""
        self._region = region
        self._metrics = metrics
        self._notify = notify
        self._countings: dict[str, dict[Role, _Counting]] = {}
        self._announced: dict[str, tuple[int, ...]] = {}
        """Per endpoint with a canary, the requests of each version last announced."""
        self._task: asyncio.Task[None] | None = None

    def adopt(self, record: EndpointRecord) -> None:
        """The record's workload was applied (or removed): count what each role runs
        from now on, a version not counted so far from zero."""
        if self._metrics is None:
            return
        countings = self._countings.setdefault(record.name, {})
        for role in ROLES:
            version = version_of(record.workload, role)
            key = spec_key(record.workload, version)
            if key is None or version is None:
                countings.pop(role, None)
                continue
            counting = countings.get(role)
            if counting is None or counting.version != key:
                reading = self._read(record.name, role)
                countings[role] = _Counting(key, version.image, datetime.now(UTC), reading)
        if not countings:
            del self._countings[record.name]
            self._announced.pop(record.name, None)
        if self._task is None and "canary" in countings:
            self._task = asyncio.create_task(self._run(), name=f"traffic-{self._region}")

    def observed(self, endpoint: str) -> RegionTraffic | None:
        """Each version's answers since it was first counted here; None when none is."""
        countings = self._countings.get(endpoint)
        if not countings:
            return None
        traffic = {
            role: counting.traffic(self._read(endpoint, role))
            for role, counting in countings.items()
        }
        return RegionTraffic(primary=traffic.get("primary"), canary=traffic.get("canary"))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _read(self, endpoint: str, role: Role) -> Reading:
        assert self._metrics is not None  # counted only with metrics (`adopt`)
        return read_series(self._metrics.gateway_series(endpoint, self._region, role))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL)
            for name, countings in list(self._countings.items()):
                if "canary" not in countings:
                    self._announced.pop(name, None)
                    continue
                requests = tuple(self._read(name, role).requests for role in countings)
                if requests != self._announced.get(name):
                    self._announced[name] = requests
                    self._notify(name)
