"""Model staging on Kubernetes, end to end: the runtime's init container really
runs `python -m servefleet.stage` (the test server's simulated kubelet runs it as a
process on this machine), and the runtime reads its progress from the pod's log and
its outcome from the pod's status.

Test server only: the sources are on this machine (a directory, an S3 look-alike on
loopback) and a real cluster's pods could not reach them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from servefleet.plan import Observed
from servefleet.runtime.kubernetes.cluster import KubernetesRuntime
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from servefleet.spec import ModelStaging
from tests.kubeapi import KubeApiServer, matching
from tests.kubeapi.kubelet import Kubelet
from tests.kubernetes.conftest import FAST, REAL_KUBECONFIG, Cluster, api_client
from tests.kubernetes.test_cluster import planned
from tests.models.conftest import SlowS3, slow_model, write_model
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(
    bool(REAL_KUBECONFIG), reason="the model sources live on this machine, out of the pods' reach"
)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with KubeApiServer(kubelet=Kubelet(), bookmark_interval=0.5) as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        api = await api_client(kubeconfig)
        runtime = await KubernetesRuntime.from_kubeconfig(
            "r1",
            RegionSettings(namespace="llm"),
            kubeconfig,
            cluster=dataclasses.replace(FAST, staging_poll_interval=0.1),
        )
        try:
            async with runtime:
                yield Cluster(runtime, api, "llm", server)
        finally:
            await api.close()


async def seen(cluster: Cluster, name: str = "llm") -> Observed:
    observed = await cluster.runtime.observe(name)
    assert observed is not None
    return observed


async def test_progress_comes_from_the_log_and_completion_from_the_pod(
    cluster: Cluster, slow_s3: SlowS3
) -> None:
    server = cluster.need_server()
    data, _manifest = slow_model(slow_s3, "llama/1")
    source = "s3://models/llama/1"
    await cluster.runtime.apply(
        planned(model_source=source, env={"AWS_ENDPOINT_URL": slow_s3.url}, replicas=1)
    )
    await cluster.runtime.apply(planned("plain", replicas=1))

    halfway = ModelStaging(bytes_done=len(data) // 2, bytes_total=len(data))

    async def stalled_halfway() -> bool:
        return (await seen(cluster)).staging == halfway

    await eventually(stalled_halfway, within=20)
    observed = await seen(cluster)
    assert observed.problem == f"staging the model from {source}: 0.2 MB of 0.4 MB"
    assert observed.failure == ""
    assert observed.primary.ready == 0  # no replica on a partial model
    assert server.count("get", "pods", "log") > 0

    slow_s3.release.set()

    async def staged_and_ready() -> bool:
        observed = await seen(cluster)
        return observed.staging == ModelStaging(
            bytes_done=len(data), bytes_total=len(data), complete=True
        ) and (observed.primary.ready == 1)

    await eventually(staged_and_ready, within=20)
    assert (await seen(cluster)).problem == ""
    # An endpoint without a model has no staging, and its pods are not watched.
    plain = await seen(cluster, "plain")
    assert plain.staging is None
    assert not any(
        info.resource == "pods" and info.subresource == "log" and "plain" in (info.name or "")
        for info in server.request_log
    )


async def test_a_failed_stage_is_a_failure_until_a_good_source_replaces_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    hostile = f"file:///nonexistent/model; touch {marker} $(touch {marker})"
    # The spec refuses such a source; past that check, the runtime must still not
    # hand it to a shell.
    workload = planned(model_source="file:///nonexistent/model", replicas=1)
    await cluster.runtime.apply(workload.model_copy(update={"model_source": hostile}))

    async def failed() -> bool:
        return (await seen(cluster)).failure != ""

    await eventually(failed, within=20)
    observed = await seen(cluster)
    assert observed.failure.startswith(f"model staging failed: {hostile}")
    assert "(pod llm-" in observed.failure
    assert "init container stage-model exited with code 1" in observed.failure
    assert observed.primary.ready == 0
    assert not marker.exists()  # the source reached the stage process, never a shell

    model = tmp_path / "model"
    files = write_model(model)
    await cluster.runtime.apply(planned(model_source=f"file://{model}", replicas=1))

    async def recovered() -> bool:
        observed = await seen(cluster)
        return (
            observed.failure == ""
            and observed.staging is not None
            and observed.staging.complete
            and observed.primary.ready == 1
        )

    await eventually(recovered, within=30)
    staging = (await seen(cluster)).staging
    assert staging is not None
    assert staging.bytes_total == sum(map(len, files.values()))


async def test_the_outcome_needs_no_log(cluster: Cluster, tmp_path: Path) -> None:
    """With every log read failing, completion and size still come from the pod's
    status: the termination message `servefleet.stage` leaves."""
    server = cluster.need_server()
    server.fail(status=500, times=None, match=matching(resource="pods", subresource="log"))
    model = tmp_path / "model"
    files = write_model(model)
    await cluster.runtime.apply(planned(model_source=f"file://{model}", replicas=1))

    async def ready() -> bool:
        return (await seen(cluster)).primary.ready == 1

    await eventually(ready, within=20)
    total = sum(map(len, files.values()))
    assert (await seen(cluster)).staging == ModelStaging(
        bytes_done=total, bytes_total=total, complete=True
    )
