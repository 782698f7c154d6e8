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
`podlog` for `pods/log`); this module is the HTTP surface (routing, query parameters,
watch streams) and the test controls: request counting, injected latency and
failures, dropped watches, history compaction and Deployment readiness, faked
(`mark_ready`, `auto_ready`) or from Pods that a simulated kubelet really runs
(`kubelet=Kubelet()`: `kubelet.py`, `controller.py`), and a stand-in for the HPA
controller's replica bounds (`hpa_controller=True`: `autoscaler.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
import yaml
from aiohttp import web

from . import errors, podlog
from .autoscaler import AutoscalerController
from .controller import DeploymentController, deployment_status
from .decoding import APPLY_YAML
from .engine import Engine
from .errors import ApiError
from .json_values import clone, parse_json
from .kubelet import Kubelet
from .podlog import ContainerLogs, LogOptions
from .resources import ALL, DEPLOYMENTS, PODS, ResourceType, find, group_versions
from .selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from .store import Event, Store, TooOld, Watcher
from .writes import WriteOptions, WriteResult

SERVER_VERSION = {
    "major": "1",
    "minor": "36",
    "gitVersion": "v1.36.2-servefleet-test",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-11-26T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

CONTROLLER_MANAGER = "kube-controller-manager"


def truthy(value: str | None) -> bool:
    """Query booleans as clients send them: true, True, 1 (kubernetes-asyncio: True)."""
    return value is not None and value.lower() in ("true", "1")


@dataclass(frozen=True)
class RequestInfo:
    """One request as the controls see it (verbs as in Kubernetes RBAC/audit)."""

    method: str
    path: str
    query: Mapping[str, str]
    #: get, list, watch, create, update, patch, delete, deletecollection; "discovery"
    #: for /api, /apis, /version...; "unknown" for paths that name no resource
    verb: str
    resource: str = ""  # plural, e.g. "deployments" ("" for discovery)
    subresource: str = ""  # "", "scale", "status"
    namespace: str | None = None
    name: str | None = None
    content_type: str = ""
    user_agent: str = ""
    authorization: str = ""
    """The Authorization header as it came (a real server's audit log keeps the user
    it authenticates from it; this one authenticates no one)."""
    #: time.time() when it arrived: with `user_agent`, what an audit log keeps of it
    received_at: float = field(default_factory=time.time)

    @property
    def resource_key(self) -> str:
        """`deployments` or `deployments/scale`."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


Predicate = Callable[[RequestInfo], bool]


def matching(
    verb: str | None = None,
    resource: str | None = None,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> Predicate:
    """A predicate on requests; `None` matches anything."""

    def predicate(info: RequestInfo) -> bool:
        return (
            (verb is None or info.verb == verb)
            and (resource is None or info.resource == resource)
            and (namespace is None or info.namespace == namespace)
            and (name is None or info.name == name)
            and (subresource is None or info.subresource == subresource)
        )

    return predicate


@dataclass
class Fault:
    """An injected failure: the next `times` matching requests (None: all of them)
    answer `status` (500, 429 with Retry-After, 503...), or hang when `hang` is set."""

    match: Predicate
    status: int = 500
    times: int | None = 1
    retry_after: int = 1
    hang: bool = False
    hang_seconds: float | None = None
    message: str = "injected failure"
    hits: int = 0

    def take(self, info: RequestInfo) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if not self.match(info):
            return False
        self.hits += 1
        return True

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


@dataclass
class Latency:
    seconds: float
    match: Predicate


@dataclass(eq=False)
class _Stream:
    watcher: Watcher
    request: web.Request


_NOT_FOUND = ApiError(404, "NotFound", "the server could not find the requested resource", {})


@dataclass
class _Route:
    resource: ResourceType
    namespace: str | None
    name: str | None
    subresource: str
    watch_path: bool


class KubeApiServer:
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
    answer 404).
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
    ) -> None:
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.resources: tuple[ResourceType, ...] = (*ALL, *crds)
        """The resources served."""
        self.store = Store(initial_resource_version, history)
        self.engine = Engine(self.store)
        self.engine.hooks.append(self._after_commit)
        self.kubelet = kubelet
        self._auto_ready: float | None = None
        self.auto_ready = auto_ready
        #: what the kubelet's containers wrote, by containerID (read by `pods/log`)
        self.logs = ContainerLogs()
        self._controller: DeploymentController | None = None
        self._autoscaler = AutoscalerController(self.engine) if hpa_controller else None
        #: requests by (verb, "plural" or "plural/subresource"), e.g. ("patch", "deployments")
        self.requests: Counter[tuple[str, str]] = Counter()
        self.request_log: list[RequestInfo] = []
        self.faults: list[Fault] = []
        self.latencies: list[Latency] = []
        #: Requests served at once before further ones are refused with 429 and
        #: Retry-After: 1, as kube-apiserver's --max-requests-inflight (and API
        #: Priority and Fairness once its queues are full) refuse them; watches,
        #: long-running, are not counted. None: no limit.
        self.max_in_flight: int | None = None
        self.refused_in_flight = 0
        self._in_flight = 0
        self._streams: set[_Stream] = set()
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._timers: set[asyncio.TimerHandle] = set()

    # ------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

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
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        self._stopping.clear()
        return self

    async def stop(self) -> None:
        self._stopping.set()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
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

    def count(
        self, verb: str | None = None, resource: str | None = None, subresource: str | None = None
    ) -> int:
        """Requests received so far (including failed and injected ones), filtered by
        verb (get/list/watch/create/update/patch/delete/deletecollection/discovery),
        resource (plural) and subresource ("" for the main resource)."""
        return sum(
            1
            for info in self.request_log
            if (verb is None or info.verb == verb)
            and (resource is None or info.resource == resource)
            and (subresource is None or info.subresource == subresource)
        )

    def reset_counts(self) -> None:
        self.requests.clear()
        self.request_log.clear()

    def add_latency(self, seconds: float, match: Predicate | None = None) -> Latency:
        """Delay every matching request by `seconds` (before it is served)."""
        latency = Latency(seconds, match or (lambda info: True))
        self.latencies.append(latency)
        return latency

    def clear_latency(self) -> None:
        self.latencies.clear()

    def fail(
        self,
        status: int = 500,
        times: int | None = 1,
        match: Predicate | None = None,
        *,
        retry_after: int = 1,
        message: str = "injected failure",
    ) -> Fault:
        """Answer the next `times` matching requests with `status` (429 gets Retry-After)."""
        fault = Fault(match or (lambda info: True), status, times, retry_after, message=message)
        self.faults.append(fault)
        return fault

    def hang(
        self, times: int | None = 1, match: Predicate | None = None, seconds: float | None = None
    ) -> Fault:
        """Let the next `times` matching requests hang (until `seconds` have passed, then
        504, or until the server stops): the client sees a timeout."""
        fault = Fault(match or (lambda info: True), 504, times, hang=True, hang_seconds=seconds)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    @property
    def open_watches(self) -> int:
        return len(self._streams)

    def drop_watches(self, abort: bool = False) -> int:
        """End every open watch stream: cleanly (EOF), or by closing the connection."""
        streams = list(self._streams)
        for stream in streams:
            if abort and stream.request.transport is not None:
                stream.request.transport.close()
            stream.watcher.close()
        return len(streams)

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
        return clone(self._set_ready(namespace, name, ready))

    def _set_ready(self, namespace: str, name: str, ready: int | None = None) -> dict[str, Any]:
        """`mark_ready`; the Deployment as stored (not a copy: read it only)."""
        current = self.engine.peek(DEPLOYMENTS, namespace, name)
        desired = int((current.get("spec") or {}).get("replicas", 1))
        ready = desired if ready is None else ready
        status = deployment_status(
            current, replicas=desired, updated=desired, ready=ready, available=ready
        )
        return self.engine.set_status(DEPLOYMENTS, namespace, name, status, CONTROLLER_MANAGER).body

    @property
    def auto_ready(self) -> float | None:
        """Seconds after each Deployment spec change to `mark_ready` it (None: never)."""
        return self._auto_ready

    @auto_ready.setter
    def auto_ready(self, seconds: float | None) -> None:
        if seconds is not None and self.kubelet is not None:
            raise ValueError(
                "auto_ready and kubelet are exclusive: with a kubelet, Deployment status"
                " comes from its Pods"
            )
        self._auto_ready = seconds

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

    def _after_commit(
        self, resource: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        if resource is not DEPLOYMENTS or self._auto_ready is None:
            return
        generation = obj["metadata"].get("generation")
        if old is not None and old["metadata"].get("generation") == generation:
            return
        namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            if self.store.get(DEPLOYMENTS, namespace, name) is None:
                return
            with contextlib.suppress(ApiError):
                self._set_ready(namespace, name)

        handle = loop.call_later(self._auto_ready, fire)
        self._timers.add(handle)

    # ---------------------------------------------------------------- routing

    def _route(self, path: str) -> _Route | dict[str, Any]:
        """The resource a path names, or a discovery document to answer with."""
        parts = [p for p in path.split("/") if p]
        if not parts:
            return {"paths": ["/api", "/api/v1", "/apis", "/version"]}
        if parts == ["version"]:
            return SERVER_VERSION
        if parts[0] == "api":
            if len(parts) == 1:
                return {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                    ],
                }
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis":
            if len(parts) == 1:
                return self._group_list()
            if len(parts) == 2:
                return self._group(parts[1])
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _NOT_FOUND
        if not rest:
            return self._resource_list(group, version)
        watch_path = rest[0] == "watch"
        if watch_path:
            rest = rest[1:]
        namespace: str | None = None
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and not (group == "" and len(rest) == 3 and rest[2] in ("status", "finalize"))
        ):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise _NOT_FOUND
        resource = find(group, version, rest[0], self.resources)
        if resource is None:
            raise _NOT_FOUND
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else ""
        if subresource and subresource not in resource.subresources:
            raise _NOT_FOUND
        if resource.namespaced and namespace is None and name is not None:
            raise _NOT_FOUND
        if not resource.namespaced and namespace is not None:
            raise _NOT_FOUND
        return _Route(resource, namespace, name, subresource, watch_path)

    def _group_list(self) -> dict[str, Any]:
        groups = [self._group(group) for group in group_versions(self.resources)]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def _group(self, group: str) -> dict[str, Any]:
        versions = group_versions(self.resources).get(group)
        if versions is None:
            raise _NOT_FOUND
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": entries,
            "preferredVersion": entries[0],
        }

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        served = [r for r in self.resources if r.group == group and r.version == version]
        if not served:
            raise _NOT_FOUND
        resources: list[dict[str, Any]] = []
        for resource in served:
            resources.extend(resource.discovery())
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    @staticmethod
    def _verb(method: str, route: _Route, query: Mapping[str, str]) -> str:
        if method == "GET":
            if route.subresource == "log":
                return "get"
            if route.watch_path or truthy(query.get("watch")):
                return "watch"
            return "get" if route.name else "list"
        if method == "POST":
            return "create"
        if method == "PUT":
            return "update"
        if method == "PATCH":
            return "patch"
        if method == "DELETE":
            return "delete" if route.name else "deletecollection"
        return method.lower()

    # --------------------------------------------------------------- handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = {key: request.query.get(key, "") for key in request.query}
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        user_agent = request.headers.get("User-Agent", "")
        try:
            route = self._route(request.path)
        except ApiError as error:
            self._record(RequestInfo(request.method, request.path, query, "unknown"))
            return _error_response(error)
        if isinstance(route, dict):
            info = RequestInfo(request.method, request.path, query, "discovery")
        else:
            info = RequestInfo(
                method=request.method,
                path=request.path,
                query=query,
                verb=self._verb(request.method, route, query),
                resource=route.resource.plural,
                subresource=route.subresource,
                namespace=route.namespace,
                name=route.name,
                content_type=content_type,
                user_agent=user_agent,
                authorization=request.headers.get("Authorization", ""),
            )
        self._record(info)
        if info.verb == "watch" or self.max_in_flight is None:
            return await self._answer(request, route, info, query, content_type, user_agent)
        if self._in_flight >= self.max_in_flight:
            self.refused_in_flight += 1
            return _error_response(errors.too_many_requests(1))
        self._in_flight += 1
        try:
            return await self._answer(request, route, info, query, content_type, user_agent)
        finally:
            self._in_flight -= 1

    async def _answer(
        self,
        request: web.Request,
        route: _Route | dict[str, Any],
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
            return _json_response(route)
        try:
            if route.subresource == "log":
                return await self._pod_log(request, route, query)
            if info.verb == "watch":
                return await self._watch(request, route, query)
            return await self._serve(request, route, info, query, content_type, user_agent)
        except ApiError as error:
            return _error_response(error)

    def _record(self, info: RequestInfo) -> None:
        self.request_log.append(info)
        self.requests[(info.verb, info.resource_key)] += 1

    async def _faulty(self, fault: Fault) -> web.Response:
        if fault.hang:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(fault.hang_seconds):
                    await self._stopping.wait()
            return _error_response(errors.timeout())
        if fault.status == 429:
            return _error_response(errors.too_many_requests(fault.retry_after))
        reasons = {500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
        return _error_response(ApiError(fault.status, reasons.get(fault.status, ""), fault.message))

    async def _serve(
        self,
        request: web.Request,
        route: _Route,
        info: RequestInfo,
        query: Mapping[str, str],
        content_type: str,
        user_agent: str,
    ) -> web.Response:
        resource, namespace, name = route.resource, route.namespace or "", route.name
        verb = info.verb
        if verb in ("list", "deletecollection"):
            labels, fields = _selectors(query)
            if verb == "list":
                limit = query.get("limit") or "0"
                if not limit.isdigit():
                    raise errors.bad_request(f"invalid limit: {limit}")
                listed = self.engine.list(
                    resource, route.namespace, labels, fields, int(limit), query.get("continue", "")
                )
                return _json_response(listed)
            return _json_response(
                self.engine.delete_collection(
                    resource, route.namespace, labels, fields, _dry_run(query)
                )
            )
        if verb == "get":
            assert name is not None
            if route.subresource == "scale":
                return _json_response(self.engine.get_scale(resource, namespace, name))
            return _json_response(self.engine.get(resource, namespace, name))
        raw = await request.read()
        options = WriteOptions(
            manager=query.get("fieldManager") or user_agent.split("/")[0][:128],
            dry_run=_dry_run(query),
            field_validation=query.get("fieldValidation") or "Warn",
            force=truthy(query.get("force")),
        )
        if query.get("fieldValidation") and options.field_validation not in (
            "Strict",
            "Warn",
            "Ignore",
        ):
            raise errors.bad_request(
                f"fieldValidation parameter unsupported: {options.field_validation}"
            )
        if verb == "delete":
            assert name is not None
            body = _decode(raw, content_type, allow_empty=True) or {}
            preconditions = body.get("preconditions") if isinstance(body, dict) else None
            return _json_response(
                self.engine.delete(resource, namespace, name, preconditions, options.dry_run)
            )
        if verb == "create":
            if name is not None:
                raise errors.method_not_allowed()
            result = self.engine.create(resource, namespace, _decode(raw, content_type), options)
            return _write_response(result)
        assert name is not None
        if verb == "update":
            body = _decode(raw, content_type)
            if route.subresource == "scale":
                result = self.engine.write_scale(resource, namespace, name, body, None, options)
            else:
                result = self.engine.replace(
                    resource, namespace, name, body, options, route.subresource
                )
            return _write_response(result)
        if verb == "patch":
            if route.subresource == "scale":
                if content_type == APPLY_YAML:
                    raise errors.unsupported_media_type(content_type, [])
                body = _decode(raw, "application/json")
                result = self.engine.write_scale(
                    resource, namespace, name, body, content_type, options
                )
            else:
                result = self.engine.patch(
                    resource, namespace, name, content_type, raw, options, route.subresource
                )
            return _write_response(result)
        raise errors.method_not_allowed()

    async def _pod_log(
        self, request: web.Request, route: _Route, query: Mapping[str, str]
    ) -> web.StreamResponse:
        if request.method != "GET" or route.name is None or route.watch_path:
            raise errors.method_not_allowed()
        options = podlog.parse_options(route.name, query)
        pod = self.engine.get(PODS, route.namespace or "", route.name)
        instance = podlog.locate(pod, options)
        if instance is None:  # no node: the real server has no location to stream from
            return web.Response(status=204)
        lines = self.logs.lines(instance)
        body = podlog.render(lines, options, datetime.now(UTC))
        if not options.follow:
            return web.Response(body=body, content_type="text/plain")
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError, ConnectionError):
            await response.write(body)
            await self._follow(response, instance, options, len(lines), len(body))
            await response.write_eof()
        return response

    async def _follow(
        self,
        response: web.StreamResponse,
        instance: str,
        options: LogOptions,
        seen: int,
        sent: int,
    ) -> None:
        """Stream what `instance` writes after its first `seen` lines, until it ends
        (or the pod goes, or the server stops), within `limitBytes`."""
        budget = None if options.limit_bytes is None else options.limit_bytes - sent
        while budget is None or budget > 0:
            running = self.logs.running(instance)  # before reading: no line is missed
            lines = self.logs.lines(instance)
            chunk = podlog.join(lines[seen:], options.timestamps)
            seen = len(lines)
            if budget is not None:
                chunk, budget = chunk[:budget], budget - len(chunk)
            if chunk:
                await response.write(chunk)
            if not running:
                return
            changed = asyncio.ensure_future(self.logs.changed())
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({changed, stopping}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            stopping.cancel()
            if self._stopping.is_set():
                return

    # ----------------------------------------------------------------- watch

    async def _watch(
        self, request: web.Request, route: _Route, query: Mapping[str, str]
    ) -> web.StreamResponse:
        resource = route.resource
        labels, fields = _selectors(query)
        if route.name is not None:
            fields = FieldSelector((*fields.terms, ("metadata.name", True, route.name)))
        raw_timeout = query.get("timeoutSeconds")
        try:
            timeout = float(raw_timeout) if raw_timeout else 0.0
        except ValueError as error:
            raise errors.bad_request(f"invalid timeoutSeconds: {raw_timeout}") from error
        if timeout <= 0:  # 0 or absent: the server picks (here: default_watch_timeout)
            timeout = self.default_watch_timeout
        bookmarks = truthy(query.get("allowWatchBookmarks"))
        watcher = Watcher(resource, route.namespace, labels, fields)
        start = query.get("resourceVersion", "")
        expired: TooOld | None = None
        initial: list[Event] = []
        # Computed and registered without awaiting, so no write falls in between.
        if start in ("", "0"):
            for stored in self.store.items(resource, route.namespace, labels, fields):
                initial.append(Event(stored.resource_version, "ADDED", stored.obj))
        else:
            try:
                since = self.store.since(resource, int(start))
            except ValueError as error:
                raise errors.invalid(
                    "meta.k8s.io",
                    "ListOptions",
                    "",
                    [errors.FieldError("Invalid", "resourceVersion", start, "must be a number")],
                ) from error
            except TooOld as too_old:
                expired = too_old
            else:
                initial = [e for e in map(watcher.translate, since) if e is not None]
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        if expired is None:
            self.store.watchers.add(watcher)
        stream = _Stream(watcher, request)
        self._streams.add(stream)
        try:
            await response.prepare(request)
            if expired is not None:
                status = errors.expired(str(expired)).body()
                status.pop("details", None)
                await _write_event(response, "ERROR", status)
            else:
                for event in initial:
                    await _write_event(response, event.type, event.obj)
                await self._stream(response, watcher, resource, timeout, bookmarks)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.store.watchers.discard(watcher)
            self._streams.discard(stream)
        with contextlib.suppress(ConnectionResetError, ConnectionError):
            await response.write_eof()
        return response

    async def _stream(
        self,
        response: web.StreamResponse,
        watcher: Watcher,
        resource: ResourceType,
        duration: float,
        bookmarks: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + duration
        # Like the real watch cache: periodic bookmarks, and one shortly before the
        # timeout so the client can resume from an up-to-date resourceVersion.
        pretimeout = deadline - min(2.0, duration / 4)
        next_bookmark = min(started + self.bookmark_interval, pretimeout)
        sent_pretimeout = False
        while True:
            now = loop.time()
            if now >= deadline:
                return
            wake = min(deadline, next_bookmark) if bookmarks else deadline
            try:
                async with asyncio.timeout(max(wake - now, 0)):
                    event = await watcher.queue.get()
            except TimeoutError:
                if bookmarks and loop.time() >= next_bookmark and watcher.queue.empty():
                    await _write_event(
                        response,
                        "BOOKMARK",
                        {
                            "kind": resource.kind,
                            "apiVersion": resource.group_version,
                            "metadata": {"resourceVersion": str(self.store.resource_version)},
                        },
                    )
                    if next_bookmark >= pretimeout:
                        sent_pretimeout = True
                    next_bookmark = loop.time() + self.bookmark_interval
                    if not sent_pretimeout:
                        next_bookmark = min(next_bookmark, pretimeout)
                continue
            if event is None:
                return
            await _write_event(response, event.type, event.obj)


def _selectors(query: Mapping[str, str]) -> tuple[LabelSelector, FieldSelector]:
    try:
        return (
            parse_label_selector(query.get("labelSelector")),
            parse_field_selector(query.get("fieldSelector")),
        )
    except SelectorError as error:
        raise errors.bad_request(str(error)) from error


def _dry_run(query: Mapping[str, str]) -> bool:
    value = query.get("dryRun")
    if value and value != "All":
        raise errors.bad_request(f'dryRun: Unsupported value: "{value}": supported values: "All"')
    return value == "All"


def _decode(raw: bytes, content_type: str, allow_empty: bool = False) -> Any:
    if not raw.strip():
        if allow_empty:
            return None
        raise errors.bad_request("the request body is empty")
    try:
        if "yaml" in content_type:
            return yaml.safe_load(raw)
        return parse_json(raw)
    except (ValueError, yaml.YAMLError) as error:
        raise errors.bad_request(f"couldn't get version/kind; json parse error: {error}") from error


def _json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error_response(error: ApiError) -> web.Response:
    return _json_response(error.body(), error.code, error.headers or None)


def _write_response(result: WriteResult) -> web.Response:
    response = _json_response(result.body, 201 if result.created else 200)
    for warning in result.warnings:
        response.headers.add("Warning", f"299 - {json.dumps(warning)}")
    return response


async def _write_event(response: web.StreamResponse, kind: str, obj: dict[str, Any]) -> None:
    await response.write(orjson.dumps({"type": kind, "object": obj}) + b"\n")


__all__ = [
    "Fault",
    "KubeApiServer",
    "Latency",
    "RequestInfo",
    "matching",
    "truthy",
]
