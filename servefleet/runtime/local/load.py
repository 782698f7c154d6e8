"""The load one version of an endpoint carries, counted by the gateway, read by the autoscaler.

The gateway calls `LoadMeter.arrive` when a request is routed to the version (or
held for it while it starts from zero) and `LoadMeter.depart` when its answer
ends. Both are a clock read and two number updates, so counting costs the hot
path no allocation. Requests in flight are integrated over time at each change,
so a request of 100 ms adds 0.1 to the second it ran in, however the seconds
fall: the autoscaler's `concurrency` is the time average Knative uses, not a
count caught at one instant.

Once a second the autoscaler closes the meter's second (`LoadMeter.sample`):
the average in flight and the arrivals since the last close become a
`LoadSample`, kept in a ring as long as the longest window the decision reads.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime
from time import monotonic

from servefleet.autoscale import LoadSample

__all__ = ["LoadMeter"]


class LoadMeter:
    """Requests in flight and arrivals of one endpoint version, and its recent seconds."""

    __slots__ = ("_area", "_arrivals", "_changed", "_opened", "_samples", "in_flight")

    def __init__(self) -> None:
        self.in_flight = 0
        self._arrivals = 0
        self._area = 0.0
        """Requests in flight integrated over time (request-seconds) since `_opened`."""
        self._opened = self._changed = monotonic()
        self._samples: deque[LoadSample] = deque()

    def arrive(self) -> None:
        self._advance()
        self.in_flight += 1
        self._arrivals += 1

    def depart(self) -> None:
        self._advance()
        self.in_flight -= 1

    def _advance(self) -> None:
        now = monotonic()
        self._area += self.in_flight * (now - self._changed)
        self._changed = now

    def sample(self, at: datetime, keep: int) -> tuple[LoadSample, ...]:
        """Close the period since the last call as the sample of the second ending
        `at`, and return the newest `keep` samples, oldest first."""
        self._advance()
        elapsed = self._changed - self._opened
        # A period of no measurable length (two closes in one clock tick) holds
        # what is in flight now.
        in_flight = self._area / elapsed if elapsed > 0 else float(self.in_flight)
        self._samples.append(LoadSample(at=at, in_flight=in_flight, arrivals=self._arrivals))
        while len(self._samples) > keep:
            self._samples.popleft()
        self._opened = self._changed
        self._area = 0.0
        self._arrivals = 0
        return tuple(self._samples)
