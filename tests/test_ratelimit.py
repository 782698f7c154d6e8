"""The adaptive client rate (`ratelimit.AdaptiveRate`), on a clock the test moves."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from servefleet.ratelimit import AdaptiveRate, AdaptiveRateSettings

SETTINGS = AdaptiveRateSettings(ceiling=400, floor=5, recovery=20, cooldown=1.0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_it_starts_at_the_ceiling_and_halves_once_per_burst_of_refusals() -> None:
    clock = Clock()
    rate = AdaptiveRate(SETTINGS, clock)
    assert rate.rate == 400

    for _ in range(50):  # the answers to one burst all say the same thing
        rate.overloaded()
    assert rate.rate == 200

    clock.now += 1.0
    rate.overloaded()
    assert rate.rate == 100


def test_it_climbs_back_additively_after_the_cooldown_and_stops_at_the_ceiling() -> None:
    clock = Clock()
    rate = AdaptiveRate(SETTINGS, clock)
    rate.overloaded()
    clock.now += 0.5
    rate.answered(0.005)
    assert rate.rate == 200  # still cooling down

    clock.now += 1.0
    rate.answered(0.005)
    assert rate.rate == 220  # the second since the cooldown began counts, not more
    for _ in range(20):
        clock.now += 1.0
        rate.answered(0.005)
    assert rate.rate == 400


def test_rising_latency_lowers_the_rate_and_steady_latency_does_not() -> None:
    clock = Clock()
    rate = AdaptiveRate(SETTINGS, clock)
    for _ in range(100):
        clock.now += 0.01
        rate.answered(0.005)
    assert rate.rate == 400

    for _ in range(90):
        clock.now += 0.01
        rate.answered(0.5)  # the server slows down a hundredfold...
    assert rate.rate == 400  # ...but for less than the window so far

    for _ in range(60):
        clock.now += 0.01
        rate.answered(0.5)
    assert rate.rate == 200


def test_a_stall_shorter_than_the_window_is_not_overload() -> None:
    """A server collecting garbage answers everything in flight late at once, then
    is as fast as before."""
    clock = Clock()
    rate = AdaptiveRate(SETTINGS, clock)
    for _ in range(3):
        for _ in range(100):
            clock.now += 0.01
            rate.answered(0.005)
        for _ in range(30):
            clock.now += 0.001
            rate.answered(0.4)
    assert rate.rate == 400


def test_jitter_under_the_margin_is_not_overload() -> None:
    clock = Clock()
    rate = AdaptiveRate(SETTINGS, clock)
    for index in range(500):
        clock.now += 0.01
        rate.answered(0.001 if index % 2 else 0.03)  # 30x apart, but milliseconds
    assert rate.rate == 400


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 5), st.floats(0, 2)), max_size=200))
def test_the_rate_stays_between_floor_and_ceiling(
    events: list[tuple[bool, float, float]],
) -> None:
    clock = Clock()
    rate = AdaptiveRate(SETTINGS, clock)
    for refused, latency, elapsed in events:
        clock.now += elapsed
        if refused:
            rate.overloaded()
        else:
            rate.answered(latency)
        assert SETTINGS.floor <= rate.rate <= SETTINGS.ceiling
