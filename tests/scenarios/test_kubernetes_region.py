"""`servefleet up` driving a Kubernetes region (the test API server) beside a local one."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from servefleet.cli.up import Running, UpOptions, run
from servefleet.reconcile.controller import ControllerSettings
from servefleet.reconcile.leader import LeaseSettings
from servefleet.service import EndpointService
from servefleet.spec import DesiredState, EndpointSpec, Region, RegionKind, RegionState
from servefleet.store import EndpointNotFound, open_store
from tests.kubeapi.server import KubeApiServer
from tests.scenarios.harness import LOCAL
from tests.waiting import eventually


async def test_up_reconciles_a_kubernetes_region_from_its_registration(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    async with KubeApiServer(auto_ready=0.05) as kube:
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        store = await open_store(store_url)
        service = EndpointService(store)
        await service.add_region(
            Region(
                name="k1", kind=RegionKind.KUBERNETES, kubeconfig=str(kubeconfig), namespace="llm"
            )
        )
        options = UpOptions(
            store_url=store_url,
            regions=["k1"],
            demo=False,
            host="127.0.0.1",
            port=0,
            log_format="text",
            log_dir=tmp_path / "logs",
            controller=ControllerSettings(backoff_max=1.0, store_retry=0.2),
            lease=LeaseSettings(ttl=5, renew_interval=1, retry_interval=0.2),
            local=LOCAL,
        )
        started: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(run(options, started.set_result))
        try:
            running = await asyncio.wait_for(started, 30)
            assert running.gateway_url == ""  # no local region, no gateway

            spec = EndpointSpec(image="vllm/vllm-openai:v0.6.3", replicas=2)
            await service.deploy("llm", spec, ["k1"])

            async def fleet_running() -> bool:
                endpoint = await store.get_endpoint("llm")
                return endpoint.desired_state is DesiredState.RUNNING

            await eventually(fleet_running, within=30)
            names = {(o["kind"], o["metadata"]["name"]) for o in _objects(kube)}
            assert names == {("Deployment", "llm"), ("Service", "llm"), ("Ingress", "llm")}
            (status,) = await store.list_region_status(endpoint="llm")
            assert status.state is RegionState.READY
            assert (status.replicas_ready, status.replicas_desired) == (2, 2)

            await service.delete("llm")

            async def purged() -> bool:
                try:
                    await store.get_endpoint("llm")
                except EndpointNotFound:
                    return True
                return False

            await eventually(purged, within=30)
            assert _objects(kube) == []
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.close()


def _objects(kube: KubeApiServer) -> list[dict[str, object]]:
    return [
        item
        for plural in ("deployments", "services", "ingresses", "horizontalpodautoscalers")
        for item in kube.objects(plural, "llm")
    ]
