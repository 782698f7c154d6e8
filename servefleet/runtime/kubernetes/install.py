"""What a registered kubernetes region means here: its render settings, and the
manifests that run its reconciler inside the cluster.

Pure: no I/O. `region_settings(region)` turns a stored `Region` into the
`RegionSettings` its runtime renders with. `install_manifests(region, options)`
renders what `servefleet install-manifests` prints, in apply order:

    kind                 namespace          name
    Namespace            (cluster)          options.namespace, with `create_namespace`
    ServiceAccount       options.namespace  servefleet-<region>
    Role                 region.namespace   servefleet-<region>
    RoleBinding          region.namespace   servefleet-<region>
    Deployment           options.namespace  servefleet-<region>

The Role grants exactly what the runtime sends (`role_rules`): list and watch
for the watch caches, patch for server-side apply, create because the API
server authorizes an apply that creates an object as a create too, and delete;
on the kinds it renders (Service, Deployment, HorizontalPodAutoscaler, Ingress,
and in a keda region KEDA's ScaledObject, group keda.sh), plus what the leader
election does with the region's Lease (`servefleet-region-<region>`): create,
get, update. No GET of a workload object (observations come from the caches), no
`deployments/scale`
(replicas go through apply), no Secret (the kubelet puts the store URL into the
environment), nothing cluster-wide.

The Deployment runs `python -m servefleet reconcile --region <region>
--in-cluster` with `SERVEFLEET_STORE` from a Secret key, two replicas (the
standby takes over through the lease), non-root with a read-only root file
system. It has no probes: the reconciler serves no HTTP, and one that stops
renewing its lease loses the region to the standby. None of
these objects carries `app.kubernetes.io/managed-by=servefleet`: the watch
caches select on it, and the reconciler must never see itself as an endpoint.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import AfterValidator, BaseModel, ConfigDict

from servefleet.runtime.kubernetes.lease import lease_name
from servefleet.runtime.kubernetes.render import MANAGED_KINDS
from servefleet.runtime.kubernetes.render_names import Manifest
from servefleet.runtime.kubernetes.render_settings import (
    DEFAULT_INGRESS_ANNOTATIONS,
    RegionSettings,
)
from servefleet.spec import DnsSubdomain, Image, Region, RegionKind, RegionName

__all__ = [
    "DEFAULT_IMAGE",
    "InstallOptions",
    "install_manifests",
    "region_settings",
    "role_rules",
]

DEFAULT_IMAGE: Final = RegionSettings().stage_image
"""The servefleet image; the model-staging init container runs the same one."""

_PLURALS: Final = {
    "Service": "services",
    "Deployment": "deployments",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "ScaledObject": "scaledobjects",
    "Ingress": "ingresses",
}
_WORKLOAD_VERBS: Final = ("create", "delete", "list", "patch", "watch")


def _group(api_version: str) -> str:
    group, _, _version = api_version.rpartition("/")
    return group


def role_rules(region: Region) -> list[Manifest]:
    """The Role's rules: one per kind the region renders, reading the pods that stage a model
    and their logs (staging progress and failures), then the region's Lease (RBAC
    cannot limit `create` to a name, so creating any Lease is granted, reading and
    updating only this one)."""
    return [
        *(
            {
                "apiGroups": [_group(api_version)],
                "resources": [_PLURALS[kind]],
                "verbs": list(_WORKLOAD_VERBS),
            }
            for api_version, kind in MANAGED_KINDS
            if kind != "ScaledObject" or region.autoscaler == "keda"
        ),
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [lease_name(region.name)],
            "verbs": ["get", "update"],
        },
    ]


_LABEL_NAME: Final = "app.kubernetes.io/name"
_RECONCILER: Final = "servefleet-reconciler"
_SECRET_KEY: Final = re.compile(r"^[-._a-zA-Z0-9]{1,253}\Z")
"""A key of a Secret's data."""
_RUN_AS: Final = 65532
"""An unprivileged uid/gid (distroless's `nonroot`)."""


def region_settings(region: Region) -> RegionSettings:
    """How `region`'s runtime renders: its registered settings over the defaults.

    The AWS Load Balancer Controller's annotations (and its health-check
    annotation) are the defaults of ingress class `alb` only; a region of
    another ingress class starts without them."""
    alb = region.ingress_class in (None, "alb")
    defaults = RegionSettings(namespace=region.namespace)
    annotations = region.ingress_annotations
    if annotations is None:
        annotations = dict(DEFAULT_INGRESS_ANNOTATIONS) if alb else {}
    healthcheck = region.healthcheck_annotation
    if healthcheck is None:
        healthcheck = defaults.healthcheck_annotation if alb else ""
    return RegionSettings(
        namespace=region.namespace,
        ingress_class=region.ingress_class or defaults.ingress_class,
        ingress_annotations=annotations,
        healthcheck_annotation=healthcheck or None,
        canary_routing=region.canary_routing or defaults.canary_routing,
        service_account=region.service_account,
        stage_image=region.stage_image or defaults.stage_image,
        startup_timeout=region.startup_timeout or defaults.startup_timeout,
        model_volume_size_limit=region.model_volume_size_limit,
        pods_metrics=defaults.pods_metrics if region.pods_metrics is None else region.pods_metrics,
        pods_metric_names={
            "concurrency": region.concurrency_metric or defaults.pods_metric_names["concurrency"],
            "rps": region.rps_metric or defaults.pods_metric_names["rps"],
        },
        autoscaler=region.autoscaler or defaults.autoscaler,
        prometheus_url=region.prometheus_url,
    )


def _secret_key(value: str) -> str:
    if not _SECRET_KEY.match(value):
        raise ValueError(
            f"must be at most 253 letters, digits, '-', '_' or '.' (got {value[:80]!r})"
        )
    return value


class InstallOptions(BaseModel):
    """How the in-cluster reconciler of a region runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: Image = DEFAULT_IMAGE
    namespace: RegionName
    """Where the reconciler runs (its ServiceAccount and Deployment); an RFC 1123
    label, the rule of region names too."""
    store_secret: DnsSubdomain = "servefleet-store"
    store_secret_key: Annotated[str, AfterValidator(_secret_key)] = "url"
    create_namespace: bool = False


def _metadata(name: str, region: str, namespace: str | None = None) -> Manifest:
    metadata: Manifest = {
        "name": name,
        "labels": {
            _LABEL_NAME: _RECONCILER,
            "app.kubernetes.io/instance": region,
            "app.kubernetes.io/component": "reconciler",
        },
    }
    if namespace is not None:
        metadata["namespace"] = namespace
    return metadata


def _name(region: RegionName) -> str:
    return f"servefleet-{region}"


def install_manifests(region: Region, options: InstallOptions) -> list[Manifest]:
    """The objects that run `region`'s reconciler in its cluster, in apply order."""
    if region.kind is not RegionKind.KUBERNETES:
        raise ValueError(
            f"region: {region.name!r} is a {region.kind.value} region; only kubernetes "
            "regions run a reconciler in a cluster"
        )
    name = _name(region.name)
    manifests: list[Manifest] = []
    if options.create_namespace:
        manifests.append(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": options.namespace}}
        )
    manifests += [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _metadata(name, region.name, options.namespace),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _metadata(name, region.name, region.namespace),
            "rules": role_rules(region),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(name, region.name, region.namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": options.namespace}],
        },
        _deployment(region, options),
    ]
    return manifests


def _deployment(region: Region, options: InstallOptions) -> Manifest:
    name = _name(region.name)
    metadata = _metadata(name, region.name, options.namespace)
    selector = {_LABEL_NAME: _RECONCILER, "app.kubernetes.io/instance": region.name}
    container: Manifest = {
        "name": "reconciler",
        "image": options.image,
        "command": ["python", "-m", "servefleet"],
        "args": ["reconcile", "--region", region.name, "--in-cluster", "--log-format", "json"],
        "env": [
            {
                "name": "SERVEFLEET_STORE",
                "valueFrom": {
                    "secretKeyRef": {"name": options.store_secret, "key": options.store_secret_key}
                },
            },
            # The root file system is read-only; /tmp is the one writable place.
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
            {"name": "HOME", "value": "/tmp"},
        ],
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": dict(metadata["labels"])},
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": _RUN_AS,
                        "runAsGroup": _RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }
