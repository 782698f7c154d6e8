"""`python -m bench`: measure servefleet, print one table, save bench/results/latest.json.

    python -m bench                 # the full run (14-18 minutes on 2 cores)
    python -m bench --quick         # fewer samples: a smoke run in under 2 minutes
    python -m bench --only gateway  # one part (propagation, gateway, ..., rollout)
    python -m bench --postgres postgresql://user@host:5432/db

Benchmarks report; they never assert. A part that fails is reported as a note.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import (
    coldstart,
    failover,
    gateway,
    gateway_streams,
    global_entry,
    kubedrift,
    kubernetes,
    propagation,
    rollout,
    steady,
    stepload,
)
from bench.child import child
from bench.progress import console, stage
from bench.report import NotAvailable, Row, machine, render, save
from bench.stores import postgres_problem
from servefleet.store import open_store

NAMES = (
    "propagation",
    "gateway",
    "steady",
    "kubernetes",
    "failover",
    "coldstart",
    "stepload",
    "rollout",
)
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
DYNAMODB_PROBE = "dynamodb://probe?region=us-east-1&endpoint_url=http://127.0.0.1:9"
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (under 2 minutes)")
    parser.add_argument("--only", choices=NAMES, metavar="NAME", help=f"one of {', '.join(NAMES)}")
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        metavar="URL",
        help=f"PostgreSQL for the PostgreSQL rows; a schema bench_<random> is created in it "
        f"and dropped afterwards (default: {DEFAULT_POSTGRES})",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for the random choices")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    return parser.parse_args(argv)


async def main(options: argparse.Namespace) -> int:
    progress = console
    quick: bool = options.quick
    seed = options.seed if options.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    rows: list[Row] = []
    notes: list[str] = []
    selected = [options.only] if options.only else list(NAMES)
    started = time.perf_counter()
    load_at_start = [round(load, 2) for load in os.getloadavg()]

    async def part(label: str, work: Callable[[], Awaitable[list[Row]]]) -> None:
        progress.print(f"[dim]… {label}[/dim]")
        began = time.perf_counter()
        try:
            with stage(label):
                rows.extend(await work())
        except NotAvailable as missing:
            notes.append(f"{label}: not available: {missing}")
        except Exception as error:
            notes.append(f"{label} failed: {type(error).__name__}: {error}")
            traceback.print_exc()
        progress.print(f"[dim]  {label}: {time.perf_counter() - began:.1f} s[/dim]")

    if "propagation" in selected:
        plan = propagation.QUICK if quick else propagation.FULL
        await part("propagation on SQLite", lambda: propagation.run("sqlite", "", plan, rng))
        problem = await postgres_problem(options.postgres)
        if problem is None:
            await part(
                "propagation on PostgreSQL",
                lambda: propagation.run("postgresql", options.postgres, plan, rng),
            )
        else:
            notes.append(
                f"PostgreSQL rows skipped: {_redacted(options.postgres)} is unreachable ({problem})"
            )
        dynamodb_plan = propagation.DYNAMODB_QUICK if quick else propagation.DYNAMODB_FULL
        await part("propagation on DynamoDB (moto)", lambda: _on_moto(dynamodb_plan, rng))
    if "gateway" in selected:
        gateway_plan = gateway.QUICK if quick else gateway.FULL
        await part("gateway overhead", lambda: gateway.run(gateway_plan))
        await part("global entry overhead", lambda: global_entry.run(gateway_plan))
        streams_plan = gateway_streams.QUICK if quick else gateway_streams.FULL
        await part("gateway under many token streams", lambda: gateway_streams.run(streams_plan))
    if "steady" in selected:
        steady_plan = steady.QUICK if quick else steady.FULL
        await part("steady state", lambda: steady.run(options.postgres, steady_plan))
    if "kubernetes" in selected:
        kubernetes_plan = kubernetes.QUICK if quick else kubernetes.FULL
        await part("kubernetes runtime", lambda: kubernetes.run(kubernetes_plan))
        drift_plan = kubedrift.QUICK if quick else kubedrift.FULL
        await part("kubernetes drift repair", lambda: kubedrift.run(drift_plan))
    if "failover" in selected:
        failover_plan = failover.QUICK if quick else failover.FULL
        await part("failover", lambda: failover.run(failover_plan))
    if "coldstart" in selected:
        coldstart_plan = coldstart.QUICK if quick else coldstart.FULL
        await part("cold start from zero", lambda: coldstart.run(coldstart_plan))
    if "stepload" in selected:
        stepload_plan = stepload.QUICK if quick else stepload.FULL
        await part("replica count under a step load", lambda: stepload.run(stepload_plan))
    if "rollout" in selected:
        rollout_plan = rollout.QUICK if quick else rollout.FULL
        await part("rollout rolled back on a breach", lambda: rollout.run(rollout_plan))

    about: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "only": options.only,
        "seed": seed,
        "duration_s": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "load_average_at_start": load_at_start,
    }
    render(rows, notes, about)
    save(options.output, rows, notes, about)
    progress.print(f"[dim]wrote {options.output} ({about['duration_s']} s in all)[/dim]")
    return 0


async def _on_moto(plan: propagation.Plan, rng: random.Random) -> list[Row]:
    if importlib.util.find_spec("servefleet.store.dynamodb") is None:
        raise NotAvailable("servefleet/store/dynamodb.py is not in this tree")
    try:
        async with asyncio.timeout(10):
            probe = await open_store(DYNAMODB_PROBE)
    except ValueError as error:  # the URL scheme is not wired into open_store yet
        raise NotAvailable(str(error)) from error
    except Exception:  # known, but nothing listens on port 9: the real run will tell
        pass
    else:
        await probe.close()
    with tempfile.TemporaryDirectory(prefix="servefleet-bench-moto-") as directory:
        async with child("bench.moto_host", log=Path(directory) / "moto.log") as moto:
            return await propagation.run("dynamodb", moto.hello["endpoint_url"], plan, rng)


def _redacted(url: str) -> str:
    """The URL without a password, for printing."""
    scheme, separator, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{separator}{credentials.split(':', 1)[0]}:***@{host}"


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
