"""A version's Service, and the endpoint's Ingress in front of the Services. Pure.

`render.render` calls `service` for the primary and, when one is set, the
canary; `ingress` (and, with `canary_routing="nginx"`, `nginx_canary_ingress`)
when the endpoint is routed.

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
"""

from __future__ import annotations

import json
from typing import Any, Final

from servefleet.plan import Version, Workload
from servefleet.runtime.kubernetes.render_names import (
    PORT_NAME,
    Manifest,
    object_metadata,
    object_name,
    version_selector,
)
from servefleet.runtime.kubernetes.render_settings import RegionSettings

__all__ = [
    "SERVICE_PORT",
    "ingress",
    "nginx_canary_ingress",
    "service",
]

SERVICE_PORT: Final = 80
_ALB_ACTIONS: Final = "alb.ingress.kubernetes.io/actions."
_NGINX_CANARY: Final = "nginx.ingress.kubernetes.io/canary"
_NGINX_CANARY_WEIGHT: Final = "nginx.ingress.kubernetes.io/canary-weight"


def service(
    workload: Workload, settings: RegionSettings, version: Version, digest: str
) -> Manifest:
    """`version`'s Service, in front of that version's pods only."""
    role = version.role
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(
            workload, settings, object_name(workload.endpoint, role), role, digest
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": version_selector(workload, role),
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": SERVICE_PORT,
                    "targetPort": workload.port,
                    "protocol": "TCP",
                }
            ],
        },
    }


def _ingress_annotations(workload: Workload, settings: RegionSettings) -> dict[str, str]:
    annotations = dict(settings.ingress_annotations)
    if settings.healthcheck_annotation is not None:
        annotations[settings.healthcheck_annotation] = workload.health_path
    return annotations


def _ingress_rule(workload: Workload, backend: dict[str, Any]) -> dict[str, Any]:
    path = {"path": workload.ingress_path, "pathType": "Prefix", "backend": {"service": backend}}
    return {"http": {"paths": [path]}}


def ingress(workload: Workload, settings: RegionSettings, digest: str) -> Manifest:
    """The endpoint's Ingress: to the primary Service, or with an alb-routed
    canary to both by weight."""
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
        "metadata": object_metadata(workload, settings, endpoint, None, digest, annotations),
        "spec": {
            "ingressClassName": settings.ingress_class,
            "rules": [_ingress_rule(workload, backend)],
        },
    }


def nginx_canary_ingress(workload: Workload, settings: RegionSettings, digest: str) -> Manifest:
    """The canary's second Ingress, by which ingress-nginx sends it its weight."""
    annotations = _ingress_annotations(workload, settings)
    annotations[_NGINX_CANARY] = "true"
    annotations[_NGINX_CANARY_WEIGHT] = str(workload.canary_weight)
    name = object_name(workload.endpoint, "canary")
    backend = {"name": name, "port": {"number": SERVICE_PORT}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": object_metadata(workload, settings, name, "canary", digest, annotations),
        "spec": {
            "ingressClassName": settings.ingress_class,
            "rules": [_ingress_rule(workload, backend)],
        },
    }
