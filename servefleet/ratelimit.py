"""Client-side rate limits: a token bucket, shared by the reconciler's retries and
the runtimes' API calls, and the adaptive rate a Kubernetes runtime sends at.

`AdaptiveRate` is additive-increase, multiplicative-decrease (TCP's congestion
control, and what client-go's fixed 5 requests/s bucket lacks): a fixed low
ceiling makes a large fleet converge at the client's pace, not the server's, and
the API server protects itself already (API Priority and Fairness answers 429
with Retry-After). So the rate starts at its ceiling, halves when the server says
it is overloaded (a 429, a Retry-After) or its latency climbs well above the
lowest seen lately and stays there for a while (a server that stalls for a moment,
as one collecting garbage does, is not overloaded), at most once per `cooldown`
(the answers to a burst all say the same thing), and climbs back by a fixed step
each second it goes unpunished.
A stall of the client's own (its garbage collector stopping the process for a
second) looks the same: every answer in flight arrives late at once, then the
latency is what it was.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AdaptiveRate", "AdaptiveRateSettings", "TokenBucket"]


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

    @property
    def rate(self) -> float:
        return self._rate

    @rate.setter
    def rate(self, rate: float) -> None:
        self._refill()  # the tokens earned so far were earned at the old rate
        self._rate = rate

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now

    def delay(self) -> float:
        """Reserve a token; how long to wait before using it."""
        self._refill()
        self._tokens -= 1
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate

    async def acquire(self) -> None:
        """Wait for a token."""
        wait = self.delay()
        if wait > 0:
            await asyncio.sleep(wait)


@dataclass(frozen=True)
class AdaptiveRateSettings:
    """Requests a second unless said otherwise."""

    ceiling: float = 2000.0
    """Where the rate starts and the most it climbs back to: high, as controller-runtime
    sets no client-side limit at all by default since 2025 (SIG API Machinery's advice), and a
    real kube-apiserver took ~600 server-side applies a second (../shared/ARCHITECTURE.md);
    the halving, not the ceiling, is the protection."""
    floor: float = 5.0
    burst: int = 100
    recovery: float = 25.0
    """Added to the rate for each second without a sign of overload."""
    cooldown: float = 1.0
    """Seconds after a decrease during which further signs do not count."""
    latency_factor: float = 4.0
    """A smoothed latency this many times the lowest seen lately is overload..."""
    latency_margin: float = 0.1
    """...if it is also this many seconds above it (sub-millisecond noise is not)..."""
    latency_window: float = 1.0
    """...and has been both for this many seconds."""


class AdaptiveRate:
    """A token bucket whose rate follows the server's signals (module docstring)."""

    def __init__(
        self, settings: AdaptiveRateSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._clock = clock
        self.bucket = TokenBucket(settings.ceiling, settings.burst, clock)
        self._last_change = clock()
        self._decreased_at = float("-inf")
        self._latency: float | None = None
        """Exponentially smoothed latency of the answers."""
        self._lowest: float | None = None
        """The lowest smoothed latency, drifting up slowly so that it stays recent."""
        self._slow_since: float | None = None
        """Since when the smoothed latency has been high enough to mean overload."""

    @property
    def rate(self) -> float:
        return self.bucket.rate

    async def acquire(self) -> None:
        await self.bucket.acquire()

    def overloaded(self) -> None:
        """The server refused a request as overloaded (429, or a Retry-After)."""
        self._decrease()

    def answered(self, latency: float) -> None:
        """The server answered a request after `latency` seconds."""
        settings = self._settings
        smoothed = latency if self._latency is None else 0.8 * self._latency + 0.2 * latency
        self._latency = smoothed
        lowest = smoothed if self._lowest is None else min(self._lowest * 1.001, smoothed)
        self._lowest = lowest
        now = self._clock()
        if (
            smoothed > lowest * settings.latency_factor
            and smoothed > lowest + settings.latency_margin
        ):
            if self._slow_since is None:
                self._slow_since = now
            if now - self._slow_since >= settings.latency_window:
                self._slow_since = None
                self._decrease()
            return
        self._slow_since = None
        if now - self._decreased_at >= settings.cooldown:
            climbed = self.bucket.rate + settings.recovery * (now - self._last_change)
            self.bucket.rate = min(settings.ceiling, climbed)
        self._last_change = now

    def _decrease(self) -> None:
        now = self._clock()
        if now - self._decreased_at < self._settings.cooldown:
            return
        self._decreased_at = self._last_change = now
        self.bucket.rate = max(self._settings.floor, self.bucket.rate / 2)
