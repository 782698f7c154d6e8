"""The Kubernetes runtime: `KubernetesRuntime`, the `Runtime` of one region namespace.

It holds no state of its own beyond what the API server says and what it applied
last, and composes one part per concern, each in its own module:

    module        concern
    api.py        every request: token bucket, timeout, retries (`ClusterApi`)
    transport.py  how an apply reaches the server: servefleet's own HTTP/1.1 client
    errors.py     what an answer means: the runtime's errors, mapped once
    watches.py    the list + watch caches of the namespace (`Watches`)
    events.py     which endpoints `events()` yields, our own writes held back
    observe.py    `observe()`, from the caches only
    drift.py      whether servefleet's fields were changed by others; repair pacing
    apply.py      `apply()` and `remove()`, and the `spec.replicas` hand-off
    applied.py    what was applied last per endpoint, so a change sends only what it touches
    staging.py    model staging: the staging pods' entries and log progress
    traffic.py    each canaried version's traffic, from the region's Prometheus
    traffic_queries.py  its queries and what their answers mean (pure)
    render.py     workload -> manifests (pure), one render_*.py module per kind
    settings.py   `ClusterSettings`: the client's timings and limits

A converged region costs the open watches and nothing else: observe() reads the
caches, and apply() writes only when the reconciler found the hash drifted or
the caches found servefleet's fields changed by someone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient

from servefleet.metrics import Metrics
from servefleet.plan import Observed, Workload
from servefleet.runtime.base import RuntimeUnavailable
from servefleet.runtime.kubernetes.api import PODS, ClusterApi, make_api_client, managed_kinds
from servefleet.runtime.kubernetes.applied import AppliedWorkloads
from servefleet.runtime.kubernetes.apply import Writer
from servefleet.runtime.kubernetes.drift import DriftRepairs, LiveDigests
from servefleet.runtime.kubernetes.events import EndpointEvents
from servefleet.runtime.kubernetes.observe import observe
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from servefleet.runtime.kubernetes.settings import ClusterSettings
from servefleet.runtime.kubernetes.staging import StagingProgress, pod_entry, stage_unchanged
from servefleet.runtime.kubernetes.traffic import PrometheusTraffic
from servefleet.runtime.kubernetes.traffic_queries import TrafficQueries
from servefleet.runtime.kubernetes.watches import Cache, Watches, managed_entry

__all__ = ["ClusterSettings", "KubernetesRuntime"]


class KubernetesRuntime:
    """The `Runtime` of one Kubernetes region (see the module docstring).

    Use as `async with KubernetesRuntime(...) as runtime:` or call `start()`
    (waits for the initial lists) and `close()`.
    """

    def __init__(
        self,
        region: str,
        settings: RegionSettings,
        api_client: ApiClient,
        *,
        cluster: ClusterSettings = ClusterSettings(),
        owns_client: bool = False,
        metrics: Metrics | None = None,
        traffic: TrafficQueries | None = None,
    ) -> None:
        """`traffic`: where and how the versions' traffic is read (None: it is not)."""
        self.region = region
        self.settings = settings
        self.namespace = settings.namespace
        self._api_client = api_client
        self._owns_client = owns_client
        self._api = api = ClusterApi(
            region, settings.namespace, api_client, cluster, metrics=metrics
        )
        self._events = EndpointEvents()
        digests = LiveDigests()
        entry = functools.partial(managed_entry, digests=digests)
        self._watches = Watches(
            region,
            api,
            cluster,
            self._events,
            managed=[Cache(kind, entry) for kind in managed_kinds(settings)],
            pods=Cache(PODS, pod_entry, stage_unchanged),
        )
        self._staging = StagingProgress(region, api, cluster, self._events, self._watches.pods)
        self._repairs = DriftRepairs(
            cluster.drift, lambda endpoint: self._events.notify([endpoint])
        )
        self._applied = AppliedWorkloads()
        self._traffic = (
            PrometheusTraffic(
                region,
                settings.namespace,
                traffic,
                lambda endpoint: self._events.notify([endpoint]),
                interval=cluster.traffic_interval,
                timeout=cluster.traffic_timeout,
            )
            if traffic is not None
            else None
        )
        self._writer = Writer(
            region,
            settings,
            api,
            self._watches,
            self._events,
            self._repairs,
            self._applied,
            digests,
            cluster.sync_timeout,
        )
        self._tasks: list[asyncio.Task[None]] = []

    # Construction.

    @classmethod
    async def from_kubeconfig(
        cls,
        region: str,
        settings: RegionSettings,
        path: Path | str | None = None,
        *,
        context: str | None = None,
        cluster: ClusterSettings = ClusterSettings(),
        metrics: Metrics | None = None,
        traffic: TrafficQueries | None = None,
    ) -> KubernetesRuntime:
        """A runtime on the cluster of a kubeconfig file (default: $KUBECONFIG or
        ~/.kube/config) and context (default: the current one); not started."""
        configuration = client.Configuration()
        await config.load_kube_config(
            config_file=str(path) if path is not None else None,
            context=context,
            client_configuration=configuration,
        )
        return cls(
            region,
            settings,
            make_api_client(configuration),
            cluster=cluster,
            owns_client=True,
            metrics=metrics,
            traffic=traffic,
        )

    @classmethod
    def in_cluster(
        cls,
        region: str,
        settings: RegionSettings,
        *,
        cluster: ClusterSettings = ClusterSettings(),
        metrics: Metrics | None = None,
        traffic: TrafficQueries | None = None,
    ) -> KubernetesRuntime:
        """A runtime on the cluster it runs in (the pod's service account); not started."""
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(
            region,
            settings,
            make_api_client(configuration),
            cluster=cluster,
            owns_client=True,
            metrics=metrics,
            traffic=traffic,
        )

    # Lifecycle.

    async def start(self, give_up_after: float | None = None) -> None:
        """Start the watch caches and wait until each has listed once; after
        `give_up_after` seconds (None: no limit) raise `RuntimeUnavailable`, the watches
        going on trying (call `close()` to stop them)."""
        if self._tasks:
            return
        caches = self._watches.all
        for cache in caches:
            self._tasks.append(
                asyncio.create_task(self._watches.follow(cache), name=f"watch {cache.kind.kind}")
            )
        self._tasks.append(asyncio.create_task(self._staging.follow(), name="staging progress"))
        listed: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(cache.synced.wait() for cache in caches))
        )
        try:
            await asyncio.wait(
                {listed, *self._tasks}, timeout=give_up_after, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not listed.done():
                listed.cancel()
        for task in self._tasks:
            if task.done():  # a watch task ended, which only a bug makes it do
                task.result()
        if not listed.done() or listed.cancelled():
            raise RuntimeUnavailable(
                f"region {self.region}: the API server did not answer the initial lists "
                f"within {give_up_after}s"
            )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._traffic is not None:
            await self._traffic.close()
        self._events.close()
        await self._api.close()
        if self._owns_client:
            await self._api_client.close()

    async def __aenter__(self) -> KubernetesRuntime:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # The Runtime protocol.

    async def observe(self, endpoint: str) -> Observed | None:
        return observe(
            endpoint,
            self._watches,
            self._staging.by_pod,
            self._repairs,
            self._applied,
            self._traffic,
        )

    async def held(self) -> set[str]:
        return self._watches.held_endpoints()

    def synced(self) -> None:
        """Nothing to do: the cluster serves its objects whoever reconciles them."""

    async def apply(self, workload: Workload) -> None:
        await self._writer.apply(workload)

    async def remove(self, endpoint: str) -> None:
        await self._writer.remove(endpoint)

    def events(self) -> AsyncIterator[str]:
        return self._events.subscribe()
