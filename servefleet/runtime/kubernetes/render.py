"""Desired workload → Kubernetes manifests, as plain dicts.

Pure: no I/O, no clock, no Kubernetes client. The cluster runtime applies what
this module returns with server-side apply (field manager `servefleet`) and
deletes what it says must not exist; every decision about *what* the objects
look like is taken here and in the modules below, so all of it is testable
without a cluster.

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
  hands `spec.replicas` over to the autoscaler (see *Replicas*);
  `render_autoscaler.min_replicas` is the count an autoscaled Deployment starts from.

Each kind is built by a module of its own, all of them pure, on two they share:

    module                 what
    render_pod.py          a version's Deployment and its pods, model staging
    render_routing.py      a version's Service, the endpoint's Ingresses
    render_autoscaler.py   the HorizontalPodAutoscaler, or in a keda region the
                           ScaledObject (`render_keda.py`)
    render_names.py        names, labels and metadata every object carries
    render_settings.py     `RegionSettings`: how one region renders

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

Their labels and annotations: `render_names.py`.

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

Errors: an image-less workload (a local-only spec) raises `WorkloadUnsupported`,
naming the field (`render_pod.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from servefleet.plan import Workload, workload_hash
from servefleet.runtime.kubernetes.render_autoscaler import autoscaler
from servefleet.runtime.kubernetes.render_keda import SCALED_OBJECT_API_VERSION
from servefleet.runtime.kubernetes.render_names import Manifest, namespace_of, object_name
from servefleet.runtime.kubernetes.render_pod import deployment
from servefleet.runtime.kubernetes.render_routing import ingress, nginx_canary_ingress, service
from servefleet.runtime.kubernetes.render_settings import RegionSettings

__all__ = [
    "FIELD_MANAGER",
    "HANDOFF_MANAGER",
    "MANAGED_KINDS",
    "ObjectRef",
    "Step",
    "absent",
    "all_objects",
    "render",
    "replicas_handoff",
    "steps",
]

FIELD_MANAGER: Final = "servefleet"
"""The field manager of every apply of a rendered object."""
HANDOFF_MANAGER: Final = "servefleet-handoff"
"""The field manager of `replicas_handoff`: it only ever holds `spec.replicas`."""

MANAGED_KINDS: Final[tuple[tuple[str, str], ...]] = (
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    (SCALED_OBJECT_API_VERSION, "ScaledObject"),
    ("networking.k8s.io/v1", "Ingress"),
)
"""(apiVersion, kind) of every object servefleet renders, in apply order (the
ScaledObject in keda regions only)."""


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
    manifests: list[Manifest] = [service(workload, settings, v, digest) for v in versions]
    manifests += [deployment(workload, settings, v, digest) for v in versions]
    if workload.autoscaling is not None:
        manifests.append(autoscaler(workload, workload.autoscaling, settings, digest))
    if workload.routed:
        manifests.append(ingress(workload, settings, digest))
        if workload.canary is not None and settings.canary_routing == "nginx":
            manifests.append(nginx_canary_ingress(workload, settings, digest))
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
