"""What a region's controller is given, and what its parts share.

`ControllerSettings`, the clock and the fence it is handed (`region.run_region`,
`cli.up`), and the fields of its log lines: a module of its own, below the
controller, so that its parts (`feeds`, `settle`) read them without importing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from servefleet.store import Lease

__all__ = ["Clock", "ControllerSettings", "Fence", "log_fields"]

Clock = Callable[[], datetime]
Fence = Callable[[], Lease | None]


@dataclass(frozen=True)
class ControllerSettings:
    workers: int = 64
    """Endpoints reconciled at once: a pass mostly waits (API requests one after
    another, the store), and the runtime's rate limit, not this, protects the API
    server. (16 until 2026-12-07: 10,000 endpoints x 3 regions converged in 58.7 s
    with 16, 49.7 s with 64; the region that settled endpoints as running, a store
    transaction per endpoint, fell behind the others. bench/: Kubernetes convergence.)"""
    resync_interval: float = 300.0
    heartbeat_interval: float = 300.0
    """A report that has not changed is written again after this long."""
    watchdog_threshold: float = 300.0
    """An endpoint with no ready replica for this long loses its route."""
    backoff_initial: float = 0.05
    backoff_max: float = 60.0
    rate_limit: float = 20.0
    """Retries of failing endpoints per second, over all endpoints (burst 200)."""
    store_retry: float = 1.0
    restart_initial: float = 1.0
    """A region whose reconciler an error stopped stands for election again after
    this long, doubling up to `restart_max` (`run_region`)."""
    restart_max: float = 60.0


def log_fields(region: str, endpoint: str, generation: int | None = None) -> dict[str, object]:
    """The structured fields of a log line about one endpoint in one region."""
    fields: dict[str, object] = {"region": region, "endpoint": endpoint}
    if generation is not None:
        fields["generation"] = generation
    return fields
