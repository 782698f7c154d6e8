"""A Kubernetes region's traffic per version from its Prometheus: the queries and
what their answers mean (pure; `traffic.py` sends them).

A rollout judges each version's requests, 5xx answers and latency buckets counted
since the version began being counted (`spec.traffic.VersionTraffic`). In a
Kubernetes region the requests go through the ingress controller, which the
cluster's Prometheus scrapes; servefleet asks it, per version, for the increase of
two series over the time since the version's `since` (the `{{window}}`):

- requests by status (`DEFAULT_REQUESTS_QUERY`): one sample per `status` label, a
  code (503) or a class (5xx); those starting with 5 are the 5xx answers;
- answers per latency bucket (`DEFAULT_LATENCY_QUERY`): one cumulative sample per
  `le` label, as a Prometheus histogram has them.

The defaults are what ingress-nginx exports: `nginx_ingress_controller_requests`
and `nginx_ingress_controller_request_duration_seconds_bucket`, labelled
`namespace`, `ingress`, `service`, `status` and `canary`. servefleet renders an
nginx canary as a second Ingress to the canary's own Service; ingress-nginx merges
it into the endpoint's Ingress, so both versions' requests carry the endpoint's
`ingress` and `service` labels, and only `canary` tells them apart: "" for the
primary, the canary's upstream `<namespace>-<endpoint>-canary-80` (its own Service
and port) for the canary (`version_values`). A region routing with the AWS Load
Balancer Controller (`canary_routing` alb) has no such series: it must name its own
(`Region.request_signals_missing`).

`increase()` extrapolates to the window's ends, so its answers are fractional and a
later answer may come out a little below an earlier one: counts are rounded, and a
version's figures never go down while it is counted (`merged`), as a cumulative
count must not. The histogram's buckets are laid onto `LATENCY_BOUNDS`
conservatively (`latency_buckets`): an answer counts under the first bound at or
above its own bucket's upper bound, so it is never taken for faster than measured.
ingress-nginx's buckets are Prometheus' defaults (5 ms to 10 s), all of them among
`LATENCY_BOUNDS`; an answer over 10 s falls in the open bucket.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from servefleet.runtime.kubernetes.render_names import object_name
from servefleet.runtime.kubernetes.render_routing import SERVICE_PORT
from servefleet.spec import LATENCY_BOUNDS, Region, VersionTraffic, fill_query

__all__ = [
    "DEFAULT_LATENCY_QUERY",
    "DEFAULT_REQUESTS_QUERY",
    "AnswerError",
    "Role",
    "TrafficQueries",
    "latency_buckets",
    "merged",
    "request_counts",
    "traffic_queries",
    "version_queries",
    "version_traffic",
    "version_values",
    "window",
]

Role = Literal["primary", "canary"]

_SELECTOR = 'namespace="{{namespace}}",ingress="{{ingress}}",canary="{{canary}}"'
DEFAULT_REQUESTS_QUERY = (
    f"sum by (status) (increase(nginx_ingress_controller_requests{{{_SELECTOR}}}[{{{{window}}}}]))"
)
DEFAULT_LATENCY_QUERY = (
    "sum by (le) (increase(nginx_ingress_controller_request_duration_seconds_bucket"
    f"{{{_SELECTOR}}}[{{{{window}}}}]))"
)


class AnswerError(ValueError):
    """Prometheus answered something other than an instant vector of numbers."""


@dataclass(frozen=True)
class TrafficQueries:
    """Where a region's traffic is read and how: its Prometheus and the templates."""

    prometheus_url: str
    requests: str = DEFAULT_REQUESTS_QUERY
    latency: str = DEFAULT_LATENCY_QUERY


def traffic_queries(region: Region) -> TrafficQueries | None:
    """How `region`'s traffic is read; None when it is not (`request_signals_missing`)."""
    if region.request_signals_missing or region.prometheus_url is None:
        return None
    return TrafficQueries(
        region.prometheus_url,
        region.requests_query or DEFAULT_REQUESTS_QUERY,
        region.latency_query or DEFAULT_LATENCY_QUERY,
    )


def window(since: datetime, now: datetime) -> str:
    """The PromQL range from `since` to `now`, in whole seconds (at least one)."""
    return f"{max(1, math.ceil((now - since).total_seconds()))}s"


def version_values(endpoint: str, namespace: str, role: Role, range_: str) -> dict[str, str]:
    """The placeholders' values for one version of `endpoint` (`spec.QUERY_PLACEHOLDERS`)."""
    service = object_name(endpoint, role)
    return {
        "namespace": namespace,
        "ingress": endpoint,
        "service": service,
        "canary": "" if role == "primary" else f"{namespace}-{service}-{SERVICE_PORT}",
        "window": range_,
    }


def version_queries(queries: TrafficQueries, values: dict[str, str]) -> tuple[str, str]:
    """The requests and latency queries of one version."""
    return fill_query(queries.requests, values), fill_query(queries.latency, values)


def _samples(answer: Mapping[str, Any]) -> list[tuple[dict[str, str], float]]:
    """The (labels, value) samples of an `/api/v1/query` answer."""
    data = answer.get("data")
    if answer.get("status") != "success" or not isinstance(data, dict):
        raise AnswerError(f"not a successful answer: {str(answer)[:200]}")
    if data.get("resultType") != "vector":
        raise AnswerError(f"a {data.get('resultType')} where an instant vector was expected")
    samples = []
    for sample in data.get("result") or []:
        try:
            value = float(sample["value"][1])
            labels = dict(sample.get("metric") or {})
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise AnswerError(f"a sample without a number: {str(sample)[:200]}") from error
        if math.isfinite(value):
            samples.append((labels, max(value, 0.0)))
    return samples


def request_counts(answer: Mapping[str, Any]) -> tuple[int, int]:
    """(requests, 5xx answers) of a requests answer: a sample per `status`."""
    samples = _samples(answer)
    requests = sum(value for _, value in samples)
    errors = sum(value for labels, value in samples if labels.get("status", "").startswith("5"))
    return round(requests), min(round(errors), round(requests))


def latency_buckets(answer: Mapping[str, Any]) -> tuple[int, ...]:
    """Answers per `LATENCY_BOUNDS` bucket (the last: over every bound) of a latency
    answer's cumulative `le` samples. An answer is counted under the first bound at
    or above its bucket's upper bound, never faster; cumulative counts that
    extrapolation left decreasing are raised to the largest below them, as
    `histogram_quantile` does."""
    cumulative: list[tuple[float, float]] = []
    for labels, value in _samples(answer):
        try:
            cumulative.append((float(labels["le"]), value))
        except (KeyError, ValueError) as error:
            raise AnswerError(f"a latency sample without a bound `le`: {labels}") from error
    cumulative.sort()
    highest = 0.0
    for index, (bound, count) in enumerate(cumulative):
        highest = max(highest, count)
        cumulative[index] = (bound, highest)
    at_most = [
        round(max((count for bound, count in cumulative if bound <= limit), default=0.0))
        for limit in LATENCY_BOUNDS
    ]
    total = round(highest)
    return tuple(
        count - below for count, below in zip([*at_most, total], [0, *at_most], strict=True)
    )


def merged(previous: VersionTraffic | None, current: VersionTraffic) -> VersionTraffic:
    """`current`, never below `previous` where both count the same version from the
    same moment (an answer extrapolated a little lower than the one before)."""
    if previous is None or (previous.image, previous.since) != (current.image, current.since):
        return current
    return current.model_copy(
        update={
            "requests": max(previous.requests, current.requests),
            "errors": max(previous.errors, current.errors),
            "latency": tuple(
                max(before, now)
                for before, now in zip(previous.latency, current.latency, strict=True)
            ),
        }
    )


def version_traffic(
    image: str | None,
    since: datetime,
    requests_answer: Mapping[str, Any],
    latency_answer: Mapping[str, Any],
    previous: VersionTraffic | None = None,
) -> VersionTraffic:
    """One version's figures from the answers to its two queries."""
    requests, errors = request_counts(requests_answer)
    latency: Sequence[int] = latency_buckets(latency_answer)
    current = VersionTraffic(
        image=image, since=since, requests=requests, errors=errors, latency=tuple(latency)
    )
    return merged(previous, current)
