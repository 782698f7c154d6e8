"""The autoscaling decision: how many replicas one version should run, and why.

Pure, like `plan`: the load the gateway counted, the replica count, the spec and
`now` go in; the count, the reason in words and the state the next decision
needs come out. Nothing is remembered here, so a caller that loses the state (a
change of leader) passes None and the decision starts from the count it observes.

The pace is Knative's (the autoscaler KServe runs on), on the two signals a
gateway sees at zero replicas too: requests in flight (`concurrency`) and
requests arriving (`rps`); cpu and memory are left to a HorizontalPodAutoscaler.

- The count is the load averaged over `scale_up_window` (the stable window),
  divided by the metric's per-replica target, rounded up; with both metrics, the
  larger count.
- Panic: once the load averaged over the shorter `panic_window` asks for
  `panic_threshold` times the replicas running, the count follows that average
  too, and it does not fall until a whole stable window has passed since the
  load was last that high (by then the burst is in the stable average).
- Scale-down is held: the count never falls below the highest count the load
  called for during the last `scale_down_window` (the HorizontalPodAutoscaler's
  scale-down stabilization).
- Zero: with `min_replicas: 0`, one replica stays until no request has arrived or
  been in flight for `scale_to_zero_after`.
- Always within `min_replicas`..`max_replicas`.

A second the samples do not cover counts as a second without load: the gateway
need not report idle seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from servefleet.spec import REQUEST_METRICS, AutoscalingMetric, AutoscalingSpec

__all__ = ["AutoscaleDecision", "AutoscaleState", "LoadSample", "decide"]


class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoadSample(_Value):
    """One second of one version's traffic, as the gateway counts it."""

    at: datetime
    """The end of the second."""
    in_flight: float = Field(ge=0)
    """Requests in flight, averaged over the second."""
    arrivals: int = Field(ge=0)
    """Requests that arrived during the second."""

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.arrivals > 0


class AutoscaleState(_Value):
    """What one decision hands the next: returned with it, passed back by the caller."""

    decided: int
    """The count the last decision chose."""
    recent: tuple[tuple[datetime, int], ...] = ()
    """The counts the load called for within the scale-down window, with their times."""
    last_busy: datetime | None = None
    """The last second a request arrived or was in flight; None if none was seen."""
    panic_seen: datetime | None = None
    """The last time the panic window's load crossed the threshold; None when calm."""

    @classmethod
    def starting(cls, current: int, now: datetime) -> AutoscaleState:
        """The state of a caller that has none (a new leader): the running replicas
        count as wanted and busy just now, so nothing shrinks before its window."""
        if current == 0:
            return cls(decided=0)
        return cls(decided=current, recent=((now, current),), last_busy=now)


class AutoscaleDecision(_Value):
    replicas: int
    reason: str
    """Why, in words: "concurrency 11.8/4 per replica → 3", "idle 300 s → 0",
    "panic: 9.1× target → 12"."""
    panicking: bool
    state: AutoscaleState


@dataclass(frozen=True)
class _Reading:
    """One request metric over both windows."""

    metric: AutoscalingMetric
    stable: float
    panic: float

    @property
    def stable_count(self) -> int:
        return _replicas_for(self.stable, self.metric.target)

    @property
    def panic_count(self) -> int:
        return _replicas_for(self.panic, self.metric.target)

    def pressure(self, replicas: int) -> float:
        """The panic window's load as a multiple of what `replicas` are meant to carry."""
        return self.panic / (self.metric.target * max(replicas, 1))


def decide(
    samples: Sequence[LoadSample],
    current: int,
    spec: AutoscalingSpec,
    *,
    now: datetime,
    previous: AutoscaleState | None,
) -> AutoscaleDecision:
    """How many replicas one version should run at `now`, given the `current`
    count and its load `samples` (samples after `now` are ignored; those older
    than the longest window are not needed). `previous` is the state the last
    decision returned, or None to start from `current`."""
    state = previous if previous is not None else AutoscaleState.starting(current, now)
    seen = [sample for sample in samples if sample.at <= now]
    busy = [sample.at for sample in seen if sample.busy]
    last_busy = max([*busy, *([state.last_busy] if state.last_busy else [])], default=None)
    readings = [
        _Reading(
            metric,
            _average(seen, metric.type, now, spec.scale_up_window),
            _average(seen, metric.type, now, spec.panic_window),
        )
        for metric in spec.metrics
        if metric.type in REQUEST_METRICS
    ]
    if not readings:
        held = _bounded(current, spec)
        return AutoscaleDecision(
            replicas=held,
            reason=f"no concurrency or rps metric: {held} kept",
            panicking=False,
            state=state.model_copy(update={"decided": held, "last_busy": last_busy}),
        )

    pressure = max(reading.pressure(current) for reading in readings)
    panic_seen = now if pressure >= spec.panic_threshold else state.panic_seen
    if panic_seen is not None and now - panic_seen >= _seconds(spec.scale_up_window):
        panic_seen = None
    panicking = panic_seen is not None

    driver = max(readings, key=lambda reading: reading.stable_count)
    wanted = driver.stable_count
    if panicking:
        wanted = max(wanted, *(reading.panic_count for reading in readings))
    bounded = _bounded(wanted, spec)
    # A count no higher than the newest can never be the window's highest again.
    window_start = now - _seconds(spec.scale_down_window)
    recent = (
        *((at, n) for at, n in state.recent if at > window_start and n > bounded),
        (now, bounded),
    )
    replicas = max(n for _, n in recent)
    if panicking:
        replicas = max(replicas, state.decided)  # never down while panicking
    idle = None if last_busy is None else (now - last_busy).total_seconds()
    warm = replicas == 0 and idle is not None and idle < spec.scale_to_zero_after
    if warm:
        replicas = 1
    replicas = _bounded(replicas, spec)

    if replicas == 0:
        reason = "no request seen → 0" if idle is None else f"idle {idle:.0f} s → 0"
    elif panicking:
        reason = f"panic: {pressure:.1f}× target → {replicas}"
        if panic_seen != now:
            reason += f", held {spec.scale_up_window} s after the burst"
    else:
        reason = f"{driver.metric.type} {driver.stable:.1f}/{driver.metric.target:g} per replica"
        reason += f" → {wanted}"
        if bounded > wanted:
            reason += f", raised to min_replicas {bounded}"
        elif bounded < wanted:
            reason += f", capped at max_replicas {bounded}"
        if warm and idle is not None:
            reason += f", 1 kept until idle {spec.scale_to_zero_after} s (idle {idle:.0f} s)"
        elif replicas > bounded:
            reason += f", {replicas} held for the {spec.scale_down_window} s scale-down window"
    return AutoscaleDecision(
        replicas=replicas,
        reason=reason,
        panicking=panicking,
        state=AutoscaleState(
            decided=replicas, recent=recent, last_busy=last_busy, panic_seen=panic_seen
        ),
    )


def _seconds(window: int) -> timedelta:
    return timedelta(seconds=window)


def _average(samples: Sequence[LoadSample], metric: str, now: datetime, window: int) -> float:
    start = now - _seconds(window)
    values = [
        sample.in_flight if metric == "concurrency" else sample.arrivals
        for sample in samples
        if sample.at > start
    ]
    return sum(values) / window


def _replicas_for(load: float, target: float) -> int:
    # Rounded first, so that float error in an average (8.000000001 of a target
    # of 4) does not ask for a replica more.
    return math.ceil(round(load / target, 9))


def _bounded(replicas: int, spec: AutoscalingSpec) -> int:
    return min(spec.max_replicas, max(spec.min_replicas, replicas))
