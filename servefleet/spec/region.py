"""The regions endpoints run in, as registered: this machine or a Kubernetes cluster."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator

from servefleet.spec.rules import (
    DnsSubdomain,
    Image,
    RegionName,
    Rfc1123Label,
    SpecModel,
    env_names,
    label_key,
    parse_quantity,
    shown,
)

__all__ = [
    "QUERY_PLACEHOLDERS",
    "Region",
    "RegionKind",
    "fill_query",
]


class RegionKind(StrEnum):
    LOCAL = "local"
    KUBERNETES = "kubernetes"


def _annotation_keys(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        label_key(key)
    return value


def _annotation_key_or_none(value: str) -> str:
    """An annotation key, or "" for none."""
    if value:
        label_key(value)
    return value


def _quantity(value: str) -> str:
    if parse_quantity(value) < 0:
        raise ValueError(f"must not be negative (got {shown(value)})")
    return value


def _metric_name(value: str) -> str:
    if not _METRIC_NAME.match(value):
        raise ValueError(
            "must be a metric name: a letter, '_' or ':', then letters, digits, '_', ':', "
            f"'.' or '-', at most 253 (got {shown(value)})"
        )
    return value


_METRIC_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:.-]{0,252}\Z")
MetricName = Annotated[str, AfterValidator(_metric_name)]
"""A metric as a custom metrics API serves it (one path segment; Prometheus names
such as `vllm:num_requests_running` included)."""


def _http_url(value: str) -> str:
    if len(value) > 2048 or not _HTTP_URL.match(value):
        raise ValueError(
            "must be an http:// or https:// URL with a host and no spaces, such as "
            f"http://prometheus.monitoring:9090 (got {shown(value)})"
        )
    return value


_HTTP_URL = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/\S*)?\Z")

QUERY_PLACEHOLDERS = ("namespace", "ingress", "service", "canary", "window")
"""What a PromQL template of a region may name, as `{{name}}` (Flagger's way: PromQL's
own braces never come two in a row): the endpoint's namespace, its Ingress (the
one that routes both versions), the version's own Service, ingress-nginx's `canary`
label of the version ("" for the primary, the canary Service's upstream
`<namespace>-<service>-<port>` for the canary) and the window (`93s`)."""
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]*)\s*\}\}")


def fill_query(template: str, values: dict[str, str]) -> str:
    """`template` with each `{{name}}` replaced by `values[name]`."""
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def _query_template(value: str) -> str:
    names = _PLACEHOLDER.findall(value)
    unknown = sorted({name for name in names if name not in QUERY_PLACEHOLDERS})
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{{{unknown[0]}}}}}: a query may name "
            f"{', '.join('{{' + name + '}}' for name in QUERY_PLACEHOLDERS)} "
            f"(got {shown(value)})"
        )
    if "window" not in names:
        raise ValueError(
            "must count over {{window}}, the time since the version began being counted, "
            f"e.g. increase(...[{{{{window}}}}]) (got {shown(value)})"
        )
    if len(value) > 4096 or not value.strip():
        raise ValueError(f"must be a PromQL expression of 1-4096 characters (got {shown(value)})")
    return value


QueryTemplate = Annotated[str, AfterValidator(_query_template)]


def _ingress_url(value: str) -> str:
    """The base address of a cluster's Ingress: scheme, host and port only, since the
    global entry appends each endpoint's whole `ingress_path` to it (the Ingress
    routes on the full path, and rewrites none of it)."""
    if len(value) > 2048 or not _INGRESS_URL.match(value) or not _port_in_range(value):
        raise ValueError(
            "must be the http:// or https:// address of the region's Ingress, a host and "
            "an optional port with no path, such as https://llm.eu-west.example.com "
            f"(got {shown(value)})"
        )
    return value.rstrip("/")


_INGRESS_URL = re.compile(r"https?://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?/?\Z")


def _port_in_range(url: str) -> bool:
    try:
        port = urlsplit(url).port  # a ValueError past 65535
    except ValueError:
        return False
    return port is None or port > 0


def _pass_env(names: list[str]) -> list[str]:
    env_names(dict.fromkeys(names, ""))
    for name in names:
        if name.startswith("SERVEFLEET_"):
            raise ValueError(
                "servefleet's own variables never reach a replica (SERVEFLEET_STORE is the "
                f"store's URL with its password); set what an endpoint needs in its env "
                f"(got {shown(name)})"
            )
    return names


class Region(SpecModel):
    """A place endpoints run: this machine (`local`) or a Kubernetes cluster.

    A kubernetes region also says how its workloads are rendered; a setting left
    None takes the renderer's default (`runtime.kubernetes.install.region_settings`).
    """

    name: RegionName
    kind: RegionKind
    kubeconfig: str | None = None
    context: str | None = None
    namespace: Rfc1123Label = "default"
    ingress_class: DnsSubdomain | None = None
    ingress_annotations: Annotated[dict[str, str], AfterValidator(_annotation_keys)] | None = None
    """Every Ingress's annotations (replacing the defaults)."""
    healthcheck_annotation: Annotated[str, AfterValidator(_annotation_key_or_none)] | None = None
    """The annotation key that receives an endpoint's health path; "" for none."""
    canary_routing: Literal["alb", "nginx"] | None = None
    service_account: DnsSubdomain | None = None
    """The service account of every workload pod."""
    stage_image: Image | None = None
    """The image of the model-staging init container."""
    startup_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    model_volume_size_limit: Annotated[str, AfterValidator(_quantity)] | None = None
    pods_metrics: bool | None = None
    """Whether concurrency/rps autoscaling metrics are rendered (needs a metrics adapter)."""
    concurrency_metric: MetricName | None = None
    """The per-pod metric a `concurrency` target is rendered on (the metrics adapter's
    name for requests in flight)."""
    rps_metric: MetricName | None = None
    """The per-pod metric an `rps` target is rendered on (requests per second)."""
    autoscaler: Literal["hpa", "keda"] | None = None
    """What scales autoscaled endpoints: a HorizontalPodAutoscaler (the default), or
    a KEDA ScaledObject, which can scale to zero (`min_replicas: 0`)."""
    prometheus_url: Annotated[str, AfterValidator(_http_url)] | None = None
    """The Prometheus of the region, e.g. http://prometheus.monitoring:9090: what a
    keda region's request-metric triggers query (KEDA's `serverAddress`), and where
    the region's reconciler reads each version's requests, 5xx answers and latency
    during a rollout (`requests_query`, `latency_query`)."""
    requests_query: QueryTemplate | None = None
    """PromQL giving one version's requests over `{{window}}`, one sample per
    `status` label (a code such as 503, or a class such as 5xx); None: ingress-nginx's
    (`runtime.kubernetes.traffic_queries.DEFAULT_REQUESTS_QUERY`)."""
    latency_query: QueryTemplate | None = None
    """PromQL giving one version's answers over `{{window}}` per latency bucket, one
    cumulative sample per `le` label; None: ingress-nginx's."""
    ingress_url: Annotated[str, AfterValidator(_ingress_url)] | None = None
    """Where a kubernetes region's Ingress answers from outside the cluster, e.g.
    https://llm.eu-west.example.com: the global entry of `servefleet up` forwards
    `<ingress_url><ingress_path>/...` there, and `invoke`/`health`/`models -r` use it."""
    drained: bool = False
    """Set by `servefleet regions drain`: the global entry sends the region no new
    request (those in flight finish). Kept when the region is registered again."""
    pass_env: Annotated[list[str], AfterValidator(_pass_env)] | None = None
    """Variables of `servefleet up`'s environment its local replicas and staging
    children get besides the allowlist (`runtime.local.environment`)."""

    @model_validator(mode="after")
    def _kind_settings(self) -> Region:
        if self.kind is RegionKind.LOCAL and (self.kubeconfig or self.context):
            raise ValueError("kubeconfig: only kubernetes regions take a kubeconfig or context")
        if self.kind is RegionKind.LOCAL:
            for name in _KUBERNETES_ONLY:
                value = getattr(self, name)
                if value is not None:
                    raise ValueError(
                        f"{name}: only kubernetes regions take this setting (got {shown(value)})"
                    )
        elif self.pass_env is not None:
            raise ValueError(
                "pass_env: only local regions take this setting; a kubernetes pod's "
                f"environment is its spec's env (got {shown(self.pass_env)})"
            )
        elif self.autoscaler == "keda" and self.prometheus_url is None:
            raise ValueError(
                "prometheus_url: a keda region needs the Prometheus its concurrency and "
                "rps triggers query (--prometheus-url)"
            )
        elif self.requests_query is not None and self.prometheus_url is None:
            raise ValueError("requests_query: needs the Prometheus to query (--prometheus-url)")
        elif (self.requests_query is None) != (self.latency_query is None):
            missing = "latency_query" if self.latency_query is None else "requests_query"
            raise ValueError(
                f"{missing}: the requests and latency queries are overridden together, "
                "since both must tell the same versions apart"
            )
        return self

    @property
    def request_signals_missing(self) -> str:
        """Why a rollout cannot judge this region's requests, 5xx answers and latency
        (its guard rail is then readiness only); "" when it can: a local region counts
        them in its gateways, a kubernetes region reads them from its Prometheus."""
        if self.kind is RegionKind.LOCAL:
            return ""
        if self.prometheus_url is None:
            return "no Prometheus to read request counts from (regions add --prometheus-url)"
        if self.canary_routing != "nginx" and self.requests_query is None:
            return (
                "alb routing: ingress-nginx's request metrics do not apply; give "
                "--requests-query and --latency-query"
            )
        return ""

    @property
    def scales_to_zero(self) -> bool:
        """Whether an endpoint may autoscale to zero replicas here: a local region's
        own autoscaler can, a kubernetes region's only through KEDA."""
        return self.kind is RegionKind.LOCAL or self.autoscaler == "keda"


_KUBERNETES_ONLY = (
    "ingress_class",
    "ingress_annotations",
    "healthcheck_annotation",
    "canary_routing",
    "service_account",
    "stage_image",
    "startup_timeout",
    "model_volume_size_limit",
    "pods_metrics",
    "concurrency_metric",
    "rps_metric",
    "autoscaler",
    "prometheus_url",
    "ingress_url",
    "requests_query",
    "latency_query",
)
