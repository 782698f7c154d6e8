"""The Prometheus metric families of one servefleet process, on one registry.

`Metrics()` makes the families on a registry of its own, never prometheus_client's
global default: a process makes one in its composition root (`up`, `reconcile`,
`serve`) and hands it to what it runs, and every test fleet or app makes its own,
so nothing a test counts leaks into another. No I/O happens here; exposition is the
caller's (`prometheus_client.generate_latest(metrics.registry)`).

Labels are bounded by the fleet's declarations: endpoint x region x version
(primary/canary), outcome, verb, status class. Nothing taken from a request (its
path, headers, a user's input) becomes a label: a request the gateway cannot route
is counted under the fixed endpoint `NO_ENDPOINT`. When an endpoint leaves a region,
`remove_endpoint` drops its series there, so removed endpoints do not pile up.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import metrics as client_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = [
    "NO_ENDPOINT",
    "NO_REGION",
    "NO_ROUTE",
    "NO_VERSION",
    "RECONCILE_OUTCOMES",
    "WATCHDOG_ACTIONS",
    "GatewaySeries",
    "Metrics",
    "status_class",
]

RECONCILE_OUTCOMES = ("success", "requeue", "retry", "error")
WATCHDOG_ACTIONS = ("unroute", "route")
NO_ENDPOINT = "(none)"
"""The endpoint label of a gateway request no endpoint's route matched."""
NO_REGION = "(none)"
NO_VERSION = "(none)"
NO_ROUTE = "(none)"
"""The route label of an API request no route matched (its path is never a label)."""

_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

# Seconds. A pass is milliseconds when nothing changed and seconds when it waits on
# an API server; propagation includes the reconciler noticing the change and a
# runtime starting nothing yet (apply returns once the objects are written).
_PASS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_PROPAGATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Inference answers range from a health check's milliseconds to a long completion.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 600)


def status_class(status: int) -> str:
    """The gateway's status label, five values at most: "2xx" for 200..299 and so on."""
    return _STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]


class GatewaySeries:
    """What the gateways counted for one endpoint x region x version: plain numbers,
    turned into the three `servefleet_gateway_*` families when scraped
    (`_GatewayFamilies`).

    prometheus_client's label children took a lock and several calls per update
    (five updates per request: the gauge up and down, the counter, the histogram's
    bucket and sum), a visible part of the gateway's CPU per request; the gateway's
    loop is the only writer, so plain numbers need no lock, and a scrape reads them
    as they stand."""

    __slots__ = ("answers", "buckets", "created", "in_flight", "seconds")

    BOUNDS = _REQUEST_BUCKETS
    """Upper bounds (seconds) of the latency buckets; `buckets` has one more."""

    def __init__(self) -> None:
        self.answers = [0] * len(_STATUS_CLASSES)
        """Answers by status class, in the order of `_STATUS_CLASSES`."""
        self.buckets = [0] * (len(_REQUEST_BUCKETS) + 1)
        """Answers by latency bucket (not cumulative), the last one past every bound."""
        self.seconds = 0.0
        """The latencies added up (the histogram's `_sum`)."""
        self.in_flight = 0
        self.created = time.time()

    def answered(self, status: int, seconds: float) -> None:
        """One answer with `status`, `seconds` after its request arrived."""
        self.answers[min(max(status // 100, 1), 5) - 1] += 1
        self.buckets[bisect_left(_REQUEST_BUCKETS, seconds)] += 1
        self.seconds += seconds


_GATEWAY_LABELS = ("endpoint", "region", "version")
_REQUESTS = "servefleet_gateway_requests"
_LATENCY = "servefleet_gateway_request_duration_seconds"
_IN_FLIGHT = "servefleet_gateway_requests_in_flight"
_go_float = cast(Callable[[float], str], floatToGoString)  # untyped in prometheus_client
_BOUND_LABELS = tuple(_go_float(bound) for bound in (*_REQUEST_BUCKETS, float("inf")))


class _GatewayFamilies(Collector):
    """The gateway's series as prometheus_client's Counter, Histogram and Gauge
    exposed them (same names, help, labels, samples and order), made from
    `GatewaySeries` at scrape time."""

    def __init__(self, series: dict[tuple[str, str, str], GatewaySeries]) -> None:
        self._series = series

    @staticmethod
    def _families() -> tuple[Metric, Metric, Metric]:
        return (
            Metric(
                _REQUESTS,
                "Requests answered by the gateways, by endpoint, region and version served, "
                "and status class.",
                "counter",
            ),
            Metric(
                _LATENCY,
                "From a request's arrival at the gateway to the end of its answer.",
                "histogram",
            ),
            Metric(_IN_FLIGHT, "Requests the gateways are serving now.", "gauge"),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        requests, latency, in_flight = self._families()
        # prometheus_client's switch (PROMETHEUS_DISABLE_CREATED_SERIES), as its own
        # counters and histograms read it.
        created = bool(getattr(client_metrics, "_use_created", True))
        for key, series in list(self._series.items()):
            labels = dict(zip(_GATEWAY_LABELS, key, strict=True))
            for status, count in zip(_STATUS_CLASSES, series.answers, strict=True):
                labelled = {**labels, "status_class": status}
                requests.add_sample(_REQUESTS + "_total", labelled, float(count))
                if created:
                    requests.add_sample(_REQUESTS + "_created", labelled, series.created)
            total = 0.0
            for bound, count in zip(_BOUND_LABELS, series.buckets, strict=True):
                total += count
                latency.add_sample(_LATENCY + "_bucket", {**labels, "le": bound}, total)
            latency.add_sample(_LATENCY + "_count", labels, total)
            latency.add_sample(_LATENCY + "_sum", labels, series.seconds)
            if created:
                latency.add_sample(_LATENCY + "_created", labels, series.created)
            in_flight.add_sample(_IN_FLIGHT, labels, float(series.in_flight))
        yield requests
        yield latency
        yield in_flight


class _QueueDepths(Collector):
    """Work-queue depth per region, read from the queues when scraped rather than
    kept up to date on every add and get."""

    def __init__(self) -> None:
        self.depths: dict[str, Callable[[], int]] = {}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "servefleet_workqueue_depth",
            "Endpoints waiting in a region's work queue (not counting those being reconciled).",
            labels=["region"],
        )
        for region, depth in sorted(self.depths.items()):
            family.add_metric([region], depth())
        yield family


ReplicaCounts = Mapping[str, tuple[int, int]]
"""By endpoint, its primary replicas in one region as last reported: (ready, desired)."""


class _EndpointReplicas(Collector):
    """Each endpoint's replicas per region, read from the region controllers' counts
    when scraped: a pair of gauge children per endpoint and region took ~1.3 KB (10,000
    endpoints x 3 regions: ~38 MB of the reconciler, bench/: Kubernetes convergence)."""

    def __init__(self) -> None:
        self.counts: dict[str, ReplicaCounts] = {}

    def collect(self) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "servefleet_endpoint_replicas_ready",
            "Ready primary replicas of an endpoint in a region, as last reported.",
            labels=["endpoint", "region"],
        )
        desired = GaugeMetricFamily(
            "servefleet_endpoint_replicas_desired",
            "Primary replicas an endpoint should have in a region.",
            labels=["endpoint", "region"],
        )
        for region, counts in sorted(self.counts.items()):
            for endpoint, (ready_count, desired_count) in sorted(counts.items()):
                ready.add_metric([endpoint, region], ready_count)
                desired.add_metric([endpoint, region], desired_count)
        yield ready
        yield desired


class Metrics:
    """Every metric family servefleet exposes, on `registry` (a new one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        on = self.registry
        self.reconcile_duration = Histogram(
            "servefleet_reconcile_duration_seconds",
            "How long one reconcile pass of an endpoint took.",
            ["region"],
            buckets=_PASS_BUCKETS,
            registry=on,
        )
        self.reconcile_outcomes = Counter(
            "servefleet_reconcile",
            "Reconcile passes by how they ended: success, requeue (a recheck is due), "
            "retry (a temporary failure, backed off) or error (an unexpected one).",
            ["region", "outcome"],
            registry=on,
        )
        self.propagation_delay = Histogram(
            "servefleet_propagation_delay_seconds",
            "From an endpoint record's write in the store to its workload applied in a region.",
            ["region"],
            buckets=_PROPAGATION_BUCKETS,
            registry=on,
        )
        self.runtime_api_requests = Counter(
            "servefleet_runtime_api_requests",
            "Requests to a region's Kubernetes API server by verb and HTTP status "
            '("error" when no answer came).',
            ["region", "verb", "status"],
            registry=on,
        )
        self.runtime_api_rate = Gauge(
            "servefleet_runtime_api_rate",
            "The requests a second a region's runtime allows itself towards its Kubernetes "
            "API server: the ceiling, lowered while the server signals overload.",
            ["region"],
            registry=on,
        )
        self.watchdog_events = Counter(
            "servefleet_watchdog_events",
            "Routes withdrawn (unroute) from endpoints without a ready replica past the "
            "watchdog threshold, and given back (route) once one was ready.",
            ["region", "action"],
            registry=on,
        )
        self.leader = Gauge(
            "servefleet_leader",
            "1 while this process leads the region's reconciler, 0 while it stands by.",
            ["region"],
            registry=on,
        )
        self._replicas = _EndpointReplicas()
        on.register(self._replicas)
        self._gateway_series: dict[tuple[str, str, str], GatewaySeries] = {}
        on.register(_GatewayFamilies(self._gateway_series))
        self.api_requests = Counter(
            "servefleet_api_requests",
            "Requests answered by the HTTP API, by route template (NO_ROUTE when none "
            "matched), method and status class.",
            ["route", "method", "status_class"],
            registry=on,
        )
        self.api_latency = Histogram(
            "servefleet_api_request_duration_seconds",
            "From a request's arrival at the API to the end of its answer (a watch "
            "stream's whole life).",
            ["route"],
            buckets=_REQUEST_BUCKETS,
            registry=on,
        )
        self._queue_depths = _QueueDepths()
        on.register(self._queue_depths)
        self.leadership: dict[str, bool] = {}
        """Per region, whether this process leads it, once the first election round
        has said (what `/readyz` waits for)."""

    def track_region(
        self, region: str, queue_depth: Callable[[], int], replicas: ReplicaCounts
    ) -> None:
        """Start a region's reconciler series: its queue's depth, its endpoints'
        replicas (`replicas`, kept current by the reconciler), and each outcome and
        watchdog action at zero (so a rate over them exists before the first one)."""
        self._queue_depths.depths[region] = queue_depth
        self._replicas.counts[region] = replicas
        for outcome in RECONCILE_OUTCOMES:
            self.reconcile_outcomes.labels(region, outcome)
        for action in WATCHDOG_ACTIONS:
            self.watchdog_events.labels(region, action)

    def untrack_region(self, region: str) -> None:
        """The region's reconciler stopped: its queue and its reports are gone."""
        self._queue_depths.depths.pop(region, None)
        self._replicas.counts.pop(region, None)

    def set_leader(self, region: str, leading: bool) -> None:
        self.leader.labels(region).set(1 if leading else 0)
        self.leadership[region] = leading

    def gateway_series(self, endpoint: str, region: str, version: str) -> GatewaySeries:
        """The gateway's series of one endpoint x region x version, exposed (at zero)
        from the first call."""
        key = (endpoint, region, version)
        series = self._gateway_series.get(key)
        if series is None:
            series = self._gateway_series[key] = GatewaySeries()
        return series

    def remove_endpoint(self, endpoint: str, region: str) -> None:
        """Drop the gateway's series of `endpoint` in `region` (it was removed there;
        its replicas go with the reconciler's counts)."""
        for key in [key for key in self._gateway_series if key[:2] == (endpoint, region)]:
            del self._gateway_series[key]
