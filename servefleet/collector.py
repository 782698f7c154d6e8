"""How often the garbage collector runs in servefleet's long-running processes.

CPython's default (a young collection every 700 net allocations, a middle one
every 10 of those) suits scripts. A reconciler or gateway keeps thousands of
requests, passes and watch events in flight for tens of milliseconds each: at the
default pace most of them are still alive at a young collection, get promoted, and
then die in the oldest generation, which only a full collection reclaims. Full
collections become frequent and long, since the reconciler's caches make the old
generation large. Measured (bench/: Kubernetes convergence, 3,000 endpoints x 3
regions): 4.9 s of the reconciler's 19.5 CPU seconds were collections, up to 0.37 s
at once; at this pace 0.16 s, 19 ms at most, and 14.9 CPU seconds in all (10,000 x
3: 28 s of collections before, 2 s after).

A young collection every 50,000 allocations and a middle one every 20 of those
lets what lives under a second or so die young; each young collection then scans
at most 50,000 objects (a few milliseconds).
"""

from __future__ import annotations

import gc

__all__ = ["pace_for_a_server"]

YOUNG_EVERY = 50_000
"""Net allocations between young collections."""
MIDDLE_EVERY = 20
"""Young collections between middle ones."""
OLD_EVERY = 10
"""Middle collections between full ones (CPython's default; it also waits until
the old generation grew by a quarter)."""


def pace_for_a_server() -> None:
    """Set this process's collector to the pace above (module docstring)."""
    gc.set_threshold(YOUNG_EVERY, MIDDLE_EVERY, OLD_EVERY)
