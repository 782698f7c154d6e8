"""The Kubernetes runtime over real HTTP: against the test API server, or a real
cluster when SERVEFLEET_TEST_KUBECONFIG is set (see conftest.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from servefleet.plan import Workload, desired_workload, workload_hash
from servefleet.reconcile.controller import Controller
from servefleet.reconcile.settings import ControllerSettings
from servefleet.runtime.base import RuntimeUnavailable, WorkloadUnsupported
from servefleet.runtime.kubernetes.cluster import KubernetesRuntime
from servefleet.runtime.kubernetes.render import FIELD_MANAGER, HANDOFF_MANAGER
from servefleet.runtime.kubernetes.render_names import ANNOTATION_HASH, LABEL_MANAGED_BY, LABEL_NAME
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from servefleet.runtime.kubernetes.watches import ANNOTATION_OBJECTS
from servefleet.service import EndpointService, utc_now
from servefleet.spec import DesiredState, Region, RegionKind, RegionState, Resources
from servefleet.store import EndpointNotFound, open_store
from tests.factories import make_endpoint, make_spec
from tests.kubeapi import KubeApiServer, matching
from tests.kubernetes.conftest import AS_MERGE, FAST, Cluster
from tests.waiting import eventually

KINDS = ("Service", "Deployment", "HorizontalPodAutoscaler", "Ingress")
WEIGHTED = "alb.ingress.kubernetes.io/actions.llm-weighted"
AUTOSCALING = {"enabled": True, "min_replicas": 2, "max_replicas": 8, "metrics": []}


def planned(
    name: str = "llm",
    *,
    state: DesiredState = DesiredState.DEPLOYING,
    **spec: Any,
) -> Workload:
    endpoint = make_endpoint(name, **spec).model_copy(update={"desired_state": state})
    workload = desired_workload(endpoint, "r1")
    assert workload is not None
    return workload


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return found


def env(deployment: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container(deployment).get("env", [])}


def replicas_owners(deployment: dict[str, Any]) -> set[str]:
    return {
        entry["manager"]
        for entry in deployment["metadata"].get("managedFields", [])
        if "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {})
    }


async def present(cluster: Cluster, name: str = "llm") -> set[tuple[str, str]]:
    """(kind, name) of every object of the endpoint, read through the API."""
    found = set()
    for kind in KINDS:
        for candidate in (name, f"{name}-canary"):
            if await cluster.get(kind, candidate) is not None:
                found.add((kind, candidate))
    return found


async def observed_hash(cluster: Cluster, name: str = "llm") -> str | None:
    observed = await cluster.runtime.observe(name)
    return observed.workload_hash if observed else None


async def test_deploy_observe_and_roll_out_changes(cluster: Cluster) -> None:
    runtime = cluster.runtime
    assert await runtime.observe("llm") is None
    workload = planned(replicas=2, env={"MODE": "a"})
    await runtime.apply(workload)

    assert await present(cluster) == {("Service", "llm"), ("Deployment", "llm"), ("Ingress", "llm")}
    deployment = await cluster.get("Deployment", "llm")
    assert deployment is not None
    metadata = deployment["metadata"]
    assert metadata["labels"][LABEL_NAME] == "llm"
    assert metadata["labels"][LABEL_MANAGED_BY] == "servefleet"
    assert metadata["annotations"][ANNOTATION_HASH] == workload_hash(workload)
    assert metadata["annotations"][ANNOTATION_OBJECTS] == "Deployment/llm,Ingress/llm,Service/llm"
    assert deployment["spec"]["replicas"] == 2
    assert container(deployment)["image"] == "ghcr.io/example/server:1.0"
    assert env(deployment)["MODE"] == "a"
    service = await cluster.get("Service", "llm")
    assert service is not None
    assert service["spec"]["ports"][0]["port"] == 80
    ingress = await cluster.get("Ingress", "llm")
    assert ingress is not None
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "llm"

    observed = await runtime.observe("llm")
    assert observed is not None
    assert observed.workload_hash == workload_hash(workload)
    assert observed.routed
    assert await runtime.held() == {"llm"}
    if cluster.server is not None:
        assert observed.primary.ready == 0
        cluster.mark_ready("llm")

        async def ready() -> bool:
            seen = await runtime.observe("llm")
            return seen is not None and (seen.primary.ready, seen.primary.running) == (2, 2)

        await eventually(ready, within=5)

    changed = planned(
        replicas=2,
        env={"MODE": "b"},
        command=["serve", "--port", "{port}"],
        region_images={"r1": "ghcr.io/example/server:2.0"},
    )
    await runtime.apply(changed)
    deployment = await cluster.get("Deployment", "llm")
    assert deployment is not None
    assert env(deployment)["MODE"] == "b"
    assert container(deployment)["command"] == ["serve", "--port", "8000"]
    assert container(deployment)["image"] == "ghcr.io/example/server:2.0"
    assert deployment["metadata"]["generation"] == 2
    assert await observed_hash(cluster) == workload_hash(changed)
    if cluster.server is not None:
        # the spec changed: readiness counts only once the controller observed it
        seen = await runtime.observe("llm")
        assert seen is not None
        assert seen.primary.ready == 0

    scaled = planned(
        replicas=5,
        env={"MODE": "b"},
        command=["serve", "--port", "{port}"],
        region_images={"r1": "ghcr.io/example/server:2.0"},
    )
    await runtime.apply(scaled)
    deployment = await cluster.get("Deployment", "llm")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 5
    assert await observed_hash(cluster) == workload_hash(scaled)
    if cluster.server is not None:
        # nothing was absent that the cache held: no DELETE answered 404
        assert cluster.server.count("delete") == 0


async def test_autoscaling_hands_replicas_over_and_back(cluster: Cluster) -> None:
    runtime = cluster.runtime
    await runtime.apply(planned(replicas=3))
    deployment = await cluster.get("Deployment", "llm")
    assert deployment is not None
    assert replicas_owners(deployment) == {FIELD_MANAGER}

    autoscaled = planned(replicas=3, autoscaling=AUTOSCALING)
    await runtime.apply(autoscaled)
    hpa = await cluster.get("HorizontalPodAutoscaler", "llm")
    assert hpa is not None
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    deployment = await cluster.get("Deployment", "llm")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 3  # not the drop to 1 of a sole owner
    assert FIELD_MANAGER not in replicas_owners(deployment)
    assert await observed_hash(cluster) == workload_hash(autoscaled)

    await cluster.scale("llm", 6, manager="horizontal-pod-autoscaler")
    changed = planned(replicas=3, autoscaling=AUTOSCALING, env={"MODE": "new"})
    await runtime.apply(changed)
    deployment = await cluster.get("Deployment", "llm")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 6  # the autoscaler's count stands
    assert env(deployment)["MODE"] == "new"

    fixed = planned(replicas=4, env={"MODE": "new"})
    await runtime.apply(fixed)
    assert await cluster.get("HorizontalPodAutoscaler", "llm") is None
    deployment = await cluster.get("Deployment", "llm")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 4
    assert replicas_owners(deployment) == {FIELD_MANAGER}
    assert await observed_hash(cluster) == workload_hash(fixed)


async def test_canary_added_then_removed(cluster: Cluster) -> None:
    runtime = cluster.runtime
    await runtime.apply(planned())
    with_canary = planned(canary={"image": "ghcr.io/example/server:2.0", "weight": 20})
    await runtime.apply(with_canary)
    assert await present(cluster) == {
        ("Service", "llm"),
        ("Service", "llm-canary"),
        ("Deployment", "llm"),
        ("Deployment", "llm-canary"),
        ("Ingress", "llm"),
    }
    ingress = await cluster.get("Ingress", "llm")
    assert ingress is not None
    action = json.loads(ingress["metadata"]["annotations"][WEIGHTED])
    weights = {g["serviceName"]: g["weight"] for g in action["forwardConfig"]["targetGroups"]}
    assert weights == {"llm": 80, "llm-canary": 20}
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "llm-weighted"
    assert await observed_hash(cluster) == workload_hash(with_canary)
    if cluster.server is not None:
        cluster.mark_ready("llm-canary")

        async def canary_ready() -> bool:
            seen = await runtime.observe("llm")
            return seen is not None and seen.canary.ready == 1

        await eventually(canary_ready, within=5)

    plain = planned()
    await runtime.apply(plain)
    assert await present(cluster) == {("Service", "llm"), ("Deployment", "llm"), ("Ingress", "llm")}
    ingress = await cluster.get("Ingress", "llm")
    assert ingress is not None
    assert WEIGHTED not in ingress["metadata"]["annotations"]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "llm", "port": {"number": 80}}
    assert await observed_hash(cluster) == workload_hash(plain)


async def test_stop_scales_to_zero_and_takes_the_route_away(cluster: Cluster) -> None:
    runtime = cluster.runtime
    await runtime.apply(planned())
    stopped = planned(state=DesiredState.STOPPED)
    assert not stopped.routed
    await runtime.apply(stopped)
    assert await cluster.get("Ingress", "llm") is None
    deployment = await cluster.get("Deployment", "llm")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 0
    observed = await runtime.observe("llm")
    assert observed is not None
    assert observed.workload_hash == workload_hash(stopped)
    assert not observed.routed
    if cluster.server is not None:  # a real cluster takes a moment to stop the pods
        assert observed.primary.running == 0


async def test_applies_carry_the_kubeconfig_s_token_and_name_servefleet(
    tmp_path: Path,
) -> None:
    """Applies go out below the client's generated methods (api.py): they still
    carry the user's credentials and servefleet's User-Agent, to the object's URL."""
    async with KubeApiServer() as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig", "llm", token="t0k3n")
        runtime = await KubernetesRuntime.from_kubeconfig(
            "r1", RegionSettings(namespace="llm"), kubeconfig, cluster=FAST
        )
        async with runtime:
            await runtime.apply(planned(autoscaling=AUTOSCALING))
        applies = [info for info in server.request_log if info.verb == "patch"]
        assert {(info.resource, info.name) for info in applies} == {
            ("services", "llm"),
            ("deployments", "llm"),
            ("horizontalpodautoscalers", "llm"),
            ("ingresses", "llm"),
        }
        for info in applies:
            assert info.authorization == "Bearer t0k3n"
            assert info.user_agent.startswith("servefleet/")
            assert info.content_type == "application/apply-patch+yaml"
            assert info.query == {"fieldManager": FIELD_MANAGER, "force": "true"}


async def test_a_stuck_rollout_is_reported(cluster: Cluster) -> None:
    server = cluster.need_server()
    await cluster.runtime.apply(planned())
    condition = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "llm-6d4f" has timed out progressing.',
    }
    deployment = server.get_object("deployments", cluster.namespace, "llm")
    assert deployment is not None
    status = {"observedGeneration": deployment["metadata"]["generation"], "conditions": [condition]}
    await client.AppsV1Api(cluster.api).patch_namespaced_deployment_status(
        "llm", cluster.namespace, {"status": status}, **AS_MERGE
    )

    async def reported() -> bool:
        seen = await cluster.runtime.observe("llm")
        return seen is not None and "has timed out progressing" in seen.problem

    await eventually(reported, within=5)


async def _first_event(events: AsyncIterator[str]) -> str:
    return await anext(events)


async def test_a_hand_deleted_service_is_drift_and_is_restored(cluster: Cluster) -> None:
    runtime = cluster.runtime
    workload = planned()
    await runtime.apply(workload)
    events = runtime.events()
    await cluster.delete("Service", "llm")
    assert await asyncio.wait_for(_first_event(events), 5) == "llm"

    async def drifted() -> bool:
        return await observed_hash(cluster) == ""

    await eventually(drifted, within=5)
    await runtime.apply(workload)
    assert await cluster.get("Service", "llm") is not None
    assert await observed_hash(cluster) == workload_hash(workload)


async def test_only_changes_made_by_others_yield_events(cluster: Cluster) -> None:
    cluster.need_server()  # a real cluster's controllers write status too
    runtime = cluster.runtime
    await runtime.apply(planned("other"))
    events = runtime.events()
    await runtime.apply(planned(replicas=2))
    await runtime.apply(planned(replicas=3, canary={"weight": 10}))
    await runtime.apply(planned(replicas=3))  # deletes the canary
    await runtime.remove("llm")
    await cluster.delete("Service", "other")
    assert await asyncio.wait_for(_first_event(events), 5) == "other"


async def test_the_caches_keep_only_what_is_read(cluster: Cluster) -> None:
    runtime = cluster.runtime
    await runtime.apply(planned(replicas=2))
    served = await cluster.get("Deployment", "llm")
    cached = runtime._watches.caches["Deployment"].objects["llm"]
    assert served is not None
    assert "template" in served["spec"]
    assert cached["spec"] == {"replicas": 2}
    assert cached["metadata"]["managedFields"] == [
        {"manager": FIELD_MANAGER, "subresource": "", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    ]
    assert await observed_hash(cluster) == workload_hash(planned(replicas=2))


async def test_remove_deletes_everything(cluster: Cluster) -> None:
    runtime = cluster.runtime
    await runtime.apply(planned(canary={"weight": 10}, autoscaling=AUTOSCALING))
    await runtime.apply(planned("other"))
    assert len(await present(cluster)) == 6
    await runtime.remove("llm")
    assert await present(cluster) == set()
    assert await runtime.observe("llm") is None
    assert await runtime.held() == {"other"}
    await runtime.remove("llm")  # nothing there: not an error


async def test_a_spec_the_cluster_refuses_is_unsupported(cluster: Cluster) -> None:
    # The spec's own rules refuse this too; built past them, it stands for any
    # spec the API server's validation refuses.
    limits = Resources.model_construct(requests={"cpu": "2"}, limits={"cpu": "500m"})
    refused = planned().model_copy(update={"resources": limits})
    with pytest.raises(WorkloadUnsupported, match="must be less than or equal to cpu limit"):
        await cluster.runtime.apply(refused)
    with pytest.raises(WorkloadUnsupported, match="image"):
        await cluster.runtime.apply(planned(image=None, command=["serve"]))
    with pytest.raises(WorkloadUnsupported, match="namespace"):
        await cluster.runtime.apply(planned(namespace="elsewhere"))


async def test_server_errors_are_retried_then_reported(cluster: Cluster) -> None:
    server = cluster.need_server()
    runtime = cluster.runtime
    server.fail(500, times=2, match=matching(verb="patch", resource="deployments"))
    server.fail(429, times=1, match=matching(verb="patch", resource="services"), retry_after=0)
    workload = planned()
    await runtime.apply(workload)
    assert await observed_hash(cluster) == workload_hash(workload)
    assert server.count("patch", "deployments") == 3

    # A new port changes the Service and the Deployment (a change sends only what it touches).
    server.hang(times=1, match=matching(verb="patch", resource="deployments"))
    server.fail(429, times=1, match=matching(verb="patch", resource="services"), retry_after=1)
    started = asyncio.get_running_loop().time()
    await runtime.apply(planned(port=9000))
    assert asyncio.get_running_loop().time() - started >= 1.0  # Retry-After, then a timeout
    assert await observed_hash(cluster) == workload_hash(planned(port=9000))

    server.fail(500, times=None, match=matching(verb="patch"))
    with pytest.raises(RuntimeUnavailable, match="500"):
        await runtime.apply(planned(replicas=4))
    server.clear_faults()
    await runtime.apply(planned(replicas=4))
    deployment = await cluster.get("Deployment", "llm")
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 4


async def test_a_converged_region_costs_only_its_watches(cluster: Cluster) -> None:
    server = cluster.need_server()
    runtime = cluster.runtime
    for name in ("a", "b", "c"):
        await runtime.apply(planned(name, canary={"weight": 10}))
        server.mark_ready(cluster.namespace, name)
    await runtime.remove("c")
    server.reset_counts()
    await asyncio.sleep(2)
    for verb in ("get", "list", "create", "update", "patch", "delete"):
        assert server.count(verb) == 0, verb
    assert server.open_watches == 5  # the four kinds applied, and pods that stage a model
    assert await runtime.held() == {"a", "b"}


async def test_the_caches_recover_from_dropped_and_expired_watches(cluster: Cluster) -> None:
    server = cluster.need_server()
    runtime = cluster.runtime
    await runtime.apply(planned())
    events = runtime.events()
    lists = server.count("list")

    server.drop_watches(abort=True)
    await asyncio.sleep(0.1)
    server.mark_ready(cluster.namespace, "llm")
    assert await asyncio.wait_for(_first_event(events), 5) == "llm"

    async def ready() -> bool:
        seen = await runtime.observe("llm")
        return seen is not None and seen.primary.ready == 2

    await eventually(ready, within=5)
    assert server.count("list") == lists  # resumed from its resourceVersion

    server.compact()
    server.drop_watches()
    await cluster.delete("Ingress", "llm")
    assert await asyncio.wait_for(_first_event(events), 5) == "llm"

    async def unrouted() -> bool:
        seen = await runtime.observe("llm")
        return seen is not None and not seen.routed

    await eventually(unrouted, within=5)
    assert server.count("list") > lists  # 410 Gone: listed again

    async def watching() -> bool:
        return server.open_watches == 5

    await eventually(watching, within=5)


async def test_the_controller_drives_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    """The real reconciler with a SQLite store: deploy, stop, delete."""
    if cluster.server is not None:
        cluster.server.auto_ready = 0.05
    store = await open_store(f"sqlite:///{tmp_path / 'store.db'}", init=True)
    await store.put_region(Region(name="r1", kind=RegionKind.KUBERNETES))
    service = EndpointService(store)
    settings = ControllerSettings(workers=2, resync_interval=3600, watchdog_threshold=3600)
    controller = Controller(store, cluster.runtime, "r1", settings, clock=utc_now)
    task = asyncio.create_task(controller.run())

    async def state_is(state: RegionState) -> bool:
        statuses = await store.list_region_status(endpoint="llm", region="r1")
        return bool(statuses) and statuses[0].state is state

    async def objects_are(expected: set[tuple[str, str]]) -> bool:
        return await present(cluster) == expected

    try:
        await service.deploy("llm", make_spec(replicas=2), ["r1"])
        await eventually(
            lambda: objects_are({("Service", "llm"), ("Deployment", "llm"), ("Ingress", "llm")})
        )
        if cluster.server is not None:
            await eventually(lambda: state_is(RegionState.READY))
            writes = controller.runtime_writes
            await asyncio.sleep(0.3)
            assert controller.runtime_writes == writes  # converged: no more applies

        await service.stop("llm")
        # The Ingress goes first, then the Deployment is applied at 0: wait for the state.
        await eventually(lambda: state_is(RegionState.STOPPED), within=10 if cluster.server else 90)
        assert await present(cluster) == {("Service", "llm"), ("Deployment", "llm")}
        deployment = await cluster.get("Deployment", "llm")
        assert deployment is not None
        assert deployment["spec"]["replicas"] == 0

        await service.delete("llm")
        await eventually(lambda: objects_are(set()))

        async def purged() -> bool:
            try:
                await store.get_endpoint("llm")
            except EndpointNotFound:
                return True
            return False

        await eventually(purged)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.close()


async def test_start_waits_for_the_lists_and_gives_up_after_its_timeout(
    cluster: Cluster, tmp_path: Path
) -> None:
    server = cluster.need_server()
    server.fail(500, times=None, match=matching(verb="list", resource="ingresses"))
    path = server.write_kubeconfig(tmp_path / "kubeconfig")
    runtime = await KubernetesRuntime.from_kubeconfig(
        "r1", RegionSettings(namespace=cluster.namespace), path, cluster=FAST
    )
    try:
        with pytest.raises(RuntimeUnavailable, match="initial lists"):
            await runtime.start(give_up_after=0.5)
        server.clear_faults()
        await cluster.runtime.apply(planned())
        await eventually(lambda: _holds(runtime, "llm"), within=5)
    finally:
        await runtime.close()


async def _holds(runtime: KubernetesRuntime, name: str) -> bool:
    observed = await runtime.observe(name)
    return observed is not None and observed.routed


# An autoscaled Deployment starts from the autoscaler's minimum (issue 15, part 1): an
# HPA never scales a target up from 0, and below its minimum only on its next sync.

BOUNDS = {"enabled": True, "min_replicas": 3, "max_replicas": 8, "metrics": []}
HANDED_OVER = {HANDOFF_MANAGER}
"""Who holds `spec.replicas` once servefleet has set the minimum and let go."""


async def replicas_of(cluster: Cluster) -> tuple[int, set[str]]:
    """The primary Deployment's `spec.replicas` and the managers that own it."""
    deployment = await cluster.get("Deployment", "llm")
    assert deployment is not None
    return deployment["spec"]["replicas"], replicas_owners(deployment)


async def test_an_autoscaled_deployment_is_created_at_the_minimum(cluster: Cluster) -> None:
    await cluster.runtime.apply(planned(autoscaling=BOUNDS))
    replicas, _owners = await replicas_of(cluster)
    assert replicas == 3  # not the default 1 until the HPA's next sync

    # The next apply lets go of the count (the HPA's from now on) and keeps it.
    await cluster.runtime.apply(planned(autoscaling=BOUNDS, env={"MODE": "b"}))
    assert await replicas_of(cluster) == (3, HANDED_OVER)


async def test_start_after_stop_sets_the_minimum_before_the_autoscaler_returns(
    cluster: Cluster,
) -> None:
    runtime = cluster.runtime
    await runtime.apply(planned(autoscaling=BOUNDS))
    await runtime.apply(planned(autoscaling=BOUNDS, state=DesiredState.STOPPED))
    assert await cluster.get("HorizontalPodAutoscaler", "llm") is None
    assert (await replicas_of(cluster))[0] == 0

    started = planned(autoscaling=BOUNDS)
    await runtime.apply(started)
    assert await replicas_of(cluster) == (3, HANDED_OVER)  # not 0, where an HPA never scales
    hpa = await cluster.get("HorizontalPodAutoscaler", "llm")
    assert hpa is not None
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 8)
    assert await observed_hash(cluster) == workload_hash(started)


async def test_autoscaling_switched_on_below_the_minimum_starts_at_the_minimum(
    cluster: Cluster,
) -> None:
    runtime = cluster.runtime
    await runtime.apply(planned(replicas=1))
    await runtime.apply(planned(replicas=1, autoscaling=BOUNDS))
    assert await replicas_of(cluster) == (3, HANDED_OVER)

    # Above the minimum, the count is kept as it was.
    await runtime.apply(planned(replicas=5))
    await runtime.apply(planned(replicas=5, autoscaling=BOUNDS))
    assert await replicas_of(cluster) == (5, HANDED_OVER)


async def test_an_autoscaler_s_count_is_never_overwritten(cluster: Cluster) -> None:
    """Once the HPA exists, whatever it (or any other manager through `/scale`) sets
    stands: through spec changes, a raised minimum, and the HPA deleted by hand and
    re-created."""
    runtime = cluster.runtime
    await runtime.apply(planned(autoscaling=BOUNDS))
    await runtime.apply(planned(autoscaling=BOUNDS, state=DesiredState.STOPPED))
    await runtime.apply(planned(autoscaling=BOUNDS))
    assert (await replicas_of(cluster))[0] == 3

    await cluster.scale("llm", 6, manager="horizontal-pod-autoscaler")
    await runtime.apply(planned(autoscaling=BOUNDS, env={"MODE": "b"}))
    assert await replicas_of(cluster) == (6, {"horizontal-pod-autoscaler"})

    raised = {**BOUNDS, "min_replicas": 4}
    if cluster.server is not None:  # a real HPA controller would raise it at once
        # The HPA's own controller raises a count below a new minimum, not servefleet.
        await cluster.scale("llm", 3, manager="horizontal-pod-autoscaler")
        await runtime.apply(planned(autoscaling=raised, env={"MODE": "b"}))
        assert await replicas_of(cluster) == (3, {"horizontal-pod-autoscaler"})

    await cluster.scale("llm", 5, manager="horizontal-pod-autoscaler")
    await cluster.delete("HorizontalPodAutoscaler", "llm")
    await runtime.apply(planned(autoscaling=raised, env={"MODE": "c"}))
    assert await cluster.get("HorizontalPodAutoscaler", "llm") is not None
    assert await replicas_of(cluster) == (5, {"horizontal-pod-autoscaler"})


async def test_a_steady_autoscaled_fleet_costs_no_request(cluster: Cluster) -> None:
    """The start decision is read from the watch cache: no GET, and no write once the
    workload is in place."""
    server = cluster.need_server()
    runtime = cluster.runtime
    await runtime.apply(planned(autoscaling=BOUNDS, state=DesiredState.STOPPED))
    server.reset_counts()
    await runtime.apply(planned(autoscaling=BOUNDS))
    assert server.count("get") == 0
    # hand-off, Deployment, HPA, Ingress: the Service is unchanged, so not sent
    assert server.count("patch") == 4
    server.reset_counts()
    await asyncio.sleep(1)
    for verb in ("get", "list", "create", "update", "patch", "delete"):
        assert server.count(verb) == 0, verb


async def test_a_watch_refused_with_retry_after_is_opened_again_no_sooner(
    cluster: Cluster,
) -> None:
    """An overloaded apiserver answers a watch 429 with Retry-After; client-go's
    reflector waits that long before watching again, and so does the runtime (found
    by `python -m chaos --only kube-outage`: it came back after 0.2 s)."""
    server = cluster.need_server()
    await cluster.runtime.apply(planned())
    refused = server.fail(
        429, times=1, match=matching(verb="watch", resource="services"), retry_after=1
    )
    server.drop_watches()

    async def watching_again() -> bool:
        return refused.exhausted and server.open_watches == 5

    await eventually(watching_again, within=30)
    watches = [
        info.received_at
        for info in server.request_log
        if info.verb == "watch" and info.resource == "services"
    ]
    # The refused one, then the next: the 1 s asked for apart (less a timer's slack),
    # where the backoff of these settings alone is a few milliseconds.
    assert watches[-1] - watches[-2] >= 0.9
