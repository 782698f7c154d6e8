"""A keda region's autoscaler: the KEDA ScaledObject that replaces the HPA. Pure.

`render_autoscaler.autoscaler` calls `scaled_object` for an autoscaled workload
when the region scales with KEDA (`RegionSettings.autoscaler == "keda"`); this
module only builds the object (keda.sh/v1alpha1, validated in the tests against
KEDA's published CRD schema, `tests/kubeapi/crds/`).

    spec field          from
    scaleTargetRef      the primary Deployment (apps/v1)
    minReplicaCount     autoscaling.min_replicas (0 allowed: KEDA scales to zero)
    maxReplicaCount     autoscaling.max_replicas
    cooldownPeriod      autoscaling.scale_to_zero_after (KEDA waits this long with
                        every trigger inactive before scaling to zero)
    triggers            one per metric, in the spec's order

A `concurrency` or `rps` target is a `prometheus` trigger on the region's
Prometheus (`serverAddress`): the query sums the region's Pods metric for that
request metric (`pods_metric_names`) over the primary Deployment's pods —
`sum({__name__="<metric>",namespace="<ns>",pod=~"<endpoint>-<hash>-<suffix>"})`,
the series labelled the way Prometheus' Kubernetes pod discovery labels them (the
same labels prometheus-adapter maps), a pod name pattern that matches neither the
canary's pods (`<endpoint>-canary-…`) nor another endpoint's — and the threshold is
the target per replica (KEDA's default metric type for it, AverageValue, divides
the sum by the replicas). Being read from Prometheus, these need no custom metrics
adapter, so `pods_metrics` does not apply. KEDA starts an endpoint from zero when
its query gives more than 0; a metric the model server exports itself is absent
while no pod runs, so starting from zero needs a series that exists without the
pods (README, *Autoscaling on Kubernetes*).
`cpu` and `memory` are KEDA's `cpu` and `memory` triggers, metricType
Utilization, the target in percent as the HPA renders it. Without any metric the
trigger is `cpu` at 80 %, the HPA's own default.

The windows (`scale_up_window`, `scale_down_window`, panic) pace the local
autoscaler only, as with the HPA: KEDA's HPA keeps its own pace.

KEDA creates its own HPA (`keda-hpa-<name>`) with a copy of the ScaledObject's
labels and annotations; that HPA owns the Deployment's `spec.replicas` and KEDA
itself moves it between 0 and 1. So the ScaledObject is not labelled
`app.kubernetes.io/managed-by=servefleet` (the runtime's HPA cache would take
KEDA's HPA for its own and remove it, or re-apply forever) but
`servefleet.io/managed-by=servefleet` (`LABEL_SCALED_BY`), which the ScaledObject
cache selects on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from servefleet.spec import REQUEST_METRICS, AutoscalingSpec

__all__ = [
    "DEFAULT_CPU_PERCENT",
    "LABEL_SCALED_BY",
    "SCALED_OBJECT_API_VERSION",
    "SCALED_OBJECT_GROUP",
    "SCALED_OBJECT_PLURAL",
    "SCALED_OBJECT_VERSION",
    "percent",
    "scaled_object",
]

SCALED_OBJECT_GROUP: Final = "keda.sh"
SCALED_OBJECT_VERSION: Final = "v1alpha1"
SCALED_OBJECT_API_VERSION: Final = f"{SCALED_OBJECT_GROUP}/{SCALED_OBJECT_VERSION}"
SCALED_OBJECT_PLURAL: Final = "scaledobjects"
LABEL_SCALED_BY: Final = "servefleet.io/managed-by"
"""A ScaledObject's mark of servefleet's management, in place of
`app.kubernetes.io/managed-by` (module docstring)."""
DEFAULT_CPU_PERCENT: Final = 80
"""The target of an autoscaler given no metric: Kubernetes' HPA default."""


def percent(target: float) -> int:
    """A cpu or memory target as the whole percent an autoscaler takes (at least 1)."""
    return max(1, round(target))


def scaled_object(
    endpoint: str,
    autoscaling: AutoscalingSpec,
    metadata: Mapping[str, Any],
    prometheus_url: str,
    metric_names: Mapping[str, str],
) -> dict[str, Any]:
    """The ScaledObject of `endpoint`'s primary Deployment; `metadata` as rendered
    (its labels carry `LABEL_SCALED_BY`), `metric_names` the Pods metric of each
    request metric."""
    namespace = metadata["namespace"]
    pods = f"{endpoint}-[a-z0-9]+-[a-z0-9]+"
    triggers: list[dict[str, Any]] = []
    for metric in autoscaling.metrics:
        if metric.type in REQUEST_METRICS:
            series = (
                f'{{__name__="{metric_names[metric.type]}",namespace="{namespace}",pod=~"{pods}"}}'
            )
            triggers.append(
                {
                    "type": "prometheus",
                    "name": metric.type,
                    "metadata": {
                        "serverAddress": prometheus_url,
                        "query": f"sum({series})",
                        "threshold": _number(metric.target),
                    },
                }
            )
        else:
            triggers.append(_utilization(metric.type, percent(metric.target)))
    if not triggers:
        triggers.append(_utilization("cpu", DEFAULT_CPU_PERCENT))
    return {
        "apiVersion": SCALED_OBJECT_API_VERSION,
        "kind": "ScaledObject",
        "metadata": dict(metadata),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": endpoint},
            "minReplicaCount": autoscaling.min_replicas,
            "maxReplicaCount": autoscaling.max_replicas,
            "cooldownPeriod": autoscaling.scale_to_zero_after,
            "triggers": triggers,
        },
    }


def _utilization(resource: str, value: int) -> dict[str, Any]:
    return {
        "type": resource,
        "name": resource,
        "metricType": "Utilization",
        "metadata": {"value": str(value)},
    }


def _number(value: float) -> str:
    """A target as KEDA reads a threshold: "4", or "2.5"."""
    return str(int(value)) if value == int(value) else repr(value)
