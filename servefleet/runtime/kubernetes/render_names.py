"""The names, labels and metadata every rendered object shares. Pure.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from servefleet.plan import Workload
from servefleet.runtime.kubernetes.render_settings import RegionSettings

__all__ = [
    "ANNOTATION_HASH",
    "LABEL_MANAGED_BY",
    "LABEL_NAME",
    "LABEL_ROLE",
    "MANAGED_BY",
    "MANAGED_SELECTOR",
    "PORT_NAME",
    "Manifest",
    "endpoint_selector",
    "namespace_of",
    "object_labels",
    "object_metadata",
    "object_name",
    "version_selector",
]

Manifest = dict[str, Any]
"""One Kubernetes object as plain data, ready to be sent as an apply patch."""

LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_ROLE: Final = "servefleet.io/role"
ANNOTATION_HASH: Final = "servefleet.io/workload-hash"
MANAGED_BY: Final = "servefleet"
MANAGED_SELECTOR: Final = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
"""Label selector for the watch caches: everything servefleet manages."""
PORT_NAME: Final = "http"
"""The name of the container's port and of the Service port in front of it."""


def namespace_of(workload: Workload, settings: RegionSettings) -> str:
    """The namespace of every object of `workload`: the spec's, else the region's."""
    return workload.namespace or settings.namespace


def endpoint_selector(endpoint: str) -> str:
    """Label selector for every object servefleet manages for `endpoint`."""
    return f"{MANAGED_SELECTOR},{LABEL_NAME}={endpoint}"


def object_name(endpoint: str, role: str) -> str:
    """The name of the endpoint's object of `role` (its Service, Deployment, canary Ingress)."""
    return endpoint if role == "primary" else f"{endpoint}-{role}"


def object_labels(workload: Workload, role: str | None, marker: str) -> dict[str, str]:
    """servefleet's labels over the spec's; `marker` is the label saying servefleet
    manages the object (no spec label takes `LABEL_MANAGED_BY` where it is not)."""
    ours = {LABEL_NAME: workload.endpoint, marker: MANAGED_BY}
    if role is not None:
        ours[LABEL_ROLE] = role
    theirs = {key: value for key, value in workload.labels.items() if key != LABEL_MANAGED_BY}
    return {**theirs, **ours}


def object_metadata(
    workload: Workload,
    settings: RegionSettings,
    name: str,
    role: str | None,
    digest: str,
    annotations: Mapping[str, str] | None = None,
    *,
    marker: str = LABEL_MANAGED_BY,
) -> dict[str, Any]:
    """An object's metadata: its labels (`role` None for the Ingress, which routes
    to both versions) and annotations, the workload hash `digest` among them."""
    return {
        "name": name,
        "namespace": namespace_of(workload, settings),
        "labels": object_labels(workload, role, marker),
        "annotations": {**(annotations or {}), ANNOTATION_HASH: digest},
    }


def version_selector(workload: Workload, role: str) -> dict[str, str]:
    """The labels that select one version's pods: its Service's selector, its
    Deployment's `matchLabels`."""
    return {LABEL_NAME: workload.endpoint, LABEL_ROLE: role}
