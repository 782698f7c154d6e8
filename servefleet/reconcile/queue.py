"""A work queue of endpoint names, shaped after client-go's rate-limited queue.

- A key waits in the queue at most once, however often it is added (dirty set).
- A key is handed to one worker at a time; added again while being worked on, it
  is queued once more when that worker says `done` (processing set). So a burst of
  changes to one endpoint costs one pass after the current one, never two at once.
- `add_rate_limited` delays a failing key by its own exponential backoff (capped)
  and by an overall token bucket, whichever is longer; `forget` resets the backoff.
  `add_limited` delays a key by a given time and the token bucket, leaving its
  backoff alone (for a failure that is not the key's own).
- `add_after` schedules a look (a watchdog deadline); an earlier schedule wins.
- A key queued wakes one waiting worker, not all of them (as `asyncio.Queue`
  does): a region has dozens of workers, mostly idle in a steady fleet.
- `add_backlog` queues a key at low priority, after controller-runtime's priority
  queue: the names of a listing (start, resync, relist) wait behind every key added
  for a reason (a change, an event, a schedule), which is promoted if it was
  backlogged. So an edit during a 10,000-endpoint resync is not looked at last,
  and a pass that an earlier pass caused (a Deployment became ready) reports soon
  instead of after the whole first round. Every `BACKLOG_TURN`th key handed out
  while both lanes wait comes from the backlog, so a steady stream of events
  cannot starve it.
"""

from __future__ import annotations

import asyncio
from collections import deque

from servefleet.ratelimit import TokenBucket

__all__ = ["BACKLOG_TURN", "QueueShutDown", "WorkQueue"]

BACKLOG_TURN = 4


class QueueShutDown(Exception):
    """The queue was shut down; workers stop."""


class WorkQueue:
    def __init__(
        self,
        *,
        backoff_initial: float = 0.05,
        backoff_max: float = 60.0,
        rate: float = 20.0,
        burst: int = 200,
    ) -> None:
        self._queue: deque[str] = deque()
        self._backlog: deque[str] = deque()
        """May hold stale names (promoted, or handed out): `_backlogged` says which
        still wait there."""
        self._backlogged: set[str] = set()
        self._handed_out = 0
        """Keys handed out while both lanes waited, counting toward the backlog's turn."""
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._scheduled: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._waiting: deque[asyncio.Future[None]] = deque()
        """Workers waiting for a key, first come first woken."""
        self._shut_down = False
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._bucket = TokenBucket(rate, burst)

    def __len__(self) -> int:
        return len(self._queue) + len(self._backlogged)

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing being worked on (scheduled looks aside)."""
        return not self._queue and not self._backlogged and not self._processing

    def add(self, key: str) -> None:
        if self._shut_down:
            return
        if key in self._dirty:
            if key in self._backlogged:
                self._backlogged.discard(key)
                self._queue.append(key)
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._wake_one()

    def add_backlog(self, key: str) -> None:
        """Queue `key` at low priority (module docstring)."""
        if self._shut_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._backlog.append(key)
            self._backlogged.add(key)
            self._wake_one()

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        scheduled = self._scheduled.get(key)
        if scheduled is not None:
            if scheduled[0] <= due:
                return
            scheduled[1].cancel()
        self._scheduled[key] = (due, loop.call_at(due, self._fire, key))

    def _fire(self, key: str) -> None:
        self._scheduled.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: str) -> float:
        """Queue `key` after its backoff; returns the delay chosen."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        return self.add_limited(key, min(self._backoff_max, self._backoff_initial * 2.0**failures))

    def add_limited(self, key: str, delay: float) -> float:
        """Queue `key` after `delay`, or later if the token bucket asks, its backoff
        unchanged; returns the delay chosen."""
        delay = max(delay, self._bucket.delay())
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> str:
        while not self._queue and not self._backlogged:
            if self._shut_down:
                raise QueueShutDown
            woken = asyncio.get_running_loop().create_future()
            self._waiting.append(woken)
            try:
                await woken
            except asyncio.CancelledError:
                if woken.done() and not woken.cancelled():
                    self._wake_one()  # the key it was woken for is another's now
                raise
        key = self._next()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def _next(self) -> str:
        if self._queue and self._backlogged:
            self._handed_out += 1
            if self._handed_out % BACKLOG_TURN:
                return self._queue.popleft()
        elif self._queue:
            return self._queue.popleft()
        while True:
            key = self._backlog.popleft()
            if key in self._backlogged:
                self._backlogged.discard(key)
                return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiting:
            woken = self._waiting.popleft()
            if not woken.done():
                woken.set_result(None)
                return

    def shut_down(self) -> None:
        self._shut_down = True
        for _, handle in self._scheduled.values():
            handle.cancel()
        self._scheduled.clear()
        while self._waiting:
            self._wake_one()
