"""What lets a write share the parts of the stored object it keeps whole (a status
write its spec, any other write the status): the defaulters fill in only what is
missing, so running them again on a stored object changes nothing, and no write
modifies an object already stored."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.kubeapi.engine import Engine
from tests.kubeapi.resources import (
    DEPLOYMENTS,
    HPAS,
    INGRESSES,
    LEASES,
    NAMESPACES,
    PODS,
    SERVICES,
    ResourceType,
)
from tests.kubeapi.store import Store
from tests.kubeapi.writes import WriteOptions

_PROBE = {"httpGet": {"path": "/health", "port": 8000}}
_CONTAINER = {
    "name": "c",
    "image": "vllm/vllm-openai:v0.6.3",
    "ports": [{"containerPort": 8000}],
    "env": [{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
    "resources": {"limits": {"cpu": "1", "nvidia.com/gpu": "1"}},
    "readinessProbe": _PROBE,
    "livenessProbe": {"grpc": {"port": 9000}},
}
_POD_SPEC = {
    "containers": [_CONTAINER],
    "volumes": [{"name": "v"}, {"name": "w", "configMap": {"name": "m"}}],
    "serviceAccountName": "sa",
}
_OBJECTS: list[tuple[ResourceType, dict[str, Any]]] = [
    (
        DEPLOYMENTS,
        {
            "metadata": {"name": "d", "labels": {"a": "b"}},
            "spec": {
                "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": _POD_SPEC},
            },
        },
    ),
    (
        SERVICES,
        {
            "metadata": {"name": "s"},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]},
        },
    ),
    (PODS, {"metadata": {"name": "p"}, "spec": _POD_SPEC}),
    (
        HPAS,
        {
            "metadata": {"name": "h"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                "maxReplicas": 3,
                "behavior": {"scaleUp": {}},
            },
        },
    ),
    (
        INGRESSES,
        {
            "metadata": {"name": "i"},
            "spec": {"defaultBackend": {"service": {"name": "s", "port": {"number": 80}}}},
        },
    ),
    (LEASES, {"metadata": {"name": "l"}, "spec": {"holderIdentity": "x"}}),
    (NAMESPACES, {"metadata": {"name": "n"}}),
]


@pytest.mark.parametrize(("resource", "body"), _OBJECTS, ids=lambda v: getattr(v, "kind", ""))
def test_defaulting_a_stored_object_again_changes_nothing(
    resource: ResourceType, body: dict[str, Any]
) -> None:
    engine = Engine(Store())
    namespace = "" if resource is NAMESPACES else "ns"
    stored = engine.create(resource, namespace, copy.deepcopy(body), WriteOptions("me")).body
    again = copy.deepcopy(stored)
    resource.defaulter(again)
    if resource is SERVICES:
        engine.services.assign(again, stored)
    assert again == stored


def test_a_status_write_leaves_the_stored_object_it_shares_parts_with_as_it_was() -> None:
    engine = Engine(Store())
    resource, body = _OBJECTS[0]
    first = engine.create(resource, "ns", copy.deepcopy(body), WriteOptions("me")).body
    before = json.dumps(first)
    engine.set_status(resource, "ns", "d", {"replicas": 1, "observedGeneration": 1}, "ctrl")
    engine.patch(
        resource,
        "ns",
        "d",
        "application/merge-patch+json",
        b'{"metadata": {"labels": {"c": "d"}}}',
        WriteOptions("other"),
    )
    assert json.dumps(first) == before
