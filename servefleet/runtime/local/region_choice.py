"""Which region the global entry sends a request to: a pure decision.

The global entry of `servefleet up` serves every region of an endpoint. The local
regions of its own process are one candidate together (their routers already
weigh the canary across them and pick the replica with the fewest requests in
flight, see `routing.choose`); each Kubernetes region with an `ingress_url` is a
candidate of its own, reached through its Ingress. This module orders those
candidates for one request, from what the entry knows of each (`RegionView`):

1. a candidate that does not serve the endpoint (its status is not ready and
   routed; for the local regions, no router offers the path) or is drained is
   never tried;
2. the first one is drawn at random among the *healthy* rest (the last active
   probe of the endpoint's health path there did not fail, nor did a connection
   since), each with a share proportional to 1/latency² — latency being the entry's
   moving average of its time to first byte there. A region with no measurement yet
   counts as fast as the fastest measured one, so it gets measured; with none
   measured, shares are equal. Squared, so a region twice as slow gets a quarter of
   the share: the fastest is clearly preferred, yet a slower one keeps a trickle that
   keeps its measurement fresh, and a fast region whose latency grows under the load
   it draws sheds some of it instead of flapping;
3. the other healthy candidates follow, fastest first, then the unhealthy ones
   (a probe may be wrong; a region it doubts is still better than no answer), each
   tried only when every one before it refused the connection or did not take it
   within the connect timeout.

`draw` is the caller's random number in [0, 1), so the decision is a function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LOCAL_REGIONS", "RegionView", "rank_regions", "shares"]

LOCAL_REGIONS = "*local"
"""The key of this process's local regions taken together (no region name, an RFC
1035 label, can start with '*')."""


@dataclass(frozen=True, slots=True)
class RegionView:
    """What the global entry knows of one candidate for one endpoint, now."""

    name: str
    """The region's name, or `LOCAL_REGIONS`."""
    serving: bool
    """Its status is ready and routed for the endpoint (local regions: a router
    offers the path)."""
    drained: bool = False
    healthy: bool = True
    """No failed active probe or connection since the last probe that passed."""
    latency: float | None = None
    """Moving average of the time to first byte there, in seconds; None: unmeasured."""

    @property
    def eligible(self) -> bool:
        return self.serving and not self.drained


def shares(views: Sequence[RegionView]) -> dict[str, float]:
    """Each healthy eligible candidate's probability of being tried first (they sum to
    1; empty when there is none)."""
    healthy = [view for view in views if view.eligible and view.healthy]
    if not healthy:
        return {}
    measured = [view.latency for view in healthy if view.latency is not None]
    # A floor keeps 1/latency² finite for an answer faster than the clock ticks.
    fastest = max(min(measured), _FLOOR) if measured else 1.0
    weights = {
        view.name: 1.0 / max(view.latency if view.latency is not None else fastest, _FLOOR) ** 2
        for view in healthy
    }
    total = sum(weights.values())
    return {name: weight / total for name, weight in weights.items()}


_FLOOR = 1e-4
"""Latencies under 0.1 ms count as 0.1 ms."""


def rank_regions(views: Sequence[RegionView], draw: float) -> list[str]:
    """The candidates in the order to try them for one request (see the module
    docstring); `draw` in [0, 1) picks the first."""
    odds = shares(views)
    order: list[str] = []
    cumulative = 0.0
    for name in sorted(odds):
        cumulative += odds[name]
        if draw < cumulative:
            order.append(name)
            break
    else:
        if odds:  # rounding left the draw just past the last share
            order.append(sorted(odds)[-1])
    rest = sorted(
        (view for view in views if view.eligible and view.name not in order),
        key=lambda view: (
            not view.healthy,
            view.latency is not None,
            view.latency or 0.0,
            view.name,
        ),
    )
    return order + [view.name for view in rest]
