"""`ClusterSettings`: how the Kubernetes runtime talks to one API server.

Separate from `render_settings.RegionSettings` (what the objects look like):
these are the client's timings and limits, read by every part of the runtime
(`api`, `watches`, `apply`, `staging`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from servefleet.ratelimit import AdaptiveRateSettings
from servefleet.runtime.kubernetes.drift import DriftSettings

__all__ = ["ClusterSettings"]


@dataclass(frozen=True)
class ClusterSettings:
    """How the runtime talks to the API server (seconds unless said otherwise)."""

    watch_timeout: int = 300
    """`timeoutSeconds` of each watch request; the watch is opened again after it."""
    request_timeout: float = 30.0
    retries: int = 4
    """Retries of a request answered 429/5xx or failing to connect, before
    `RuntimeUnavailable`."""
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    rate: AdaptiveRateSettings = field(default_factory=AdaptiveRateSettings)
    """Requests a second (watch streams excepted): from a ceiling of 2,000, halved
    when the server signals overload, recovering by 25 a second."""
    sync_timeout: float = 10.0
    """How long `apply` waits for the watches to show its own writes."""
    list_page: int = 500
    staging_poll_interval: float = 2.0
    """Seconds between reads of staging init containers' logs (progress)."""
    staging_log_reads: int = 10
    """Logs read per poll at most, taking turns: bounds what many endpoints staging
    at once cost the API server."""
    drift: DriftSettings = field(default_factory=DriftSettings)
    """How repairs of hand-edited objects are paced."""
    traffic_interval: float = 2.0
    """Seconds between reads of the canaried endpoints' traffic from the region's
    Prometheus (`traffic.py`), the rollout driver's pace."""
    traffic_timeout: float = 5.0
    """How long one Prometheus query may take."""
