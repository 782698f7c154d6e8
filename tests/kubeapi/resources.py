"""The resource types the test server serves, with their per-kind behaviour."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import defaults, validation
from .errors import FieldError
from .schema import crd_definition_name

Defaulter = Callable[[dict[str, Any]], None]
Validator = Callable[[dict[str, Any], dict[str, Any] | None], list[FieldError]]
"""The checks of a kind's write, given the old object: they read only the spec (a
write that keeps the old spec, a status write, is not checked again:
`writes.EngineWrites._validate`)."""


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    definition: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    #: metadata.generation is tracked (and bumped when spec changes)
    has_generation: bool = False
    subresources: tuple[str, ...] = ()
    #: DELETE answers with the object (Services) instead of a success Status
    returns_deleted_object: bool = False
    name_rule: str = "subdomain"
    defaulter: Defaulter = defaults.nothing
    validator: Validator = validation.nothing
    #: The `status` of a new object, or None for kinds without status.
    default_status: Callable[[], dict[str, Any]] | None = None
    #: The Go zero value of the kind, as JSON (the "live object" a create compares to).
    zero: Callable[[], dict[str, Any]] = field(default=lambda: {"metadata": {}})

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def verbs(self) -> list[str]:
        return ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

    def discovery(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = [
            {
                "name": self.plural,
                "singularName": self.singular,
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": self.verbs,
                **({"shortNames": list(self.short_names)} if self.short_names else {}),
            }
        ]
        for sub in self.subresources:
            kind = "Scale" if sub == "scale" else self.kind
            entries.append(
                {
                    "name": f"{self.plural}/{sub}",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    **({"group": "autoscaling", "version": "v1"} if sub == "scale" else {}),
                    "kind": kind,
                    # pods/log is read-only: the kubelet's log, relayed
                    "verbs": ["get"] if sub == "log" else ["get", "patch", "update"],
                }
            )
        return entries


def _deployment_zero() -> dict[str, Any]:
    return {
        "metadata": {},
        "spec": {"template": {"metadata": {}, "spec": {}}, "strategy": {}},
        "status": {},
    }


DEPLOYMENTS = ResourceType(
    group="apps",
    version="v1",
    plural="deployments",
    singular="deployment",
    kind="Deployment",
    definition="io.k8s.api.apps.v1.Deployment",
    short_names=("deploy",),
    has_generation=True,
    subresources=("scale", "status"),
    defaulter=defaults.deployment,
    validator=validation.deployment,
    default_status=dict,
    zero=_deployment_zero,
)

SERVICES = ResourceType(
    group="",
    version="v1",
    plural="services",
    singular="service",
    kind="Service",
    definition="io.k8s.api.core.v1.Service",
    short_names=("svc",),
    subresources=("status",),
    returns_deleted_object=True,
    name_rule="dns1035",
    defaulter=defaults.service,
    validator=validation.service,
    default_status=lambda: {"loadBalancer": {}},
    zero=lambda: {"metadata": {}, "spec": {}, "status": {"loadBalancer": {}}},
)

INGRESSES = ResourceType(
    group="networking.k8s.io",
    version="v1",
    plural="ingresses",
    singular="ingress",
    kind="Ingress",
    definition="io.k8s.api.networking.v1.Ingress",
    short_names=("ing",),
    has_generation=True,
    subresources=("status",),
    validator=validation.ingress,
    default_status=lambda: {"loadBalancer": {}},
    zero=lambda: {"metadata": {}, "spec": {}, "status": {"loadBalancer": {}}},
)

HPAS = ResourceType(
    group="autoscaling",
    version="v2",
    plural="horizontalpodautoscalers",
    singular="horizontalpodautoscaler",
    kind="HorizontalPodAutoscaler",
    definition="io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler",
    short_names=("hpa",),
    subresources=("status",),
    defaulter=defaults.hpa,
    validator=validation.hpa,
    default_status=lambda: {"desiredReplicas": 0, "currentMetrics": None},
    zero=lambda: {"metadata": {}, "spec": {"scaleTargetRef": {}}, "status": {}},
)

LEASES = ResourceType(
    group="coordination.k8s.io",
    version="v1",
    plural="leases",
    singular="lease",
    kind="Lease",
    definition="io.k8s.api.coordination.v1.Lease",
    validator=validation.lease,
    zero=lambda: {"metadata": {}, "spec": {}},
)

PODS = ResourceType(
    group="",
    version="v1",
    plural="pods",
    singular="pod",
    kind="Pod",
    definition="io.k8s.api.core.v1.Pod",
    short_names=("po",),
    # since 1.35 (KEP-5067, GA) pods carry metadata.generation, bumped on spec changes
    has_generation=True,
    subresources=("log", "status"),
    defaulter=defaults.pod,
    validator=validation.pod,
    default_status=lambda: {"phase": "Pending"},
    zero=lambda: {"metadata": {}, "spec": {}, "status": {}},
)

NAMESPACES = ResourceType(
    group="",
    version="v1",
    plural="namespaces",
    singular="namespace",
    kind="Namespace",
    definition="io.k8s.api.core.v1.Namespace",
    namespaced=False,
    short_names=("ns",),
    subresources=("status",),
    name_rule="label",
    defaulter=defaults.namespace,
    default_status=lambda: {"phase": "Active"},
    zero=lambda: {"metadata": {}, "spec": {}, "status": {}},
)

SCALED_OBJECTS = ResourceType(
    group="keda.sh",
    version="v1alpha1",
    plural="scaledobjects",
    singular="scaledobject",
    kind="ScaledObject",
    definition=crd_definition_name("keda.sh", "v1alpha1", "ScaledObject"),
    short_names=("so",),
    # a custom resource with a status subresource tracks generation
    has_generation=True,
    subresources=("status",),
)
"""KEDA's ScaledObject (`crds/keda.sh_scaledobjects.yaml`): served only by a server
told KEDA is installed (`KubeApiServer(crds=[SCALED_OBJECTS])`), with the generic
behaviour of a custom resource and no KEDA controller (nothing scales)."""

ALL: tuple[ResourceType, ...] = (
    DEPLOYMENTS,
    SERVICES,
    INGRESSES,
    HPAS,
    LEASES,
    PODS,
    NAMESPACES,
)

SCALE_DEFINITION = "io.k8s.api.autoscaling.v1.Scale"


def find(
    group: str, version: str, plural: str, served: tuple[ResourceType, ...] = ALL
) -> ResourceType | None:
    for resource in served:
        if (resource.group, resource.version, resource.plural) == (group, version, plural):
            return resource
    return None


def group_versions(served: tuple[ResourceType, ...] = ALL) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for resource in served:
        if resource.group:
            versions = out.setdefault(resource.group, [])
            if resource.version not in versions:
                versions.append(resource.version)
    return out
