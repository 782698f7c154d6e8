"""Two reconcilers for one Kubernetes region, elected through the region's Lease.

Each reconciler is `run_region` in this process with its own store connection and
its own API clients, which name it in their User-Agent, so the test API server's
request log says who sent each request, in the order the server received them.
Every time a reconciler starts or stops leading (opens or closes its runtime) the
test notes it, with the request log's length at that moment.

What must hold: the notes never show two leaders at once; the standby takes over
and makes the region match the store; and (test server only) the deposed
leader's last write to the region and its last moment of leading both came
before the standby's write that took the Lease. Against a real cluster
(`SERVEFLEET_TEST_KUBECONFIG`) the handover test runs without the request-log
checks, and the partition test is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from servefleet.cli.up import Running, UpOptions, run
from servefleet.reconcile.leader import LeaseSettings
from servefleet.reconcile.region import run_region
from servefleet.reconcile.settings import ControllerSettings
from servefleet.runtime.base import Runtime
from servefleet.runtime.kubernetes.cluster import KubernetesRuntime
from servefleet.runtime.kubernetes.lease import KubernetesLease, lease_name
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from servefleet.service import EndpointService, utc_now
from servefleet.spec import EndpointSpec, Region, RegionKind, RegionStatus
from servefleet.store import Lease, LeaseLost, Store, open_store
from tests.kubeapi.request_controls import RequestInfo
from tests.kubernetes.conftest import FAST, ApiTarget, api_client, api_target, read_object
from tests.scenarios.harness import LOCAL, SETTLE
from tests.waiting import eventually

REGION = "k1"
LEASE = LeaseSettings(ttl=3, renew_interval=0.3, retry_interval=0.1, renew_deadline=1.5)
CONTROLLER = ControllerSettings(backoff_max=1.0, store_retry=0.2)
WRITES = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@dataclass
class Note:
    holder: str
    leading: bool
    position: int
    """Requests the test server had received by then (0 on a real cluster)."""


class InFlightStatusWrites:
    """A reconciler's store, through which its status writes can be caught on the way:
    once `catching`, a status write never answers (sent, its answer not back yet) and
    is kept in `caught`, for the test to deliver to the store later, as a slow network
    would."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.catching = False
        self.caught: list[tuple[RegionStatus, Lease | None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def put_region_status(self, status: RegionStatus, *, lease: Lease | None = None) -> None:
        if not self.catching:
            await self._store.put_region_status(status, lease=lease)
            return
        self.caught.append((status, lease))
        await asyncio.Event().wait()


@dataclass
class Reconciler:
    holder: str
    target: ApiTarget
    notes: list[Note]
    task: asyncio.Task[None] | None = None
    leading: bool = False
    store: InFlightStatusWrites | None = None

    @property
    def user_agent(self) -> str:
        return f"servefleet-{self.holder}"

    def note(self, leading: bool) -> None:
        server = self.target.server
        position = len(server.request_log) if server is not None else 0
        self.notes.append(Note(self.holder, leading, position))
        self.leading = leading

    @asynccontextmanager
    async def open_runtime(self) -> AsyncIterator[Runtime]:
        api = await api_client(self.target.kubeconfig, user_agent=self.user_agent)
        settings = RegionSettings(namespace=self.target.namespace)
        async with KubernetesRuntime(
            REGION, settings, api, cluster=FAST, owns_client=True
        ) as runtime:
            self.note(leading=True)
            try:
                yield runtime
            finally:
                self.note(leading=False)

    async def start(self, store_url: str, stack: AsyncExitStack) -> None:
        store = await open_store(store_url)
        stack.push_async_callback(store.close)
        self.store = InFlightStatusWrites(store)
        api = await api_client(self.target.kubeconfig, user_agent=self.user_agent)
        leases = KubernetesLease(api, self.target.namespace, REGION, owns_client=True)
        stack.push_async_callback(leases.close)
        self.task = asyncio.create_task(
            run_region(
                self.store,  # type: ignore[arg-type]
                REGION,
                self.open_runtime,
                holder=self.holder,
                settings=CONTROLLER,
                lease=LEASE,
                clock=utc_now,
                leases=leases,
            ),
            name=f"reconciler-{self.holder}",
        )
        stack.push_async_callback(self.stop)

    async def stop(self) -> None:
        """Cancel it as Ctrl-C does: it stops leading and releases the Lease."""
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@dataclass
class TwoReconcilers:
    """The region, two reconcilers for it, and a user's view of both."""

    target: ApiTarget
    store: Store
    service: EndpointService
    api: client.ApiClient
    reconcilers: list[Reconciler]
    notes: list[Note]
    """Both reconcilers' notes, in the order they were taken."""

    async def leader(self) -> Reconciler:
        """The one reconciler leading, once exactly one does."""

        async def one_leads() -> bool:
            return [r.leading for r in self.reconcilers].count(True) == 1

        await eventually(one_leads, within=SETTLE)
        return next(r for r in self.reconcilers if r.leading)

    async def standby_takes_over(self, old: Reconciler) -> Reconciler:
        (standby,) = (r for r in self.reconcilers if r is not old)

        async def leads() -> bool:
            return standby.leading

        await eventually(leads, within=SETTLE)
        return standby

    async def replicas(self) -> int | None:
        """The Deployment's `spec.replicas` as the API serves it, None while absent."""
        deployment = await read_object(self.api, "Deployment", self.target.namespace, "llm")
        return None if deployment is None else int(deployment["spec"]["replicas"])

    async def has_replicas(self, replicas: int) -> None:
        async def applied() -> bool:
            return await self.replicas() == replicas

        await eventually(applied, within=SETTLE)

    def check_one_leader_at_a_time(self) -> None:
        leading: set[str] = set()
        for note in self.notes:
            if note.leading:
                leading.add(note.holder)
            else:
                leading.discard(note.holder)
            assert len(leading) <= 1, f"two leaders at once: {self.notes}"

    def check_handover(self, old: Reconciler, new: Reconciler) -> None:
        """On the test server: the old leader stopped, and sent its last write to the
        region, before the new leader's write that took the Lease."""
        server = self.target.server
        if server is None:
            return
        log = server.request_log
        started = next(n.position for n in self.notes if n.holder == new.holder and n.leading)
        lease_writes = [
            position
            for position, info in enumerate(log[:started])
            if _lease_write(info) and info.user_agent == new.user_agent
        ]
        assert lease_writes, "the new leader took over without writing the Lease"
        takeover = lease_writes[-1]
        stopped = next(n.position for n in self.notes if n.holder == old.holder and not n.leading)
        assert stopped <= takeover
        writes = [
            position
            for position, info in enumerate(log)
            if info.verb in WRITES
            and info.resource != "leases"
            and info.user_agent == old.user_agent
        ]
        assert writes, "the old leader never wrote to the region"
        assert max(writes) < takeover
        assert any(
            info.user_agent == new.user_agent and info.verb in WRITES and info.resource != "leases"
            for info in log[takeover:]
        )


async def _lease_spec(api: client.ApiClient, namespace: str) -> dict[str, Any]:
    """The region's Lease spec as the API serves it."""
    lease = await read_object(api, "Lease", namespace, lease_name(REGION))
    assert lease is not None
    spec: dict[str, Any] = lease["spec"]
    return spec


def _lease_write(info: RequestInfo) -> bool:
    return info.resource == "leases" and info.verb in WRITES


@asynccontextmanager
async def region_with_two_reconcilers(tmp_path: Path) -> AsyncIterator[TwoReconcilers]:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    async with api_target(tmp_path, auto_ready=0.05) as target, AsyncExitStack() as stack:
        store = await open_store(store_url, init=True)
        stack.push_async_callback(store.close)
        service = EndpointService(store)
        await service.add_region(
            Region(
                name=REGION,
                kind=RegionKind.KUBERNETES,
                kubeconfig=str(target.kubeconfig),
                namespace=target.namespace,
            )
        )
        api = await api_client(target.kubeconfig)
        stack.push_async_callback(api.close)
        notes: list[Note] = []
        reconcilers = [Reconciler(holder, target, notes) for holder in ("a", "b")]
        for reconciler in reconcilers:
            await reconciler.start(store_url, stack)
        yield TwoReconcilers(target, store, service, api, reconcilers, notes)


async def test_a_standby_takes_over_from_a_leader_that_shuts_down(tmp_path: Path) -> None:
    async with region_with_two_reconcilers(tmp_path) as region:
        old = await region.leader()
        await region.service.deploy("llm", EndpointSpec(image="vllm/vllm-openai:v0.6.3"), [REGION])
        await region.has_replicas(1)

        await old.stop()
        new = await region.standby_takes_over(old)
        await region.service.scale("llm", 3)
        await region.has_replicas(3)

        region.check_one_leader_at_a_time()
        region.check_handover(old, new)


async def test_a_leader_cut_off_from_its_lease_stops_before_the_standby_starts(
    tmp_path: Path,
) -> None:
    async with region_with_two_reconcilers(tmp_path) as region:
        kube = region.target.need_server()
        old = await region.leader()
        await region.service.deploy("llm", EndpointSpec(image="vllm/vllm-openai:v0.6.3"), [REGION])
        await region.has_replicas(1)

        # Its Lease requests fail; its writes to the region would still go through.
        kube.fail(
            status=503,
            times=None,
            match=lambda info: info.resource == "leases" and info.user_agent == old.user_agent,
        )
        new = await region.standby_takes_over(old)
        await region.service.scale("llm", 3)
        await region.has_replicas(3)

        region.check_one_leader_at_a_time()
        region.check_handover(old, new)


async def test_a_deposed_leaders_status_write_in_flight_is_refused(tmp_path: Path) -> None:
    async with region_with_two_reconcilers(tmp_path) as region:
        old = await region.leader()
        assert old.store is not None
        await region.service.deploy("llm", EndpointSpec(image="vllm/vllm-openai:v0.6.3"), [REGION])
        await region.has_replicas(1)
        old.store.catching = True
        await region.service.scale("llm", 3)

        async def caught() -> bool:
            assert old.store is not None
            return bool(old.store.caught)

        await eventually(caught, within=SETTLE)
        await old.stop()
        # Leading, the new leader has recorded its token in the store.
        new = await region.standby_takes_over(old)
        await new.stop()
        stored = await region.store.list_region_status()

        (status, lease), *_ = old.store.caught
        with pytest.raises(LeaseLost):
            await region.store.put_region_status(status, lease=lease)
        assert await region.store.list_region_status() == stored


async def test_up_elects_the_leader_of_a_kubernetes_region_through_its_lease(
    tmp_path: Path,
) -> None:
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    async with api_target(tmp_path) as target, AsyncExitStack() as stack:
        store = await open_store(store_url, init=True)
        stack.push_async_callback(store.close)
        await EndpointService(store).add_region(
            Region(
                name=REGION,
                kind=RegionKind.KUBERNETES,
                kubeconfig=str(target.kubeconfig),
                namespace=target.namespace,
            )
        )
        api = await api_client(target.kubeconfig)
        stack.push_async_callback(api.close)
        options = UpOptions(
            store_url=store_url,
            regions=[REGION],
            demo=False,
            host="127.0.0.1",
            port=0,
            log_format="text",
            log_dir=tmp_path / "logs",
            controller=CONTROLLER,
            lease=LEASE,
            local=LOCAL,
        )
        started: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
        up = asyncio.create_task(run(options, started.set_result))
        try:
            running = await asyncio.wait_for(started, SETTLE)

            async def leading() -> bool:
                return REGION in running.runtimes

            await eventually(leading, within=SETTLE)
            assert (await _lease_spec(api, target.namespace))["holderIdentity"]
        finally:
            up.cancel()
            await asyncio.gather(up, return_exceptions=True)
        # Shut down cleanly, it handed the Lease back.
        assert not (await _lease_spec(api, target.namespace))["holderIdentity"]
