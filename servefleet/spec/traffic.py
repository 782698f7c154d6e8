"""What a region's gateway answered per version, as the region reports it: the
figures a rollout's 5xx and latency guard rails are judged on.

Each version's figures are cumulative since `since`, the moment this region's
leader began counting that version (a new version, a new leader, a restart all
begin again at zero with a new `since`), so a reader differences two reports of
the same `(image, since)` to get what happened between them, and never mixes the
counts of two versions or two counting processes. Latency is counted per fixed
bucket (`LATENCY_BOUNDS`), small and bounded whatever the load, and enough to
estimate a quantile of any window as Prometheus' `histogram_quantile` does.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, model_validator

from servefleet.spec.rules import Image, SpecModel

__all__ = ["LATENCY_BOUNDS", "RegionTraffic", "VersionTraffic"]

LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 600)
"""Upper bounds (seconds) of the latency buckets, the local gateway's histogram's
(`servefleet_gateway_request_duration_seconds`); one more bucket holds the rest.
A fixed set: changing it makes stored reports unreadable, so it would change with
a new field, not in place."""


class VersionTraffic(SpecModel):
    """One version's answers through the region's gateway since `since`."""

    image: Image | None
    """The image of the version counted (None: a command without one)."""
    since: datetime
    requests: int = Field(default=0, ge=0)
    errors: int = Field(default=0, ge=0)
    """Answers with a 5xx status, the gateway's own (502, 504) included."""
    latency: tuple[int, ...] = (0,) * (len(LATENCY_BOUNDS) + 1)
    """Answers per bucket: `latency[i]` took at most `LATENCY_BOUNDS[i]` seconds
    (and more than the bound before); the last, longer than every bound."""

    @model_validator(mode="after")
    def _one_count_per_bucket(self) -> VersionTraffic:
        if len(self.latency) != len(LATENCY_BOUNDS) + 1 or min(self.latency) < 0:
            raise ValueError(
                f"latency: must be {len(LATENCY_BOUNDS) + 1} counts of zero or more "
                f"(got {list(self.latency)})"
            )
        return self


class RegionTraffic(SpecModel):
    """Both versions' traffic in one region; None for a version not counted there."""

    primary: VersionTraffic | None = None
    canary: VersionTraffic | None = None
