"""`LocalSettings`: the timings every part of the local runtime reads.

A module of its own, below the others, so that probes, staging and the cache read
the same settings the supervisor is given without importing the supervisor.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LocalSettings"]


@dataclass(frozen=True)
class LocalSettings:
    """Timing of probes, restarts and shutdowns (seconds unless said otherwise)."""

    startup_timeout: float = 600.0
    """How long a replica may take to pass its first probe. Model loads take minutes,
    so this is generous; there is no short fixed liveness delay to kill them."""
    probe_interval: float = 1.0
    startup_probe_interval: float = 0.05
    """How often a starting replica is probed until it first passes: a request held
    for an endpoint starting from zero waits for that probe, so it is short."""
    probe_timeout: float = 2.0
    liveness_failures: int = 3
    """Consecutive failed probes, after the first success, that get a replica restarted."""
    restart_backoff_initial: float = 1.0
    restart_backoff_max: float = 30.0
    backoff_reset_after: float = 60.0
    """A replica ready this long starts over from `restart_backoff_initial`."""
    terminate_grace: float = 10.0
    """Between SIGTERM and SIGKILL."""
    drain_timeout: float = 30.0
    """How long a retiring replica may finish the requests it has in flight."""
    stage_timeout: float = 3600.0
    """How long staging a model may take in all (`up --stage-timeout`; an
    endpoint's own `SERVEFLEET_STAGE_TIMEOUT` env wins, as it does in Kubernetes)."""
