"""Desired workload → Kubernetes manifests, as plain dicts.

Pure: no I/O, no clock, no Kubernetes client. The cluster runtime applies what
this module returns with server-side apply (field manager `servefleet`) and
deletes what it says must not exist; every decision about *what* the objects
look like is taken here, so all of it is testable without a cluster.

- `render(workload, settings)`: every object the region must hold for the
  endpoint, in apply order (Services, Deployments, HorizontalPodAutoscaler or
  ScaledObject, Ingresses; primary before canary within a kind).
- `absent(workload, settings)`: servefleet's objects of the endpoint that must
  not exist for this workload, in removal order (the reverse of apply order).
- `all_objects(endpoint, namespace)`: everything servefleet may hold for an
  endpoint, in removal order; what deleting the endpoint removes.
- `steps(workload, settings)`: `render` and `absent` merged into one safe
  sequence (see *Order*).
- `replicas_handoff(workload, settings, replicas)`: the one-field apply that
  hands `spec.replicas` over to the autoscaler, and `min_replicas(autoscaling,
  settings)`: the count an autoscaled Deployment starts from (see *Replicas*).

Objects
-------
    name                kind                      rendered when
    <endpoint>          Service                   always
    <endpoint>-canary   Service                   a canary is set
    <endpoint>          Deployment                always (0 replicas while stopped)
    <endpoint>-canary   Deployment                a canary is set
    <endpoint>          HorizontalPodAutoscaler   autoscaling is on (never while stopped)
    <endpoint>          ScaledObject (KEDA)       the same, in a keda region, instead of the HPA
    <endpoint>          Ingress                   routed (not stopped, not pulled by the watchdog)
    <endpoint>-canary   Ingress                   routed, a canary, `canary_routing="nginx"`

Endpoint names are at most 45 characters, so every name stays within 63.
Every object is labelled `app.kubernetes.io/name=<endpoint>`,
`app.kubernetes.io/managed-by=servefleet` and `servefleet.io/role=primary|canary`
(not the Ingress, which routes to both), plus the spec's `labels`; on a key
clash servefleet's three win, since the watches and selectors rely on them. The
ScaledObject carries `servefleet.io/managed-by=servefleet` instead of the
`app.kubernetes.io/managed-by` label, and no spec label of that key
(`render_keda.py`: KEDA copies its labels onto the HPA it creates).
Every object is annotated `servefleet.io/workload-hash=<workload_hash>`. Pods get
the labels but not the hash, so a change that leaves a version's pods alone (the
canary weight, the autoscaling bounds, the route) restarts nothing.

Order
-----
Create what is referenced before what refers to it, and delete in reverse: an
Ingress refers to Services, an HPA to a Deployment, a Service to pods. Hence
`steps` is: delete the absent Ingresses and HPA or ScaledObject first (a stop takes the route
away before scaling to zero; autoscaling switched off removes the HPA before the
replica count is restored, so it cannot scale once more in between), then apply
`render` in order, then delete the absent Deployments and Services (a removed
canary's Service goes only after the Ingress that pointed at it has been
re-applied as the plain rule — the reference design left it pointing at a deleted
Service). `absent` and `all_objects` list what *may* exist: delete only what the
watch cache holds, so a steady fleet sends no DELETE that would answer 404.
The workload is in place when every rendered object carries its hash and the
cache holds none of `absent`. The hash covers the workload, not the region's
settings or this renderer: after a change of either, re-apply everything once.

Replicas and the autoscaler
---------------------------
A version's `replicas` is rendered as `spec.replicas`; while autoscaling is on
(`workload.primary.replicas is None`) the primary Deployment is rendered
*without* it, so servefleet never fights the HPA. The canary keeps its count.
The real API server has a trap here (`../shared/kubernetes-fixtures/
ssa-replicas-ownership.json`): when servefleet is the *sole* manager of
`spec.replicas` and applies without it, the field is removed and the Deployment
falls to 1 replica. So the cluster side must, before the first apply that omits
`replicas` to a Deployment whose managedFields show `f:spec.f:replicas` owned by
servefleet alone, apply `replicas_handoff(workload, settings, live_replicas)` with
the field manager `HANDOFF_MANAGER` (no force): two appliers of the same value
share the field, so servefleet's next apply drops only its own claim and the
count stays, until the HPA changes it through `/scale`.

An HPA never scales a target up from 0 (its condition `ScalingActive=False`,
reason `ScalingDisabled`), and below `minReplicas` it raises the count only on its
next sync. So whenever the cluster side (re)creates the HPA — start after a stop,
autoscaling switched on, a region added — and the live count is 0 or below
`min_replicas(autoscaling, settings)`, the hand-off sets `min_replicas` instead of the live
count, with `force` (servefleet's own claim on the field is what it takes over;
with no HPA there is no HPA decision to override). A Deployment created with
autoscaling on is created at `min_replicas`, not at the default 1: the cluster
side adds the count to the apply that creates it, and the sole-owner hand-off
above gives the field away at the next one. Once the HPA exists, servefleet never
changes the count again. Turning autoscaling off renders `replicas` again:
that apply conflicts with the HPA's (and the hand-off manager's) ownership, so
servefleet applies with `force=true` — it is the authority on every field it
renders, and forcing also restores fields edited by hand.

Pods
----
One container, `inference`: the version's image (the region override is applied
by the planner), command and args with `{port}` replaced by the port and, when
a model is staged, `{model_dir}` by its directory (as local regions do; `PORT`
and `SERVEFLEET_MODEL_DIR` are set too), env sorted by name, a named port `http`,
resources from the spec plus `nvidia.com/gpu` or `aws.amazon.com/neuron`
requests = limits = `gpu_count` (the count wins over the same key in
`resources`). An accelerator also brings its toleration (`<resource> Exists
NoSchedule`) and, when the spec gives no `node_selector`, the region's default
node selector for it; `capacity_type` adds `karpenter.sh/capacity-type`.
Probes all GET `health_path` on the container port, in this order: a
startupProbe polling every 10 s for `startup_timeout` seconds (a model that
loads for minutes is not killed: the reference design's 120 s liveness delay
restarted 4-minute loads in a loop), then readiness and liveness with no
initial delay, which only start once the startup probe passed.
`enableServiceLinks` is off: with a thousand endpoints in a namespace, the
service environment variables would run into the tens of thousands per pod.

Model staging: when `model_source` is set, an `emptyDir` volume `model` is
mounted at `model_path` (default `/models`) in both containers, and an init
container `stage-model` runs `python -m servefleet.stage` from the region's
`stage_image`. The source reaches it only as the environment variables
`SERVEFLEET_MODEL_SOURCE` and `SERVEFLEET_MODEL_DIR` (after the version's own
env, so credentials such as `HF_TOKEN` reach it too, and servefleet's names
win) — never in an argv element and never through a shell: no rendered
command is `sh -c`. `servefleet.stage` verifies, resumes and times out (its
docstring; `SERVEFLEET_STAGE_TIMEOUT` in the version's env reaches it too).
Its outcome goes to `/dev/termination-log` (`SERVEFLEET_STAGE_TERMINATION_LOG`;
the log's tail if it dies before writing one), which the kubelet reports as the
init container's termination message. The pods of such a version carry the label
`servefleet.io/stages-model=true` (`STAGING_SELECTOR`): the runtime watches only
those pods, for staging progress and failures (`staging.py`).
`model_path` without `model_source` renders nothing.

Routing
-------
Service: ClusterIP, port 80 → the container port, selecting `{name, role}`.
Ingress: `ingress_path`, pathType Prefix, the region's ingress class and
annotations (by default the AWS Load Balancer Controller's: internet-facing,
target type ip, HTTP 80, health check on `health_path`). With a canary and
`canary_routing="alb"` the rule's backend is the action `<endpoint>-weighted`
(port name `use-annotation`) and the annotation
`alb.ingress.kubernetes.io/actions.<endpoint>-weighted` holds the forward action
with weights 100-w / w. Without a canary the rule points at the primary Service
and the annotation is not rendered: under server-side apply a field the manager
stops sending is removed (`service-ingress.json`). With `canary_routing="nginx"`
the canary gets a second Ingress with ingress-nginx's `canary` and
`canary-weight` annotations. By default the AWS controller gives each Ingress
its own load balancer; share one through IngressClassParams or a
`alb.ingress.kubernetes.io/group.name` in `ingress_annotations`.

Autoscaling
-----------
A region whose `autoscaler` is "keda" renders a KEDA ScaledObject instead
(`render_keda.py`); it takes `min_replicas` 0 as it is, and the replicas rules
above hold for it as for the HPA (`min_replicas(autoscaling, settings)`). Else:
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

Errors: an image-less workload (a local-only spec) raises `WorkloadUnsupported`,
naming the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from servefleet.plan import Version, Workload, workload_hash
from servefleet.runtime.base import WorkloadUnsupported
from servefleet.runtime.kubernetes.render_keda import (
    LABEL_SCALED_BY,
    SCALED_OBJECT_API_VERSION,
    percent,
    scaled_object,
)
from servefleet.spec import AutoscalingSpec

__all__ = [
    "ANNOTATION_HASH",
    "DEFAULT_INGRESS_ANNOTATIONS",
    "DEFAULT_NODE_SELECTORS",
    "FIELD_MANAGER",
    "HANDOFF_MANAGER",
    "LABEL_MANAGED_BY",
    "LABEL_NAME",
    "LABEL_ROLE",
    "MANAGED_BY",
    "MANAGED_KINDS",
    "MANAGED_SELECTOR",
    "PODS_METRICS",
    "PROBE_PERIOD",
    "SERVICE_PORT",
    "STAGE_CONTAINER",
    "STAGING_SELECTOR",
    "Manifest",
    "ObjectRef",
    "RegionSettings",
    "Step",
    "absent",
    "all_objects",
    "endpoint_selector",
    "min_replicas",
    "namespace_of",
    "object_name",
    "render",
    "replicas_handoff",
    "steps",
]

Manifest = dict[str, Any]
"""One Kubernetes object as plain data, ready to be sent as an apply patch."""

LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_ROLE: Final = "servefleet.io/role"
ANNOTATION_HASH: Final = "servefleet.io/workload-hash"
MANAGED_BY: Final = "servefleet"
FIELD_MANAGER: Final = "servefleet"
"""The field manager of every apply of a rendered object."""
HANDOFF_MANAGER: Final = "servefleet-handoff"
"""The field manager of `replicas_handoff`: it only ever holds `spec.replicas`."""
MANAGED_SELECTOR: Final = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
"""Label selector for the watch caches: everything servefleet manages."""
LABEL_STAGES_MODEL: Final = "servefleet.io/stages-model"
STAGING_SELECTOR: Final = f"{MANAGED_SELECTOR},{LABEL_STAGES_MODEL}=true"
"""Label selector of the pods whose init container stages a model."""
STAGE_CONTAINER: Final = "stage-model"
"""The init container that stages the model."""

MANAGED_KINDS: Final[tuple[tuple[str, str], ...]] = (
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    (SCALED_OBJECT_API_VERSION, "ScaledObject"),
    ("networking.k8s.io/v1", "Ingress"),
)
"""(apiVersion, kind) of every object servefleet renders, in apply order (the
ScaledObject in keda regions only)."""

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

_ACCELERATOR_RESOURCE: Final[Mapping[str, str]] = {
    "nvidia": "nvidia.com/gpu",
    "neuron": "aws.amazon.com/neuron",
}
_CAPACITY_TYPE_LABEL: Final = "karpenter.sh/capacity-type"
_ALB_ACTIONS: Final = "alb.ingress.kubernetes.io/actions."
_NGINX_CANARY: Final = "nginx.ingress.kubernetes.io/canary"
_NGINX_CANARY_WEIGHT: Final = "nginx.ingress.kubernetes.io/canary-weight"
_RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")

_CONTAINER: Final = "inference"
_STAGE_COMMAND: Final = ("python", "-m", "servefleet.stage")
_MODEL_VOLUME: Final = "model"
_TERMINATION_LOG: Final = "/dev/termination-log"
_DEFAULT_MODEL_PATH: Final = "/models"
SERVICE_PORT: Final = 80
_PORT_NAME: Final = "http"

# Probe timing. The startup probe covers the model load; readiness and liveness
# start only after it passed, so neither needs an initial delay.
PROBE_PERIOD: Final = 10
_PROBE_TIMEOUT: Final = 5
_READINESS_FAILURES: Final = 3
_LIVENESS_PERIOD: Final = 15
_LIVENESS_FAILURES: Final = 4

PODS_METRICS: Final[Mapping[str, str]] = {
    "concurrency": "servefleet_concurrency",
    "rps": "servefleet_rps",
}


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


@dataclass(frozen=True)
class ObjectRef:
    """Which object: enough to GET, DELETE or find it in a watch cache."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, manifest: Manifest) -> ObjectRef:
        metadata = manifest["metadata"]
        return cls(
            manifest["apiVersion"], manifest["kind"], metadata["namespace"], metadata["name"]
        )


@dataclass(frozen=True)
class Step:
    """One write: apply `manifest`, or delete `ref` (if the cache holds it)."""

    verb: Literal["apply", "delete"]
    ref: ObjectRef
    manifest: Manifest | None = None


def namespace_of(workload: Workload, settings: RegionSettings) -> str:
    """The namespace of every object of `workload`: the spec's, else the region's."""
    return workload.namespace or settings.namespace


def endpoint_selector(endpoint: str) -> str:
    """Label selector for every object servefleet manages for `endpoint`."""
    return f"{MANAGED_SELECTOR},{LABEL_NAME}={endpoint}"


def object_name(endpoint: str, role: str) -> str:
    """The name of the endpoint's object of `role` (its Service, Deployment, canary Ingress)."""
    return endpoint if role == "primary" else f"{endpoint}-{role}"


# Every object servefleet may hold for an endpoint, in apply order:
# (apiVersion, kind, role).
_SLOTS: Final[tuple[tuple[str, str, Literal["primary", "canary"]], ...]] = (
    ("v1", "Service", "primary"),
    ("v1", "Service", "canary"),
    ("apps/v1", "Deployment", "primary"),
    ("apps/v1", "Deployment", "canary"),
    ("autoscaling/v2", "HorizontalPodAutoscaler", "primary"),
    (SCALED_OBJECT_API_VERSION, "ScaledObject", "primary"),
    ("networking.k8s.io/v1", "Ingress", "primary"),
    ("networking.k8s.io/v1", "Ingress", "canary"),
)


def all_objects(endpoint: str, namespace: str) -> list[ObjectRef]:
    """Every object servefleet may hold for `endpoint` in `namespace`, in removal
    order (Ingresses first, primary Service last)."""
    return [
        ObjectRef(api_version, kind, namespace, object_name(endpoint, role))
        for api_version, kind, role in reversed(_SLOTS)
    ]


def _wanted(workload: Workload, settings: RegionSettings) -> list[ObjectRef]:
    """The refs `render` returns, in the same order, without building the objects."""
    namespace = namespace_of(workload, settings)
    canary = workload.canary is not None
    keda = settings.autoscaler == "keda"
    present = {
        ("Service", "primary"): True,
        ("Service", "canary"): canary,
        ("Deployment", "primary"): True,
        ("Deployment", "canary"): canary,
        ("HorizontalPodAutoscaler", "primary"): workload.autoscaling is not None and not keda,
        ("ScaledObject", "primary"): workload.autoscaling is not None and keda,
        ("Ingress", "primary"): workload.routed,
        ("Ingress", "canary"): workload.routed and canary and settings.canary_routing == "nginx",
    }
    return [
        ObjectRef(api_version, kind, namespace, object_name(workload.endpoint, role))
        for api_version, kind, role in _SLOTS
        if present[kind, role]
    ]


def absent(workload: Workload, settings: RegionSettings) -> list[ObjectRef]:
    """servefleet's objects of this endpoint that must not exist for `workload`,
    in removal order: the canary's when there is none, the HPA and ScaledObject
    when autoscaling is off (and the one the region's autoscaler is not), the
    Ingress when the endpoint is not routed."""
    wanted = set(_wanted(workload, settings))
    namespace = namespace_of(workload, settings)
    return [ref for ref in all_objects(workload.endpoint, namespace) if ref not in wanted]


def steps(workload: Workload, settings: RegionSettings) -> list[Step]:
    """Every write that brings a region to `workload`, in a safe order: delete the
    absent routes and autoscalers, apply `render` in order, then delete the absent
    Deployments and Services."""
    gone = absent(workload, settings)
    first = [ref for ref in gone if ref.kind in _DELETED_FIRST]
    last = [ref for ref in gone if ref not in first]
    return [
        *(Step("delete", ref) for ref in first),
        *(
            Step("apply", ObjectRef.of(manifest), manifest)
            for manifest in render(workload, settings)
        ),
        *(Step("delete", ref) for ref in last),
    ]


_DELETED_FIRST: Final = ("Ingress", "HorizontalPodAutoscaler", "ScaledObject")


def render(workload: Workload, settings: RegionSettings) -> list[Manifest]:
    """Every object the region must hold for `workload`, in apply order."""
    digest = workload_hash(workload)
    versions = (
        [workload.primary] if workload.canary is None else [workload.primary, workload.canary]
    )
    manifests: list[Manifest] = [_service(workload, settings, v, digest) for v in versions]
    manifests += [_deployment(workload, settings, v, digest) for v in versions]
    if workload.autoscaling is not None and settings.autoscaler == "keda":
        assert settings.prometheus_url is not None  # RegionSettings says so
        metadata = _metadata(
            workload, settings, workload.endpoint, "primary", digest, marker=LABEL_SCALED_BY
        )
        manifests.append(
            scaled_object(
                workload.endpoint,
                workload.autoscaling,
                metadata,
                settings.prometheus_url,
                settings.pods_metric_names,
            )
        )
    elif workload.autoscaling is not None:
        manifests.append(_autoscaler(workload, workload.autoscaling, settings, digest))
    if workload.routed:
        manifests.append(_ingress(workload, settings, digest))
        if workload.canary is not None and settings.canary_routing == "nginx":
            manifests.append(_nginx_canary_ingress(workload, settings, digest))
    return manifests


def replicas_handoff(workload: Workload, settings: RegionSettings, replicas: int) -> Manifest:
    """The apply body (field manager `HANDOFF_MANAGER`, no force) that makes a
    second manager co-own the primary Deployment's `spec.replicas` at its live
    value, so servefleet's next apply without `replicas` keeps the count.

    Only `spec.replicas`: any other field in it would be co-owned too, and
    servefleet's next change to that field would conflict. The API server
    validates the merged object, so this partial body is accepted as it is."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": workload.endpoint, "namespace": namespace_of(workload, settings)},
        "spec": {"replicas": replicas},
    }


def min_replicas(autoscaling: AutoscalingSpec, settings: RegionSettings) -> int:
    """The fewest replicas the region's autoscaler keeps: the HPA's `minReplicas`,
    the spec's at least 1 (the API server refuses 0 unless the alpha HPAScaleToZero
    gate is on); a ScaledObject's `minReplicaCount`, the spec's (KEDA scales to 0)."""
    if settings.autoscaler == "keda":
        return autoscaling.min_replicas
    return max(1, autoscaling.min_replicas)


# The objects.


def _labels(workload: Workload, role: str | None, marker: str) -> dict[str, str]:
    """servefleet's labels over the spec's; `marker` is the label saying servefleet
    manages the object (no spec label takes `LABEL_MANAGED_BY` where it is not)."""
    ours = {LABEL_NAME: workload.endpoint, marker: MANAGED_BY}
    if role is not None:
        ours[LABEL_ROLE] = role
    theirs = {key: value for key, value in workload.labels.items() if key != LABEL_MANAGED_BY}
    return {**theirs, **ours}


def _metadata(
    workload: Workload,
    settings: RegionSettings,
    name: str,
    role: str | None,
    digest: str,
    annotations: Mapping[str, str] | None = None,
    *,
    marker: str = LABEL_MANAGED_BY,
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace_of(workload, settings),
        "labels": _labels(workload, role, marker),
        "annotations": {**(annotations or {}), ANNOTATION_HASH: digest},
    }


def _selector(workload: Workload, role: str) -> dict[str, str]:
    return {LABEL_NAME: workload.endpoint, LABEL_ROLE: role}


def _service(
    workload: Workload, settings: RegionSettings, version: Version, digest: str
) -> Manifest:
    role = version.role
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            workload, settings, object_name(workload.endpoint, role), role, digest
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(workload, role),
            "ports": [
                {
                    "name": _PORT_NAME,
                    "port": SERVICE_PORT,
                    "targetPort": workload.port,
                    "protocol": "TCP",
                }
            ],
        },
    }


def _deployment(
    workload: Workload, settings: RegionSettings, version: Version, digest: str
) -> Manifest:
    role = version.role
    spec: dict[str, Any] = {}
    if version.replicas is not None:
        spec["replicas"] = version.replicas
    spec["selector"] = {"matchLabels": _selector(workload, role)}
    spec["strategy"] = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod_labels = _labels(workload, role, LABEL_MANAGED_BY)
    if workload.model_source:
        pod_labels[LABEL_STAGES_MODEL] = "true"
    spec["template"] = {
        "metadata": {
            "labels": pod_labels,
            "annotations": {"kubectl.kubernetes.io/default-container": _CONTAINER},
        },
        "spec": _pod(workload, settings, version),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(
            workload, settings, object_name(workload.endpoint, role), role, digest
        ),
        "spec": spec,
    }


def _pod(workload: Workload, settings: RegionSettings, version: Version) -> dict[str, Any]:
    if version.image is None:
        field_name = "image" if version.role == "primary" else "canary.image"
        raise WorkloadUnsupported(
            f"{field_name}: kubernetes regions run container images; endpoint "
            f"{workload.endpoint!r} declares only a command — give it an image "
            f"(or region_images.{workload.region})"
        )
    model_dir = (workload.model_path or _DEFAULT_MODEL_PATH) if workload.model_source else None

    env = {**version.env, "PORT": str(workload.port)}
    if model_dir:
        env["SERVEFLEET_MODEL_DIR"] = model_dir
    container: dict[str, Any] = {"name": _CONTAINER, "image": version.image}
    if version.command:
        container["command"] = _expand(version.command, workload.port, model_dir)
    if version.args:
        container["args"] = _expand(version.args, workload.port, model_dir)
    container["env"] = _env(env)
    container["ports"] = [{"name": _PORT_NAME, "containerPort": workload.port, "protocol": "TCP"}]
    resources = _resources(workload)
    if resources:
        container["resources"] = resources
    container["startupProbe"] = _probe(workload, PROBE_PERIOD, settings.startup_failure_threshold)
    container["readinessProbe"] = _probe(workload, PROBE_PERIOD, _READINESS_FAILURES)
    container["livenessProbe"] = _probe(workload, _LIVENESS_PERIOD, _LIVENESS_FAILURES)
    if model_dir:
        container["volumeMounts"] = [{"name": _MODEL_VOLUME, "mountPath": model_dir}]

    pod: dict[str, Any] = {}
    if settings.service_account is not None:
        pod["serviceAccountName"] = settings.service_account
    pod["enableServiceLinks"] = False
    node_selector = _node_selector(workload, settings)
    if node_selector:
        pod["nodeSelector"] = node_selector
    if workload.accelerator in _ACCELERATOR_RESOURCE:
        pod["tolerations"] = [
            {
                "key": _ACCELERATOR_RESOURCE[workload.accelerator],
                "operator": "Exists",
                "effect": "NoSchedule",
            }
        ]
    if workload.model_source and model_dir:
        stage_env = {
            **version.env,
            "SERVEFLEET_MODEL_SOURCE": workload.model_source,
            "SERVEFLEET_MODEL_DIR": model_dir,
            "SERVEFLEET_STAGE_TERMINATION_LOG": _TERMINATION_LOG,
        }
        pod["initContainers"] = [
            {
                "name": STAGE_CONTAINER,
                "image": settings.stage_image,
                "command": list(_STAGE_COMMAND),
                "env": _env(stage_env),
                "volumeMounts": [{"name": _MODEL_VOLUME, "mountPath": model_dir}],
                "terminationMessagePath": _TERMINATION_LOG,
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ]
        volume: dict[str, Any] = {}
        if settings.model_volume_size_limit is not None:
            volume["sizeLimit"] = settings.model_volume_size_limit
        pod["volumes"] = [{"name": _MODEL_VOLUME, "emptyDir": volume}]
    pod["containers"] = [container]
    return pod


def _expand(parts: list[str], port: int, model_dir: str | None) -> list[str]:
    """The placeholders local regions fill in, filled in the same way."""
    expanded = [part.replace("{port}", str(port)) for part in parts]
    if model_dir is None:
        return expanded
    return [part.replace("{model_dir}", model_dir) for part in expanded]


def _env(env: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": env[name]} for name in sorted(env)]


def _resources(workload: Workload) -> dict[str, dict[str, str]]:
    requests = dict(workload.resources.requests)
    limits = dict(workload.resources.limits)
    device = _ACCELERATOR_RESOURCE.get(workload.accelerator)
    if device is not None and workload.gpu_count > 0:
        requests[device] = limits[device] = str(workload.gpu_count)
    resources = {}
    if requests:
        resources["requests"] = dict(sorted(requests.items()))
    if limits:
        resources["limits"] = dict(sorted(limits.items()))
    return resources


def _node_selector(workload: Workload, settings: RegionSettings) -> dict[str, str]:
    selector = dict(workload.node_selector)
    if not selector:
        selector = dict(settings.node_selectors.get(workload.accelerator, {}))
    if workload.capacity_type is not None:
        selector[_CAPACITY_TYPE_LABEL] = workload.capacity_type
    return dict(sorted(selector.items()))


def _probe(workload: Workload, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": workload.health_path, "port": workload.port},
        "periodSeconds": period,
        "timeoutSeconds": _PROBE_TIMEOUT,
        "failureThreshold": failures,
    }


def _autoscaler(
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
        "metadata": _metadata(workload, settings, workload.endpoint, "primary", digest),
        "spec": spec,
    }


def _quantity(value: float) -> str:
    """A positive number as a Kubernetes quantity: "3", or milli-units ("2500m")."""
    if value == int(value):
        return str(int(value))
    return f"{max(1, round(value * 1000))}m"


def _ingress_annotations(workload: Workload, settings: RegionSettings) -> dict[str, str]:
    annotations = dict(settings.ingress_annotations)
    if settings.healthcheck_annotation is not None:
        annotations[settings.healthcheck_annotation] = workload.health_path
    return annotations


def _ingress_rule(workload: Workload, backend: dict[str, Any]) -> dict[str, Any]:
    path = {"path": workload.ingress_path, "pathType": "Prefix", "backend": {"service": backend}}
    return {"http": {"paths": [path]}}


def _ingress(workload: Workload, settings: RegionSettings, digest: str) -> Manifest:
    endpoint = workload.endpoint
    annotations = _ingress_annotations(workload, settings)
    backend: dict[str, Any] = {"name": endpoint, "port": {"number": SERVICE_PORT}}
    if workload.canary is not None and settings.canary_routing == "alb":
        action = f"{endpoint}-weighted"
        groups = [
            (object_name(endpoint, "primary"), 100 - workload.canary_weight),
            (object_name(endpoint, "canary"), workload.canary_weight),
        ]
        annotations[_ALB_ACTIONS + action] = json.dumps(
            {
                "type": "forward",
                "forwardConfig": {
                    "targetGroups": [
                        {"serviceName": name, "servicePort": str(SERVICE_PORT), "weight": weight}
                        for name, weight in groups
                    ]
                },
            },
            separators=(",", ":"),
        )
        backend = {"name": action, "port": {"name": "use-annotation"}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _metadata(workload, settings, endpoint, None, digest, annotations),
        "spec": {
            "ingressClassName": settings.ingress_class,
            "rules": [_ingress_rule(workload, backend)],
        },
    }


def _nginx_canary_ingress(workload: Workload, settings: RegionSettings, digest: str) -> Manifest:
    annotations = _ingress_annotations(workload, settings)
    annotations[_NGINX_CANARY] = "true"
    annotations[_NGINX_CANARY_WEIGHT] = str(workload.canary_weight)
    name = object_name(workload.endpoint, "canary")
    backend = {"name": name, "port": {"number": SERVICE_PORT}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _metadata(workload, settings, name, "canary", digest, annotations),
        "spec": {
            "ingressClassName": settings.ingress_class,
            "rules": [_ingress_rule(workload, backend)],
        },
    }
