"""The regions' signals over a rollout step's window (`servefleet.rollout_signals`):
cumulative counts differenced against the step's baseline, a new version or a new
counting process starting again from zero, and the same window for any driver
that reads the same stored record."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servefleet.rollout import RegionSignals, breach, start
from servefleet.rollout_signals import quantile, signals_from_reports, step_baseline, window
from servefleet.spec import (
    LATENCY_BOUNDS,
    STORED,
    Endpoint,
    GuardRails,
    RegionStatus,
    RegionTraffic,
    RolloutPolicy,
    VersionTraffic,
)
from tests.factories import T0, make_endpoint, make_status

OLD = "ghcr.io/example/server:1.0"
NEW = "ghcr.io/example/server:2.0"
BUCKETS = len(LATENCY_BOUNDS) + 1
FAST = LATENCY_BOUNDS.index(0.01)
SLOW = LATENCY_BOUNDS.index(0.1)


def counted(
    image: str, requests: int, errors: int = 0, *, since: int = 0, bucket: int = FAST
) -> VersionTraffic:
    """`requests` answers of `image` counted since T0 + `since` s, all in one bucket."""
    latency = [0] * BUCKETS
    latency[bucket] = requests
    return VersionTraffic(
        image=image,
        since=T0 + timedelta(seconds=since),
        requests=requests,
        errors=errors,
        latency=tuple(latency),
    )


def report(
    region: str, canary: VersionTraffic | None, primary: VersionTraffic | None
) -> RegionStatus:
    return make_status(
        "llm",
        region,
        canary_ready=1,
        canary_desired=1,
        traffic=RegionTraffic(primary=primary, canary=canary),
    )


def rolling(regions: list[str]) -> Endpoint:
    """An endpoint whose rollout of NEW has reached every region in one wave."""
    endpoint = make_endpoint(regions=regions, image=OLD)
    state = start(RolloutPolicy(), regions, NEW, T0)
    return endpoint.model_copy(update={"rollout": state})


def with_baseline(endpoint: Endpoint, statuses: list[RegionStatus]) -> Endpoint:
    """The endpoint as the driver stores it once it has taken its step's baseline."""
    state = endpoint.rollout
    assert state is not None
    baseline = step_baseline(state, statuses)
    return endpoint.model_copy(update={"rollout": state.model_copy(update={"baseline": baseline})})


def test_a_region_is_ready_when_it_reports_every_canary_replica_ready() -> None:
    endpoint = make_endpoint(regions=["r1", "r2"])
    reports = [
        make_status("llm", "r1", canary_ready=2, canary_desired=2),
        make_status("llm", "r2", canary_ready=1, canary_desired=2),
        make_status("llm", "gone", canary_ready=1, canary_desired=1),
    ]

    assert signals_from_reports(endpoint, reports) == {
        "r1": RegionSignals(canary_ready=True),
        "r2": RegionSignals(canary_ready=False),
    }
    no_canary = [make_status("llm", "r1")]
    assert signals_from_reports(endpoint, no_canary)["r1"].canary_ready is False


def test_the_window_is_what_was_counted_since_the_steps_baseline() -> None:
    endpoint = rolling(["eu-west-1"])
    before = [report("eu-west-1", counted(NEW, 88, 1), counted(OLD, 1_000))]
    stored = with_baseline(endpoint, before)
    later = [
        report(
            "eu-west-1",
            counted(NEW, 88 + 312, 1 + 31, bucket=SLOW),
            counted(OLD, 1_000 + 2_000),
        )
    ]

    (signals,) = signals_from_reports(stored, later).values()

    assert (signals.canary_requests, signals.canary_errors) == (312, 31)
    assert signals.primary_requests == 2_000
    assert signals.canary_p95 is not None
    assert signals.primary_p95 is not None
    assert LATENCY_BOUNDS[SLOW - 1] < signals.canary_p95 <= LATENCY_BOUNDS[SLOW]
    assert LATENCY_BOUNDS[FAST - 1] < signals.primary_p95 <= LATENCY_BOUNDS[FAST]
    broken = breach(GuardRails(min_requests=100), signals, past_deadline=False)
    assert f"{broken} in eu-west-1" == "canary 5xx 9.9 % > 2 % over 312 requests in eu-west-1"


def test_no_traffic_is_judged_before_the_step_has_its_baseline() -> None:
    endpoint = rolling(["r1"])
    reports = [report("r1", counted(NEW, 500, 500), counted(OLD, 500))]

    assert signals_from_reports(endpoint, reports) == {"r1": RegionSignals(canary_ready=True)}

    # A baseline of an earlier step does not count for this one.
    stored = with_baseline(endpoint, reports)
    state = stored.rollout
    assert state is not None
    next_step = state.model_copy(update={"step_started_at": T0 + timedelta(seconds=60)})
    moved_on = stored.model_copy(update={"rollout": next_step})
    assert signals_from_reports(moved_on, reports) == {"r1": RegionSignals(canary_ready=True)}


def test_a_new_version_or_a_new_counting_never_inherits_old_counts() -> None:
    endpoint = rolling(["r1"])
    stored = with_baseline(endpoint, [report("r1", counted(NEW, 400, 0), counted(OLD, 900))])

    # A new leader in the region counts again from zero, since later: all of it is new.
    restarted = [report("r1", counted(NEW, 30, 3, since=40), counted(OLD, 70, since=40))]
    (signals,) = signals_from_reports(stored, restarted).values()
    assert (signals.canary_requests, signals.canary_errors, signals.primary_requests) == (
        30,
        3,
        70,
    )

    # A canary counted under another image is not the rollout's new version.
    other = [report("r1", counted("ghcr.io/example/server:9.9", 900, 900), counted(OLD, 950))]
    (signals,) = signals_from_reports(stored, other).values()
    assert (signals.canary_requests, signals.canary_errors, signals.canary_p95) == (0, 0, None)
    assert signals.primary_requests == 50


def test_a_driver_reading_the_stored_record_again_computes_the_same_window() -> None:
    endpoint = rolling(["r1", "r2"])
    first = [
        report("r1", counted(NEW, 10, 0), counted(OLD, 100)),
        report("r2", None, counted(OLD, 50)),
    ]
    stored = with_baseline(endpoint, first)
    later = [
        report("r1", counted(NEW, 60, 2, bucket=SLOW), counted(OLD, 300)),
        report("r2", counted(NEW, 20, 1, since=5), counted(OLD, 90)),
    ]

    # Another process reads the record back from the store (JSON) and looks again.
    reread = Endpoint.model_validate_json(stored.model_dump_json(), context=STORED)

    assert signals_from_reports(reread, later) == signals_from_reports(stored, later)
    assert signals_from_reports(reread, later)["r2"].canary_requests == 20


@given(
    steps=st.lists(
        st.tuples(st.integers(0, 50), st.integers(0, 50), st.booleans()), min_size=1, max_size=30
    ),
    cut=st.integers(0, 30),
)
def test_windows_add_up_to_what_happened_since_the_baseline(
    steps: list[tuple[int, int, bool]], cut: int
) -> None:
    """A region counts requests (and 5xx among them), sometimes starting again from
    zero (a new leader); the window from any report to the last one is what was
    counted after the first, or everything since the last restart if there was one."""
    reports: list[VersionTraffic] = []
    requests = errors = 0
    since = 0
    for index, (more, failed, restarts) in enumerate(steps):
        if restarts:
            requests = errors = 0
            since = index + 1
        requests += more
        errors += min(failed, more)
        reports.append(counted(NEW, requests, errors, since=since))
    baseline = reports[min(cut, len(reports) - 1)]
    last = reports[-1]

    counted_window = window(last, baseline)

    assert counted_window is not None
    if baseline.since == last.since:
        expected = (last.requests - baseline.requests, last.errors - baseline.errors)
    else:
        expected = (last.requests, last.errors)
    assert (counted_window.requests, counted_window.errors) == expected
    assert sum(counted_window.latency) == counted_window.requests
    assert min(counted_window.latency) >= 0


@pytest.mark.parametrize(
    ("latency", "expected"),
    [
        ((), None),
        ({FAST: 100}, (LATENCY_BOUNDS[FAST - 1], LATENCY_BOUNDS[FAST])),
        ({FAST: 90, SLOW: 10}, (LATENCY_BOUNDS[SLOW - 1], LATENCY_BOUNDS[SLOW])),
        ({FAST: 96, SLOW: 4}, (LATENCY_BOUNDS[FAST - 1], LATENCY_BOUNDS[FAST])),
        ({BUCKETS - 1: 3}, (LATENCY_BOUNDS[-1], LATENCY_BOUNDS[-1])),
    ],
)
def test_p95_falls_in_the_bucket_that_holds_the_95th_percent(
    latency: dict[int, int], expected: tuple[float, float] | None
) -> None:
    buckets = [0] * BUCKETS
    for index, count in dict(latency).items():
        buckets[index] = count

    p95 = quantile(0.95, buckets)

    if expected is None:
        assert p95 is None
    else:
        assert p95 is not None
        assert expected[0] <= p95 <= expected[1]
