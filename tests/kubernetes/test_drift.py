"""Drift (`runtime/kubernetes/drift.py`): what the API server makes of an apply is
never mistaken for a hand edit, and repairs are paced.

The runtime tests run on the test API server, or on a real cluster when
SERVEFLEET_TEST_KUBECONFIG is set (conftest.py); the scenario tests
(`tests/scenarios/test_kubernetes_drift.py`) make the edits and check the repairs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal

import pytest
from kubernetes_asyncio import client

from servefleet.plan import workload_hash
from servefleet.runtime.kubernetes import apply
from servefleet.runtime.kubernetes.cluster import KubernetesRuntime
from servefleet.runtime.kubernetes.drift import (
    DriftRepairs,
    DriftSettings,
    LiveDigests,
    drift_of,
    fields_digest,
    live_digest,
)
from servefleet.runtime.kubernetes.render import FIELD_MANAGER
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from tests.kubernetes.conftest import AS_MERGE, FAST, Cluster, api_client, api_target, read_object
from tests.kubernetes.test_cluster import observed_hash, planned
from tests.waiting import eventually

#: kubernetes-asyncio's stubs do not declare `_content_type` (the methods accept it).
AS_STRATEGIC_MERGE: dict[str, Any] = {"_content_type": "application/strategic-merge-patch+json"}
WORKLOADS: list[dict[str, Any]] = [
    {
        "replicas": 2,
        "command": ["serve", "--port", "{port}"],
        "args": ["--verbose"],
        "env": {"MODE": "a"},
        # Rewritten by the API server ("0.5" is served as "500m").
        "resources": {"requests": {"cpu": "0.5", "memory": "1Gi"}, "limits": {"cpu": "2000m"}},
        "node_selector": {"pool": "gpu"},
        "labels": {"team": "ml"},
    },
    {
        "replicas": 1,
        "accelerator": "nvidia",
        "gpu_count": 1,
        "model_source": "s3://bucket/model",
        "canary": {"weight": 10, "image": "ghcr.io/example/server:2.0"},
    },
    {
        "replicas": 0,  # omitted by the server as a zero value would be elsewhere
        "autoscaling": {
            "enabled": True,
            "min_replicas": 2,
            "max_replicas": 5,
            "metrics": [{"type": "cpu", "target": 70}, {"type": "rps", "target": 2.5}],
        },
    },
]


@pytest.mark.parametrize("routing", ["alb", "nginx"])
async def test_a_fresh_apply_never_looks_drifted(
    tmp_path: Path, routing: Literal["alb", "nginx"], caplog: pytest.LogCaptureFixture
) -> None:
    """Server defaults, rewritten quantities and omitted zero values are not drift:
    after each apply, no object is marked and the workload reports its hash."""
    async with api_target(tmp_path, bookmark_interval=0.5) as target:
        settings = RegionSettings(
            namespace=target.namespace,
            canary_routing=routing,
            model_volume_size_limit="0.5Gi",
        )
        api = await api_client(target.kubeconfig)
        runtime = await KubernetesRuntime.from_kubeconfig(
            "r1", settings, target.kubeconfig, cluster=FAST
        )
        try:
            async with runtime:
                for fields in WORKLOADS:
                    workload = planned(**fields)
                    await runtime.apply(workload)
                    observed = await runtime.observe("llm")
                    assert observed is not None
                    assert observed.workload_hash == workload_hash(workload), fields
                    assert observed.problem == ""
                    for kind, cached in runtime._watches.held_objects("llm"):
                        assert "drift" not in cached, (kind, cached["drift"])
                        served = await read_object(
                            api, kind, target.namespace, cached["metadata"]["name"]
                        )
                        assert served is not None
                        assert drift_of(served) is None, (kind, served)
        finally:
            await api.close()
    assert "mutating webhook" not in caplog.text  # what was sent is what was served


async def test_fields_the_server_changes_while_applying_are_judged_as_served(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A rewrite of servefleet's fields during its own apply (a mutating webhook)
    is not drift, or every event of the object would repair it; a hand edit after
    it still is. Simulated by recording a digest the server will not match."""
    runtime = cluster.runtime

    def rewritten(manifest: dict[str, Any]) -> str:
        digest = fields_digest(manifest)
        return "0" * 16 if manifest["kind"] == "Deployment" else digest

    monkeypatch.setattr(apply, "fields_digest", rewritten)
    workload = planned(replicas=2)
    await runtime.apply(workload)
    assert "Deployment (a mutating webhook?)" in caplog.text
    await cluster.scale("llm", 2, "kubectl-scale")  # an event of the object, no change
    observed = await runtime.observe("llm")
    assert observed is not None
    assert observed.workload_hash == workload_hash(workload)

    deployment = await cluster.get("Deployment", "llm")
    assert deployment is not None
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    body = {"spec": {"template": {"spec": {"containers": [{**container, "image": "x:1"}]}}}}
    await client.AppsV1Api(cluster.api).patch_namespaced_deployment(
        "llm", cluster.namespace, body, field_manager="kubectl-set", **AS_MERGE
    )

    async def drifted() -> bool:
        return await observed_hash(cluster) == ""

    await eventually(drifted, within=10)


def _live(manifest: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """`manifest` as the API server might serve it, with servefleet's fieldsV1."""
    metadata = manifest["metadata"]
    entry = {"manager": FIELD_MANAGER, "operation": "Apply", "fieldsV1": fields}
    return {**manifest, "metadata": {**metadata, "managedFields": [entry]}}


def test_the_digest_compares_values_not_spellings() -> None:
    applied: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": {"a": "1"}},
        "spec": {"limits": {"cpu": "0.5"}, "readOnly": False},
    }
    fields: dict[str, Any] = {
        "f:metadata": {"f:annotations": {"f:a": {}, "f:servefleet.io/fields-digest": {}}},
        "f:spec": {"f:limits": {"f:cpu": {}}, "f:readOnly": {}},
    }
    digest = fields_digest(applied)
    served = _live(applied, fields)
    served["metadata"]["annotations"] = {"a": "1", "servefleet.io/fields-digest": digest}
    served["spec"] = {"limits": {"cpu": "500m"}, "uid": "defaulted"}
    assert drift_of(served) is None

    served["spec"] = {"limits": {"cpu": "1"}}
    drift = drift_of(served)
    assert drift is not None
    assert drift.changes == ()  # changed, yet no other manager claims it


def test_the_live_digest_of_a_resource_version_is_taken_once() -> None:
    """The apply answer and the watch event of one write carry one object: the second
    reuses the first's digest; another resourceVersion is digested anew."""
    fields: dict[str, Any] = {"f:spec": {"f:image": {}}}
    written = _live({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"image": "a"}}, fields)
    written["metadata"]["resourceVersion"] = "7"
    digests = LiveDigests()
    assert digests.of(written) == live_digest(written)
    # The same resourceVersion is the same object: not looked at again.
    assert digests.of({**written, "spec": {"image": "b"}}) == live_digest(written)
    edited = {**written, "metadata": {**written["metadata"], "resourceVersion": "8"}}
    edited["spec"] = {"image": "b"}
    assert digests.of(edited) == live_digest(edited) != live_digest(written)
    assert drift_of(edited, digests) == drift_of(edited)


def test_a_version_with_the_same_generation_labels_and_annotations_is_not_digested_again() -> None:
    """A write that keeps the generation, the labels and the annotations (a status
    update) cannot have changed servefleet's fields: its digest is the last one. A
    new generation, label or annotation, or an object without a generation, is
    digested anew."""
    fields: dict[str, Any] = {"f:spec": {"f:image": {}}}

    def version(number: int, image: str, **metadata: Any) -> dict[str, Any]:
        obj = _live(
            {"kind": "Deployment", "metadata": {"name": "d"}, "spec": {"image": image}}, fields
        )
        obj["metadata"].update(resourceVersion=str(number), **metadata)
        return obj

    first = version(1, "a", generation=1, labels={"x": "1"}, annotations={"y": "1"})
    digests = LiveDigests()
    assert digests.of(first) == live_digest(first)
    # Another resourceVersion, the same generation and marks: not looked at (the
    # changed image shows it; a real server bumps the generation with the spec).
    status_only = version(2, "b", generation=1, labels={"x": "1"}, annotations={"y": "1"})
    assert digests.of(status_only) == live_digest(first)
    for changed in (
        version(3, "b", generation=2, labels={"x": "1"}, annotations={"y": "1"}),
        version(4, "c", generation=2, labels={"x": "2"}, annotations={"y": "1"}),
        version(5, "d", generation=2, labels={"x": "2"}, annotations={"y": "2"}),
        version(6, "e"),
        version(7, "f"),
    ):
        assert digests.of(changed) == live_digest(changed)


def test_only_the_last_objects_digests_are_kept() -> None:
    """A digest is kept for its second look only, for the last `kept` objects: the
    oldest goes first and is digested anew when it comes back."""
    fields: dict[str, Any] = {"f:spec": {"f:image": {}}}

    def pod(name: str, image: str) -> dict[str, Any]:
        obj = _live({"kind": "Pod", "metadata": {"name": name}, "spec": {"image": image}}, fields)
        obj["metadata"]["resourceVersion"] = "7"
        return obj

    digests = LiveDigests(kept=2)
    for name in ("a", "b", "c"):
        digests.of(pod(name, "first"))
    # "b" and "c" are kept: a changed body at the same version is not looked at...
    assert digests.of(pod("c", "second")) == live_digest(pod("c", "first"))
    assert digests.of(pod("b", "second")) == live_digest(pod("b", "first"))
    # ... "a" went first, so its object is digested again.
    assert digests.of(pod("a", "second")) == live_digest(pod("a", "second"))


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_repairs_in_a_row_back_off_and_are_reported_as_a_fight() -> None:
    clock = _Clock()
    woken: list[str] = []
    settings = DriftSettings(fight_repairs=3, backoff_initial=1.0, backoff_max=4.0, window=60)
    repairs = DriftRepairs(settings, woken.append, clock)
    key, change = "Deployment/llm", ("spec.template.spec.containers[0].image", "rogue")

    repairs.record("llm", key, (change,))
    assert repairs.wait("llm", key) == 0
    assert repairs.report([key]) == (
        "drift repaired: Deployment/llm spec.template.spec.containers[0].image "
        "(changed by manager rogue)"
    )
    repairs.record("llm", key, (change,))
    repairs.record("llm", key, (change,))
    assert repairs.wait("llm", key) == 1.0
    assert repairs.report([key]).startswith(
        "drift: spec.template.spec.containers[0].image keeps being changed by manager rogue"
    )
    for expected in (2.0, 4.0, 4.0):  # doubling, up to the maximum
        clock.now += repairs.wait("llm", key)
        repairs.record("llm", key, (change,))
        assert repairs.wait("llm", key) == expected

    # A repair long after the last starts a new row.
    clock.now += 61
    repairs.record("llm", key, (change,))
    assert repairs.wait("llm", key) == 0
    assert repairs.report([key]).startswith("drift repaired:")


async def test_a_waiting_repair_and_the_end_of_a_report_wake_the_endpoint() -> None:
    woken = asyncio.Queue[str]()
    settings = DriftSettings(fight_repairs=1, backoff_initial=0.05, backoff_max=0.05, window=0.3)
    repairs = DriftRepairs(settings, woken.put_nowait)
    repairs.record("llm", "Service/llm", ())
    assert repairs.wait("llm", "Service/llm") > 0
    async with asyncio.timeout(10):
        assert await woken.get() == "llm"  # the repair may happen now
        assert repairs.report(["Service/llm"]) != ""
        assert await woken.get() == "llm"  # the report has ended
    assert repairs.report(["Service/llm"]) == ""


async def test_an_edit_made_while_no_runtime_watched_is_found_from_the_list(
    tmp_path: Path,
) -> None:
    """Nothing is remembered between runs: a runtime started after the edit finds
    it in its initial list, and its apply repairs it."""
    async with api_target(tmp_path, bookmark_interval=0.5) as target:
        settings = RegionSettings(namespace=target.namespace)
        api = await api_client(target.kubeconfig)
        try:
            workload = planned(replicas=1, env={"MODE": "a"})
            first = await KubernetesRuntime.from_kubeconfig(
                "r1", settings, target.kubeconfig, cluster=FAST
            )
            async with first:
                await first.apply(workload)
            # What `kubectl set image deployment/llm '*=x:1'` sends.
            container = {"name": "inference", "image": "x:1"}
            await client.AppsV1Api(api).patch_namespaced_deployment(
                "llm",
                target.namespace,
                {"spec": {"template": {"spec": {"containers": [container]}}}},
                field_manager="kubectl-set",
                **AS_STRATEGIC_MERGE,
            )
            second = await KubernetesRuntime.from_kubeconfig(
                "r1", settings, target.kubeconfig, cluster=FAST
            )
            async with second:
                observed = await second.observe("llm")
                assert observed is not None
                assert observed.workload_hash == ""
                await second.apply(workload)
                observed = await second.observe("llm")
                assert observed is not None
                assert observed.workload_hash == workload_hash(workload)
                assert observed.problem == (
                    "drift repaired: Deployment/llm spec.template.spec.containers[0].image "
                    "(changed by manager kubectl-set)"
                )
            deployment = await read_object(api, "Deployment", target.namespace, "llm")
            assert deployment is not None
            assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
                "ghcr.io/example/server:1.0"
            )
        finally:
            await api.close()
