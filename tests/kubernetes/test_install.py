"""A region's registration → its render settings and its in-cluster install:
every installed object passes the Kubernetes schema in strict mode, and the Role
grants what the runtime uses (the scenario in
`tests/scenarios/test_kubernetes_two_regions.py` checks it against the requests
the runtime really sends)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from servefleet.runtime.kubernetes.install import (
    DEFAULT_IMAGE,
    InstallOptions,
    install_manifests,
    region_settings,
    role_rules,
)
from servefleet.runtime.kubernetes.render import render
from servefleet.runtime.kubernetes.render_names import LABEL_MANAGED_BY, MANAGED_BY, Manifest
from servefleet.runtime.kubernetes.render_settings import (
    DEFAULT_INGRESS_ANNOTATIONS,
    RegionSettings,
)
from servefleet.spec import Region, RegionKind
from tests.kubernetes.test_render import by_kind, planned, validate
from tests.kubernetes.test_render_keda import AUTOSCALED, validate_scaled_object

EU = Region(name="eu", kind=RegionKind.KUBERNETES, kubeconfig="/k", namespace="llm")


def manifests(**options: Any) -> list[Manifest]:
    return install_manifests(EU, InstallOptions.model_validate({"namespace": "llm"} | options))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "namespace": "servefleet-system",
                "create_namespace": True,
                "image": "registry.example/servefleet:2.0@sha256:" + "a" * 64,
                "store_secret": "pg.store",
                "store_secret_key": "DATABASE_URL",
            },
            id="own-namespace",
        ),
    ],
)
def test_every_installed_object_passes_the_strict_schema(options: dict[str, Any]) -> None:
    rendered = manifests(**options)
    for manifest in rendered:
        validate(manifest)
    expected = ["ServiceAccount", "Role", "RoleBinding", "Deployment"]
    if options.get("create_namespace"):
        expected.insert(0, "Namespace")
    assert [m["kind"] for m in rendered] == expected


def test_the_role_sits_in_the_regions_namespace_bound_to_the_reconcilers_account() -> None:
    rendered = manifests(namespace="servefleet-system")
    role = by_kind(rendered, "Role")
    binding = by_kind(rendered, "RoleBinding")
    account = by_kind(rendered, "ServiceAccount")

    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "llm"
    assert account["metadata"]["namespace"] == "servefleet-system"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "servefleet-eu", "namespace": "servefleet-system"}
    ]
    assert role["rules"] == role_rules(EU)


KEDA_EU = EU.model_copy(
    update={"autoscaler": "keda", "prometheus_url": "http://prometheus.monitoring:9090"}
)


@pytest.mark.parametrize(
    ("region", "groups"),
    [
        pytest.param(EU, {"", "apps", "autoscaling", "networking.k8s.io"}, id="hpa"),
        pytest.param(
            KEDA_EU, {"", "apps", "autoscaling", "keda.sh", "networking.k8s.io"}, id="keda"
        ),
    ],
)
def test_the_role_lists_the_rendered_kinds_and_the_regions_lease_only(
    region: Region, groups: set[str]
) -> None:
    rules = role_rules(region)
    granted = {
        (group, resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert {grant[0] for grant in granted} == groups | {"coordination.k8s.io"}
    kinds = {resource for group, resource, _v, _n in granted if group in groups - {""}}
    assert kinds == {"deployments", "horizontalpodautoscalers", "ingresses"} | (
        {"scaledobjects"} if "keda.sh" in groups else set()
    )
    pods = {(resource, verb) for _g, resource, verb, _n in granted if resource.startswith("pods")}
    assert pods == {("pods", "list"), ("pods", "watch"), ("pods/log", "get")}  # read-only
    workloads = {"leases", "pods", "pods/log"}
    assert not {verb for _g, resource, verb, _n in granted if resource not in workloads} & {
        "get",
        "update",
        "deletecollection",
        "*",
    }
    assert {(verb, names) for _g, resource, verb, names in granted if resource == "leases"} == {
        ("create", ()),
        ("get", ("servefleet-region-eu",)),
        ("update", ("servefleet-region-eu",)),
    }
    subresources = {grant[1] for grant in granted if "/" in grant[1]}
    assert subresources == {"pods/log"}  # not deployments/scale, not pods/exec


def test_the_deployment_runs_the_regions_reconciler_locked_down() -> None:
    deployment = by_kind(manifests(store_secret="pg", store_secret_key="dsn"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert pod["serviceAccountName"] == "servefleet-eu"
    assert container["image"] == DEFAULT_IMAGE
    assert container["command"] + container["args"] == [
        *("python", "-m", "servefleet", "reconcile", "--region", "eu", "--in-cluster"),
        *("--log-format", "json"),
    ]
    store = next(var for var in container["env"] if var["name"] == "SERVEFLEET_STORE")
    assert store == {
        "name": "SERVEFLEET_STORE",
        "valueFrom": {"secretKeyRef": {"name": "pg", "key": "dsn"}},
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]


def test_the_reconciler_is_invisible_to_its_own_watch_caches() -> None:
    """The caches select `managed-by=servefleet`: the reconciler's own objects
    must not carry it, or it would see itself as an endpoint to reconcile."""
    for manifest in manifests():
        labels = manifest["metadata"].get("labels", {})
        assert labels.get(LABEL_MANAGED_BY) != MANAGED_BY


def test_only_kubernetes_regions_are_installed() -> None:
    local = Region(name="home", kind=RegionKind.LOCAL)
    with pytest.raises(ValueError, match="region: 'home' is a local region"):
        install_manifests(local, InstallOptions(namespace="llm"))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image", "Not An Image"),
        ("namespace", "Bad_NS"),
        ("store_secret", "UPPER"),
        ("store_secret_key", "a key"),
    ],
)
def test_bad_install_options_name_the_field(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        InstallOptions.model_validate({"namespace": "llm", field: value})
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


# Region settings from the registration.


def test_an_unconfigured_region_renders_with_the_defaults() -> None:
    assert region_settings(EU) == RegionSettings(namespace="llm")


def test_a_keda_region_renders_scaled_objects_on_its_prometheus() -> None:
    settings = region_settings(KEDA_EU)
    assert (settings.autoscaler, settings.prometheus_url) == (
        "keda",
        "http://prometheus.monitoring:9090",
    )
    validate_scaled_object(
        by_kind(render(planned(autoscaling=AUTOSCALED), settings), "ScaledObject")
    )


def test_a_registered_nginx_region_renders_its_own_ingress() -> None:
    region = EU.model_copy(
        update={
            "ingress_class": "nginx",
            "canary_routing": "nginx",
            "service_account": "inference",
            "stage_image": "registry.example/stage:1",
            "startup_timeout": 900.0,
            "model_volume_size_limit": "100Gi",
            "pods_metrics": False,
            "concurrency_metric": "vllm:num_requests_running",
        }
    )
    settings = region_settings(region)
    assert settings == RegionSettings(
        namespace="llm",
        ingress_class="nginx",
        ingress_annotations={},
        healthcheck_annotation=None,
        canary_routing="nginx",
        service_account="inference",
        stage_image="registry.example/stage:1",
        startup_timeout=900.0,
        model_volume_size_limit="100Gi",
        pods_metrics=False,
        pods_metric_names={"concurrency": "vllm:num_requests_running", "rps": "servefleet_rps"},
    )
    rendered = render(planned(canary={"weight": 20}), settings)
    ingresses = [m for m in rendered if m["kind"] == "Ingress"]
    assert [m["metadata"]["name"] for m in ingresses] == ["llm", "llm-canary"]
    assert {m["spec"]["ingressClassName"] for m in ingresses} == {"nginx"}
    assert not any(
        key.startswith("alb.") for m in ingresses for key in m["metadata"]["annotations"]
    )


def test_registered_annotations_replace_the_defaults_and_an_empty_key_drops_the_health_check() -> (
    None
):
    region = EU.model_copy(
        update={"ingress_annotations": {"team": "ml"}, "healthcheck_annotation": ""}
    )
    settings = region_settings(region)
    assert (settings.ingress_class, settings.healthcheck_annotation) == ("alb", None)
    assert dict(settings.ingress_annotations) == {"team": "ml"}
    assert dict(region_settings(EU).ingress_annotations) == dict(DEFAULT_INGRESS_ANNOTATIONS)
