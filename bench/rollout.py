"""Benchmark 8: from a rollout's breach starting to every region routing 100 % to the
old version, under a real `servefleet up` (issue 17).

Three local regions under `servefleet up` in a process of its own (`bench/fleet.py`),
an endpoint of one demo replica per region, a steady load through the global entry
and a prober per region through that region's own gateway. Each repetition starts a
rollout (one wave of all three regions) of a new version that is ready but answers
500 to 10 % of requests; the load generator sees the breach start (the first 500 the
new version answers) and, from every answer's version, the last moment any gateway
still sent a request to it. The rollback is the elected driver's, in `up`, on the
regions' own traffic reports, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.fleet import UpFleet, up_fleet
from bench.progress import show
from bench.report import Row
from bench.stats import summary
from servefleet.rollout_driver import DRIVE_INTERVAL
from servefleet.rollout_service import RolloutService
from servefleet.runtime.local.traffic import REPORT_INTERVAL
from servefleet.spec import GuardRails, RolloutPhase
from tests.scenarios.harness import demo_spec, manifest

REGIONS = ("r1", "r2", "r3")
ENDPOINT = "llm"
OLD = "bench.example/demo:1.0"
ERROR_PERCENT = 10
GOAL_S = 5.0
"""Issue 17: under 5 s plus the guard rail's window."""
CLIENTS = 4
"""Clients through the global entry, each one request after another."""
PAUSE = 0.02
"""Each client's and prober's pause between two requests."""
REQUEST_TIMEOUT = 10.0
SETTLE = 90.0
VERIFY = 2.0
"""Seconds of load kept after every region reports no canary, in which the new
version must answer nothing more."""
AFTER = 10
"""Answers each region's prober must have had, sent after the last one the new version
answered, for the end to be seen in every region."""
WEIGHT = 50
GUARD_RAILS = GuardRails(
    max_error_percent=2.0,
    min_requests=100,
    # Latency is not what this measures; on a loaded machine the p95 ratio of two
    # identical demo versions could breach by itself and be measured instead.
    max_latency_ratio=100,
    readiness_deadline=120,
)
POLICY = {
    "steps": [{"weight": WEIGHT, "hold": 600}],
    "guard_rails": GUARD_RAILS.model_dump(),
}
"""One wave of every target (the default), one step held long enough never to be
promoted while measured."""
LAUNCH = (
    "import os, sys; image, errors, rest = sys.argv[1], sys.argv[2], sys.argv[3:]; "
    "flags = ['--version', 'v1'] if image.endswith(':1.0') "
    "else ['--version', 'v2', '--error-percent', errors]; "
    "os.execv(sys.executable, [sys.executable, '-m', 'servefleet.demo', *rest, *flags])"
)
"""A local region runs a command and the version's image reaches it as `{image}`: the
old image runs the demo as v1, every other one as v2 answering 500 to ERROR_PERCENT %."""
CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
BREACH = re.compile(r"canary 5xx .* in (\S+)$")


@dataclass(frozen=True)
class Plan:
    repetitions: int
    within: float
    """Seconds one repetition may take from the rollout's start to every region back."""


FULL = Plan(repetitions=5, within=120.0)
QUICK = Plan(repetitions=2, within=120.0)


@dataclass(frozen=True)
class Answer:
    sent: float
    received: float
    status: int
    version: str | None
    """The demo's `x-demo-version` (v1 old, v2 new); None when no replica answered."""
    region: str | None
    via: str
    """"global", or the region whose own gateway was asked."""


@dataclass
class Load:
    """Clients through the global entry and a prober per region through its gateway,
    every answer kept, until stopped."""

    fleet: UpFleet
    answers: list[Answer] = field(default_factory=list)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
            asyncio.TaskGroup() as tasks,
        ):
            for _ in range(CLIENTS):
                tasks.create_task(self._client(session, self.fleet.entry_url, "global"))
            for region in REGIONS:
                tasks.create_task(self._client(session, self.fleet.region_urls[region], region))

    async def _client(self, session: aiohttp.ClientSession, base: str, via: str) -> None:
        url = f"{base}/inference/{ENDPOINT}/v1/chat/completions"
        while True:
            sent = time.perf_counter()
            try:
                async with session.post(url, json=CHAT) as response:
                    await response.read()
                    answer = Answer(
                        sent,
                        time.perf_counter(),
                        response.status,
                        response.headers.get("x-demo-version"),
                        response.headers.get("x-servefleet-region"),
                        via,
                    )
            except (aiohttp.ClientError, TimeoutError):
                answer = Answer(sent, time.perf_counter(), 0, None, None, via)
            self.answers.append(answer)
            await asyncio.sleep(PAUSE)


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """perf_counter() once `check()` holds, polled every 50 ms, at most `within` s."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(within):
            while not await check():
                show(f"{what} · {time.perf_counter() - started:.1f} s")
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise TimeoutError(f"{what}: not within {within:g} s") from None
    return time.perf_counter()


async def run(plan: Plan) -> list[Row]:
    # The old image's command: the launcher, then the demo's own flags.
    command = [sys.executable, "-c", LAUNCH, "{image}", str(ERROR_PERCENT)]
    args = ["--port", "{port}", "--token-delay", "0"]
    spec = demo_spec(replicas=1, image=OLD, rollout=POLICY, command=command, args=args)
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="servefleet-bench-rollout-") as name:
        async with up_fleet(Path(name), REGIONS) as fleet:
            await fleet.service.apply(manifest(ENDPOINT, spec, list(REGIONS)))
            await fleet.settled(ENDPOINT, REGIONS, replicas=1, within=SETTLE)
            load = Load(fleet)
            task = asyncio.create_task(load.run(), name="bench-rollout-load")
            try:
                for repetition in range(plan.repetitions):
                    if task.done():  # the load stopped: say why, not what it left undone
                        task.result()
                        raise RuntimeError("the load ended by itself")
                    trials.append(await _trial(fleet, load, plan, repetition))
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return _rows(plan, trials)


async def _trial(fleet: UpFleet, load: Load, plan: Plan, repetition: int) -> dict[str, Any]:
    label = f"rollout {repetition + 1}/{plan.repetitions}"
    await fleet.settled(ENDPOINT, REGIONS, replicas=1, within=SETTLE)
    # The old version alone has answered for a moment: nothing of the last trial's
    # new version is still in flight.
    await asyncio.sleep(1.0)
    image = f"bench.example/demo:2.{repetition}"
    mark = len(load.answers)
    started = time.perf_counter()
    wall = time.time() - started  # add to a perf_counter() for the wall clock
    await RolloutService(fleet.service).start(ENDPOINT, image)

    decided_at: list[float] = []
    reason: list[str] = []

    async def rolled_back() -> bool:
        rollout = (await fleet.store.get_endpoint(ENDPOINT)).rollout
        if rollout is None or rollout.image != image:
            raise RuntimeError(f"{label}: the rollout of {image} is gone")
        if rollout.phase is RolloutPhase.PROMOTED:
            raise RuntimeError(f"{label}: {image} was promoted: {rollout.reason}")
        if rollout.phase is RolloutPhase.ROLLED_BACK:
            decided_at.append(rollout.decided_at.timestamp() - wall)
            reason.append(rollout.reason)
            return True
        return False

    seen = await _until(rolled_back, plan.within, f"{label}: waiting for the rollback")

    async def no_canary() -> bool:
        return await fleet.without_canary(ENDPOINT, REGIONS)

    reported = await _until(no_canary, plan.within, f"{label}: every region without canary")
    await asyncio.sleep(VERIFY)
    return _trial_figures(
        label, load.answers[mark:], started, decided_at[0], seen, reported, reason[0]
    )


def _trial_figures(
    label: str,
    answers: list[Answer],
    started: float,
    decided: float,
    seen: float,
    reported: float,
    reason: str,
) -> dict[str, Any]:
    new = [answer for answer in answers if answer.version == "v2"]
    failed = [answer for answer in new if answer.status >= 500]
    if not failed:
        raise RuntimeError(f"{label}: rolled back ({reason}) before the new version failed")
    breach = min(answer.received for answer in failed)
    # The gateway chose the new version for the last time between the sending and the
    # receiving of the last answer it gave: its receiving is the bound from above.
    last = max(answer.received for answer in new)
    last_sent = max(answer.sent for answer in new)
    for region in REGIONS:
        after = [a for a in answers if a.via == region and a.sent > last and a.status]
        if len(after) < AFTER:
            raise RuntimeError(
                f"{label}: only {len(after)} answers from {region}'s gateway after the new "
                "version's last one; its end is not seen"
            )
    # The guard rail's window at this load: from the breach until some region had
    # answered `min_requests` requests with the new version.
    counted: list[float] = []
    for region in REGIONS:
        times = sorted(a.received for a in new if a.region == region)
        if len(times) >= GUARD_RAILS.min_requests:
            counted.append(times[GUARD_RAILS.min_requests - 1])
    window = max(min(counted) - breach, 0.0) if counted else None
    match = BREACH.search(reason)
    return {
        "image_started_to_first_new_answer_s": round(min(a.received for a in new) - started, 3),
        "breach_to_all_old_s": round(last - breach, 3),
        "breach_to_last_new_sent_s": round(last_sent - breach, 3),
        "window_s": None if window is None else round(window, 3),
        "over_window_s": None if window is None else round(last - breach - window, 3),
        "breach_to_decision_s": round(decided - breach, 3),
        "breach_to_decision_seen_s": round(seen - breach, 3),
        "breach_to_reports_without_canary_s": round(reported - breach, 3),
        "new_version_answers": len(new),
        "new_version_5xx": len(failed),
        "new_version_answers_per_region": {
            region: sum(a.region == region for a in new) for region in REGIONS
        },
        "requests": len(answers),
        "not_answered": sum(a.status == 0 for a in answers),
        "breached_in": match.group(1) if match else None,
        "reason": reason,
    }


def _rows(plan: Plan, trials: list[dict[str, Any]]) -> list[Row]:
    def of(key: str) -> list[float]:
        return [trial[key] for trial in trials if trial[key] is not None]

    back = summary(of("breach_to_all_old_s"), quantiles=(50,))
    window = summary(of("window_s"), quantiles=(50,))
    over = summary(of("over_window_s"), quantiles=(50,))
    decision = summary(of("breach_to_decision_s"), quantiles=(50,))
    reports = summary(of("breach_to_reports_without_canary_s"), quantiles=(50,))
    rails = GUARD_RAILS
    settings = (
        f"guard rails: canary 5xx ≤ {rails.max_error_percent:g} % counted from "
        f"{rails.min_requests} canary requests in a region, p95 latency ratio ≤ "
        f"{rails.max_latency_ratio:g} (off), readiness within {rails.readiness_deadline} s; "
        f"one step of {WEIGHT} % held 600 s; the driver looks every {DRIVE_INTERVAL:g} s, "
        f"a region reports its traffic at most every {REPORT_INTERVAL:g} s"
    )
    workload = (
        f"`servefleet up --regions {','.join(REGIONS)}` in a process of its own (default "
        "settings, SQLite), one replica per region of a demo whose image picks its version "
        f"(`{{image}}` in the local command); load: {CLIENTS} clients through the global "
        f"entry and one prober per region through its own gateway, each a chat completion "
        f"then a {PAUSE * 1000:g} ms pause; {plan.repetitions} rollouts in turn (one wave "
        f"of all three regions) of a new image answering 500 to {ERROR_PERCENT} % of "
        "requests, each once the fleet is back on the old one; breach = the first 500 the "
        "new version answered, as received; all old = the last answer the new version gave, "
        "through any gateway, as received (afterwards every region's prober had "
        f"≥ {AFTER} answers, none from it, and every region's report showed no canary for "
        f"{VERIFY:g} s more); window = from the breach until one region had answered "
        f"{rails.min_requests} requests with the new version; {settings}"
    )
    worst = over["max"]
    return [
        Row(
            "rollout",
            "breach → every region routing 100 % to the old version",
            workload,
            f"p50 {_s(back['p50'])} max {_s(back['max'])} s · window p50 {_s(window['p50'])} "
            f"max {_s(window['max'])} s · beyond the window p50 {_s(over['p50'])} max "
            f"{_s(worst)} s (n={back['samples']})",
            {
                "breach_to_all_old_s": back,
                "window_s": window,
                "over_window_s": over,
                "guard_rails": rails.model_dump(),
                "weight": WEIGHT,
                "error_percent": ERROR_PERCENT,
                "drive_interval_s": DRIVE_INTERVAL,
                "report_interval_s": REPORT_INTERVAL,
                "trials": trials,
            },
            goal=f"< {GOAL_S:g} s + the guard rail's window (the window's time to "
            f"{rails.min_requests} canary requests: p50 {_s(window['p50'])} s here → "
            f"< {_s(GOAL_S + window['p50']) if window['p50'] is not None else 'n/a'} s), "
            "every repetition",
            met=None if worst is None else worst < GOAL_S,
        ),
        Row(
            "rollout",
            "breach → rollback decided / every region reporting no canary",
            "the repetitions above; decided = the rollout's decided_at as the driver wrote "
            "it with phase rolled_back; reporting = every region's status in the store at "
            "the new generation, READY, routed, no canary desired or ready (polled every "
            "50 ms)",
            f"decided p50 {_s(decision['p50'])} max {_s(decision['max'])} s · reporting p50 "
            f"{_s(reports['p50'])} max {_s(reports['max'])} s · reasons: "
            + "; ".join(sorted({trial["reason"] for trial in trials})),
            {"breach_to_decision_s": decision, "breach_to_reports_without_canary_s": reports},
        ),
    ]


def _s(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
