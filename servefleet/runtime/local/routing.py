"""Routing tables and the choice of a replica: path → endpoint → version → replica.

`Router` is one region's routing table. The supervisor that owns the region's
replicas is its only writer (`set_route`, `remove_route`); every request reads it.
`choose` picks for a request over one table (a region gateway) or several (the
global entry point), in this order:

1. the version, once, by the canary's weight — over every region together, so a
   canary gets its declared share however the load is spread across regions (the
   other version when the chosen one has no usable replica anywhere);
2. then, among that version's replicas in every region, the one with the fewest
   requests in flight, ties at random.

Choosing the region first and the version inside it would not do: the canary,
lightly loaded, would win the comparison across regions more often than its weight.

A choice is synchronous, so choosing a replica and counting the request against it
(`Backend.acquire`) happen without an `await` in between: a replica removed from
the table can never receive a request after its drain began.

Each routed endpoint has a `LoadMeter` per version (`load`), kept across route
updates: the gateway counts a request against the version first chosen for it,
and the local autoscaler reads the meters once a second.

A version its autoscaler may take to zero *wakes* (`set_route(wakes=...)`): it
takes part in the choice with no replica, and a request for it that finds none
ready anywhere is a `Hold`: the gateway holds it (`activator`), `Router.wake`
has the runtime start a replica, and `Router.changed` tells the gateway when to
choose again.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeVar

from servefleet.runtime.local.load import LoadMeter

__all__ = [
    "Backend",
    "Hold",
    "Pick",
    "Refusal",
    "RouteConflict",
    "Router",
    "choose",
    "longest_prefix",
]

Role = Literal["primary", "canary"]
T = TypeVar("T")


class Backend:
    """One replica process as the gateway sees it, with its requests in flight.

    The supervisor makes one per started process and keeps it while the process
    lives, so the count follows the replica across route updates; `idle()` is how
    it waits for a retiring replica's last request before stopping the process.
    """

    __slots__ = ("_idle", "name", "outstanding", "stalled", "url")

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        """Shown to clients in `x-servefleet-replica`, e.g. "llm/primary-0"."""
        self.url = url
        """Base URL without a trailing slash, e.g. "http://127.0.0.1:41234"."""
        self.outstanding = 0
        self.stalled = False
        """A request to it went unanswered past the gateway's upstream read timeout;
        it is not chosen again until it answers (`answered`)."""
        self._idle = asyncio.Event()
        self._idle.set()

    def acquire(self) -> None:
        self.outstanding += 1
        self._idle.clear()

    def release(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self._idle.set()

    def stall(self) -> None:
        """Take the replica out of the choice until it answers again: fewest requests
        in flight would otherwise send the next request straight back to it."""
        self.stalled = True

    def answered(self) -> None:
        """The replica answered something (a request, a health probe): choose it again."""
        self.stalled = False

    async def idle(self) -> None:
        """Return once no request is in flight on this replica."""
        await self._idle.wait()

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, {self.url!r}, outstanding={self.outstanding})"


class Pick(NamedTuple):
    """Where one request goes.

    A named tuple rather than a frozen dataclass: as immutable, and made for every
    request, where a frozen dataclass's `__init__` sets each field through
    `object.__setattr__` (about four times the cost)."""

    endpoint: str
    version: Role
    backend: Backend
    prefix: str
    """The route prefix taken off the path ("/inference/llm"; "/" takes nothing off)."""
    path: str
    """The request path with the route prefix taken off ("/v1/models", or "/")."""
    meter: LoadMeter
    """Where the request counts as the version's load (`load`)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request cannot be served: 404 (no such endpoint) or 503 (none ready)."""

    status: int
    reason: str
    region: str
    """The region whose table refused (the gateway's metrics count it there)."""
    endpoint: str | None = None
    """The endpoint whose route matched, if one did."""
    retry_after: int | None = None
    """Seconds after which asking again may succeed (the answer's `Retry-After`)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """A request for a version with no ready replica anywhere, which starts on demand."""

    router: Router
    """The region to wake (the first whose route wakes the version)."""
    endpoint: str
    version: Role
    meter: LoadMeter


class RouteConflict(ValueError):
    """Two endpoints asked for the same path prefix in one region."""


@dataclass(frozen=True, slots=True)
class _Route:
    endpoint: str
    prefix: str
    routed: bool
    reason: str
    weight: int
    primary: tuple[Backend, ...]
    canary: tuple[Backend, ...]
    meters: dict[Role, LoadMeter]
    wakes: frozenset[Role]


class Router:
    """One region's routing table, read on every request and written on every change."""

    def __init__(self, region: str, *, leading: bool = True) -> None:
        self.region = region
        self.leading = leading
        """Whether a runtime of this process serves the region; a standby's gateway
        has no routes and says so instead of answering 404."""
        self.synced = True
        """Whether the routes are all there: a new leader's runtime has them only
        once its reconciler has looked at every endpoint, and until then a path
        with no route may be one still to come (503 and Retry-After, not 404)."""
        self._by_prefix: dict[str, _Route] = {}
        self._by_endpoint: dict[str, _Route] = {}
        self._meters: dict[str, dict[Role, LoadMeter]] = {}
        self._changes: dict[str, asyncio.Future[None]] = {}
        self.on_wake: Callable[[str, Role], None] | None = None
        """Set by the runtime that writes the table: starts a version's first replica."""

    def set_route(
        self,
        endpoint: str,
        path_prefix: str,
        *,
        routed: bool,
        reason: str,
        weight: int,
        primary: Sequence[Backend],
        canary: Sequence[Backend],
        wakes: Collection[Role] = (),
    ) -> None:
        """Route `path_prefix` (and everything below it) to `endpoint`'s ready replicas,
        replacing its earlier route. `weight` is the canary's percent (0-99); `reason`
        is what an unrouted endpoint's 503 says; `wakes`, the versions that start a
        replica when a request finds them with none."""
        owner = self._by_prefix.get(path_prefix)
        if owner is not None and owner.endpoint != endpoint:
            raise RouteConflict(
                f"path {path_prefix!r} is already routed to endpoint {owner.endpoint!r} "
                f"in region {self.region!r}"
            )
        if not 0 <= weight <= 99:
            raise ValueError(f"weight must be a percent from 0 to 99 (got {weight})")
        meters = self._meters.setdefault(endpoint, {"primary": LoadMeter(), "canary": LoadMeter()})
        route = _Route(
            *(endpoint, path_prefix, routed, reason, weight, tuple(primary), tuple(canary)),
            *(meters, frozenset(wakes)),
        )
        previous = self._by_endpoint.get(endpoint)
        if previous is not None and previous.prefix != path_prefix:
            del self._by_prefix[previous.prefix]
        self._by_endpoint[endpoint] = route
        self._by_prefix[path_prefix] = route
        self._announce(endpoint)

    def remove_route(self, endpoint: str) -> None:
        """Stop routing to `endpoint`; its path answers 404 from now on."""
        route = self._by_endpoint.pop(endpoint, None)
        if route is not None:
            del self._by_prefix[route.prefix]
        self._meters.pop(endpoint, None)
        self._announce(endpoint)

    def changed(self, endpoint: str) -> asyncio.Future[None]:
        """Done at the next change of `endpoint`'s route (a held request waits on it)."""
        future = self._changes.get(endpoint)
        if future is None or future.done():
            future = self._changes[endpoint] = asyncio.get_running_loop().create_future()
        return future

    def _announce(self, endpoint: str) -> None:
        future = self._changes.pop(endpoint, None)
        if future is not None and not future.done():
            future.set_result(None)

    def wake(self, endpoint: str, version: Role) -> None:
        """Ask the runtime behind this table to start `endpoint`'s `version`."""
        if self.on_wake is not None:
            self.on_wake(endpoint, version)

    def load(self, endpoint: str, version: Role) -> LoadMeter | None:
        """The load counted for one version of a routed endpoint (see `load`); the
        meter lasts as long as the endpoint's route, across its updates."""
        meters = self._meters.get(endpoint)
        return meters[version] if meters is not None else None

    def pick(self, path: str, *, exclude: Backend | None = None) -> Pick | Hold | Refusal:
        """The replica for a request to `path` in this region alone (see `choose`)."""
        choice = choose((self,), path, exclude=exclude)
        return choice[1] if isinstance(choice, tuple) else choice

    def _offer(self, path: str) -> _Route | Refusal:
        """The routed route for `path`, or why this region serves none."""
        route = self._match(path)
        if route is None and not self.leading:
            return Refusal(
                503,
                f"region {self.region!r} is served by another servefleet process; "
                "this one is standing by",
                self.region,
            )
        if route is None and not self.synced:
            return Refusal(
                503,
                f"region {self.region!r} is starting: not every endpoint is routed yet",
                self.region,
                retry_after=1,
            )
        if route is None:
            return Refusal(404, f"no endpoint serves the path {path!r}", self.region)
        if not route.routed:
            return Refusal(
                503, f"endpoint {route.endpoint!r}: {route.reason}", self.region, route.endpoint
            )
        return route

    def _match(self, path: str) -> _Route | None:
        return longest_prefix(self._by_prefix, path)


def longest_prefix(by_prefix: Mapping[str, T], path: str) -> T | None:
    """The value of the longest prefix of `path` in `by_prefix`, cut at a "/"
    boundary: "/inference/llm/v1" matches "/inference/llm", "/inference/llmx" does not."""
    # Try the path itself, then each parent, longest first.
    candidate = path
    while True:
        value = by_prefix.get(candidate)
        if value is not None:
            return value
        cut = candidate.rfind("/")
        if cut <= 0:
            return by_prefix.get("/")
        candidate = candidate[:cut]


_Candidate = tuple[Router, _Route, Backend]


def choose(
    routers: Sequence[Router],
    path: str,
    *,
    exclude: Backend | None = None,
    version: Role | None = None,
) -> tuple[Router, Pick] | Hold | Refusal:
    """Where a request to `path` goes among `routers` (in each, its longest matching
    route): the version by weight over all of them, then that version's replica with
    the fewest requests in flight in any of them. `exclude` leaves out a replica that
    just refused a connection; stalled replicas are left out too.

    A version that wakes is chosen by its weight even with no replica; when none is
    ready in any region, the request is held for it (`Hold`), and chosen again
    with `version` set: it then stays with that version while the version exists,
    so it wakes no other one and counts for its own version's share. With nowhere to go,
    the answer is the first refusal that says 503, else the first one (a 404), in
    the order of `routers`."""
    refusals: list[Refusal] = []
    primary: list[_Candidate] = []
    canary: list[_Candidate] = []
    waking: dict[Role, tuple[Router, _Route]] = {}
    weights: list[int] = []
    for router in routers:
        offer = router._offer(path)
        if isinstance(offer, Refusal):
            refusals.append(offer)
            continue
        # Inline, and nothing made for a version without replicas: this runs for
        # every request.
        usable_primary = [
            (router, offer, backend)
            for backend in offer.primary
            if not backend.stalled and backend is not exclude
        ]
        usable_canary = (
            [
                (router, offer, backend)
                for backend in offer.canary
                if not backend.stalled and backend is not exclude
            ]
            if offer.canary
            else []
        )
        if offer.wakes:
            for role in offer.wakes:
                waking.setdefault(role, (router, offer))
        primary.extend(usable_primary)
        canary.extend(usable_canary)
        if usable_canary or "canary" in offer.wakes:
            weights.append(offer.weight)
        if not usable_primary and not usable_canary and not offer.wakes:
            refusals.append(_no_replica(router, offer))
    has_canary = bool(canary) or "canary" in waking
    has_primary = bool(primary) or "primary" in waking
    if version == "canary" and has_canary:
        candidates = canary
    elif version == "primary" and has_primary:
        candidates = primary
    # Regions share one spec, so their weights agree; while a change is reaching
    # them one after another they may not, and their mean stands for all.
    elif has_canary and (not has_primary or random.random() * 100 * len(weights) < sum(weights)):
        version, candidates = "canary", canary
    elif has_primary:
        version, candidates = "primary", primary
    else:
        return next((refusal for refusal in refusals if refusal.status == 503), refusals[0])
    if not candidates:
        router, route = waking[version]
        return Hold(router, route.endpoint, version, route.meters[version])
    router, route, backend = _least_busy(candidates)
    rest = path[len(route.prefix) :] if route.prefix != "/" else path
    return router, Pick(
        route.endpoint, version, backend, route.prefix, rest or "/", route.meters[version]
    )


def _no_replica(router: Router, route: _Route) -> Refusal:
    stalled = sum(backend.stalled for backend in (*route.primary, *route.canary))
    if stalled:
        return Refusal(
            503,
            f"endpoint {route.endpoint!r} has no ready replica that answers "
            f"({stalled} stopped answering)",
            router.region,
            route.endpoint,
        )
    return Refusal(
        503, f"endpoint {route.endpoint!r} has no ready replica", router.region, route.endpoint
    )


def _least_busy(candidates: list[_Candidate]) -> _Candidate:
    if len(candidates) == 1:
        return candidates[0]
    low = min(candidate[2].outstanding for candidate in candidates)
    tied = [candidate for candidate in candidates if candidate[2].outstanding == low]
    return tied[0] if len(tied) == 1 else random.choice(tied)
