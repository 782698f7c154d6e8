"""How one Kubernetes region renders workloads (`RegionSettings`), and the defaults
it starts from. Pure.

Everything here is per region and outside the workload: a change of settings
does not change `workload_hash`, so after one every object is re-applied once
(render.py, *Order*). How the runtime talks to the region's API server is
`settings.ClusterSettings`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "DEFAULT_INGRESS_ANNOTATIONS",
    "DEFAULT_NODE_SELECTORS",
    "PODS_METRICS",
    "PROBE_PERIOD",
    "RegionSettings",
]

DEFAULT_INGRESS_ANNOTATIONS: Final[Mapping[str, str]] = {
    "alb.ingress.kubernetes.io/scheme": "internet-facing",
    "alb.ingress.kubernetes.io/target-type": "ip",
    "alb.ingress.kubernetes.io/listen-ports": '[{"HTTP": 80}]',
}
"""The AWS Load Balancer Controller's, as in the reference design. The health
check path is added per endpoint (`RegionSettings.healthcheck_annotation`)."""

DEFAULT_NODE_SELECTORS: Final[Mapping[str, Mapping[str, str]]] = {
    # Set by NVIDIA GPU feature discovery (the GPU operator) on every GPU node.
    "nvidia": {"nvidia.com/gpu.present": "true"},
    # Set by Karpenter on the Inferentia/Trainium nodes it launches.
    "neuron": {"karpenter.k8s.aws/instance-accelerator-manufacturer": "aws"},
}
"""Node selector per accelerator, used when the spec gives none."""

PODS_METRICS: Final[Mapping[str, str]] = {
    "concurrency": "servefleet_concurrency",
    "rps": "servefleet_rps",
}

PROBE_PERIOD: Final = 10
"""Seconds between startup and readiness probes (`render_pod.py`): the startup
probe's failure threshold counts `startup_timeout` in these."""

_RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


@dataclass(frozen=True)
class RegionSettings:
    """How one Kubernetes region renders workloads; everything here is per region.

    A change of settings does not change `workload_hash`: re-apply after one.
    """

    namespace: str = "default"
    """Where objects go when the spec names no namespace."""
    ingress_class: str = "alb"
    ingress_annotations: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_INGRESS_ANNOTATIONS)
    )
    """Annotations of every Ingress, before the per-endpoint ones."""
    healthcheck_annotation: str | None = "alb.ingress.kubernetes.io/healthcheck-path"
    """Annotation key that receives the endpoint's `health_path`; None for none."""
    canary_routing: Literal["alb", "nginx"] = "alb"
    """How the canary's share is routed: the AWS controller's weighted forward
    action on the one Ingress, or a second Ingress with ingress-nginx's canary
    annotations."""
    service_account: str | None = None
    """`serviceAccountName` of every pod (for IRSA / Pod Identity); None leaves the
    namespace default."""
    stage_image: str = "ghcr.io/servefleet/servefleet:0.1.0"
    """Image of the model-staging init container (must contain `servefleet.stage`)."""
    startup_timeout: float = 600
    """Seconds a replica may take to answer its first health check."""
    node_selectors: Mapping[str, Mapping[str, str]] = field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_NODE_SELECTORS.items()}
    )
    """Node selector per accelerator ("nvidia", "neuron"), used when the spec has none."""
    model_volume_size_limit: str | None = None
    """`sizeLimit` of the model volume (a quantity such as "100Gi"); None for none."""
    pods_metrics: bool = True
    """Render concurrency/rps autoscaling metrics (needs a custom metrics adapter)."""
    pods_metric_names: Mapping[str, str] = field(default_factory=lambda: dict(PODS_METRICS))
    """The Pods metric each request metric (`concurrency`, `rps`) is rendered on."""
    autoscaler: Literal["hpa", "keda"] = "hpa"
    """What an autoscaled endpoint is scaled by: a HorizontalPodAutoscaler, or a KEDA
    ScaledObject (`render_keda.py`), which can scale to zero."""
    prometheus_url: str | None = None
    """The Prometheus a keda region's request-metric triggers query."""

    def __post_init__(self) -> None:
        if self.autoscaler == "keda" and self.prometheus_url is None:
            raise ValueError("prometheus_url: a keda region needs one (got None)")
        if not self.startup_timeout > 0 or not math.isfinite(self.startup_timeout):
            raise ValueError(
                f"startup_timeout: must be a positive number of seconds "
                f"(got {self.startup_timeout!r})"
            )
        if len(self.namespace) > 63 or not _RFC1123_LABEL.match(self.namespace):
            raise ValueError(f"namespace: must be an RFC 1123 label (got {self.namespace!r})")

    @property
    def startup_failure_threshold(self) -> int:
        """startupProbe failureThreshold: enough periods to cover `startup_timeout`."""
        return max(1, math.ceil(self.startup_timeout / PROBE_PERIOD))
