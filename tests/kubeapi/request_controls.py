"""What the tests see of the requests and inject into them: each request as the
controls see it (`RequestInfo`), predicates on them (`matching`), the injected
failures and latencies, and `RequestControls`, the part of the server that counts
requests and holds what is injected."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


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


class RequestControls:
    """Request counts, the request log, injected faults and latencies, and the limit
    of requests served at once (the server applies them to every request)."""

    def __init__(self) -> None:
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

    def record(self, info: RequestInfo) -> None:
        self.request_log.append(info)
        self.requests[(info.verb, info.resource_key)] += 1
