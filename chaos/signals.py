"""Scenario: `servefleet up` and `servefleet serve` stopped by a signal, however they
were started.

Each case starts the process (`up --demo`, leading its region with 2 replicas, on a
SQLite store of its own; or `serve` on one), waits until it serves, and sends SIGINT
or SIGTERM — SIGINT also to a process that inherited SIGINT as ignored (a script's
background job, `nohup`, some supervisors), where Python installs no Ctrl-C handler
of its own. The cases run side by side, `rounds` times.

Invariants (tests/scenarios/harness.py's `stopped_by_signal`, the same check as
tests/scenarios/test_signals.py): exit status 0 within the bound, no traceback in
the log; for `up` also its log ending with "stopped", every replica ended and the
region's lease released.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from bench.progress import show
from chaos.report import Row
from tests.scenarios.harness import (
    SETTLE,
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


async def _serve(workdir: Path, stop: signal.Signals, sigint_ignored: bool) -> list[str]:
    log = workdir / "serve.log"
    async with serve_process(
        str(workdir / "store.db"), stderr=log, sigint_ignored=sigint_ignored
    ) as (process, _url):
        return await stopped_by_signal(process, stop, log)


async def run(plan: Plan, workdir: Path) -> Row:
    verbs = {"up": _up, "serve": _serve}
    row = Row(
        "signals",
        f"SIGINT and SIGTERM to `up --demo` and `serve`, each also with SIGINT inherited "
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
