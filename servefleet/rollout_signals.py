"""The regions' signals over a rollout step's window, from their reports: pure.

A region reports each version's answers cumulatively since it began counting that
version (`RegionStatus.traffic`, `spec.traffic`). A step's guard rails are judged
on what happened since the step began, so the driver keeps, with the rollout's
state, the reports as they stood when the step began (`StepBaseline`) and judges
the difference. The rules:

- A version counted under the same image and `since` in the baseline and now:
  its figures now minus the baseline's.
- Counted under another image or `since` (a new version, a new leader in the
  region, whose counts began again), or not in the baseline: everything counted
  now, since it all began after the baseline was taken.
- No baseline for the current step yet (the step has just begun, or no region
  reported traffic when it did): no traffic is judged on this look; the driver
  keeps the reports as they stand now as the baseline, if any region has traffic.
- A canary counted under an image other than the rollout's is not the new version
  (a report from before it reached the region): nothing of it is judged.

Regions that count nothing (a Kubernetes region without a Prometheus to read its
traffic from) report no traffic, and are judged on readiness alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from servefleet.rollout import RegionSignals
from servefleet.spec import (
    LATENCY_BOUNDS,
    Endpoint,
    RegionStatus,
    RolloutState,
    StepBaseline,
    VersionTraffic,
)

__all__ = ["quantile", "signals_from_reports", "step_baseline", "window"]


def window(now: VersionTraffic | None, then: VersionTraffic | None) -> VersionTraffic | None:
    """What `now` counted since `then` (see the rules above); None when nothing was."""
    if now is None:
        return None
    if then is None or (then.image, then.since) != (now.image, now.since):
        return now
    return now.model_copy(
        update={
            "requests": now.requests - then.requests,
            "errors": now.errors - then.errors,
            "latency": tuple(
                count - before for count, before in zip(now.latency, then.latency, strict=True)
            ),
        }
    )


def quantile(q: float, latency: Sequence[int]) -> float | None:
    """The `q` quantile (0-1) of durations counted per `LATENCY_BOUNDS` bucket, in
    seconds, interpolated within its bucket as Prometheus' `histogram_quantile`
    does (the last bound for the open bucket); None when nothing was counted."""
    total = sum(latency)
    if total == 0:
        return None
    rank = q * total
    counted = 0
    for index, count in enumerate(latency):
        if counted + count >= rank and count > 0:
            if index == len(LATENCY_BOUNDS):
                return float(LATENCY_BOUNDS[-1])
            lower = LATENCY_BOUNDS[index - 1] if index else 0.0
            upper = LATENCY_BOUNDS[index]
            return lower + (upper - lower) * (rank - counted) / count
        counted += count
    return float(LATENCY_BOUNDS[-1])


def signals_from_reports(
    endpoint: Endpoint, statuses: Sequence[RegionStatus]
) -> dict[str, RegionSignals]:
    """Each reporting target region's signals over the rollout's current step: its
    canary is ready when the report counts every desired canary replica ready; its
    requests, 5xx answers and p95 latencies are those of the step's window."""
    state = endpoint.rollout
    baseline = _current(state)
    signals = {}
    for status in statuses:
        if status.region not in endpoint.target_regions:
            continue
        ready = 0 < status.canary_desired <= status.canary_ready
        traffic = status.traffic
        if state is None or baseline is None or traffic is None:
            signals[status.region] = RegionSignals(canary_ready=ready)
            continue
        then = baseline.regions.get(status.region)
        counted = traffic.canary if traffic.canary and traffic.canary.image == state.image else None
        canary = window(counted, then.canary if then else None)
        primary = window(traffic.primary, then.primary if then else None)
        signals[status.region] = RegionSignals(
            canary_ready=ready,
            canary_requests=canary.requests if canary else 0,
            canary_errors=canary.errors if canary else 0,
            primary_requests=primary.requests if primary else 0,
            canary_p95=quantile(0.95, canary.latency) if canary else None,
            primary_p95=quantile(0.95, primary.latency) if primary else None,
        )
    return signals


def step_baseline(state: RolloutState, statuses: Sequence[RegionStatus]) -> StepBaseline | None:
    """The start of the window of `state`'s current step: the traffic the regions
    it has reached report now; None while none reports any (nothing to keep)."""
    regions = {
        status.region: status.traffic
        for status in statuses
        if status.region in state.weights and status.traffic is not None
    }
    return StepBaseline(step_started_at=state.step_started_at, regions=regions) if regions else None


def _current(state: RolloutState | None) -> StepBaseline | None:
    """The stored baseline if it is the current step's."""
    if state is None or state.baseline is None:
        return None
    return state.baseline if state.baseline.step_started_at == state.step_started_at else None
