"""What the Kubernetes scenarios share: the test API server (`tests.kubeapi`) in this
process, reached by the reconcilers through a TCP proxy that a scenario can cut (a
blackout: connections refused and reset, as when the server or the network is
gone), kubernetes regions registered in a store, and the Lease's history.

Who did what on the cluster is read from the server's request log, as from a real
API server's audit log: every `servefleet reconcile` sends a User-Agent naming its
host and process id (`servefleet.runtime.kubernetes.api.user_agent`), the same
`host:pid` that begins its Lease holder identity.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from chaos.fleet import ENDPOINT, converged
from chaos.postgres import Schema, chaos_schema
from chaos.writes import holder_pid
from servefleet.runtime.kubernetes.lease import lease_name
from servefleet.service import EndpointService
from servefleet.spec import EndpointSpec, Region, RegionKind
from servefleet.store import Store, open_store
from tests.kubeapi import KubeApiServer, RequestInfo
from tests.kubeapi.resources import LEASES, ResourceType
from tests.scenarios.harness import UpProcess, manifest, reconcile_process
from tests.scenarios.proxy import TcpProxy

NAMESPACE = "chaos"
REGION = "k1"
"""The kubernetes region of the scenarios that run `reconcile` on one."""
IMAGE = "vllm/vllm-openai:v0.6.3"
AUTO_READY = 0.05
"""Seconds after a Deployment change until the test server reports it rolled out."""
MUTATING = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass(frozen=True)
class LeaseChange:
    at: float
    """time.time() when the server committed it."""
    region: str
    holder: str
    """holderIdentity; "" once released."""


@dataclass
class Cluster:
    """The test API server, the proxy in front of it and the kubeconfig through it."""

    server: KubeApiServer
    proxy: TcpProxy
    kubeconfig: Path
    lease_changes: list[LeaseChange] = field(default_factory=list)

    def _record_lease(
        self, resource: ResourceType, obj: dict[str, Any], _old: dict[str, Any] | None
    ) -> None:
        if resource is LEASES:
            name: str = obj["metadata"]["name"]
            region = name.removeprefix(lease_name(""))
            holder = (obj.get("spec") or {}).get("holderIdentity") or ""
            self.lease_changes.append(LeaseChange(time.time(), region, holder))

    def holder(self, region: str) -> str:
        """The region's Lease holder now ("" for none)."""
        lease = self.server.get_object("leases", NAMESPACE, lease_name(region))
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    def holder_pid(self, region: str) -> int | None:
        holder = self.holder(region)
        return holder_pid(holder) if holder else None

    def ingress_name(self) -> str:
        """The name of the one Ingress in the namespace."""
        (ingress,) = self.server.objects("ingresses", NAMESPACE)
        return str(ingress["metadata"]["name"])

    async def delete_ingress_by_hand(self, name: str) -> int:
        """DELETE the Ingress as a user's kubectl would (straight to the server, with
        kubectl's User-Agent); the answer's status."""
        url = f"{self.server.url}/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/ingresses/{name}"
        headers = {"User-Agent": "kubectl/v1.36.2 (linux/amd64) kubernetes/chaos"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.delete(url) as response,
        ):
            return response.status

    async def register(self, store: Store, region: str) -> None:
        await store.put_region(
            Region(
                name=region,
                kind=RegionKind.KUBERNETES,
                kubeconfig=str(self.kubeconfig),
                namespace=NAMESPACE,
            )
        )


def client_pid(info: RequestInfo) -> int | None:
    """The process id in a servefleet User-Agent (`servefleet/<version> (<host>:<pid>)`)."""
    _, _, inside = info.user_agent.partition("(")
    pid = inside.rstrip(")").rpartition(":")[2]
    return int(pid) if pid.isdigit() else None


def writes(log: Sequence[RequestInfo]) -> list[RequestInfo]:
    """The requests that change the cluster (Lease renewals included)."""
    return [info for info in log if info.verb in MUTATING]


@asynccontextmanager
async def cluster(workdir: Path) -> AsyncIterator[Cluster]:
    """A started test API server whose Deployments roll out after `AUTO_READY` s,
    behind a started proxy; both stopped on the way out."""
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(KubeApiServer(auto_ready=AUTO_READY))
        proxy = TcpProxy("127.0.0.1", server.port)
        await proxy.start()
        stack.push_async_callback(proxy.close)
        config = server.kubeconfig(NAMESPACE)
        config["clusters"][0]["cluster"]["server"] = proxy.url(server.url)
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        found = Cluster(server, proxy, kubeconfig)
        server.engine.hooks.append(found._record_lease)
        yield found


@dataclass
class KubeFleet:
    """A scenario's store (a PostgreSQL schema with its status write log), the test
    API server and region `REGION` on it, and the `reconcile` processes started."""

    schema: Schema
    cluster: Cluster
    store: Store
    service: EndpointService
    workdir: Path
    stack: AsyncExitStack

    async def reconciler(
        self, writer: str, *args: str, env: Mapping[str, str] | None = None
    ) -> UpProcess:
        """`reconcile --region REGION <args>`, its status writes logged as `writer`;
        killed (its process group) when the scenario's stack closes."""
        return await self.stack.enter_async_context(
            reconcile_process(
                self.schema.url_for(writer),
                *("--region", REGION, *args),
                stderr=self.workdir / f"{writer}.log",
                env=env,
            )
        )

    async def converged(self, replicas: int, within: float, endpoint: str = ENDPOINT) -> None:
        """`chaos.fleet.converged` in `REGION` (no replica processes to count here)."""
        await converged(
            self.store,
            replicas=replicas,
            processes=lambda: replicas,
            within=within,
            endpoint=endpoint,
            region=REGION,
        )


async def kube_fleet(
    stack: AsyncExitStack, postgres_url: str, workdir: Path, endpoints: Sequence[str] = (ENDPOINT,)
) -> KubeFleet:
    """A `KubeFleet` with `endpoints` (an image, 2 replicas) declared in `REGION`,
    taken down by `stack`; no reconciler yet."""
    schema = await stack.enter_async_context(chaos_schema(postgres_url))
    kube = await stack.enter_async_context(cluster(workdir))
    store = await open_store(schema.url)
    stack.push_async_callback(store.close)
    await kube.register(store, REGION)
    service = EndpointService(store)
    for name in endpoints:
        await service.apply(manifest(name, EndpointSpec(image=IMAGE, replicas=2), [REGION]))
    return KubeFleet(schema, kube, store, service, workdir, stack)
