"""An autoscaled endpoint's autoscaler (never rendered while stopped). Pure.

`render.render` calls `autoscaler` when the workload is autoscaled; how the
Deployment's `spec.replicas` passes to it is render.py's *Replicas and the
autoscaler*.

A region whose `autoscaler` is "keda" renders a KEDA ScaledObject instead
(`render_keda.py`); it takes `min_replicas` 0 as it is, and the replicas rules
(render.py) hold for it as for the HPA (`min_replicas(autoscaling, settings)`). Else:
HorizontalPodAutoscaler autoscaling/v2 on the primary Deployment: cpu and memory
targets become Resource metrics with `averageUtilization` (percent, rounded, at
least 1). `concurrency` and `rps` are rendered as Pods metrics with an
`averageValue`, named by the region (`pods_metric_names`; by default
`servefleet_concurrency` and `servefleet_rps`, or a model server's own, such as
vLLM's `vllm:num_requests_running`): they need a custom metrics adapter
(prometheus-adapter, say) serving those names per pod.
Without one the HPA reports FailedGetPodsMetric and, with other metrics
present, scales up but never down; a region without an adapter sets
`pods_metrics=False` to leave them out (an HPA left without metrics uses
Kubernetes' default, 80 % CPU). `min_replicas` 0 is rendered as 1: the API
server refuses `minReplicas: 0` unless the alpha HPAScaleToZero gate is on.
"""

from __future__ import annotations

from typing import Any

from servefleet.plan import Workload
from servefleet.runtime.kubernetes.render_keda import LABEL_SCALED_BY, percent, scaled_object
from servefleet.runtime.kubernetes.render_names import Manifest, object_metadata
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from servefleet.spec import AutoscalingSpec

__all__ = ["autoscaler", "min_replicas"]


def min_replicas(autoscaling: AutoscalingSpec, settings: RegionSettings) -> int:
    """The fewest replicas the region's autoscaler keeps: the HPA's `minReplicas`,
    the spec's at least 1 (the API server refuses 0 unless the alpha HPAScaleToZero
    gate is on); a ScaledObject's `minReplicaCount`, the spec's (KEDA scales to 0)."""
    if settings.autoscaler == "keda":
        return autoscaling.min_replicas
    return max(1, autoscaling.min_replicas)


def autoscaler(
    workload: Workload, autoscaling: AutoscalingSpec, settings: RegionSettings, digest: str
) -> Manifest:
    """The primary Deployment's autoscaler, of the kind the region scales with."""
    if settings.autoscaler == "keda":
        assert settings.prometheus_url is not None  # RegionSettings says so
        metadata = object_metadata(
            workload, settings, workload.endpoint, "primary", digest, marker=LABEL_SCALED_BY
        )
        return scaled_object(
            workload.endpoint,
            autoscaling,
            metadata,
            settings.prometheus_url,
            settings.pods_metric_names,
        )
    return _horizontal_pod_autoscaler(workload, autoscaling, settings, digest)


def _horizontal_pod_autoscaler(
    workload: Workload, autoscaling: AutoscalingSpec, settings: RegionSettings, digest: str
) -> Manifest:
    metrics: list[dict[str, Any]] = []
    for metric in autoscaling.metrics:
        if metric.type in ("cpu", "memory"):
            utilization = percent(metric.target)
            metrics.append(
                {
                    "type": "Resource",
                    "resource": {
                        "name": metric.type,
                        "target": {"type": "Utilization", "averageUtilization": utilization},
                    },
                }
            )
        elif settings.pods_metrics:
            metrics.append(
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": settings.pods_metric_names[metric.type]},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": _quantity(metric.target),
                        },
                    },
                }
            )
    spec: dict[str, Any] = {
        "scaleTargetRef": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": workload.endpoint,
        },
        "minReplicas": min_replicas(autoscaling, settings),
        "maxReplicas": autoscaling.max_replicas,
    }
    if metrics:
        spec["metrics"] = metrics
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_metadata(workload, settings, workload.endpoint, "primary", digest),
        "spec": spec,
    }


def _quantity(value: float) -> str:
    """A positive number as a Kubernetes quantity: "3", or milli-units ("2500m")."""
    if value == int(value):
        return str(int(value))
    return f"{max(1, round(value * 1000))}m"
