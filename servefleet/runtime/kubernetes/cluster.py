"""The Kubernetes runtime: watch caches, server-side apply, one region namespace.

`KubernetesRuntime` is the `Runtime` of a Kubernetes region. It holds no state of
its own beyond what the API server says:

- **Watch caches.** One list + watch per managed kind (Services, Deployments,
  HorizontalPodAutoscalers, Ingresses) in the region's namespace, selected by
  `app.kubernetes.io/managed-by=servefleet`. A watch resumes from the last
  resourceVersion it saw (BOOKMARKs keep that fresh), asks for `timeoutSeconds`
  and is opened again when it ends; a 410 Gone (an ERROR event or the answer to
  the watch request) lists again. As in client-go's reflector, a stream that
  ends or breaks resumes from its resourceVersion (nothing is lost: the server
  replays from there) and only an expired resourceVersion costs a LIST. Every
  change of a cached object, except our own writes seen by apply()/remove()
  (`_holding_events`), yields its endpoint (`app.kubernetes.io/name`) from
  `events()`. The caches keep only the fields read (`_cache_entry`). A converged
  region therefore costs the open watches and nothing else.
- **observe() reads only the cache.** Whether the workload is in place is decided
  from the objects alone: every applied object carries, besides the workload hash
  (`servefleet.io/workload-hash`), the list of objects that workload renders
  (`servefleet.io/objects`, e.g. `Deployment/llm,Ingress/llm,Service/llm`). The
  endpoint reports the hash only when the cached objects of the endpoint are
  exactly that list and all carry the same hash and list: a missing object
  (a hand-deleted Service), an extra one (a canary left behind), or one applied
  for another workload all report "" — which matches no workload, so the
  reconciler applies again. This needs no memory of past applies and survives
  restarts and leader changes.
- **Model staging** is read from the pods whose init container stages a model
  (label `servefleet.io/stages-model=true`, one more list + watch): the init
  container's state (running, done, failed: its termination message, which
  `servefleet.stage` writes) and, while it runs, the last progress line of its
  log, read every `staging_poll_interval` for at most `staging_log_reads` pods
  (one per endpoint). A pod event yields its endpoint only when what is kept of
  the staging changed, so replicas coming and going cost no pass. A failed
  staging (the kubelet retries it) is reported as `Observed.failure`.
- **apply() follows `render.steps`.** Deletes only what the cache holds (a
  steady fleet sends no DELETE answered 404), server-side applies every rendered
  object (field manager `servefleet`, force), and hands `spec.replicas` over
  before the first apply that omits it (`render.replicas_handoff`). It then waits
  (bounded) until the watches have delivered its own writes, so the observation
  that follows an apply already shows them.
- **Errors are mapped once, here.** 409 → `ApplyConflict`; 400/422 →
  `WorkloadUnsupported` with the API's message (the cluster refuses the spec);
  429, 5xx, timeouts and connection errors are retried with exponential backoff
  (honouring Retry-After, capped at `backoff_max` or 1 s, whichever is longer),
  then `RuntimeUnavailable`; other answers (401, 403, a 404 other than on a
  DELETE) are `RuntimeUnavailable` at once. A DELETE answered 404 is success. Every request but the
  watch streams passes a client-side token bucket.

The runtime manages one namespace (`RegionSettings.namespace`): a workload that
names another one is refused with `WorkloadUnsupported`, since its objects would
be invisible to the caches.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient
from yarl import URL

from servefleet.plan import (
    Observed,
    VersionObservation,
    Workload,
    staging_percent,
    staging_progress,
)
from servefleet.ratelimit import TokenBucket
from servefleet.runtime.base import (
    ApplyConflict,
    EventSubscription,
    RuntimeUnavailable,
    WorkloadUnsupported,
)
from servefleet.runtime.kubernetes.render import (
    ANNOTATION_HASH,
    FIELD_MANAGER,
    HANDOFF_MANAGER,
    LABEL_NAME,
    LABEL_ROLE,
    MANAGED_SELECTOR,
    STAGE_CONTAINER,
    STAGING_SELECTOR,
    Manifest,
    ObjectRef,
    RegionSettings,
    all_objects,
    namespace_of,
    replicas_handoff,
    steps,
)
from servefleet.spec import ModelStaging

__all__ = [
    "ANNOTATION_OBJECTS",
    "ClusterSettings",
    "KubernetesRuntime",
    "make_api_client",
    "status_message",
]

log = logging.getLogger(__name__)

ANNOTATION_OBJECTS: Final = "servefleet.io/objects"
"""On every applied object: the objects its workload renders, `Kind/name,...` sorted."""

_APPLY: Final = "application/apply-patch+yaml"


@dataclass(frozen=True)
class ClusterSettings:
    """How the runtime talks to the API server (seconds unless said otherwise)."""

    watch_timeout: int = 300
    """`timeoutSeconds` of each watch request; the watch is opened again after it."""
    request_timeout: float = 30.0
    retries: int = 4
    """Retries of a request answered 429/5xx or failing to connect, before
    `RuntimeUnavailable`."""
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    rate: float = 50.0
    """Requests a second (token bucket; watch streams excepted)."""
    burst: int = 100
    sync_timeout: float = 10.0
    """How long `apply` waits for the watches to show its own writes."""
    list_page: int = 500
    staging_poll_interval: float = 2.0
    """Seconds between reads of staging init containers' logs (progress)."""
    staging_log_reads: int = 10
    """Logs read per poll at most, taking turns: bounds what many endpoints staging
    at once cost the API server."""


@dataclass(frozen=True)
class _Kind:
    kind: str
    api: type[Any]
    suffix: str
    """`list_namespaced_<suffix>` and so on."""
    selector: str = MANAGED_SELECTOR


_KINDS: Final[tuple[_Kind, ...]] = (
    _Kind("Service", client.CoreV1Api, "service"),
    _Kind("Deployment", client.AppsV1Api, "deployment"),
    _Kind("HorizontalPodAutoscaler", client.AutoscalingV2Api, "horizontal_pod_autoscaler"),
    _Kind("Ingress", client.NetworkingV1Api, "ingress"),
)
_PODS: Final = _Kind("Pod", client.CoreV1Api, "pod", STAGING_SELECTOR)
"""Not managed (nothing is applied to pods): watched for model staging only."""
_REMOVAL_ORDER: Final = {"Ingress": 0, "HorizontalPodAutoscaler": 1, "Deployment": 2, "Service": 3}


class _ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


class _Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


@dataclass(eq=False)
class _Cache:
    """One kind's objects in the namespace, by name and by endpoint."""

    kind: _Kind
    api: Any
    objects: dict[str, Manifest] = field(default_factory=dict)
    by_endpoint: dict[str, set[str]] = field(default_factory=dict)
    resource_version: str | None = None
    synced: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, obj: Manifest) -> None:
        name = obj["metadata"]["name"]
        self.remove(name)
        obj = _cache_entry(self.kind.kind, obj)
        self.objects[name] = obj
        endpoint = _endpoint_of(obj)
        if endpoint is not None:
            self.by_endpoint.setdefault(endpoint, set()).add(name)

    def remove(self, name: str) -> None:
        previous = self.objects.pop(name, None)
        endpoint = _endpoint_of(previous) if previous is not None else None
        if endpoint is not None:
            names = self.by_endpoint.get(endpoint, set())
            names.discard(name)
            if not names:
                self.by_endpoint.pop(endpoint, None)

    def replace(self, objects: list[Manifest]) -> None:
        self.objects.clear()
        self.by_endpoint.clear()
        for obj in objects:
            self.put(obj)

    def of(self, endpoint: str) -> list[Manifest]:
        return [self.objects[name] for name in sorted(self.by_endpoint.get(endpoint, ()))]


_CACHED_METADATA: Final = ("name", "namespace", "labels", "resourceVersion", "generation")
_CACHED_ANNOTATIONS: Final = (ANNOTATION_HASH, ANNOTATION_OBJECTS)
_CACHED_DEPLOYMENT_STATUS: Final = (
    "observedGeneration",
    "readyReplicas",
    "replicas",
    "updatedReplicas",
    "conditions",
)


def _cache_entry(kind: str, obj: Manifest) -> Manifest:
    """What a cache keeps of an object: only what observe(), apply() and remove() read.

    A cache holds every managed object of the namespace, and managedFields and the
    spec are most of each one's size (about 1.6 GB for 10,000 endpoints in 3 regions,
    bench/: Kubernetes convergence). Of them only a Deployment's `spec.replicas` and
    which managers own it are read (the replicas hand-off)."""
    if kind == "Pod":
        return _pod_entry(obj)
    metadata = obj.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    kept: Manifest = {key: metadata[key] for key in _CACHED_METADATA if key in metadata}
    kept["annotations"] = {
        key: annotations[key] for key in _CACHED_ANNOTATIONS if key in annotations
    }
    entry: Manifest = {"apiVersion": obj.get("apiVersion", ""), "kind": kind, "metadata": kept}
    if kind == "Deployment":
        kept["managedFields"] = [
            {
                "manager": owner.get("manager"),
                "subresource": owner.get("subresource") or "",
                "fieldsV1": {"f:spec": {"f:replicas": {}}},
            }
            for owner in metadata.get("managedFields") or []
            if _owns_replicas(owner)
        ]
        spec = obj.get("spec") or {}
        entry["spec"] = {"replicas": spec["replicas"]} if "replicas" in spec else {}
        status = obj.get("status") or {}
        entry["status"] = {key: status[key] for key in _CACHED_DEPLOYMENT_STATUS if key in status}
    return entry


def _pod_entry(pod: Manifest) -> Manifest:
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    return {
        "kind": "Pod",
        "metadata": {
            "name": metadata.get("name"),
            "labels": {key: labels[key] for key in (LABEL_NAME, LABEL_ROLE) if key in labels},
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "stage": _stage_of(pod),
    }


_ROUTINE_WAITS: Final = ("PodInitializing", "ContainerCreating")


def _stage_of(pod: Manifest) -> dict[str, Any]:
    """What the pod's staging init container is doing, from its spec and status.

    `phase`: waiting (not started), running, done, or failed: the last finished
    run failed (also while the kubelet runs it again: it retries with back-off, so
    a failure shown only between retries would flap). `held_up`: why a waiting
    container cannot start (an image that cannot be pulled, say), if not routine."""
    metadata = pod.get("metadata") or {}
    containers = (pod.get("spec") or {}).get("initContainers") or []
    spec: Manifest = next((c for c in containers if c.get("name") == STAGE_CONTAINER), {})
    env = {item.get("name"): item.get("value") for item in spec.get("env") or []}
    statuses = (pod.get("status") or {}).get("initContainerStatuses") or []
    status: Manifest = next((s for s in statuses if s.get("name") == STAGE_CONTAINER), {})
    state = status.get("state") or {}
    terminated = state.get("terminated")
    finished = (
        terminated if terminated is not None else (status.get("lastState") or {}).get("terminated")
    )
    if terminated is not None:
        phase = "done" if terminated.get("exitCode") == 0 else "failed"
    elif finished is not None and finished.get("exitCode") != 0:
        phase = "failed"
    else:
        phase = "running" if "running" in state else "waiting"
    outcome = _outcome(finished) if finished is not None else {"bytes_total": None}
    waiting = state.get("waiting") or {}
    held_up = ""
    if phase == "waiting" and waiting.get("reason") not in (None, *_ROUTINE_WAITS):
        held_up = f"{waiting['reason']}: {waiting.get('message') or ''}".rstrip(": ")
    return {
        "phase": phase,
        "held_up": held_up,
        "source": str(env.get("SERVEFLEET_MODEL_SOURCE") or ""),
        "restarts": int(status.get("restartCount") or 0),
        "terminating": bool(metadata.get("deletionTimestamp")),
        **outcome,
    }


def _outcome(terminated: Manifest) -> dict[str, Any]:
    """A finished staging run: its exit code and what `servefleet.stage` left in the
    termination message (or, if it died first, the log's tail the kubelet put there)."""
    text = str(terminated.get("message") or "").strip()
    try:
        recorded = json.loads(text) if text.startswith("{") else {}
    except ValueError:
        recorded = {}
    message = str(recorded.get("message") or "") if isinstance(recorded, dict) else ""
    total = recorded.get("bytes_total") if isinstance(recorded, dict) else None
    return {
        "exit_code": terminated.get("exitCode"),
        "message": message or text[-500:] or str(terminated.get("reason") or ""),
        "bytes_total": total if isinstance(total, int) else None,
    }


def _staging(
    pods: list[Manifest], progress: dict[str, tuple[int, int]]
) -> tuple[ModelStaging | None, str, str]:
    """The endpoint's staging as (status, failure, problem) from its pods' init
    containers and the progress last read from their logs (by pod name)."""
    stages = [(pod["metadata"]["name"], pod["stage"]) for pod in pods]
    stages = [(name, stage) for name, stage in stages if not stage["terminating"]]
    if not stages:
        return None, "", ""
    for name, stage in stages:
        if stage["phase"] == "failed":
            restarts = stage["restarts"]
            failure = (
                f"{stage['message'] or 'model staging failed'} (pod {name}: init container "
                f"{STAGE_CONTAINER} exited with code {stage['exit_code']}; "
                f"restarted {restarts} time{'' if restarts == 1 else 's'})"
            )
            return ModelStaging(), failure, ""
    unfinished = [(name, stage) for name, stage in stages if stage["phase"] != "done"]
    if not unfinished:
        total = next((s["bytes_total"] for _, s in stages if s["bytes_total"] is not None), None)
        return ModelStaging(bytes_done=total or 0, bytes_total=total, complete=True), "", ""
    done, total = max((progress.get(name, (0, -1)) for name, _ in unfinished), default=(0, -1))
    staging = ModelStaging(bytes_done=done, bytes_total=total if total >= 0 else None)
    problem = staging_progress(unfinished[0][1]["source"], staging)
    for name, stage in unfinished:
        if stage["held_up"]:
            problem += f" (pod {name}: {stage['held_up']})"
            break
    return staging, "", problem


def _progress_line(log: bytes) -> tuple[int, int] | None:
    """(bytes done, bytes total) of the last progress line in a staging log's tail."""
    for line in reversed(log.decode(errors="replace").splitlines()):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("event") == "progress":
            done, total = event.get("bytes_done"), event.get("bytes_total")
            if isinstance(done, int) and isinstance(total, int):
                return done, total
    return None


def _endpoint_of(obj: Manifest) -> str | None:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    name = labels.get(LABEL_NAME)
    return name if isinstance(name, str) else None


def _rv(obj: Manifest) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def _at_least(have: str, want: str) -> bool:
    """Whether resourceVersion `have` is `want` or later (numeric, as etcd's are)."""
    try:
        return int(have) >= int(want)
    except ValueError:
        return have == want


def _object_list(refs: Iterable[ObjectRef]) -> str:
    return ",".join(sorted(f"{ref.kind}/{ref.name}" for ref in refs))


def _owns_replicas(entry: Manifest) -> bool:
    fields = entry.get("fieldsV1") or {}
    return "f:replicas" in (fields.get("f:spec") or {})


def _sole_replicas_owner(deployment: Manifest) -> bool:
    """Whether servefleet alone manages the Deployment's `spec.replicas`."""
    entries = (deployment.get("metadata") or {}).get("managedFields") or []
    owners = {
        (entry.get("manager"), entry.get("subresource") or "")
        for entry in entries
        if _owns_replicas(entry)
    }
    return owners == {(FIELD_MANAGER, "")}


def _version(deployment: Manifest | None) -> VersionObservation:
    """Replicas of the Deployment's current template: during a rollout its status
    counts the old pods too, so of `readyReplicas` only what exceeds the old pods
    (`replicas - updatedReplicas`) is surely new — a new version whose pods never
    get ready (a model that cannot be staged) must not look ready on the old ones."""
    if deployment is None:
        return VersionObservation()
    status = deployment.get("status") or {}
    current = status.get("observedGeneration") == deployment["metadata"].get("generation")
    running = int(status.get("replicas") or 0)
    old = running - int(status.get("updatedReplicas") or 0)
    ready = int(status.get("readyReplicas") or 0)
    new_ready = max(0, ready - old) if current else 0
    return VersionObservation(ready=new_ready, running=running, outgoing_ready=ready - new_ready)


def _problem(deployment: Manifest | None) -> str:
    if deployment is None:
        return ""
    problems = []
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        kind, state, reason = (
            condition.get("type"),
            condition.get("status"),
            condition.get("reason"),
        )
        if (kind == "Progressing" and reason == "ProgressDeadlineExceeded") or (
            kind == "ReplicaFailure" and state == "True"
        ):
            name = deployment["metadata"]["name"]
            problems.append(f"{name}: {condition.get('message') or reason}")
    return "; ".join(problems)


def status_message(body: bytes, status: int) -> str:
    try:
        decoded = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500] or f"HTTP {status}"
    if isinstance(decoded, dict) and decoded.get("message"):
        return str(decoded["message"])
    return f"HTTP {status}"


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def make_api_client(configuration: client.Configuration) -> ApiClient:
    """An `ApiClient` that reads the environment's proxy settings once, here.

    kubernetes-asyncio's HTTP session trusts the environment, so aiohttp looks up
    ~/.netrc and the proxy variables, each in a worker thread, on every request:
    two thread hops per request, about a third of the runtime's CPU and of its
    convergence time on a large fleet (bench/, Kubernetes convergence). The proxy
    for the API server is resolved now instead and the session stops looking.
    """
    if not configuration.proxy:
        with contextlib.suppress(LookupError):
            proxy, auth = get_env_proxy_for_url(URL(configuration.host or ""))
            configuration.proxy = str(proxy)
            if auth is not None:
                configuration.proxy_headers = {"Proxy-Authorization": auth.encode()}
    api_client = ApiClient(configuration)
    # No public switch: the session is built inside kubernetes-asyncio's REST client.
    api_client.rest_client.pool_manager._trust_env = False
    return api_client


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
    ) -> None:
        self.region = region
        self.settings = settings
        self.namespace = settings.namespace
        self._api_client = api_client
        self._cluster = cluster
        self._owns_client = owns_client
        self._caches = {kind.kind: _Cache(kind, kind.api(api_client)) for kind in _KINDS}
        self._pods = _Cache(_PODS, _PODS.api(api_client))
        self._stage_progress: dict[str, tuple[int, int]] = {}
        """Pod name -> (bytes done, bytes total) last read from its staging log."""
        self._stage_turn = 0
        self._bucket = TokenBucket(cluster.rate, cluster.burst)
        self._subscriptions: weakref.WeakSet[EventSubscription] = weakref.WeakSet()
        self._changed = asyncio.Event()
        self._held_events: dict[str, list[tuple[str, str, str | None]]] = {}
        """Endpoint -> the (kind, name, resourceVersion or None if deleted) of its watch
        events while apply() or remove() writes its objects (`_holding_events`)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

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
            region, settings, make_api_client(configuration), cluster=cluster, owns_client=True
        )

    @classmethod
    def in_cluster(
        cls, region: str, settings: RegionSettings, *, cluster: ClusterSettings = ClusterSettings()
    ) -> KubernetesRuntime:
        """A runtime on the cluster it runs in (the pod's service account); not started."""
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return cls(
            region, settings, make_api_client(configuration), cluster=cluster, owns_client=True
        )

    # Lifecycle.

    async def start(self, give_up_after: float | None = None) -> None:
        """Start the watch caches and wait until each has listed once; after
        `give_up_after` seconds (None: no limit) raise `RuntimeUnavailable`, the watches
        going on trying (call `close()` to stop them)."""
        if self._tasks:
            return
        caches = [*self._caches.values(), self._pods]
        for cache in caches:
            self._tasks.append(
                asyncio.create_task(self._follow(cache), name=f"watch {cache.kind.kind}")
            )
        self._tasks.append(
            asyncio.create_task(self._follow_staging_progress(), name="staging progress")
        )
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
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for subscription in list(self._subscriptions):
            subscription.close()
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
        held = self._held_objects(endpoint)
        if not held:
            return None
        deployments = {
            obj["metadata"]["name"]: obj for obj in self._caches["Deployment"].of(endpoint)
        }
        primary = deployments.get(endpoint)
        canary = deployments.get(f"{endpoint}-canary")
        staging, failure, staging_problem = _staging(self._pods.of(endpoint), self._stage_progress)
        problems = (staging_problem, _problem(primary), _problem(canary))
        problem = "; ".join(p for p in problems if p)
        return Observed(
            workload_hash=self._hash_in_place(endpoint, held),
            primary=_version(primary),
            canary=_version(canary),
            routed=any(
                obj["metadata"]["name"] == endpoint for obj in self._caches["Ingress"].of(endpoint)
            ),
            problem=problem,
            failure=failure,
            staging=staging,
        )

    async def held(self) -> set[str]:
        return {name for cache in self._caches.values() for name in cache.by_endpoint}

    async def apply(self, workload: Workload) -> None:
        namespace = namespace_of(workload, self.settings)
        if namespace != self.namespace:
            raise WorkloadUnsupported(
                f"namespace: region {self.region} manages namespace {self.namespace!r} only "
                f"(got {namespace!r})"
            )
        plan = steps(workload, self.settings)  # WorkloadUnsupported for an image-less spec
        objects = _object_list(step.ref for step in plan if step.verb == "apply")
        written: list[tuple[ObjectRef, str | None]] = []
        with self._holding_events(workload.endpoint, written):
            for step in plan:
                if step.verb == "delete":
                    if self._cached(step.ref) is not None:
                        await self._delete(step.ref)
                        written.append((step.ref, None))
                    continue
                assert step.manifest is not None
                # Copied only down to what changes: the rest is sent, never modified.
                metadata = step.manifest["metadata"]
                annotations = {**metadata["annotations"], ANNOTATION_OBJECTS: objects}
                manifest = {**step.manifest, "metadata": {**metadata, "annotations": annotations}}
                if step.ref.kind == "Deployment" and "replicas" not in manifest["spec"]:
                    await self._hand_off_replicas(workload, step.ref)
                result = await self._apply(step.ref, manifest, FIELD_MANAGER, force=True)
                written.append((step.ref, _rv(result)))
            await self._synced(written)

    async def remove(self, endpoint: str) -> None:
        refs = sorted(
            self._held_refs(endpoint),
            key=lambda ref: (_REMOVAL_ORDER[ref.kind], not ref.name.endswith("-canary")),
        )
        written: list[tuple[ObjectRef, str | None]] = []
        with self._holding_events(endpoint, written):
            for ref in refs:
                await self._delete(ref)
                written.append((ref, None))
            await self._synced(written)

    def events(self) -> AsyncIterator[str]:
        subscription = EventSubscription()
        if self._closed:
            subscription.close()
        self._subscriptions.add(subscription)
        return subscription

    # Reading the cache.

    def _cached(self, ref: ObjectRef) -> Manifest | None:
        if ref.namespace != self.namespace:
            return None
        return self._caches[ref.kind].objects.get(ref.name)

    def _held_objects(self, endpoint: str) -> list[tuple[str, Manifest]]:
        return [(kind, obj) for kind, cache in self._caches.items() for obj in cache.of(endpoint)]

    def _held_refs(self, endpoint: str) -> list[ObjectRef]:
        known = {(ref.kind, ref.name): ref for ref in all_objects(endpoint, self.namespace)}
        refs = []
        for kind, obj in self._held_objects(endpoint):
            name = obj["metadata"]["name"]
            refs.append(
                known.get((kind, name))
                or ObjectRef(obj.get("apiVersion", ""), kind, self.namespace, name)
            )
        return refs

    @staticmethod
    def _hash_in_place(endpoint: str, held: list[tuple[str, Manifest]]) -> str:
        """The hash every object of the endpoint records, if the cached objects are
        exactly the ones that workload renders; else "" (matches no workload)."""
        recorded = {
            (
                (obj["metadata"].get("annotations") or {}).get(ANNOTATION_HASH, ""),
                (obj["metadata"].get("annotations") or {}).get(ANNOTATION_OBJECTS, ""),
            )
            for _kind, obj in held
        }
        if len(recorded) != 1:
            return ""
        ((digest, objects),) = recorded
        present = ",".join(sorted(f"{kind}/{obj['metadata']['name']}" for kind, obj in held))
        return digest if digest and objects == present else ""

    # Writing.

    async def _hand_off_replicas(self, workload: Workload, ref: ObjectRef) -> None:
        live = self._cached(ref)
        if live is None or not _sole_replicas_owner(live):
            return
        replicas = int((live.get("spec") or {}).get("replicas", 1))
        body = replicas_handoff(workload, self.settings, replicas)
        await self._apply(ref, body, HANDOFF_MANAGER, force=False)
        log.info("%s/%s: spec.replicas (%d) handed over", self.region, ref.name, replicas)

    async def _apply(
        self, ref: ObjectRef, body: Manifest, manager: str, *, force: bool
    ) -> Manifest:
        cache = self._caches[ref.kind]
        patch = getattr(cache.api, f"patch_namespaced_{cache.kind.suffix}")
        options: dict[str, Any] = {
            "field_manager": manager,
            "_content_type": _APPLY,
            "_preload_content": False,
        }
        if force:
            options["force"] = True
        result = await self._request(
            f"apply {ref.kind} {ref.name}",
            lambda: patch(ref.name, ref.namespace, body, **options),
        )
        assert result is not None
        return result

    async def _delete(self, ref: ObjectRef) -> None:
        cache = self._caches[ref.kind]
        delete = getattr(cache.api, f"delete_namespaced_{cache.kind.suffix}")
        await self._request(
            f"delete {ref.kind} {ref.name}",
            lambda: delete(
                ref.name, ref.namespace, propagation_policy="Background", _preload_content=False
            ),
            missing_ok=True,
        )

    async def _request(
        self,
        what: str,
        call: Callable[[], Awaitable[aiohttp.ClientResponse]],
        *,
        missing_ok: bool = False,
    ) -> Manifest | None:
        """One API call (`_send`); its decoded body, or None for a 404 when `missing_ok`."""
        raw = await self._send(what, call, missing_ok=missing_ok)
        if raw is None:
            return None
        decoded = json.loads(raw) if raw.strip() else {}
        return decoded if isinstance(decoded, dict) else {}

    async def _send(
        self,
        what: str,
        call: Callable[[], Awaitable[aiohttp.ClientResponse]],
        *,
        missing_ok: bool = False,
    ) -> bytes | None:
        """One API call with the rate limit, retries and the error mapping; the
        body, or None for a 404 when `missing_ok`."""
        attempt = 0
        while True:
            retry_after: float | None = None
            await self._bucket.acquire()
            try:
                async with asyncio.timeout(self._cluster.request_timeout):
                    response = await call()
                    try:
                        raw = await response.read()
                    finally:
                        response.release()
            except (aiohttp.ClientError, TimeoutError, OSError) as error:
                failure = f"{what}: {type(error).__name__}: {error}".rstrip(": ")
            else:
                status = response.status
                if 200 <= status < 300:
                    return raw
                message = status_message(raw, status)
                if status == 404 and missing_ok:
                    return None
                if status == 409:
                    raise ApplyConflict(f"{what}: {message}")
                if status in (400, 422):
                    raise WorkloadUnsupported(f"{what}: {message}")
                if status != 429 and status < 500:
                    raise RuntimeUnavailable(f"{what}: HTTP {status}: {message}")
                failure = f"{what}: HTTP {status}: {message}"
                retry_after = _retry_after(response.headers)
            attempt += 1
            if attempt > self._cluster.retries:
                raise RuntimeUnavailable(failure)
            delay = min(
                self._cluster.backoff_max,
                self._cluster.backoff_initial * 2 ** (attempt - 1) * random.uniform(0.8, 1.2),
            )
            if retry_after is not None:
                delay = min(max(delay, retry_after), max(self._cluster.backoff_max, 1.0))
            log.info("%s: %s (retry %d in %.2fs)", self.region, failure, attempt, delay)
            await asyncio.sleep(delay)

    async def _synced(self, written: list[tuple[ObjectRef, str | None]]) -> None:
        """Wait (bounded) until the caches show these writes: each applied object at
        least at its resourceVersion, each deleted one gone."""

        def caught_up() -> bool:
            for ref, version in written:
                cached = self._cached(ref)
                if version is None:
                    if cached is not None:
                        return False
                elif cached is None or not _at_least(_rv(cached), version):
                    return False
            return True

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._cluster.sync_timeout):
                while not caught_up():
                    changed = self._changed
                    await changed.wait()
                return
        log.warning("%s: the watches did not show our writes within the sync timeout", self.region)

    @contextlib.contextmanager
    def _holding_events(
        self, endpoint: str, written: list[tuple[ObjectRef, str | None]]
    ) -> Iterator[None]:
        """Hold back `endpoint`'s events while we write its objects, then pass one on
        only if some event showed something other than our writes (a hand edit, a
        status update, another version). Whoever called apply() or remove() observes
        after it, and `_synced` has waited for our own events: a pass they started
        would find nothing to do (one per endpoint and apply, bench/: Kubernetes
        convergence). The controller never writes one endpoint twice at once; if
        something does, the second writer's events are simply not held."""
        if endpoint in self._held_events:
            yield
            return
        held = self._held_events[endpoint] = []
        try:
            yield
        finally:
            del self._held_events[endpoint]
            ours = {(ref.kind, ref.name, version) for ref, version in written}
            if any(event not in ours for event in held):
                self._notify([endpoint])

    # The watch caches.

    def _notify(self, names: Iterable[str | None]) -> None:
        for name in names:
            if name is not None:
                for subscription in list(self._subscriptions):
                    subscription.push(name)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _follow(self, cache: _Cache) -> None:
        """List, then watch from the list's resourceVersion, forever."""
        backoff = self._cluster.backoff_initial
        while True:
            try:
                if cache.resource_version is None:
                    await self._relist(cache)
                await self._watch(cache)
                backoff = self._cluster.backoff_initial
            except _Expired:
                log.info("%s: %s watch expired; listing again", self.region, cache.kind.kind)
                cache.resource_version = None
            except (
                _ApiError,
                RuntimeUnavailable,
                aiohttp.ClientError,
                TimeoutError,
                OSError,
                ValueError,
            ) as error:
                log.warning("%s: %s watch failed: %s", self.region, cache.kind.kind, error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._cluster.backoff_max)
            except Exception:  # a refused LIST, a malformed event: start over from a list
                log.exception("%s: %s watch broke; listing again", self.region, cache.kind.kind)
                cache.resource_version = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._cluster.backoff_max)

    async def _relist(self, cache: _Cache) -> None:
        listing = getattr(cache.api, f"list_namespaced_{cache.kind.suffix}")
        objects: dict[str, Manifest] = {}  # by name
        token: str | None = None
        version = ""
        while True:
            options: dict[str, Any] = {
                "label_selector": cache.kind.selector,
                "limit": self._cluster.list_page,
                "_preload_content": False,
            }
            if token:
                options["_continue"] = token
            page = await self._request(
                f"list {cache.kind.kind}",
                lambda options=options: listing(self.namespace, **options),  # type: ignore[misc]
            )
            assert page is not None
            for item in page.get("items") or []:
                objects[item["metadata"]["name"]] = item
            metadata = page.get("metadata") or {}
            version = str(metadata.get("resourceVersion", ""))
            token = metadata.get("continue")
            if not token:
                break
        old = cache.objects
        changed = {
            _endpoint_of(obj)
            for name, obj in objects.items()
            if name not in old or _rv(old[name]) != _rv(obj)
        } | {_endpoint_of(obj) for name, obj in old.items() if name not in objects}
        cache.replace(list(objects.values()))
        cache.resource_version = version
        cache.synced.set()
        self._notify(changed)

    async def _watch(self, cache: _Cache) -> None:
        """One watch request from the cache's resourceVersion, until it ends."""
        listing = getattr(cache.api, f"list_namespaced_{cache.kind.suffix}")
        timeout = self._cluster.watch_timeout
        response: aiohttp.ClientResponse = await listing(
            self.namespace,
            label_selector=cache.kind.selector,
            watch=True,
            resource_version=cache.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _preload_content=False,
            _request_timeout=(self._cluster.request_timeout, timeout + 30),
        )
        try:
            if response.status == 410:
                raise _Expired()
            if response.status != 200:
                raw = await response.read()
                raise _ApiError(response.status, status_message(raw, response.status))
            while True:
                line = await response.content.readline()
                if not line:
                    return
                if not line.strip():
                    continue
                self._on_event(cache, json.loads(line))
        finally:
            response.release()

    def _on_event(self, cache: _Cache, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Expired()
            raise _ApiError(int(obj.get("code") or 500), str(obj.get("message", "")))
        version = _rv(obj)
        if kind == "BOOKMARK":
            cache.resource_version = version or cache.resource_version
            return
        name = obj["metadata"]["name"]
        previous = cache.objects.get(name)
        if kind == "DELETED":
            cache.remove(name)
        elif kind in ("ADDED", "MODIFIED"):
            cache.put(obj)
        else:
            return
        cache.resource_version = version or cache.resource_version
        if (
            cache is self._pods
            and kind == "MODIFIED"
            and previous is not None
            and previous["stage"] == cache.objects[name]["stage"]
        ):
            return  # a replica's readiness, not its staging
        names = {_endpoint_of(obj)}
        if previous is not None:
            names.add(_endpoint_of(previous))
        seen = (cache.kind.kind, name, None if kind == "DELETED" else version)
        for endpoint, held in self._held_events.items():
            if endpoint in names:
                held.append(seen)
        self._notify(names - self._held_events.keys())

    # Staging progress.

    async def _follow_staging_progress(self) -> None:
        """Read the progress of running staging init containers from their logs."""
        core = self._pods.api
        while True:
            await asyncio.sleep(self._cluster.staging_poll_interval)
            running: dict[str, str] = {}  # endpoint -> one of its pods staging
            for name in sorted(self._pods.objects):
                entry = self._pods.objects[name]
                endpoint = _endpoint_of(entry)
                stage = entry["stage"]
                if endpoint and stage["phase"] == "running" and not stage["terminating"]:
                    running.setdefault(endpoint, name)
            pods = set(running.values())
            for gone in self._stage_progress.keys() - pods:
                del self._stage_progress[gone]
            turn = sorted(running.items())
            if len(turn) > self._cluster.staging_log_reads:
                start = self._stage_turn % len(turn)
                turn = (turn[start:] + turn[:start])[: self._cluster.staging_log_reads]
                self._stage_turn = start + len(turn)
            for endpoint, pod in turn:
                try:
                    log_tail = await self._send(
                        f"read the log of pod {pod}",
                        lambda pod=pod: core.read_namespaced_pod_log(  # type: ignore[misc]
                            pod,
                            self.namespace,
                            container=STAGE_CONTAINER,
                            tail_lines=5,
                            _preload_content=False,
                        ),
                        missing_ok=True,
                    )
                except (RuntimeUnavailable, WorkloadUnsupported, ApplyConflict) as error:
                    log.debug("%s: %s", self.region, error)  # not started yet, or gone
                    continue
                progress = _progress_line(log_tail) if log_tail else None
                if progress is None:
                    continue
                shown = self._stage_progress.get(pod)
                if shown is None or staging_percent(*shown) != staging_percent(*progress):
                    self._stage_progress[pod] = progress
                    self._notify([endpoint])
