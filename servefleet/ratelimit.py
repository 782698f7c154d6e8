"""A token bucket, shared by the reconciler's retries and the runtimes' API calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def delay(self) -> float:
        """Reserve a token; how long to wait before using it."""
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    async def acquire(self) -> None:
        """Wait for a token."""
        wait = self.delay()
        if wait > 0:
            await asyncio.sleep(wait)
