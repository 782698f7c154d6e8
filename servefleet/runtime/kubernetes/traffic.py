"""Each version's requests, 5xx answers and latency in a Kubernetes region, read from
the region's Prometheus for its reports (`Observed.traffic`), so a rollout judges a
Kubernetes region's window exactly as a local one's.

What is counted: the versions of each endpoint that runs a canary, and only those
— a steady fleet without a canary costs Prometheus nothing. A version is what a
role's Deployment runs (its image, from the watch cache); it is counted from the
moment this process first saw it run (`since`), so a new canary, a new image or a
new leader in the region begins again at zero with a new `since`, which readers
take as a new counting (`rollout_signals`). Every `interval` seconds the counted
versions are asked for (two queries each, `traffic_queries.py`: the increase of
requests by status and of the latency histogram over the time since `since`); an
endpoint whose figures or whose failure changed is announced as changed, and its
pass writes the report (`plan.region_status` keeps the figures only while a
rollout has reached the region, so a manual canary costs queries but no write).

A query that fails (Prometheus unreachable, a timeout, an error answer, a query
that does not give what it should) leaves the last figures as they were and is
reported in the region's message (`request counts: ...`); it never fails a
pass. The figures then stay still: no guard rail is broken by what was not seen,
and none can be until Prometheus answers again — meanwhile the region is judged,
in effect, on readiness alone (the rollout engine does not wait for figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from servefleet.runtime.kubernetes.traffic_queries import (
    AnswerError,
    Role,
    TrafficQueries,
    version_queries,
    version_traffic,
    version_values,
    window,
)
from servefleet.spec import RegionTraffic, VersionTraffic

__all__ = ["PrometheusTraffic"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Counting:
    """A role's version, counted since `since`."""

    image: str | None
    since: datetime


class PrometheusTraffic:
    """The traffic of one region's versions, from its Prometheus (see the module)."""

    def __init__(
        self,
        region: str,
        namespace: str,
        queries: TrafficQueries,
        notify: Callable[[str], None],
        *,
        interval: float,
        timeout: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`notify(endpoint)` tells the reconciler the endpoint's report changed."""
        self._region = region
        self._namespace = namespace
        self._queries = queries
        self._notify = notify
        self._interval = interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._countings: dict[str, dict[Role, _Counting]] = {}
        self._figures: dict[str, dict[Role, VersionTraffic]] = {}
        self._problems: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    def observed(
        self, endpoint: str, images: Mapping[Role, str | None]
    ) -> tuple[RegionTraffic | None, str]:
        """Count what runs now (`images`: each role's Deployment's image); return the
        figures last read and the last failure to read them ("" for none)."""
        if "canary" not in images:
            self.forget(endpoint)
            return None, ""
        countings = self._countings.setdefault(endpoint, {})
        figures = self._figures.setdefault(endpoint, {})
        for role in ("primary", "canary"):
            counting = countings.get(role)
            if role not in images:
                countings.pop(role, None)
                figures.pop(role, None)
            elif counting is None or counting.image != images[role]:
                countings[role] = _Counting(images[role], self._clock())
                figures.pop(role, None)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"traffic-{self._region}")
        traffic = (
            RegionTraffic(primary=figures.get("primary"), canary=figures.get("canary"))
            if figures
            else None
        )
        return traffic, self._problems.get(endpoint, "")

    def forget(self, endpoint: str) -> None:
        """Count nothing of `endpoint` any more."""
        self._countings.pop(endpoint, None)
        self._figures.pop(endpoint, None)
        self._problems.pop(endpoint, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            while True:
                for endpoint in list(self._countings):
                    await self._read(session, endpoint)
                await asyncio.sleep(self._interval)

    async def _read(self, session: aiohttp.ClientSession, endpoint: str) -> None:
        """Ask for every counted version of `endpoint`; announce it if anything changed."""
        countings = dict(self._countings.get(endpoint) or {})
        now = self._clock()
        read: dict[Role, VersionTraffic] = {}
        problem = ""
        try:
            for role, counting in countings.items():
                values = version_values(
                    endpoint, self._namespace, role, window(counting.since, now)
                )
                requests, latency = version_queries(self._queries, values)
                answers = await asyncio.gather(
                    self._query(session, requests), self._query(session, latency)
                )
                previous = self._figures.get(endpoint, {}).get(role)
                read[role] = version_traffic(counting.image, counting.since, *answers, previous)
        except (aiohttp.ClientError, TimeoutError, AnswerError) as error:
            problem = f"request counts: Prometheus {self._queries.prometheus_url}: " + (
                str(error) or type(error).__name__
            )
        if self._countings.get(endpoint) != countings:
            return  # the versions changed meanwhile: what was read is not theirs
        figures = self._figures.setdefault(endpoint, {})
        changed = problem != self._problems.get(endpoint, "")
        if problem:
            if changed:
                log.warning("%s/%s: %s", self._region, endpoint, problem)
            self._problems[endpoint] = problem
        else:
            self._problems.pop(endpoint, None)
            changed = changed or read != figures
            figures.update(read)
        if changed:
            self._notify(endpoint)

    async def _query(self, session: aiohttp.ClientSession, query: str) -> Mapping[str, Any]:
        """Prometheus' answer to the instant query `query` (`/api/v1/query`)."""
        url = self._queries.prometheus_url.rstrip("/") + "/api/v1/query"
        async with session.post(url, data={"query": query}) as response:
            body = await response.read()
        try:
            answer = json.loads(body)
        except ValueError as error:
            raise AnswerError(f"HTTP {response.status}, not JSON: {body[:200]!r}") from error
        if not isinstance(answer, dict):
            raise AnswerError(f"HTTP {response.status}: {str(answer)[:200]}")
        if answer.get("status") != "success":
            raise AnswerError(
                f"HTTP {response.status}: {answer.get('errorType', '')}: "
                f"{str(answer.get('error', ''))[:200]} (query: {query[:300]})"
            )
        return answer
