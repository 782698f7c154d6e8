"""A steady request load through gateways, and what the users behind it saw.

Requests go out at a fixed rate, each on its own (a slow answer never delays the
next request), with a bound on the time each may take and on how many are sent. A
request is tried on each gateway of the fleet in turn until one answers 200 (the
way a load balancer in front of several `servefleet up` processes retries on a
standby's 503); it counts as answered if one did, as failed if none did.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from tests.scenarios.harness import chat

REQUEST_TIMEOUT = 5.0
"""Seconds one request may take on one gateway before it counts as unanswered there."""


@dataclass(frozen=True)
class Outcome:
    sent_at: float
    """time.monotonic() when it was sent."""
    done_at: float
    answered: bool
    version: str | None
    """The demo version that answered (None when none did)."""
    error: str = ""


@dataclass
class SteadyLoad:
    """Chat completions to `endpoint` at `rate` per second through the gateways
    `gateways()` names at the moment each is sent, at most `limit` requests."""

    endpoint: str
    gateways: Callable[[], Sequence[str]]
    rate: float
    limit: int
    outcomes: list[Outcome] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _in_flight: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chaos-load")

    async def stop(self) -> None:
        """Stop sending and wait for the answers of what was sent."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as client:
            began = time.monotonic()
            try:
                for index in range(self.limit):
                    await asyncio.sleep(max(0.0, began + index / self.rate - time.monotonic()))
                    request = asyncio.create_task(self._one(client))
                    self._in_flight.add(request)
                    request.add_done_callback(self._in_flight.discard)
            finally:
                # The session must outlive the requests it carries.
                await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _one(self, client: aiohttp.ClientSession) -> None:
        sent = time.monotonic()
        error = "no gateway"
        for gateway in self.gateways():
            try:
                answer = await chat(client, gateway, self.endpoint)
            except (aiohttp.ClientError, TimeoutError, ValueError) as failure:
                error = f"{type(failure).__name__}: {failure}"
                continue
            if answer.status == 200:
                self.outcomes.append(Outcome(sent, time.monotonic(), True, answer.version))
                return
            error = f"HTTP {answer.status}"
        self.outcomes.append(Outcome(sent, time.monotonic(), False, None, error))

    # What the users saw.

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def answered(self) -> int:
        return sum(outcome.answered for outcome in self.outcomes)

    @property
    def failed(self) -> int:
        return self.sent - self.answered

    def longest_gap(self) -> float:
        """The longest time, while requests were being sent, in which no request got
        an answer (from the first request sent to the last answer due)."""
        if not self.outcomes:
            return 0.0
        start = min(outcome.sent_at for outcome in self.outcomes)
        end = max(outcome.done_at for outcome in self.outcomes)
        moments = sorted(o.done_at for o in self.outcomes if o.answered)
        edges = [start, *moments, end]
        return max(later - earlier for earlier, later in itertools.pairwise(edges))

    def errors(self) -> dict[str, int]:
        """How many requests failed, by the last reason."""
        counted: dict[str, int] = {}
        for outcome in self.outcomes:
            if not outcome.answered:
                counted[outcome.error] = counted.get(outcome.error, 0) + 1
        return counted
