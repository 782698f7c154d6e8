"""A keda region's autoscaler: the KEDA ScaledObject rendered instead of the HPA,
validated against KEDA's published ScaledObject CRD schema (`tests/kubeapi/crds/`), strictly (an
unknown field fails, as the API server would prune it)."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml

from servefleet.runtime.kubernetes.render import ObjectRef, absent, render, steps
from servefleet.runtime.kubernetes.render_autoscaler import min_replicas
from servefleet.runtime.kubernetes.render_keda import LABEL_SCALED_BY
from servefleet.runtime.kubernetes.render_names import (
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_ROLE,
    Manifest,
)
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from tests.kubeapi import CRDS
from tests.kubernetes.test_render import by_kind, kinds, planned

CRD = CRDS / "keda.sh_scaledobjects.yaml"
PROMETHEUS = "http://prometheus.monitoring:9090"
KEDA = RegionSettings(autoscaler="keda", prometheus_url=PROMETHEUS)
AUTOSCALED: dict[str, Any] = {
    "enabled": True,
    "min_replicas": 0,
    "max_replicas": 8,
    "scale_to_zero_after": 600,
    "metrics": [{"type": "concurrency", "target": 4}],
}


def _strict(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on every object schema that lists
    its properties and allows nothing else."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(value) for value in schema]
    return schema


@cache
def _validator() -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def validate_scaled_object(manifest: Manifest) -> None:
    assert (manifest["apiVersion"], manifest["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    _validator().validate(manifest)


def scaled_object_of(**autoscaling: Any) -> Manifest:
    manifest = by_kind(
        render(planned(autoscaling={**AUTOSCALED, **autoscaling}), KEDA), "ScaledObject"
    )
    validate_scaled_object(manifest)
    return manifest


def test_the_strict_schema_refuses_a_field_keda_does_not_have() -> None:
    manifest = scaled_object_of()
    for path in (("spec",), ("spec", "scaleTargetRef"), ("spec", "triggers", 0)):
        broken = copy.deepcopy(manifest)
        target: Any = broken
        for key in path:
            target = target[key]
        target["scaleToZero"] = True
        with pytest.raises(jsonschema.ValidationError, match="scaleToZero"):
            validate_scaled_object(broken)


def test_scale_to_zero_on_concurrency_is_a_prometheus_trigger_on_the_primary_pods() -> None:
    manifest = scaled_object_of()

    assert manifest["metadata"]["name"] == "llm"
    assert manifest["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm"},
        "minReplicaCount": 0,
        "maxReplicaCount": 8,
        "cooldownPeriod": 600,
        "triggers": [
            {
                "type": "prometheus",
                "name": "concurrency",
                "metadata": {
                    "serverAddress": PROMETHEUS,
                    "query": 'sum({__name__="servefleet_concurrency",namespace="default",'
                    'pod=~"llm-[a-z0-9]+-[a-z0-9]+"})',
                    "threshold": "4",
                },
            }
        ],
    }


@pytest.mark.parametrize(
    ("metric", "trigger"),
    [
        pytest.param(
            {"type": "rps", "target": 2.5},
            {
                "type": "prometheus",
                "name": "rps",
                "metadata": {
                    "serverAddress": PROMETHEUS,
                    "query": 'sum({__name__="vllm:rps",namespace="default",'
                    'pod=~"llm-[a-z0-9]+-[a-z0-9]+"})',
                    "threshold": "2.5",
                },
            },
            id="rps",
        ),
        pytest.param(
            {"type": "cpu", "target": 70.4},
            {
                "type": "cpu",
                "name": "cpu",
                "metricType": "Utilization",
                "metadata": {"value": "70"},
            },
            id="cpu",
        ),
        pytest.param(
            {"type": "memory", "target": 0.2},
            {
                "type": "memory",
                "name": "memory",
                "metricType": "Utilization",
                "metadata": {"value": "1"},
            },
            id="memory",
        ),
    ],
)
def test_each_metric_is_its_keda_trigger(metric: dict[str, Any], trigger: Manifest) -> None:
    settings = RegionSettings(
        autoscaler="keda",
        prometheus_url=PROMETHEUS,
        pods_metric_names={"concurrency": "servefleet_concurrency", "rps": "vllm:rps"},
        pods_metrics=False,  # the HPA's adapter; KEDA reads Prometheus itself
    )
    workload = planned(autoscaling={**AUTOSCALED, "min_replicas": 2, "metrics": [metric]})
    manifest = by_kind(render(workload, settings), "ScaledObject")

    validate_scaled_object(manifest)
    assert manifest["spec"]["triggers"] == [trigger]
    assert manifest["spec"]["minReplicaCount"] == 2


def test_without_a_metric_the_trigger_is_the_hpa_default_cpu_target() -> None:
    manifest = scaled_object_of(min_replicas=1, metrics=[])
    assert manifest["spec"]["triggers"] == [
        {"type": "cpu", "name": "cpu", "metricType": "Utilization", "metadata": {"value": "80"}}
    ]


def test_several_metrics_keep_the_spec_order() -> None:
    manifest = scaled_object_of(
        metrics=[
            {"type": "rps", "target": 3},
            {"type": "memory", "target": 75},
            {"type": "concurrency", "target": 8},
        ]
    )
    assert [t["name"] for t in manifest["spec"]["triggers"]] == ["rps", "memory", "concurrency"]


def test_the_scaled_object_replaces_the_hpa_and_is_not_labelled_as_keda_s_hpa_would_be() -> None:
    """KEDA copies a ScaledObject's labels onto the HPA it creates: were it labelled
    `app.kubernetes.io/managed-by=servefleet`, the runtime would take KEDA's HPA for
    its own. Not even a spec label of that key reaches it."""
    workload = planned(
        autoscaling=AUTOSCALED, labels={"team": "a", LABEL_MANAGED_BY: "someone-else"}
    )
    manifests = render(workload, KEDA)

    assert kinds(manifests) == [
        ("Service", "llm"),
        ("Deployment", "llm"),
        ("ScaledObject", "llm"),
        ("Ingress", "llm"),
    ]
    assert "replicas" not in by_kind(manifests, "Deployment")["spec"]
    labels = by_kind(manifests, "ScaledObject")["metadata"]["labels"]
    assert labels == {
        "team": "a",
        LABEL_NAME: "llm",
        LABEL_SCALED_BY: "servefleet",
        LABEL_ROLE: "primary",
    }
    assert by_kind(manifests, "Deployment")["metadata"]["labels"][LABEL_MANAGED_BY] == "servefleet"


def test_switching_autoscalers_deletes_the_other_one_first() -> None:
    workload = planned(autoscaling={**AUTOSCALED, "min_replicas": 1})
    hpa = ObjectRef("autoscaling/v2", "HorizontalPodAutoscaler", "default", "llm")
    scaled = ObjectRef("keda.sh/v1alpha1", "ScaledObject", "default", "llm")

    assert hpa in absent(workload, KEDA)
    assert scaled not in absent(workload, KEDA)
    assert scaled in absent(workload, RegionSettings())
    assert hpa not in absent(workload, RegionSettings())
    first = steps(workload, KEDA)[:2]
    assert [(step.verb, step.ref.kind) for step in first] == [
        ("delete", "Ingress"),
        ("delete", "HorizontalPodAutoscaler"),
    ]
    off = planned(replicas=2)
    assert scaled in absent(off, KEDA)
    assert hpa in absent(off, KEDA)


def test_a_keda_region_starts_a_deployment_at_the_spec_s_minimum_even_zero() -> None:
    workload = planned(autoscaling=AUTOSCALED)
    assert workload.autoscaling is not None
    assert min_replicas(workload.autoscaling, KEDA) == 0
    assert min_replicas(workload.autoscaling, RegionSettings()) == 1


def test_a_keda_region_without_prometheus_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^prometheus_url: "):
        RegionSettings(autoscaler="keda")
