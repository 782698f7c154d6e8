"""How long this process has stood still for its own garbage collector.

A full collection of a large heap stops every task for a quarter of a second or
more (a reconciler holding 10,000 endpoints' caches: 0.2-1 s each, bench/:
Kubernetes convergence). Every request in flight then seems to take that much
longer, and a client that reads rising latency as an overloaded server
(`ratelimit.AdaptiveRate`) would halve its rate for a stall of its own making. So
the time spent collecting is counted (through `gc.callbacks`, from the first call
of `own_pauses`), and a latency measured across a collection leaves it out.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

__all__ = ["own_pauses"]

_lock = threading.Lock()
_paused = 0.0
_collecting_since: float | None = None


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    global _paused, _collecting_since
    if phase == "start":
        _collecting_since = time.monotonic()
    elif _collecting_since is not None:
        _paused += time.monotonic() - _collecting_since
        _collecting_since = None


def own_pauses() -> float:
    """Seconds this process has spent collecting garbage since counting began: the
    difference over an interval is how much of it the process stood still."""
    with _lock:
        if _on_collection not in gc.callbacks:
            gc.callbacks.append(_on_collection)
    return _paused
