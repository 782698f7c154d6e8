"""The global entry's region choice (`region_choice`): properties over any regions,
statuses, drain flags, health and latency estimates."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from servefleet.runtime.local.region_choice import RegionView, rank_regions, shares

latencies = st.one_of(st.none(), st.floats(min_value=0.0, max_value=30.0))
views = st.lists(
    st.builds(
        RegionView,
        name=st.sampled_from(["*local", "eu", "us", "ap", "sa", "af"]),
        serving=st.booleans(),
        drained=st.booleans(),
        healthy=st.booleans(),
        latency=latencies,
    ),
    max_size=6,
    unique_by=lambda view: view.name,
)
draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


@given(views, draws)
def test_every_serving_undrained_region_is_tried_once_and_no_other(
    regions: list[RegionView], draw: float
) -> None:
    order = rank_regions(regions, draw)

    assert sorted(order) == sorted(view.name for view in regions if view.eligible)


@given(views, draws)
def test_a_drained_or_not_ready_region_is_never_chosen(
    regions: list[RegionView], draw: float
) -> None:
    order = rank_regions(regions, draw)
    excluded = {view.name for view in regions if view.drained or not view.serving}

    assert not excluded & set(order)
    assert not excluded & set(shares(regions))


@given(views, draws)
def test_a_healthy_region_comes_before_every_unhealthy_one(
    regions: list[RegionView], draw: float
) -> None:
    health = {view.name: view.healthy for view in regions}

    order = rank_regions(regions, draw)

    assert [health[name] for name in order] == sorted(
        (health[name] for name in order), reverse=True
    )


@given(views)
def test_shares_sum_to_one_and_favour_the_lower_latency(regions: list[RegionView]) -> None:
    odds = shares(regions)

    if odds:
        assert math.isclose(sum(odds.values()), 1.0)
    measured = [v for v in regions if v.name in odds and v.latency is not None]
    for faster in measured:
        for slower in measured:
            assert faster.latency is not None
            assert slower.latency is not None
            if faster.latency <= slower.latency:
                assert odds[faster.name] >= odds[slower.name] - 1e-12


@given(views, draws)
def test_the_first_choice_is_drawn_by_the_shares(regions: list[RegionView], draw: float) -> None:
    odds = shares(regions)
    order = rank_regions(regions, draw)

    if odds:
        # The draw falls in the first's slice of [0, 1), slices in name order.
        start = sum(odds[name] for name in sorted(odds) if name < order[0])
        assert start - 1e-9 <= draw < start + odds[order[0]] + 1e-9
    # After the first, the healthy ones go fastest first (unmeasured before measured).
    healthy_rest = [
        view for name in order[1:] for view in regions if view.name == name and view.healthy
    ]
    keys = [(v.latency is not None, v.latency or 0.0) for v in healthy_rest]
    assert keys == sorted(keys)


def test_a_region_ten_times_slower_gets_a_hundredth_of_the_faster_ones_share() -> None:
    odds = shares(
        [
            RegionView("fast", serving=True, latency=0.01),
            RegionView("slow", serving=True, latency=0.1),
            RegionView("new", serving=True),
        ]
    )

    # An unmeasured region counts as fast as the fastest, so it gets measured.
    assert math.isclose(odds["fast"], odds["new"])
    assert math.isclose(odds["slow"] * 100, odds["fast"])
