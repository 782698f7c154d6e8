"""`python -m bench`: measure servefleet, print one table, save bench/results/latest.json.

    python -m bench                 # the full run (a few minutes)
    python -m bench --quick         # fewer samples: a smoke run in under a minute
    python -m bench --only gateway  # one benchmark: propagation, gateway, steady, kubernetes
    python -m bench --postgres postgresql://user@host:5432/db

Benchmarks report; they never assert. A part that fails is reported as a note.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import gateway, kubernetes, propagation, steady
from bench.report import Row, machine, render, save
from bench.stores import postgres_problem

NAMES = ("propagation", "gateway", "steady", "kubernetes")
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (under ~60 s)")
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
    progress = Console(stderr=True)
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
            rows.extend(await work())
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
    if "gateway" in selected:
        gateway_plan = gateway.QUICK if quick else gateway.FULL
        await part("gateway overhead", lambda: gateway.run(gateway_plan))
    if "steady" in selected:
        steady_plan = steady.QUICK if quick else steady.FULL
        await part("steady state", lambda: steady.run(options.postgres, steady_plan))
    if "kubernetes" in selected:
        kubernetes_plan = kubernetes.QUICK if quick else kubernetes.FULL
        await part("kubernetes runtime", lambda: kubernetes.run(kubernetes_plan))

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


def _redacted(url: str) -> str:
    """The URL without a password, for printing."""
    scheme, separator, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{separator}{credentials.split(':', 1)[0]}:***@{host}"


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
