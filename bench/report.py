"""Result rows, the one table they are printed as, and the JSON file they are saved to."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from bench.stats import Figures

REPO = Path(__file__).resolve().parents[1]


class NotAvailable(Exception):
    """A benchmark cannot run here (a part missing); a note, not a failure."""


@dataclass
class Row:
    benchmark: str
    """e.g. "propagation"."""
    case: str
    """What was measured, e.g. "sqlite N=1000: write → runtime.apply"."""
    workload: str
    """How it was measured, in words."""
    result: str
    """The figures as shown in the table."""
    figures: dict[str, Any] = field(default_factory=dict)
    """The same figures, as numbers, for the JSON file."""
    goal: str = ""
    """The issue's goal for this figure ("" when it has none, e.g. a floor)."""
    met: bool | None = None
    """Whether the goal was met (None: no goal, or nothing to judge)."""

    @property
    def verdict(self) -> str:
        if not self.goal or self.met is None:
            return "—"
        return "met" if self.met else "NOT MET"


def latency_text(figures: Figures, *, keys: tuple[str, ...] = ("p50", "p95", "p99", "max")) -> str:
    shown = " · ".join(f"{key} {ms(figures.get(key))}" for key in keys)
    return f"{shown} ms  (n={figures.get('samples')})"


def ms(value: float | int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def git_dirty() -> bool | None:
    try:
        done = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(done.stdout.strip()) if done.returncode == 0 else None


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
    }


def render(
    rows: list[Row], notes: list[str], about: dict[str, Any], console: Console | None = None
) -> None:
    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=200)
    table = Table(
        title="servefleet benchmarks",
        caption=(
            f"{about['mode']} run · {about['machine']['cpu_count']} CPUs · "
            f"Python {about['machine']['python']} · {about['machine']['platform']} · "
            f"commit {(about['machine']['git_commit'] or 'unknown')[:12]}"
            f"{' (dirty)' if about['machine']['git_dirty'] else ''} · "
            f"1-min load average {about['load_average_at_start'][0]:.1f} at start, "
            f"{about['machine']['load_average'][0]:.1f} at end"
        ),
        box=box.SIMPLE_HEAVY,
        show_lines=True,
    )
    table.add_column("benchmark", no_wrap=True)
    table.add_column("measured", ratio=2)
    table.add_column("workload", ratio=4)
    table.add_column("result", ratio=3)
    table.add_column("goal", ratio=2)
    table.add_column("met?", no_wrap=True)
    for row in rows:
        table.add_row(
            row.benchmark, row.case, row.workload, row.result, row.goal or "—", row.verdict
        )
    console.print(table)
    for note in notes:
        console.print(f"note: {note}")


def save(path: Path, rows: list[Row], notes: list[str], about: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        **about,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": [asdict(row) | {"verdict": row.verdict} for row in rows],
        "notes": notes,
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
