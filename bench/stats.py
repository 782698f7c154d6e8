"""Percentiles of latency samples."""

from __future__ import annotations

import math
from collections.abc import Sequence

Figures = dict[str, float | int | None]


def percentile(samples: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100), interpolating linearly between closest ranks."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(samples: Sequence[float], quantiles: Sequence[int] = (50, 95, 99)) -> Figures:
    """Sample count, the given percentiles, min, mean and max (None when empty)."""
    figures: Figures = {"samples": len(samples)}
    for q in quantiles:
        figures[f"p{q}"] = round(percentile(samples, q), 3) if samples else None
    figures["min"] = round(min(samples), 3) if samples else None
    figures["mean"] = round(sum(samples) / len(samples), 3) if samples else None
    figures["max"] = round(max(samples), 3) if samples else None
    return figures
