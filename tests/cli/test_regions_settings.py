"""A kubernetes region's settings through the command line: registered and stored
with the region (SQLite and PostgreSQL), refused with the field and value named,
used by `servefleet reconcile`, and rendered into `servefleet install-manifests`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import Result

from servefleet.cli.main import app
from servefleet.cli.reconcile import cluster_regions, in_cluster_regions
from servefleet.service import EndpointService
from servefleet.spec import EndpointSpec, Region, RegionKind
from servefleet.store import open_store
from tests.cli.test_cli import COMMAND, REPO
from tests.cli_runner import CliRunner
from tests.kubeapi import KubeApiServer
from tests.waiting import eventually

REQUESTS_QUERY = (
    'sum by (status) (increase(istio_requests_total{destination_service_namespace="{{namespace}}",'
    'destination_service_name="{{service}}"}[{{window}}]))'
)
LATENCY_QUERY = (
    "sum by (le) (increase(istio_request_duration_milliseconds_bucket"
    '{destination_service_name="{{service}}"}[{{window}}]))'
)
SETTINGS_FLAGS = (
    *("--ingress-class", "nginx", "--canary-routing", "nginx"),
    *("--ingress-annotation", "nginx.ingress.kubernetes.io/proxy-body-size=8m"),
    *("--ingress-annotation", "team=a=b"),
    *("--healthcheck-annotation", "", "--service-account", "inference"),
    *("--stage-image", "registry.example/stage:1", "--startup-timeout", "900"),
    *("--model-volume-size-limit", "100Gi", "--no-pods-metrics"),
    *("--concurrency-metric", "vllm:num_requests_running", "--rps-metric", "vllm_rps"),
    *("--autoscaler", "keda", "--prometheus-url", "http://prometheus.monitoring:9090"),
    *("--ingress-url", "https://llm.eu.example.com/"),
    *("--requests-query", REQUESTS_QUERY, "--latency-query", LATENCY_QUERY),
)
STORED_SETTINGS = {
    "ingress_class": "nginx",
    "ingress_annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "8m", "team": "a=b"},
    "healthcheck_annotation": "",
    "canary_routing": "nginx",
    "service_account": "inference",
    "stage_image": "registry.example/stage:1",
    "startup_timeout": 900.0,
    "model_volume_size_limit": "100Gi",
    "pods_metrics": False,
    "concurrency_metric": "vllm:num_requests_running",
    "rps_metric": "vllm_rps",
    "autoscaler": "keda",
    "prometheus_url": "http://prometheus.monitoring:9090",
    "ingress_url": "https://llm.eu.example.com",
    "requests_query": REQUESTS_QUERY,
    "latency_query": LATENCY_QUERY,
}
UNSET = dict.fromkeys(STORED_SETTINGS)


class InProcess:
    """`servefleet --store URL ...` in this process (fast: no interpreter start-up)."""

    def __init__(self, store_url: str) -> None:
        self.runner = CliRunner()
        self.store_url = store_url

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(app, ["--store", self.store_url, *args], catch_exceptions=False)

    def ok(self, *args: str) -> str:
        result = self(*args)
        assert (result.exit_code, result.stderr) == (0, ""), result.output
        return result.stdout

    def regions(self) -> Any:
        return json.loads(self.ok("regions", "list", "-o", "json"))

    def refused(self, cases: list[tuple[list[str], list[str]]]) -> None:
        """Each command exits 1 with one line naming `expected`, printing nothing else."""
        for args, expected in cases:
            result = self(*args)
            lines = result.stderr.splitlines()
            assert (result.exit_code, len(lines), result.stdout) == (1, 1, ""), (args, result)
            assert lines[0].startswith("error: "), (args, lines)
            for part in expected:
                assert part in lines[0], (args, lines)


@pytest.fixture
def cli(store_url: str) -> InProcess:
    return InProcess(store_url)


def test_settings_are_stored_with_the_region_and_replaced_by_a_new_add(cli: InProcess) -> None:
    added = cli.ok(
        *("regions", "add", "eu", "--kind", "kubernetes", "--kubeconfig", "/k"),
        *("--namespace", "llm", *SETTINGS_FLAGS),
    )
    assert added == "region/eu registered (kubernetes)\n"
    assert cli.regions() == [
        {
            "name": "eu",
            "kind": "kubernetes",
            "kubeconfig": "/k",
            "context": None,
            "namespace": "llm",
            **STORED_SETTINGS,
            "drained": False,
            "pass_env": None,
        }
    ]

    cli.ok("regions", "add", "eu", "--kind", "kubernetes", "--namespace", "llm")
    (listed,) = cli.regions()
    assert {key: listed[key] for key in STORED_SETTINGS} == UNSET


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_local_region_stores_the_variables_its_replicas_get_besides_the_allowlist(
    cli: InProcess,
) -> None:
    cli.ok("regions", "add", "home", "--pass-env", "HF_TOKEN", "--pass-env", "HF_HOME")
    (listed,) = cli.regions()
    assert (listed["kind"], listed["pass_env"]) == ("local", ["HF_TOKEN", "HF_HOME"])

    cli.ok("regions", "add", "home")
    (listed,) = cli.regions()
    assert listed["pass_env"] is None


PROMETHEUS_FLAG = ("--prometheus-url", "http://p:9090")
LATENCY_FLAG = ("--latency-query", "y[{{window}}]")
BAD_REGIONS: list[tuple[list[str], list[str]]] = [
    (["--ingress-class", "Bad_Class"], ["region.ingress_class: ", "'Bad_Class'"]),
    (["--ingress-annotation", "novalue"], ["--ingress-annotation: ", "'novalue'"]),
    (["--ingress-annotation", "bad key=v"], ["region.ingress_annotations: ", "'bad key'"]),
    (["--healthcheck-annotation", "a b"], ["region.healthcheck_annotation: ", "'a b'"]),
    (["--canary-routing", "istio"], ["region.canary_routing: ", "'istio'"]),
    (["--service-account", "Bad_SA"], ["region.service_account: ", "'Bad_SA'"]),
    (["--stage-image", "Bad Image"], ["region.stage_image: ", "'Bad Image'"]),
    (["--startup-timeout", "0"], ["region.startup_timeout: ", "0"]),
    (["--startup-timeout", "inf"], ["region.startup_timeout: ", "inf"]),
    (["--model-volume-size-limit", "lots"], ["region.model_volume_size_limit: ", "'lots'"]),
    (["--model-volume-size-limit", "-1Gi"], ["region.model_volume_size_limit: ", "'-1Gi'"]),
    (["--pass-env", "HF_TOKEN"], ["region.pass_env: ", "only local regions", "HF_TOKEN"]),
    (["--concurrency-metric", "in/flight"], ["region.concurrency_metric: ", "'in/flight'"]),
    (["--rps-metric", ".."], ["region.rps_metric: ", "'..'"]),
    (["--autoscaler", "knative"], ["region.autoscaler: ", "'knative'"]),
    (["--autoscaler", "keda"], ["region.prometheus_url: ", "--prometheus-url"]),
    (
        ["--autoscaler", "keda", "--prometheus-url", "prometheus:9090"],
        ["region.prometheus_url: ", "'prometheus:9090'"],
    ),
    (
        ["--prometheus-url", "http://p:9090", "--requests-query", "x[{{window}}]"],
        ["region.latency_query: ", "overridden together"],
    ),
    (
        ["--requests-query", "x[{{window}}]", "--latency-query", "y[{{window}}]"],
        ["region.requests_query: ", "--prometheus-url"],
    ),
    (
        [*PROMETHEUS_FLAG, "--requests-query", "x[5m]", *LATENCY_FLAG],
        ["region.requests_query: ", "must count over {{window}}", "'x[5m]'"],
    ),
    (
        [*PROMETHEUS_FLAG, "--requests-query", "x{{pod}}[{{window}}]", *LATENCY_FLAG],
        ["region.requests_query: ", "unknown placeholder {{pod}}", "{{namespace}}"],
    ),
    (["--ingress-url", "llm.example.com"], ["region.ingress_url: ", "'llm.example.com'"]),
    (
        ["--ingress-url", "https://llm.example.com/inference"],
        ["region.ingress_url: ", "no path", "'https://llm.example.com/inference'"],
    ),
    (["--ingress-url", "http://h:70000"], ["region.ingress_url: ", "'http://h:70000'"]),
]
BAD_LOCAL_REGIONS: list[tuple[list[str], list[str]]] = [
    (["--ingress-class", "nginx"], ["region.ingress_class: ", "'nginx'"]),
    (["--no-pods-metrics"], ["region.pods_metrics: ", "False"]),
    (["--rps-metric", "x"], ["region.rps_metric: ", "only kubernetes regions", "'x'"]),
    (["--autoscaler", "keda"], ["region.autoscaler: ", "only kubernetes regions", "'keda'"]),
    (["--pass-env", "HF TOKEN"], ["region.pass_env: ", "'HF TOKEN'"]),
    (
        ["--ingress-url", "http://127.0.0.1:8080"],
        ["region.ingress_url: ", "only kubernetes regions", "'http://127.0.0.1:8080'"],
    ),
    (
        ["--pass-env", "A", "--pass-env", "SERVEFLEET_STORE"],
        ["region.pass_env: ", "'SERVEFLEET_STORE'"],
    ),
]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_bad_settings_are_one_line_naming_field_and_value_and_store_nothing(
    cli: InProcess,
) -> None:
    cli.refused(
        [
            (["regions", "add", "eu", "--kind", "kubernetes", *flags], expected)
            for flags, expected in BAD_REGIONS
        ]
        + [
            (["regions", "add", "home", "--kind", "local", *flags], expected)
            for flags, expected in BAD_LOCAL_REGIONS
        ]
    )
    assert cli.regions() == []


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_region_stored_before_the_settings_existed_still_loads(cli: InProcess) -> None:
    old = '{"name":"old","kind":"kubernetes","kubeconfig":null,"context":null,"namespace":"llm"}'
    with contextlib.closing(sqlite3.connect(cli.store_url.removeprefix("sqlite:///"))) as db:
        db.execute("INSERT INTO regions (name, record) VALUES ('old', ?)", (old,))
        db.commit()

    assert cli.regions() == [
        {
            "name": "old",
            "kind": "kubernetes",
            "kubeconfig": None,
            "context": None,
            "namespace": "llm",
            **UNSET,
            "drained": False,
            "pass_env": None,
        }
    ]
    # Drained by a compare-and-set on the record as stored, without the newer fields.
    cli.ok("regions", "drain", "old")
    (listed,) = cli.regions()
    assert (listed["name"], listed["drained"]) == ("old", True)
    printed = cli.ok("install-manifests", "--region", "old", "--store-secret", "pg")
    assert [doc["kind"] for doc in yaml.safe_load_all(printed)] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
    ]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_install_manifests_and_reconcile_refuse_what_they_cannot_run(
    cli: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cli.ok("regions", "add", "home", "--kind", "local")
    cli.ok("regions", "add", "eu", "--kind", "kubernetes", "--kubeconfig", "/k")
    install = ["install-manifests", "--region"]
    cli.refused(
        [
            ([*install, "nowhere"], ["--region: ", "'nowhere' is not registered"]),
            ([*install, "home"], ["--region: ", "'home' is a local"]),
            ([*install, "eu", "--image", "Bad Image"], ["image: ", "'Bad Image'"]),
            ([*install, "eu", "--namespace", "Bad_NS"], ["namespace: ", "'Bad_NS'"]),
            ([*install, "eu", "--store-secret", "A"], ["store_secret: ", "'A'"]),
            (["reconcile", "--region", "eu", "--region", "nowhere"], ["--region: ", "'nowhere'"]),
            (["reconcile", "--region", "home"], ["--region: ", "'home' is a local"]),
            (
                ["reconcile", "--region", "eu", "--in-cluster"],
                ["--in-cluster: ", "KUBERNETES_SERVICE_HOST is not set"],
            ),
        ]
    )


async def test_reconcile_drives_a_region_with_its_registered_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`servefleet reconcile`, the installed command, renders with the settings the
    region was registered with (here: ingress-nginx) and stops cleanly on SIGTERM."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    async with KubeApiServer(auto_ready=0.05) as kube:
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        store = await open_store(store_url, init=True)
        try:
            service = EndpointService(store)
            region: dict[str, Any] = {"kubeconfig": str(kubeconfig), "namespace": "llm"}
            await service.add_region(
                Region(name="eu", kind=RegionKind.KUBERNETES, ingress_class="nginx", **region)
            )
            await service.deploy("llm", EndpointSpec(image="vllm/vllm-openai:v0.6.3"), ["eu"])
        finally:
            await store.close()
        process = await asyncio.create_subprocess_exec(
            *(*COMMAND, "reconcile", "--region", "eu", "--lease-ttl", "5"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "SERVEFLEET_STORE": store_url},
            cwd=REPO,
        )
        try:

            async def routed() -> bool:
                return kube.get_object("ingresses", "llm", "llm") is not None

            try:
                # A loaded machine: a fresh interpreter, a Lease, lists, then the apply.
                await eventually(routed, within=90)
            except TimeoutError:
                process.send_signal(signal.SIGTERM)
                _, stderr = await process.communicate()
                raise AssertionError(f"no Ingress within 90 s:\n{stderr.decode()}") from None
            ingress = kube.get_object("ingresses", "llm", "llm")
            assert ingress is not None
            assert ingress["spec"]["ingressClassName"] == "nginx"
            assert not any(key.startswith("alb.") for key in ingress["metadata"]["annotations"])
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()


def test_which_regions_use_the_pods_service_account() -> None:
    with_kubeconfig = Region(name="eu", kind=RegionKind.KUBERNETES, kubeconfig="/k")
    without = Region(name="us", kind=RegionKind.KUBERNETES)
    regions = [with_kubeconfig, without]

    assert in_cluster_regions(regions, forced=False, in_pod=False) == frozenset()
    assert in_cluster_regions(regions, forced=False, in_pod=True) == {"us"}
    assert in_cluster_regions(regions, forced=True, in_pod=True) == {"eu", "us"}
    with pytest.raises(ValueError, match="--in-cluster: KUBERNETES_SERVICE_HOST is not set"):
        in_cluster_regions(regions, forced=True, in_pod=False)
    assert [r.name for r in cluster_regions(regions, ["us", "eu", "us"])] == ["us", "eu"]


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_drained_region_stays_drained_when_registered_again_until_undrained(
    cli: InProcess,
) -> None:
    cli.ok("regions", "add", "eu", "--kind", "kubernetes", "--ingress-url", "http://127.0.0.1:1")
    assert cli.ok("regions", "drain", "eu") == "region/eu drained\n"
    cli.ok("regions", "add", "eu", "--kind", "kubernetes", "--ingress-url", "http://127.0.0.1:2")
    (listed,) = cli.regions()
    assert (listed["drained"], listed["ingress_url"]) == (True, "http://127.0.0.1:2")

    assert cli.ok("regions", "undrain", "eu") == "region/eu undrained\n"
    (listed,) = cli.regions()
    assert listed["drained"] is False
    cli.refused([(["regions", "drain", "nope"], ["region 'nope' is not registered"])])
