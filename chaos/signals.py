"""Scenario: `servefleet up`, `servefleet reconcile` and `servefleet serve` stopped by
a signal, however they were started.

Each case starts the process (`up --demo`, leading its region with 2 replicas, on a
SQLite store of its own; `reconcile --region kN`, holding the Lease of a kubernetes
region of its own on the test API server (`chaos.kube`) with one endpoint rolled
out; or `serve` on one), waits until it serves, and sends SIGINT
or SIGTERM — SIGINT also to a process that inherited SIGINT as ignored (a script's
background job, `nohup`, some supervisors), where Python installs no Ctrl-C handler
of its own. The cases run side by side, `rounds` times.

Invariants (tests/scenarios/harness.py's `stopped_by_signal`, the same check as
tests/scenarios/test_signals.py): exit status 0 within the bound, no traceback in
the log; for `up` also its log ending with "stopped", every replica ended and the
region's lease released; for `reconcile` its log ending with "stopped" and the
region's Lease released (no holder, as the test API server keeps it).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bench.progress import show
from chaos.fleet import converged
from chaos.kube import Cluster, cluster
from chaos.report import Row
from servefleet.service import EndpointService
from servefleet.spec import EndpointSpec
from servefleet.store import open_store
from tests.scenarios.harness import (
    SETTLE,
    manifest,
    reconcile_process,
    serve_process,
    stopped_by_signal,
    up_process,
    up_stopped_by_signal,
)
from tests.waiting import eventually

CASES = (
    (signal.SIGINT, False),
    (signal.SIGINT, True),
    (signal.SIGTERM, False),
    (signal.SIGTERM, True),
)


@dataclass(frozen=True)
class Plan:
    rounds: int


FULL = Plan(rounds=3)
QUICK = Plan(rounds=1)


def _case_name(verb: str, stop: signal.Signals, sigint_ignored: bool) -> str:
    return f"{verb} {stop.name}{' (SIGINT inherited ignored)' if sigint_ignored else ''}"


async def _up(workdir: Path, stop: signal.Signals, sigint_ignored: bool) -> list[str]:
    log = workdir / "up.log"
    async with up_process(
        str(workdir / "store.db"),
        *("--regions", "r1", "--demo", "--port", "0", "--lease-ttl", "60"),
        stderr=log,
        sigint_ignored=sigint_ignored,
        log_dir=workdir / "logs",
    ) as up:

        async def serving() -> bool:
            return len(up.replicas()) == 2

        await eventually(serving, within=SETTLE)
        return await up_stopped_by_signal(up, stop, log, region="r1", log_dir=workdir / "logs")


async def _reconcile(
    kube: Cluster, region: str, workdir: Path, stop: signal.Signals, sigint_ignored: bool
) -> list[str]:
    log = workdir / "reconcile.log"
    store = await open_store(str(workdir / "store.db"))
    try:
        await kube.register(store, region)
        spec = EndpointSpec(image="vllm/vllm-openai:v0.6.3", replicas=1)
        await EndpointService(store).apply(manifest("chaos", spec, [region]))
        async with reconcile_process(
            str(workdir / "store.db"),
            *("--region", region, "--lease-ttl", "60"),
            stderr=log,
            sigint_ignored=sigint_ignored,
        ) as reconciler:
            await converged(store, replicas=1, processes=lambda: 1, within=SETTLE, region=region)
            if kube.holder_pid(region) != reconciler.pid:
                return [f"not holding the Lease of {region}: {kube.holder(region)!r}"]
            problems = await stopped_by_signal(reconciler.process, stop, log)
    finally:
        await store.close()
    text = await asyncio.to_thread(log.read_text, errors="replace")
    if not text.rstrip().endswith("stopped"):
        problems.append(f"its log does not end with 'stopped' after {stop.name}")
    if kube.holder(region):
        problems.append(f"the Lease of {region} still held by {kube.holder(region)!r}")
    return problems


async def _serve(workdir: Path, stop: signal.Signals, sigint_ignored: bool) -> list[str]:
    log = workdir / "serve.log"
    async with serve_process(
        str(workdir / "store.db"), stderr=log, sigint_ignored=sigint_ignored
    ) as (process, _url):
        return await stopped_by_signal(process, stop, log)


async def run(plan: Plan, workdir: Path) -> Row:
    async with cluster(workdir) as kube:
        return await _run(plan, workdir, kube)


async def _run(plan: Plan, workdir: Path, kube: Cluster) -> Row:
    regions = (f"k{number}" for number in itertools.count(1))
    verbs: dict[str, Callable[[Path, signal.Signals, bool], Awaitable[list[str]]]] = {
        "up": _up,
        "reconcile": lambda *case: _reconcile(kube, next(regions), *case),
        "serve": _serve,
    }
    row = Row(
        "signals",
        f"SIGINT and SIGTERM to `up --demo`, `reconcile` (a kubernetes region on the test "
        f"API server) and `serve`, each also with SIGINT inherited "
        f"ignored; {plan.rounds} round(s) of {len(verbs) * len(CASES)} cases side by side",
    )
    stop_times: dict[str, float] = {}

    async def case(index: int, verb: str, stop: signal.Signals, ignored: bool) -> None:
        name = _case_name(verb, stop, ignored)
        directory = workdir / f"{index}-{verb}-{stop.name}-{int(ignored)}"
        directory.mkdir()
        began = time.monotonic()
        try:
            problems = await verbs[verb](directory, stop, ignored)
        except (AssertionError, TimeoutError) as error:
            problems = [f"did not come up: {type(error).__name__}: {error}"[:300]]
        stop_times[name] = max(stop_times.get(name, 0.0), round(time.monotonic() - began, 2))
        row.broken += [f"{name}: {problem}" for problem in problems]

    for round_ in range(plan.rounds):
        show(f"round {round_ + 1}/{plan.rounds}")
        await asyncio.gather(
            *(
                case(round_ * 100 + index, verb, stop, ignored)
                for index, (verb, (stop, ignored)) in enumerate(
                    (verb, pair) for verb in verbs for pair in CASES
                )
            )
        )
    row.details = {"rounds": plan.rounds, "longest_case_s": stop_times}
    return row
