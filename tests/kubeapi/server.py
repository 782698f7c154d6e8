"""A Kubernetes API server for tests: real HTTP on loopback, real API semantics.

    async with KubeApiServer() as server:
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        await config.load_kube_config(config_file=str(kubeconfig))
        ...
        server.mark_ready("llm", "llm")          # without a kubelet: fake the rollout
        assert server.count("patch", "deployments") == 1

It serves apps/v1 deployments (+ `scale`, `status`), v1 services, networking.k8s.io/v1
ingresses, autoscaling/v2 horizontalpodautoscalers, coordination.k8s.io/v1 leases, v1
pods (+ `status`, `log`) and v1 namespaces (any namespace is accepted implicitly), plus
the discovery documents a client needs. The API semantics live in `engine.Engine` (and
`podlog` for `pods/log`); this module is the HTTP surface and the test controls.
Each request is routed (`routing`, `discovery`), counted and given what the tests
inject (`request_controls`: latency, failures, the in-flight limit), then answered
by its verb (`verbs`), as a watch stream (`watch_streams`) or a pod's log
(`podlog_http`). Deployment readiness is faked (`mark_ready`, `auto_ready`:
`readiness`) or comes from Pods that a simulated kubelet really runs
(`kubelet=Kubelet()`: `kubelet.py`, `controller.py`); `hpa_controller=True` adds a
stand-in for the HPA controller's replica bounds (`autoscaler.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from aiohttp import web

from . import errors, podlog
from .autoscaler import AutoscalerController
from .controller import DeploymentController
from .engine import Engine
from .errors import ApiError
from .json_values import clone
from .kubelet import Kubelet
from .podlog import ContainerLogs, LogOptions
from .podlog_http import PodLogStreams
from .readiness import FakedReadiness
from .request_controls import Fault, RequestControls, RequestInfo
from .resources import ALL, PODS, ResourceType
from .responses import error_response, json_response
from .routing import Route, route_path, verb
from .store import Store
from .verbs import serve
from .watch_streams import WatchStreams


class KubeApiServer(RequestControls):
    """The test API server. Use as `async with KubeApiServer() as server:`.

    Options: `bookmark_interval` (seconds between BOOKMARK events on watches that allow
    them; like the real server a bookmark is also sent shortly before a watch's
    `timeoutSeconds` ends), `history` (events kept per resource for watches to replay),
    `initial_resource_version` (history before it counts as compacted),
    `default_watch_timeout` (for watches without `timeoutSeconds`), `auto_ready`
    (seconds after which every Deployment spec change is marked ready; None: never),
    `kubelet` (a `Kubelet`: Pods for Deployments, init containers really run, status
    from them; exclusive with `auto_ready`), `hpa_controller` (a stand-in for the HPA
    controller that enforces only the replica bounds: `autoscaler.py`), `crds` (the
    custom resources installed, e.g. `[SCALED_OBJECTS]` as with KEDA; none by default,
    as on a cluster without them: their group is then not discovered and their paths
    answer 404), `tls` (served over https with this context; its kubeconfig then needs
    the CA that signed the certificate: `tests/tls.py`).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bookmark_interval: float = 60.0,
        history: int = 10_000,
        initial_resource_version: int = 1000,
        default_watch_timeout: float = 1800.0,
        auto_ready: float | None = None,
        kubelet: Kubelet | None = None,
        hpa_controller: bool = False,
        crds: Iterable[ResourceType] = (),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        self.tls = tls
        self.port = port
        self.resources: tuple[ResourceType, ...] = (*ALL, *crds)
        """The resources served."""
        self.store = Store(initial_resource_version, history)
        self.engine = Engine(self.store)
        self._readiness = FakedReadiness(self.engine)
        self.engine.hooks.append(self._readiness.after_commit)
        self.kubelet = kubelet
        self.auto_ready = auto_ready
        #: what the kubelet's containers wrote, by containerID (read by `pods/log`)
        self.logs = ContainerLogs()
        self._controller: DeploymentController | None = None
        self._autoscaler = AutoscalerController(self.engine) if hpa_controller else None
        self._in_flight = 0
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._watches = WatchStreams(self.store, bookmark_interval, default_watch_timeout)
        self._pod_logs = PodLogStreams(self.engine, self.logs, self._stopping)

    # ------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    async def start(self) -> KubeApiServer:
        if self.kubelet is not None:
            self.kubelet.start(self.engine, self.logs)
            self._controller = DeploymentController(self.engine, self.kubelet.node_name)
            self._controller.start()
        if self._autoscaler is not None:
            self._autoscaler.start()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.tls)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        self._stopping.clear()
        return self

    async def stop(self) -> None:
        self._stopping.set()
        self._readiness.cancel()
        if self._controller is not None:
            await self._controller.stop()
            self._controller = None
        if self._autoscaler is not None:
            await self._autoscaler.stop()
        if self.kubelet is not None:
            await self.kubelet.stop()
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> KubeApiServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def kubeconfig(self, namespace: str = "default", token: str | None = None) -> dict[str, Any]:
        """A kubeconfig (as a dict) pointing at this server, with a bearer `token` or
        without credentials (the server checks none: `RequestInfo.authorization`)."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubeapi-test", "cluster": {"server": self.url}}],
            "users": [{"name": "kubeapi-test", "user": {"token": token} if token else {}}],
            "contexts": [
                {
                    "name": "kubeapi-test",
                    "context": {
                        "cluster": "kubeapi-test",
                        "user": "kubeapi-test",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "kubeapi-test",
        }

    def write_kubeconfig(
        self, path: Path | str, namespace: str = "default", token: str | None = None
    ) -> Path:
        """Write a kubeconfig file for `config.load_kube_config(config_file=...)`."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(self.kubeconfig(namespace, token), sort_keys=False))
        return target

    # -------------------------------------------------------------- controls

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    def drop_watches(self, abort: bool = False) -> int:
        """End every open watch stream: cleanly (EOF), or by closing the connection."""
        return self._watches.drop(abort)

    @property
    def bookmark_interval(self) -> float:
        """Seconds between BOOKMARKs on the watches that allow them."""
        return self._watches.bookmark_interval

    @bookmark_interval.setter
    def bookmark_interval(self, seconds: float) -> None:
        self._watches.bookmark_interval = seconds

    def compact(self) -> None:
        """Forget history: watches from any earlier resourceVersion get 410 Expired."""
        self.store.compact()

    def mark_ready(self, namespace: str, name: str, ready: int | None = None) -> dict[str, Any]:
        """Set a Deployment's status as the deployment controller would once `ready`
        replicas (default: spec.replicas) are available; returns the Deployment."""
        if self.kubelet is not None:
            raise RuntimeError(
                "mark_ready fakes what the kubelet does: with a kubelet, Deployment status"
                " comes from its Pods"
            )
        return clone(self._readiness.set_ready(namespace, name, ready))

    @property
    def auto_ready(self) -> float | None:
        """Seconds after each Deployment spec change to `mark_ready` it (None: never)."""
        return self._readiness.delay

    @auto_ready.setter
    def auto_ready(self, seconds: float | None) -> None:
        if seconds is not None and self.kubelet is not None:
            raise ValueError(
                "auto_ready and kubelet are exclusive: with a kubelet, Deployment status"
                " comes from its Pods"
            )
        self._readiness.delay = seconds

    def pod_log(self, namespace: str, pod: str, container: str = "", previous: bool = False) -> str:
        """A container's log as `GET .../pods/{pod}/log` answers it (raises its
        `ApiError`; "" for a pod not bound to a node)."""
        obj = self.engine.get(PODS, namespace, pod)
        options = LogOptions(container=container, previous=previous)
        body = podlog.read(obj, options, self.logs, datetime.now(UTC))
        return (body or b"").decode(errors="replace")

    def get_object(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The stored object (a copy), or None; `namespace` is "" for cluster scope."""
        for resource in self.resources:
            if resource.plural == plural:
                stored = self.store.get(resource, namespace, name)
                return clone(stored.obj) if stored else None
        raise KeyError(plural)

    def objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Stored objects of one resource (copies), optionally of one namespace."""
        for resource in self.resources:
            if resource.plural == plural:
                return [clone(s.obj) for s in self.store.items(resource, namespace)]
        raise KeyError(plural)

    # --------------------------------------------------------------- handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = {key: request.query.get(key, "") for key in request.query}
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        user_agent = request.headers.get("User-Agent", "")
        try:
            route = route_path(request.path, self.resources, self.host, self.port)
        except ApiError as error:
            self.record(RequestInfo(request.method, request.path, query, "unknown"))
            return error_response(error)
        if isinstance(route, dict):
            info = RequestInfo(request.method, request.path, query, "discovery")
        else:
            info = RequestInfo(
                method=request.method,
                path=request.path,
                query=query,
                verb=verb(request.method, route, query),
                resource=route.resource.plural,
                subresource=route.subresource,
                namespace=route.namespace,
                name=route.name,
                content_type=content_type,
                user_agent=user_agent,
                authorization=request.headers.get("Authorization", ""),
            )
        self.record(info)
        if info.verb == "watch" or self.max_in_flight is None:
            return await self._answer(request, route, info, query, content_type, user_agent)
        if self._in_flight >= self.max_in_flight:
            self.refused_in_flight += 1
            return error_response(errors.too_many_requests(1))
        self._in_flight += 1
        try:
            return await self._answer(request, route, info, query, content_type, user_agent)
        finally:
            self._in_flight -= 1

    async def _answer(
        self,
        request: web.Request,
        route: Route | dict[str, Any],
        info: RequestInfo,
        query: Mapping[str, str],
        content_type: str,
        user_agent: str,
    ) -> web.StreamResponse:
        for latency in list(self.latencies):
            if latency.match(info):
                await asyncio.sleep(latency.seconds)
        for fault in list(self.faults):
            if fault.take(info):
                if fault.exhausted:
                    self.faults.remove(fault)
                return await self._faulty(fault)
        if isinstance(route, dict):
            return json_response(route)
        try:
            if route.subresource == "log":
                return await self._pod_logs.serve(request, route, query)
            if info.verb == "watch":
                return await self._watches.serve(request, route, query)
            return await serve(
                self.engine, request, route, info.verb, query, content_type, user_agent
            )
        except ApiError as error:
            return error_response(error)

    async def _faulty(self, fault: Fault) -> web.Response:
        if fault.hang:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(fault.hang_seconds):
                    await self._stopping.wait()
            return error_response(errors.timeout())
        if fault.status == 429:
            return error_response(errors.too_many_requests(fault.retry_after))
        reasons = {500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
        return error_response(ApiError(fault.status, reasons.get(fault.status, ""), fault.message))


__all__ = ["KubeApiServer"]
