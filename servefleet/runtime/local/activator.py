"""The activator: requests held by the gateway while an endpoint starts from zero.

When `routing.choose` finds no ready replica of a version that wakes (its
autoscaler may take it to zero), the request is a `Hold`. The gateway then
keeps it here instead of refusing it: it asks the region's runtime to start a
replica (`Router.wake`, at once, not at the autoscaler's next decision), and
chooses again each time the endpoint's route changes, until a replica of the
version it waits for is ready.
The request is then forwarded as any other, streamed answers included; a
choice that gives a replica counts the request against it in the same step, so
no held request is lost between the route change and its forwarding, and each
is forwarded once.

Bounds (`GatewaySettings`): at most `max_held` requests wait per endpoint in one
gateway (the next is refused at once), each for at most `hold_timeout`; both
refusals are 503s saying the endpoint is starting. A held request that finds
the endpoint stopped or removed meanwhile gets that refusal instead.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence

from servefleet.runtime.local.routing import Hold, Pick, Refusal, Router, choose

__all__ = ["Activator"]


class Activator:
    """Holds one gateway's requests for endpoints starting from zero."""

    def __init__(
        self, routers: Callable[[], Sequence[Router]], *, timeout: float, max_held: int
    ) -> None:
        self._routers = routers
        """The routers a request may go to now (the global entry leaves drained
        regions out), asked at each choice."""
        self._timeout = timeout
        self._max_held = max_held
        self._held: Counter[str] = Counter()

    async def hold(self, path: str, hold: Hold) -> tuple[Router, Pick] | Refusal:
        """Wait until the request to `path`, held as `hold`, can go to a ready replica;
        the choice then made, or the refusal that ends the wait."""
        endpoint, region = hold.endpoint, hold.router.region
        if self._held[endpoint] >= self._max_held:
            return Refusal(
                503,
                f"endpoint {endpoint!r} is starting; {self._max_held} requests already "
                "wait for it, retry later",
                region,
                endpoint,
            )
        self._held[endpoint] += 1
        choice: tuple[Router, Pick] | Hold | Refusal = hold
        try:
            async with asyncio.timeout(self._timeout):
                while isinstance(choice, Hold):
                    # Asked for before the wake, so that a change the wake itself
                    # makes is not missed.
                    changed = choice.router.changed(choice.endpoint)
                    choice.router.wake(choice.endpoint, choice.version)
                    # Shielded: the future is shared, and one waiter leaving (its
                    # client gone, its timeout) must not cancel it for the others.
                    await asyncio.shield(changed)
                    choice = choose(self._routers(), path, version=choice.version)
        except TimeoutError:
            return Refusal(
                503,
                f"endpoint {endpoint!r} is starting: no replica was ready within "
                f"{self._timeout:g}s, retry later",
                region,
                endpoint,
            )
        finally:
            self._held[endpoint] -= 1
            if not self._held[endpoint]:
                del self._held[endpoint]
        return choice
