"""Every request the runtime sends to its API server, through one door.

`ClusterApi` is the runtime's small client of one namespace: apply, delete, list
a page, open a watch, read the tail of a pod's log. Each request but the watch
streams passes a client-side rate limit that adapts to the server
(`ratelimit.AdaptiveRate`, `ClusterSettings.rate`: it halves on a 429 or a
Retry-After and on latency that stays high, and climbs back to its ceiling), runs under
`request_timeout`, and is retried on 429, 5xx, timeouts and connection errors
with exponential backoff (honouring Retry-After, capped at `backoff_max` or 1 s,
whichever is longer) before `RuntimeUnavailable`; what each answer means is
decided in `errors.py`. Every attempt, and every watch opened, is counted in
`servefleet_runtime_api_requests` by verb and status ("error": no answer came);
the current rate is `servefleet_runtime_api_rate`.

Applies go on servefleet's own HTTP/1.1 client to the API server (`transport.py`;
behind a proxy, on the client's aiohttp session); the other requests through
kubernetes-asyncio's generated methods on its session. Custom resources (KEDA's
ScaledObject) go through the client's CustomObjectsApi, called with the same
arguments as a built-in kind's methods (`Kind.custom`). `close()` closes the
applies' connections; the client is its owner's to close.

`make_api_client` builds the kubernetes-asyncio client the runtime and the Lease
election (`lease.py`) share the habits of. Its User-Agent names servefleet, its
version and this process (`servefleet/0.1.0 (host:pid)`, the `host:pid` that begins
the process's Lease holder identity), so an API server's audit log tells which
reconciler sent each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio import client
from kubernetes_asyncio.client.api_client import ApiClient
from prometheus_client import Counter
from yarl import URL

from servefleet.http.pool import UpstreamError
from servefleet.metrics import Metrics
from servefleet.ratelimit import AdaptiveRate
from servefleet.runtime.base import RuntimeUnavailable
from servefleet.runtime.kubernetes.errors import refusal, retry_after, status_message
from servefleet.runtime.kubernetes.render import ObjectRef
from servefleet.runtime.kubernetes.render_keda import (
    LABEL_SCALED_BY,
    SCALED_OBJECT_GROUP,
    SCALED_OBJECT_PLURAL,
    SCALED_OBJECT_VERSION,
)
from servefleet.runtime.kubernetes.render_names import MANAGED_BY, MANAGED_SELECTOR, Manifest
from servefleet.runtime.kubernetes.render_pod import STAGE_CONTAINER, STAGING_SELECTOR
from servefleet.runtime.kubernetes.render_settings import RegionSettings
from servefleet.runtime.kubernetes.settings import ClusterSettings
from servefleet.runtime.kubernetes.transport import ApplyTransport, Reply, replied

__all__ = [
    "KINDS",
    "PODS",
    "SCALED_OBJECTS",
    "ClusterApi",
    "Kind",
    "make_api_client",
    "managed_kinds",
    "user_agent",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    """A kind the runtime lists and watches, and the client API that serves it."""

    kind: str
    api: type[Any]
    suffix: str
    """`list_namespaced_<suffix>` and so on."""
    collection: str
    """The URL path of the kind's objects in namespace `{namespace}` (applies)."""
    selector: str = MANAGED_SELECTOR
    custom: tuple[str, str, str] | None = None
    """(group, version, plural) of a custom resource (`api` is CustomObjectsApi)."""


KINDS: Final[tuple[Kind, ...]] = (
    Kind("Service", client.CoreV1Api, "service", "/api/v1/namespaces/{namespace}/services"),
    Kind(
        "Deployment",
        client.AppsV1Api,
        "deployment",
        "/apis/apps/v1/namespaces/{namespace}/deployments",
    ),
    Kind(
        "HorizontalPodAutoscaler",
        client.AutoscalingV2Api,
        "horizontal_pod_autoscaler",
        "/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers",
    ),
    Kind(
        "Ingress",
        client.NetworkingV1Api,
        "ingress",
        "/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses",
    ),
)
"""The kinds servefleet applies."""
PODS: Final = Kind(
    "Pod", client.CoreV1Api, "pod", "/api/v1/namespaces/{namespace}/pods", STAGING_SELECTOR
)
"""Not managed (nothing is applied to pods): watched for model staging only."""
SCALED_OBJECTS: Final = Kind(
    "ScaledObject",
    client.CustomObjectsApi,
    "custom_object",
    f"/apis/{SCALED_OBJECT_GROUP}/{SCALED_OBJECT_VERSION}/namespaces/{{namespace}}"
    f"/{SCALED_OBJECT_PLURAL}",
    f"{LABEL_SCALED_BY}={MANAGED_BY}",
    (SCALED_OBJECT_GROUP, SCALED_OBJECT_VERSION, SCALED_OBJECT_PLURAL),
)
"""KEDA's, in keda regions only: elsewhere the CRD may not exist, and is never listed."""


def managed_kinds(settings: RegionSettings) -> tuple[Kind, ...]:
    """The kinds a region's runtime applies, lists and watches."""
    return (*KINDS, SCALED_OBJECTS) if settings.autoscaler == "keda" else KINDS


def user_agent() -> str:
    """`servefleet/<version> (<host>:<pid>)`: who sends a request, in an audit log."""
    return f"servefleet/{version('servefleet')} ({socket.gethostname()}:{os.getpid()})"


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
    api_client.user_agent = user_agent()
    # No public switch: the session is built inside kubernetes-asyncio's REST client.
    api_client.rest_client.pool_manager._trust_env = False
    return api_client


class ClusterApi:
    """The requests of one region's runtime to its namespace (module docstring)."""

    def __init__(
        self,
        region: str,
        namespace: str,
        api_client: ApiClient,
        settings: ClusterSettings,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.region = region
        metrics = metrics or Metrics()
        self._requests = metrics.runtime_api_requests
        self._counted: dict[tuple[str, str], Counter] = {}
        self.namespace = namespace
        self._settings = settings
        self._apis = {kind.kind: kind.api(api_client) for kind in (*KINDS, SCALED_OBJECTS, PODS)}
        self._kinds = {kind.kind: kind for kind in (*KINDS, SCALED_OBJECTS, PODS)}
        self._rate = AdaptiveRate(settings.rate)
        self._applies = ApplyTransport(api_client, settings.request_timeout)
        metrics.runtime_api_rate.labels(region).set_function(lambda: self._rate.rate)

    async def close(self) -> None:
        """Close the connections of the applies (the client is its owner's to close)."""
        await self._applies.close()

    async def apply(self, ref: ObjectRef, body: Manifest, manager: str, *, force: bool) -> Manifest:
        """Server-side apply `body` as field manager `manager`; the object as stored.

        Sent below the generated method and the REST layer (`transport.py`: on
        servefleet's own HTTP/1.1 client, or on the client's session behind a
        proxy): their checks and copies of arguments, the query's encoding and the
        content-type matching servefleet does not need took a seventh of the
        reconciler's CPU while a fleet converges (bench/, Kubernetes convergence);
        the body is encoded by orjson."""
        namespace, name = quote(ref.namespace, safe=""), quote(ref.name, safe="")
        path = f"{self._kinds[ref.kind].collection.format(namespace=namespace)}/{name}"
        encoded = orjson.dumps(body)
        result = await self._request(
            "apply",
            f"apply {ref.kind} {ref.name}",
            lambda: self._applies.apply(path, encoded, manager, force=force),
        )
        assert result is not None
        return result

    async def delete(self, ref: ObjectRef) -> None:
        """Delete the object; one already gone is not an error."""
        delete = self._call(ref.kind, "delete_namespaced")
        await self._request(
            "delete",
            f"delete {ref.kind} {ref.name}",
            lambda: replied(
                delete(
                    ref.name,
                    ref.namespace,
                    propagation_policy="Background",
                    _preload_content=False,
                )
            ),
            missing_ok=True,
        )

    async def list_page(self, kind: Kind, continue_from: str | None) -> Manifest:
        """One page (`list_page` objects) of `kind`'s list, after `continue_from`."""
        listing = self._call(kind.kind, "list_namespaced")
        options: dict[str, Any] = {
            "label_selector": kind.selector,
            "limit": self._settings.list_page,
            "_preload_content": False,
        }
        if continue_from:
            options["_continue"] = continue_from
        page = await self._request(
            "list", f"list {kind.kind}", lambda: replied(listing(self.namespace, **options))
        )
        assert page is not None
        return page

    async def watch(self, kind: Kind, resource_version: str | None) -> aiohttp.ClientResponse:
        """Open a watch of `kind` from `resource_version` (with BOOKMARKs): the raw
        streaming response, neither rate limited nor retried (`watches.py` reopens it)."""
        listing = self._call(kind.kind, "list_namespaced")
        timeout = self._settings.watch_timeout
        status = "error"
        try:
            response: aiohttp.ClientResponse = await listing(
                self.namespace,
                label_selector=kind.selector,
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _preload_content=False,
                _request_timeout=(self._settings.request_timeout, timeout + 30),
            )
            status = str(response.status)
        finally:
            self._count("watch", status)
        return response

    async def stage_log_tail(self, pod: str) -> bytes | None:
        """The last lines of the pod's staging init container's log; None if the pod
        is gone."""
        read_log = self._apis["Pod"].read_namespaced_pod_log
        return await self._send(
            "log",
            f"read the log of pod {pod}",
            lambda: replied(
                read_log(
                    pod,
                    self.namespace,
                    container=STAGE_CONTAINER,
                    tail_lines=5,
                    _preload_content=False,
                )
            ),
            missing_ok=True,
        )

    def _count(self, verb: str, status: str) -> None:
        """One more request in `servefleet_runtime_api_requests`; each labelled child
        is looked up once (`labels()` takes a lock and builds its key every time)."""
        child = self._counted.get((verb, status))
        if child is None:
            child = self._counted[verb, status] = self._requests.labels(self.region, verb, status)
        child.inc()

    def _call(self, kind: str, verb: str) -> Callable[..., Awaitable[aiohttp.ClientResponse]]:
        """The client method `<verb>_<suffix>` of `kind`, e.g. `patch_namespaced_service`;
        of a custom resource, `<verb>_custom_object` taking the same arguments
        (`[name,] namespace[, body]`) as a built-in kind's."""
        known = self._kinds[kind]
        method: Callable[..., Awaitable[aiohttp.ClientResponse]] = getattr(
            self._apis[kind], f"{verb}_{known.suffix}"
        )
        if known.custom is None:
            return method
        group, version, plural = known.custom
        if verb == "list_namespaced":
            return lambda namespace, **options: method(group, version, namespace, plural, **options)
        return lambda name, namespace, *body, **options: method(
            group, version, namespace, plural, name, *body, **options
        )

    async def _request(
        self,
        verb: str,
        what: str,
        call: Callable[[], Awaitable[Reply]],
        *,
        missing_ok: bool = False,
    ) -> Manifest | None:
        """One API call (`_send`); its decoded body, or None for a 404 when `missing_ok`."""
        raw = await self._send(verb, what, call, missing_ok=missing_ok)
        if raw is None:
            return None
        decoded = orjson.loads(raw) if raw.strip() else {}
        return decoded if isinstance(decoded, dict) else {}

    async def _send(
        self,
        verb: str,
        what: str,
        call: Callable[[], Awaitable[Reply]],
        *,
        missing_ok: bool = False,
    ) -> bytes | None:
        """One API call with the rate limit, retries and the error mapping; the
        body, or None for a 404 when `missing_ok`. `call` sends one attempt and
        reads its answer."""
        settings = self._settings
        attempt = 0
        while True:
            wait_asked: float | None = None
            await self._rate.acquire()
            sent = time.monotonic()
            try:
                async with asyncio.timeout(settings.request_timeout):
                    reply = await call()
            except (aiohttp.ClientError, UpstreamError, TimeoutError, OSError) as error:
                self._count(verb, "error")
                failure = f"{what}: {type(error).__name__}: {error}".rstrip(": ")
            else:
                status, raw = reply.status, reply.body
                self._count(verb, str(status))
                wait_asked = retry_after(reply.headers)
                if status == 429 or wait_asked is not None:
                    self._rate.overloaded()
                else:
                    self._rate.answered(time.monotonic() - sent)
                if 200 <= status < 300:
                    return raw
                message = status_message(raw, status)
                if status == 404 and missing_ok:
                    return None
                refused = refusal(what, status, message)
                if refused is not None:
                    raise refused
                failure = f"{what}: HTTP {status}: {message}"
            attempt += 1
            if attempt > settings.retries:
                raise RuntimeUnavailable(failure)
            delay = min(
                settings.backoff_max,
                settings.backoff_initial * 2 ** (attempt - 1) * random.uniform(0.8, 1.2),
            )
            if wait_asked is not None:
                delay = min(max(delay, wait_asked), max(settings.backoff_max, 1.0))
            log.info("%s: %s (retry %d in %.2fs)", self.region, failure, attempt, delay)
            await asyncio.sleep(delay)
