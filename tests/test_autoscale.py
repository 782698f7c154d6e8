"""The autoscaling decision (`servefleet.autoscale.decide`): its reasons by example,
its promises as properties over second-by-second load traces."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from servefleet.autoscale import AutoscaleDecision, AutoscaleState, LoadSample, decide
from servefleet.spec import AutoscalingSpec
from tests.factories import T0

Load = tuple[float, int]
"""One second of traffic: requests in flight (averaged), requests arrived."""

PROPERTIES = settings(max_examples=60, deadline=None)


def second(t: float) -> datetime:
    return T0 + timedelta(seconds=t)


def pace(**fields: Any) -> AutoscalingSpec:
    """Autoscaling on concurrency (4 per replica) with the default pace, changed by `fields`."""
    return AutoscalingSpec.model_validate(
        {"enabled": True, "metrics": [{"type": "concurrency", "target": 4}], **fields}
    )


def steady(in_flight: float, *, seconds: int, until: int, arrivals: int = 0) -> list[LoadSample]:
    return [
        LoadSample(at=second(t), in_flight=in_flight, arrivals=arrivals)
        for t in range(until - seconds + 1, until + 1)
    ]


def run(
    spec: AutoscalingSpec,
    trace: Sequence[Load],
    *,
    current: int,
    follow: bool = True,
    decide_from: int = 1,
) -> list[AutoscaleDecision]:
    """A decision for every second of `trace` from `decide_from` on (its first second is
    1), each handed the state the one before returned. With `follow`, the count
    running becomes the count decided at once; without, it stays `current` (replicas
    still starting, say)."""
    samples = [
        LoadSample(at=second(t), in_flight=in_flight, arrivals=arrivals)
        for t, (in_flight, arrivals) in enumerate(trace, start=1)
    ]
    decisions: list[AutoscaleDecision] = []
    state: AutoscaleState | None = None
    for t in range(decide_from, len(trace) + 1):
        window = samples[max(0, t - spec.scale_up_window) : t]
        decision = decide(window, current, spec, now=second(t), previous=state)
        decisions.append(decision)
        state = decision.state
        if follow:
            current = decision.replicas
    return decisions


# The reasons.


def test_the_count_is_the_stable_average_over_the_target() -> None:
    decision = decide(steady(11.8, seconds=60, until=60), 3, pace(), now=second(60), previous=None)

    assert (decision.replicas, decision.reason) == (3, "concurrency 11.8/4 per replica → 3")
    assert not decision.panicking


def test_with_both_metrics_the_larger_count_wins_and_is_named() -> None:
    both = pace(metrics=[{"type": "concurrency", "target": 4}, {"type": "rps", "target": 10}])

    decision = decide(
        steady(2, seconds=60, until=60, arrivals=25), 3, both, now=second(60), previous=None
    )

    assert (decision.replicas, decision.reason) == (3, "rps 25.0/10 per replica → 3")


def test_a_burst_panics_within_the_panic_window() -> None:
    burst = steady(36.4, seconds=6, until=60)

    decision = decide(burst, 1, pace(), now=second(60), previous=None)

    assert (decision.replicas, decision.reason) == (10, "panic: 9.1× target → 10")
    assert decision.panicking
    assert decision.state.panic_seen == second(60)


def test_panic_holds_the_count_for_a_stable_window_after_the_burst() -> None:
    panicked = decide(steady(36.4, seconds=6, until=60), 1, pace(), now=second(60), previous=None)

    calm = decide([], 10, pace(), now=second(119), previous=panicked.state)
    over = decide([], 10, pace(), now=second(120), previous=calm.state)

    assert (calm.replicas, calm.reason) == (
        10,
        "panic: 0.0× target → 10, held 60 s after the burst",
    )
    # The burst's count was wanted at second 60: a scale-down window ago.
    assert (over.replicas, over.panicking) == (1, False)
    assert over.reason == "concurrency 0.0/4 per replica → 0, raised to min_replicas 1"


def test_a_lower_load_is_held_for_the_scale_down_window() -> None:
    busy = decide(steady(12, seconds=60, until=60), 3, pace(), now=second(60), previous=None)

    lower = steady(4, seconds=80, until=120)
    held = decide(lower, 3, pace(), now=second(100), previous=busy.state)
    after = decide(lower, 3, pace(), now=second(120), previous=held.state)

    assert (held.replicas, held.reason) == (
        3,
        "concurrency 4.0/4 per replica → 1, 3 held for the 60 s scale-down window",
    )
    assert (after.replicas, after.reason) == (1, "concurrency 4.0/4 per replica → 1")


def test_the_bounds_are_named_when_they_decide() -> None:
    calm = pace(panic_threshold=3)
    flooded = decide(steady(100, seconds=60, until=60), 10, calm, now=second(60), previous=None)
    quiet = decide([], 2, pace(min_replicas=2), now=second(60), previous=None)

    assert flooded.reason == "concurrency 100.0/4 per replica → 25, capped at max_replicas 10"
    assert flooded.replicas == 10
    assert quiet.reason == "concurrency 0.0/4 per replica → 0, raised to min_replicas 2"
    assert quiet.replicas == 2


def test_zero_comes_after_the_idle_window_and_not_before() -> None:
    to_zero = pace(min_replicas=0)
    last_request = AutoscaleState(decided=1, last_busy=second(0))

    warm = decide([], 1, to_zero, now=second(299), previous=last_request)
    idle = decide([], 1, to_zero, now=second(300), previous=warm.state)

    assert (warm.replicas, warm.reason) == (
        1,
        "concurrency 0.0/4 per replica → 0, 1 kept until idle 300 s (idle 299 s)",
    )
    assert (idle.replicas, idle.reason) == (0, "idle 300 s → 0")


def test_at_zero_a_request_asks_for_a_replica_at_once() -> None:
    asleep = decide([], 0, pace(min_replicas=0), now=second(60), previous=None)
    woken = decide(
        [LoadSample(at=second(61), in_flight=1, arrivals=1)],
        0,
        pace(min_replicas=0),
        now=second(61),
        previous=asleep.state,
    )

    assert (asleep.replicas, asleep.reason) == (0, "no request seen → 0")
    assert woken.replicas == 1
    assert woken.state.last_busy == second(61)


def test_a_new_leader_keeps_the_observed_count_for_the_scale_down_window() -> None:
    started = decide([], 5, pace(), now=second(0), previous=None)
    later = decide([], 5, pace(), now=second(59), previous=started.state)
    then = decide([], 5, pace(), now=second(60), previous=later.state)

    assert (started.replicas, later.replicas, then.replicas) == (5, 5, 1)


def test_without_a_request_metric_the_count_is_kept_within_the_bounds() -> None:
    cpu = pace(metrics=[{"type": "cpu", "target": 70}], max_replicas=4)

    decision = decide(steady(50, seconds=60, until=60), 6, cpu, now=second(60), previous=None)

    assert (decision.replicas, decision.reason) == (4, "no concurrency or rps metric: 4 kept")


def test_samples_after_now_are_not_counted() -> None:
    future = steady(40, seconds=60, until=120)

    decision = decide(future, 1, pace(), now=second(60), previous=None)

    assert decision.replicas == 1
    assert decision.state.last_busy == second(60)  # the starting state's, not the future's


# Properties.

targets = st.floats(0.5, 20) | st.integers(1, 8).map(float)


@st.composite
def paces(
    draw: st.DrawFn, min_replicas: st.SearchStrategy[int] = st.integers(0, 3)
) -> AutoscalingSpec:
    low = draw(min_replicas)
    stable = draw(st.integers(2, 20))
    metrics = [{"type": "concurrency", "target": draw(targets)}]
    if draw(st.booleans()):
        metrics.append({"type": "rps", "target": draw(targets)})
    return AutoscalingSpec(
        enabled=True,
        min_replicas=low,
        max_replicas=draw(st.integers(max(1, low), 12)),
        metrics=metrics,
        scale_up_window=stable,
        panic_window=draw(st.integers(1, stable)),
        scale_down_window=draw(st.integers(1, 20)),
        scale_to_zero_after=draw(st.integers(1, 40)),
        panic_threshold=draw(st.floats(1.1, 4)),
    )


loads: st.SearchStrategy[Load] = st.just((0.0, 0)) | st.tuples(st.floats(0, 60), st.integers(0, 30))


@st.composite
def traces(draw: st.DrawFn) -> list[Load]:
    """Steps of steady load and idle stretches, or load that changes every second."""
    if draw(st.booleans()):
        return draw(st.lists(loads, min_size=1, max_size=60))
    steps = draw(st.lists(st.tuples(st.integers(1, 30), loads), min_size=1, max_size=5))
    return [load for length, load in steps for _ in range(length)]


def called_for(spec: AutoscalingSpec, trace: Sequence[Load], t: int) -> int:
    """The count the load of the stable window ending at second `t` calls for."""
    window = trace[max(0, t - spec.scale_up_window) : t]
    counts = [
        math.ceil(
            round(
                sum(load[0 if metric.type == "concurrency" else 1] for load in window)
                / spec.scale_up_window
                / metric.target,
                9,
            )
        )
        for metric in spec.metrics
    ]
    return min(spec.max_replicas, max(spec.min_replicas, *counts))


@PROPERTIES
@given(spec=paces(), trace=traces(), current=st.integers(0, 15))
def test_the_count_stays_within_the_bounds(
    spec: AutoscalingSpec, trace: list[Load], current: int
) -> None:
    for decision in run(spec, trace, current=current):
        assert spec.min_replicas <= decision.replicas <= spec.max_replicas, decision


@PROPERTIES
@given(spec=paces(), data=st.data(), current=st.integers(0, 12))
def test_more_load_never_asks_for_fewer_replicas(
    spec: AutoscalingSpec, data: st.DataObject, current: int
) -> None:
    """The same trace with more load in some seconds, the count running held fixed:
    no second's decision is lower."""
    trace = data.draw(traces(), label="trace")
    extra = data.draw(
        st.lists(
            st.tuples(st.floats(0, 30), st.integers(0, 10)),
            min_size=len(trace),
            max_size=len(trace),
        ),
        label="extra",
    )
    more = [(f + df, a + da) for (f, a), (df, da) in zip(trace, extra, strict=True)]

    less_load = run(spec, trace, current=current, follow=False)
    more_load = run(spec, more, current=current, follow=False)

    for t, (low, high) in enumerate(zip(less_load, more_load, strict=True), start=1):
        assert high.replicas >= low.replicas, (t, low, high)


@PROPERTIES
@given(spec=paces(st.integers(0, 1)), data=st.data())
def test_noise_inside_the_band_of_one_count_never_changes_it(
    spec: AutoscalingSpec, data: st.DataObject
) -> None:
    """Load that wanders, second by second, but stays between what count-1 and count
    replicas carry: no flapping, whatever the windows."""
    target = spec.metrics[0].target
    only_concurrency = spec.model_copy(update={"metrics": spec.metrics[:1]})
    count = data.draw(st.integers(max(1, spec.min_replicas), spec.max_replicas), label="count")
    place = data.draw(st.floats(0.05, 0.95), label="place in the band")
    level = (count - 1 + place) * target
    amplitude = data.draw(st.floats(0, 0.9), label="amplitude") * min(place, 1 - place) * target
    wander = data.draw(st.lists(st.floats(-1, 1), min_size=1, max_size=80), label="noise")
    trace = [(level + amplitude * step, 1) for step in wander]
    history = [(level, 1)] * spec.scale_up_window

    decisions = run(
        only_concurrency,
        history + trace,
        current=count,
        decide_from=len(history) + 1,
    )

    assert [decision.replicas for decision in decisions] == [count] * len(trace)


@PROPERTIES
@given(spec=paces(), trace=traces())
def test_the_count_never_falls_below_what_the_load_called_for_within_the_scale_down_window(
    spec: AutoscalingSpec, trace: list[Load]
) -> None:
    decisions = run(spec, trace, current=0)

    for t, decision in enumerate(decisions, start=1):
        recent = range(max(1, t - spec.scale_down_window + 1), t + 1)
        assert decision.replicas >= max(called_for(spec, trace, s) for s in recent), (t, decision)


@PROPERTIES
@given(spec=paces(), data=st.data())
def test_after_a_drop_the_count_holds_for_the_scale_down_window_then_follows(
    spec: AutoscalingSpec, data: st.DataObject
) -> None:
    target = spec.metrics[0].target
    only_concurrency = spec.model_copy(update={"metrics": spec.metrics[:1]})
    high = data.draw(st.floats(0.1, 12), label="high") * target
    low = data.draw(st.floats(0.05, 1), label="low fraction") * high
    history = [(high, 1)] * spec.scale_up_window
    count = called_for(only_concurrency, history, len(history))
    # A load over what max_replicas can carry panics: the panic window's average still
    # reads a burst up to a panic window after the drop, and the panic holds for the
    # scale-up window after that.
    tail = spec.panic_window + spec.scale_up_window + spec.scale_down_window + 1

    decisions = run(
        only_concurrency,
        history + [(low, 1)] * tail,
        current=count,
        decide_from=len(history) + 1,
    )

    held = decisions[: spec.scale_down_window]
    assert all(decision.replicas >= count for decision in held), held
    settled = called_for(only_concurrency, [(low, 1)] * tail, tail)
    assert decisions[-1].replicas == settled, decisions[-1]


@PROPERTIES
@given(spec=paces(), data=st.data())
def test_a_burst_is_met_within_the_panic_window(spec: AutoscalingSpec, data: st.DataObject) -> None:
    """Replicas take longer to start than a panic window lasts, so the count running
    is still the one from before the burst (`follow=False`)."""
    target = spec.metrics[0].target
    only_concurrency = spec.model_copy(update={"metrics": spec.metrics[:1]})
    running = data.draw(st.integers(max(1, spec.min_replicas), spec.max_replicas), label="running")
    calm = data.draw(st.floats(0, 0.9), label="calm") * running * target
    factor = data.draw(st.floats(1.01, 5), label="burst over the threshold")
    burst = spec.panic_threshold * factor * running * target
    history = [(calm, 1)] * spec.scale_up_window

    decisions = run(
        only_concurrency,
        history + [(burst, 1)] * spec.panic_window,
        current=running,
        follow=False,
        decide_from=len(history) + 1,
    )

    assert decisions[-1].panicking
    wanted = min(spec.max_replicas, math.ceil(round(burst / target, 9)))
    assert decisions[-1].replicas >= wanted, decisions[-1]


@PROPERTIES
@given(spec=paces(), trace=traces(), current=st.integers(0, 12))
def test_the_count_never_falls_while_panicking(
    spec: AutoscalingSpec, trace: list[Load], current: int
) -> None:
    decisions = run(spec, trace, current=current)

    for before, after in pairwise(decisions):
        if before.panicking and after.panicking:
            assert after.replicas >= before.replicas, (before, after)


@PROPERTIES
@given(spec=paces(st.just(0)), trace=traces())
def test_zero_only_after_the_idle_window_and_then_surely(
    spec: AutoscalingSpec, trace: list[Load]
) -> None:
    # A panic lasts a stable window past the burst's panic window; what the load
    # called for is held a scale-down window longer.
    settling = 2 * spec.scale_up_window + spec.scale_down_window
    idle_tail = max(spec.scale_to_zero_after, settling) + 1
    whole = trace + [(0.0, 0)] * idle_tail

    decisions = run(spec, whole, current=0)

    for t, decision in enumerate(decisions, start=1):
        if decision.replicas == 0:
            recent = whole[max(0, t - spec.scale_to_zero_after) : t]
            assert all(load == (0.0, 0) for load in recent), (t, decision)
    assert (decisions[-1].replicas, decisions[-1].reason.endswith("→ 0")) == (0, True)
