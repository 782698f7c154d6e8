"""The Prometheus queries of a Kubernetes region's traffic and what their answers
mean (`runtime.kubernetes.traffic_queries`, pure): the versions told apart as
ingress-nginx labels them, Prometheus' answers turned into `VersionTraffic`, the
histogram laid onto `LATENCY_BOUNDS` never faster than measured."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servefleet.runtime.kubernetes.traffic_queries import (
    DEFAULT_LATENCY_QUERY,
    DEFAULT_REQUESTS_QUERY,
    AnswerError,
    TrafficQueries,
    latency_buckets,
    merged,
    request_counts,
    traffic_queries,
    version_queries,
    version_traffic,
    version_values,
    window,
)
from servefleet.spec import LATENCY_BOUNDS, Region, RegionKind, VersionTraffic

SINCE = datetime(2026, 1, 1, tzinfo=UTC)
PROMETHEUS = "http://prometheus.monitoring:9090"


def vector(*samples: tuple[dict[str, str], float]) -> dict[str, Any]:
    """An `/api/v1/query` answer holding `samples`."""
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": labels, "value": [1767225600.0, repr(value)]}
                for labels, value in samples
            ],
        },
    }


def buckets(cumulative: dict[float, float]) -> dict[str, Any]:
    """A latency answer: a cumulative count per bound."""
    return vector(
        *(({"le": "+Inf" if math.isinf(le) else repr(le)}, n) for le, n in cumulative.items())
    )


def test_the_default_queries_tell_the_versions_apart_by_ingress_nginxs_canary_label() -> None:
    """Both versions' requests carry the endpoint's Ingress; the canary's are labelled
    with its own Service's upstream, the primary's with ""."""
    queries = TrafficQueries(PROMETHEUS)
    primary = version_queries(queries, version_values("llm", "serving", "primary", "93s"))
    canary = version_queries(queries, version_values("llm", "serving", "canary", "12s"))

    selector = 'namespace="serving",ingress="llm",canary="{}"'
    assert primary == (
        "sum by (status) (increase(nginx_ingress_controller_requests"
        f"{{{selector.format('')}}}[93s]))",
        "sum by (le) (increase(nginx_ingress_controller_request_duration_seconds_bucket"
        f"{{{selector.format('')}}}[93s]))",
    )
    assert canary[0] == (
        "sum by (status) (increase(nginx_ingress_controller_requests"
        f"{{{selector.format('serving-llm-canary-80')}}}[12s]))"
    )


def test_an_overridden_query_gets_each_versions_own_service() -> None:
    queries = TrafficQueries(
        PROMETHEUS,
        requests='sum by (status) (increase(x{svc="{{ service }}",ns="{{namespace}}"}'
        "[{{window}}]))",
        latency='sum by (le) (increase(y{svc="{{service}}"}[{{window}}]))',
    )
    requests, latency = version_queries(queries, version_values("llm", "a", "canary", "5s"))
    assert requests == 'sum by (status) (increase(x{svc="llm-canary",ns="a"}[5s]))'
    assert latency == 'sum by (le) (increase(y{svc="llm-canary"}[5s]))'


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        pytest.param(Region(name="a", kind=RegionKind.LOCAL), None, id="local: its gateways"),
        pytest.param(Region(name="a", kind=RegionKind.KUBERNETES), None, id="no prometheus"),
        pytest.param(
            Region(name="a", kind=RegionKind.KUBERNETES, prometheus_url=PROMETHEUS),
            None,
            id="alb routing without queries of its own",
        ),
        pytest.param(
            Region(
                name="a",
                kind=RegionKind.KUBERNETES,
                prometheus_url=PROMETHEUS,
                canary_routing="nginx",
            ),
            TrafficQueries(PROMETHEUS),
            id="nginx routing: the defaults",
        ),
        pytest.param(
            Region(
                name="a",
                kind=RegionKind.KUBERNETES,
                prometheus_url=PROMETHEUS,
                requests_query="r[{{window}}]",
                latency_query="l[{{window}}]",
            ),
            TrafficQueries(PROMETHEUS, "r[{{window}}]", "l[{{window}}]"),
            id="alb routing with its own queries",
        ),
    ],
)
def test_which_regions_read_their_traffic_and_how(
    region: Region, expected: TrafficQueries | None
) -> None:
    assert traffic_queries(region) == expected
    assert bool(region.request_signals_missing) == (
        expected is None and region.kind is RegionKind.KUBERNETES
    )


def test_the_window_is_the_whole_seconds_since_the_version_began_being_counted() -> None:
    assert window(SINCE, SINCE + timedelta(seconds=92.2)) == "93s"
    assert window(SINCE, SINCE) == "1s"


def test_requests_by_status_code_or_class_count_the_5xx_answers() -> None:
    answer = vector(({"status": "200"}, 180.4), ({"status": "503"}, 9.7), ({"status": "404"}, 10))
    assert request_counts(answer) == (200, 10)
    assert request_counts(vector(({"status": "5xx"}, 3.0), ({"status": "2xx"}, 1.0))) == (4, 3)
    assert request_counts(vector()) == (0, 0)


def test_the_default_histogram_buckets_land_in_the_same_bounds() -> None:
    """ingress-nginx's buckets (Prometheus' defaults, 5 ms to 10 s) are all bounds of
    LATENCY_BOUNDS: each bucket's count lands in its own; over 10 s, in the open one."""
    defaults = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
    cumulative = {le: float(index + 1) for index, le in enumerate(defaults)} | {math.inf: 20.0}
    counts = latency_buckets(buckets(cumulative))
    assert counts == (1,) * len(defaults) + (0, 0, 0, 0) + (9,)


def test_a_bucket_between_two_bounds_counts_under_the_higher_one() -> None:
    counts = latency_buckets(buckets({0.2: 5.0, 0.3: 8.0, math.inf: 8.0}))
    expected = [0] * (len(LATENCY_BOUNDS) + 1)
    expected[LATENCY_BOUNDS.index(0.25)] = 5  # 0.2 <= 0.25
    expected[LATENCY_BOUNDS.index(0.5)] = 3  # (0.2, 0.3] could be up to 0.3: under 0.5
    assert counts == tuple(expected)


@given(
    st.dictionaries(
        st.floats(min_value=0.0001, max_value=1000, allow_nan=False),
        st.floats(min_value=0, max_value=1e6, allow_nan=False),
        max_size=20,
    ),
)
def test_the_buckets_keep_every_answer_and_never_make_one_faster(
    histogram: dict[float, float],
) -> None:
    """Whatever the histogram's bounds and however extrapolation bent its counts: the
    buckets hold the +Inf count (all answers), and at each bound of LATENCY_BOUNDS
    exactly the answers the histogram shows to be at most that long (its buckets
    whose upper bound is at or below it; counts made non-decreasing) are counted
    as at most that long: none taken for faster than measured, none for slower."""
    total = max(histogram.values(), default=0.0)
    counts = latency_buckets(buckets(histogram | {math.inf: total}))

    assert len(counts) == len(LATENCY_BOUNDS) + 1
    assert min(counts) >= 0
    assert sum(counts) == round(total)
    for index, bound in enumerate(LATENCY_BOUNDS):
        shown = max((n for le, n in histogram.items() if le <= bound), default=0.0)
        assert sum(counts[: index + 1]) == round(shown)


def test_a_later_answer_extrapolated_lower_never_lowers_the_figures() -> None:
    first = version_traffic(
        "img:2",
        SINCE,
        vector(({"status": "200"}, 100.0), ({"status": "500"}, 5.0)),
        buckets({0.1: 100.0, math.inf: 105.0}),
    )
    second = version_traffic(
        "img:2",
        SINCE,
        vector(({"status": "200"}, 98.6), ({"status": "500"}, 4.6)),
        buckets({0.1: 98.0, math.inf: 103.0}),
        first,
    )
    assert (second.requests, second.errors, second.latency) == (
        first.requests,
        first.errors,
        first.latency,
    )


_COUNTS = st.integers(min_value=0, max_value=10**6)
_FIGURES = st.tuples(_COUNTS, _COUNTS, st.lists(_COUNTS, min_size=16, max_size=16).map(tuple)).map(
    lambda f: VersionTraffic(
        image="img:2", since=SINCE, requests=f[0], errors=min(f[0], f[1]), latency=f[2]
    )
)


@given(_FIGURES, _FIGURES)
def test_a_versions_figures_never_go_down_while_it_is_counted(
    last: VersionTraffic, answer: VersionTraffic
) -> None:
    """Whatever two answers over growing windows came out as, the figures reported
    are at least the last ones and at least the new answer's, field by field."""
    reported = merged(last, answer)
    for earlier in (last, answer):
        assert reported.requests >= earlier.requests
        assert reported.errors >= earlier.errors
        assert all(now >= then for now, then in zip(reported.latency, earlier.latency, strict=True))
    assert reported.errors <= reported.requests


def test_another_version_or_counting_is_not_merged_with_the_last() -> None:
    counted = VersionTraffic(image="img:1", since=SINCE, requests=50)
    fresh = VersionTraffic(image="img:2", since=SINCE, requests=3)
    again = VersionTraffic(image="img:1", since=SINCE + timedelta(seconds=1), requests=1)
    assert merged(counted, fresh) == fresh
    assert merged(counted, again) == again


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "error", "errorType": "bad_data", "error": "parse error"},
        {"status": "success", "data": {"resultType": "matrix", "result": []}},
        {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1]}]}},
    ],
)
def test_an_answer_that_is_not_a_vector_of_numbers_is_refused(answer: dict[str, Any]) -> None:
    with pytest.raises(AnswerError):
        request_counts(answer)


def test_a_latency_sample_without_a_bound_is_refused() -> None:
    with pytest.raises(AnswerError, match="le"):
        latency_buckets(vector(({"status": "200"}, 1.0)))


def test_the_default_templates_name_every_placeholder_they_need() -> None:
    for template in (DEFAULT_REQUESTS_QUERY, DEFAULT_LATENCY_QUERY):
        region = Region(
            name="a",
            kind=RegionKind.KUBERNETES,
            prometheus_url=PROMETHEUS,
            requests_query=template,
            latency_query=template,
        )
        assert region.requests_query == template
