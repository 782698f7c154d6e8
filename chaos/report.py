"""One row per scenario, the table they are printed as and the JSON file they are
saved to (beside the benchmarks' own, with the same machine description)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from bench.report import REPO

RESULTS = REPO / "chaos" / "results" / "latest.json"


@dataclass
class Row:
    scenario: str
    fault: str
    """What was done to the fleet, in words."""
    sent: int | None = None
    """Requests sent through the gateway during the scenario (None: no gateway)."""
    answered: int | None = None
    failed: int | None = None
    longest_gap_s: float | None = None
    """The longest time without any request being answered, while requests were sent."""
    duplicate_writes: int | None = None
    """Writes made by a process that did not hold the region (two writers at once)."""
    lost_writes: int | None = None
    """Changes that never reached their final form, or statuses that went backwards."""
    recovery_s: float | None = None
    """From the end of the fault until the fleet was whole again."""
    broken: list[str] = field(default_factory=list)
    """Every broken invariant, in words; empty when the scenario passed."""
    details: dict[str, Any] = field(default_factory=dict)
    """Figures behind the row, for the JSON file."""

    @property
    def verdict(self) -> str:
        return "BROKEN" if self.broken else "ok"


def failed_row(scenario: str, fault: str, error: BaseException) -> Row:
    """The row of a scenario that could not finish: that is a broken invariant too."""
    return Row(scenario, fault, broken=[f"did not finish: {type(error).__name__}: {error}"])


def _number(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def render(rows: list[Row], about: dict[str, Any]) -> None:
    console = Console() if sys.stdout.isatty() else Console(width=200)
    table = Table(
        title="servefleet fault injection",
        caption=(
            f"{about['mode']} run · {about['duration_s']} s · seed {about['seed']} · "
            f"{about['machine']['cpu_count']} CPUs · commit "
            f"{(about['machine']['git_commit'] or 'unknown')[:12]}"
            f"{' (dirty)' if about['machine']['git_dirty'] else ''} · 1-min load average "
            f"{about['load_average_at_start'][0]:.1f} at start, "
            f"{about['machine']['load_average'][0]:.1f} at end"
        ),
        box=box.SIMPLE_HEAVY,
        show_lines=True,
    )
    table.add_column("scenario", no_wrap=True)
    table.add_column("fault", ratio=4)
    for heading in ("sent", "answered", "failed", "longest gap", "dup. writes", "lost writes"):
        table.add_column(heading, justify="right")
    table.add_column("recovery", justify="right")
    table.add_column("invariants", ratio=3)
    for row in rows:
        table.add_row(
            row.scenario,
            row.fault,
            _number(row.sent),
            _number(row.answered),
            _number(row.failed),
            _seconds(row.longest_gap_s),
            _number(row.duplicate_writes),
            _number(row.lost_writes),
            _seconds(row.recovery_s),
            "; ".join(row.broken) if row.broken else "ok",
        )
    console.print(table)


def save(path: Path, rows: list[Row], about: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        **about,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": [asdict(row) | {"verdict": row.verdict} for row in rows],
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
