"""Benchmark 1: how long a committed store write takes to reach `runtime.apply`,
and the floor that is measured against (feed notification and one round trip)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from bench.control import SETTINGS, controller_running
from bench.counting import CountingStore
from bench.progress import show
from bench.report import Row, latency_text, ms
from bench.runtime import RecordingRuntime
from bench.stats import summary
from bench.stores import fresh_store, populate
from servefleet.service import EndpointService, revise_spec
from servefleet.spec import EndpointManifest
from servefleet.store import Change, Store, open_store

APPLY_TIMEOUT = 10.0
WARMUP_CHANGES = 5
"""Unmeasured changes first: the PostgreSQL listener connects on the first watch."""

NOTIFY_PERIOD = 0.05
"""The period the pause spreads over where a notification, not a poll, wakes the
watcher (PostgreSQL): the SQLite default, as before."""
GOAL_P99_MS = 250.0
WRITE_NOTE = {"dynamodb": "(a conditional PutItem, then the feed append: two requests)"}
WHERE = {
    "sqlite": "SQLite",
    "dynamodb": "DynamoDB (moto server in a process of its own, loopback)",
}


@dataclass(frozen=True)
class Feed:
    """How the controller's store learns of another connection's writes."""

    kind: str
    poll_interval: float | None
    """Seconds between the watcher's looks at the feed; None: woken by NOTIFY."""

    @classmethod
    def of(cls, kind: str, store: Store) -> Feed:
        if kind == "postgresql":
            return cls(kind, None)
        return cls(kind, float(getattr(store, "poll_interval", NOTIFY_PERIOD)))

    @property
    def note(self) -> str:
        if self.poll_interval is None:
            return "PostgreSQL: NOTIFY on commit wakes the controller's listener"
        return (
            f"{WHERE[self.kind]}: the controller's store polls the feed every "
            f"{self.poll_interval * 1000:.0f} ms (its poll_interval)"
        )

    @property
    def pause_range(self) -> tuple[float, float]:
        """Two whole poll periods, from 5 ms on (see `pause`)."""
        return 0.005, 0.005 + 2 * (self.poll_interval or NOTIFY_PERIOD)

    def pause(self, rng: random.Random) -> float:
        """A pause drawn evenly from two whole poll periods (SQLite: 5-105 ms).

        Each write waits for the previous one to be seen, and a polling watcher's
        next look comes one poll interval after the look that saw it; a fixed or
        narrow pause would put every write at the same point of that cycle and
        measure one delay over and over (an early run with 5-30 ms pauses never saw
        more than 33 ms). A pause spread evenly over whole periods puts the write at
        a uniformly random point of the cycle, as an unrelated user's write would be.
        """
        return rng.uniform(*self.pause_range)

    @property
    def pause_text(self) -> str:
        low, high = self.pause_range
        return f"{low * 1000:.0f}-{high * 1000:.0f} ms"


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    changes: int
    floor_samples: int
    round_trips: int


FULL = Plan(sizes=(10, 1000), changes=200, floor_samples=100, round_trips=500)
QUICK = Plan(sizes=(10, 200), changes=50, floor_samples=30, round_trips=200)
DYNAMODB_FULL = Plan(sizes=(10, 300), changes=100, floor_samples=30, round_trips=200)
DYNAMODB_QUICK = Plan(sizes=(10,), changes=20, floor_samples=10, round_trips=50)
"""Fewer samples and endpoints than SQL stores: every store call is an HTTP round trip
to moto, whose cost per write grows with the table. At 1,000 endpoints creating them
and the controller's first pass over them took about 4 minutes (of a 15-minute run),
and the converged wait (120 s) ran out on a loaded machine."""


async def run(kind: str, server_url: str, plan: Plan, rng: random.Random) -> list[Row]:
    """Rows for one store `kind`; `server_url` is the PostgreSQL URL or the moto server's."""
    rows: list[Row] = []
    for index, size in enumerate(plan.sizes):
        async with fresh_store(kind, server_url) as url:
            controller_store = CountingStore(await open_store(url))
            writer_store = await open_store(url)
            feed = Feed.of(kind, controller_store.inner)
            try:
                show(f"{kind} N={size}: creating endpoints")
                names = await populate(writer_store, size)
                if index == 0:
                    rows += await _floor(feed, controller_store, writer_store, names, plan, rng)
                rows.append(
                    await _propagation(feed, controller_store, writer_store, names, plan, rng)
                )
            finally:
                await writer_store.close()
                await controller_store.close()
    return rows


async def _floor(
    feed: Feed, reader: Store, writer: Store, names: list[str], plan: Plan, rng: random.Random
) -> list[Row]:
    """Commit on `writer` → `reader.watch()` yields it; and `reader.get_endpoint` alone."""
    kind = feed.kind
    arrivals: dict[int, asyncio.Future[float]] = {}
    loop = asyncio.get_running_loop()

    def arrival(revision: int) -> asyncio.Future[float]:
        return arrivals.setdefault(revision, loop.create_future())

    async def follow(position: int) -> None:
        change: Change
        async for change in reader.watch(position):
            future = arrival(change.revision)
            if not future.done():
                future.set_result(time.perf_counter())

    name = names[0]
    follower = asyncio.create_task(follow(await reader.feed_position()))
    notify: list[float] = []
    notify_from_start: list[float] = []
    writes: list[float] = []
    lost = 0
    try:
        for sample in range(WARMUP_CHANGES + plan.floor_samples):
            show(f"{kind}: feed notify latency {sample + 1}/{WARMUP_CHANGES + plan.floor_samples}")
            current = await writer.get_endpoint(name)
            started = time.perf_counter()
            updated = await writer.update_endpoint(current, expected_revision=current.revision)
            committed = time.perf_counter()
            try:
                async with asyncio.timeout(APPLY_TIMEOUT):
                    seen = await asyncio.shield(arrival(updated.revision))
            except TimeoutError:
                lost += 1
                continue
            if sample >= WARMUP_CHANGES:
                notify.append((seen - committed) * 1000)
                notify_from_start.append((seen - started) * 1000)
                writes.append((committed - started) * 1000)
            await asyncio.sleep(feed.pause(rng))
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)

    round_trips: list[float] = []
    for _ in range(plan.round_trips):
        started = time.perf_counter()
        await reader.get_endpoint(rng.choice(names))
        round_trips.append((time.perf_counter() - started) * 1000)

    notify_figures = summary(notify) | {"lost": lost}
    from_start = summary(notify_from_start)
    write_figures = summary(writes)
    read_figures = summary(round_trips)
    return [
        Row(
            "propagation floor",
            f"{kind}: feed notify latency (commit → watch() yields on a 2nd connection)",
            f"no controller; {len(notify)} single-record updates on connection B, one at a "
            f"time with a random {feed.pause_text} pause, while connection A runs watch(); "
            f"{feed.note}",
            latency_text(notify_figures)
            + f"; from the write call's start: p50 {ms(from_start['p50'])} · p99 "
            f"{ms(from_start['p99'])} ms" + (f", {lost} never seen" if lost else ""),
            {
                "store": kind,
                "metric": "notify_latency_ms",
                **notify_figures,
                "from_write_start": from_start,
                "samples_ms": [round(delay, 3) for delay in notify],
            },
        ),
        Row(
            "propagation floor",
            f"{kind}: one store round trip (get_endpoint)",
            f"{plan.round_trips} sequential get_endpoint calls of random endpoints "
            f"({len(names)} stored), connection A idle otherwise",
            latency_text(read_figures),
            {"store": kind, "metric": "get_endpoint_ms", **read_figures},
        ),
        Row(
            "propagation floor",
            f"{kind}: one committed write (update_endpoint)",
            "the writes of the notify-latency run, timed on connection B "
            + WRITE_NOTE.get(kind, "(CAS update + feed append in one transaction)"),
            latency_text(write_figures),
            {"store": kind, "metric": "update_endpoint_ms", **write_figures},
        ),
    ]


async def _propagation(
    feed: Feed,
    controller_store: CountingStore,
    writer_store: Store,
    names: list[str],
    plan: Plan,
    rng: random.Random,
) -> Row:
    kind = feed.kind
    runtime = RecordingRuntime()
    service = EndpointService(writer_store)
    delays: dict[str, list[float]] = {"scale": [], "env": []}
    from_start: list[float] = []
    in_order: list[float] = []
    to_feed: list[float] = []
    """write returned → the controller's feed yields the change"""
    reconcile: list[float] = []
    """the controller's feed yields the change → runtime.apply"""
    missed = 0
    async with controller_running(controller_store, runtime) as running:
        converge_s = await running.converged(writer_store, runtime, len(names))
        for change in range(WARMUP_CHANGES + plan.changes):
            show(f"{kind} N={len(names)}: change {change + 1}/{WARMUP_CHANGES + plan.changes}")
            name = rng.choice(names)
            current = await service.get(name)
            started = time.perf_counter()
            if change % 2 == 0:
                what = "scale"
                updated = await service.scale(name, 3 if current.spec.replicas == 2 else 2)
                written = time.perf_counter()
            else:
                what = "env"
                env = {**current.spec.env, "BENCH_CHANGE": str(change)}
                manifest = EndpointManifest.of(current).model_copy(
                    update={"spec": revise_spec(current.spec, env=env)}
                )
                updated = (await service.apply(manifest)).endpoint
                written = time.perf_counter()
            applied = await runtime.applied(name, updated.generation, APPLY_TIMEOUT)
            if applied is None:
                missed += 1
            elif change >= WARMUP_CHANGES:
                delays[what].append((applied - written) * 1000)
                in_order.append((applied - written) * 1000)
                from_start.append((applied - started) * 1000)
                seen = controller_store.delivered.get((name, updated.revision))
                if seen is not None:
                    to_feed.append((seen - written) * 1000)
                    reconcile.append((applied - seen) * 1000)
            # The pass that applied it goes on to write status and mark the endpoint
            # running; let it finish so each change is measured on an idle controller.
            await running.idle()
            await asyncio.sleep(feed.pause(rng))
    every = delays["scale"] + delays["env"]
    figures = summary(every)
    upper = summary(from_start)
    via_feed, in_controller = summary(to_feed), summary(reconcile)
    return Row(
        "propagation",
        f"{kind} N={len(names)}: write returned → runtime.apply",
        f"real Controller ({SETTINGS.workers} workers) on r1 with a recording runtime, "
        f"{len(names)} converged "
        f"endpoints (converged in {converge_s:.1f} s); {len(every)} changes one at a time "
        f"(alternating EndpointService.scale and apply of a changed spec.env) on random "
        f"endpoints from a 2nd store connection in the same process, each after the "
        f"previous was applied, the controller idle and a random {feed.pause_text} pause; "
        f"{feed.note}",
        latency_text(figures)
        + f"; from the write call's start: p50 {ms(upper['p50'])} · p99 {ms(upper['p99'])} ms"
        + f"; split: write → feed p50 {ms(via_feed['p50'])} · p99 {ms(via_feed['p99'])} · max "
        f"{ms(via_feed['max'])} ms, feed → apply p50 {ms(in_controller['p50'])} · p99 "
        f"{ms(in_controller['p99'])} · max {ms(in_controller['max'])} ms"
        + (f", {missed} not applied in {APPLY_TIMEOUT:.0f} s" if missed else ""),
        {
            "store": kind,
            "poll_interval_s": feed.poll_interval,
            "endpoints": len(names),
            "metric": "propagation_ms",
            "converge_s": round(converge_s, 3),
            "missed": missed,
            **figures,
            "scale": summary(delays["scale"]),
            "env": summary(delays["env"]),
            "from_write_start": upper,
            "write_to_feed": via_feed,
            "feed_to_apply": in_controller,
            "samples_ms": [round(delay, 3) for delay in in_order],
        },
        goal=f"p99 < {GOAL_P99_MS:.0f} ms",
        met=figures["p99"] is not None and figures["p99"] < GOAL_P99_MS and not missed,
    )
