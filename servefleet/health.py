"""What `/healthz` and `/readyz` answer, for the API (`serve`) and the reconcilers'
monitoring listener (`up`, `reconcile`) alike.

`/healthz` says only that the process answers (a liveness probe restarts a process
that does not). `/readyz` says the process can do its work: the store answers a
cheap read within `STORE_TIMEOUT`, and, where the process runs reconcilers, each
region's election has answered at least once (leader or standby: both are ready; a
region whose lease cannot be reached is not).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from servefleet.store import Store, StoreError

__all__ = ["STORE_TIMEOUT", "readiness"]

STORE_TIMEOUT = 2.0
"""Seconds the store may take to answer a readiness check."""


async def readiness(
    store: Store,
    regions: Sequence[str] = (),
    leadership: Mapping[str, bool] | None = None,
) -> tuple[bool, dict[str, object]]:
    """Whether the process is ready, and the document saying why: the store's
    answer, and per region in `regions` "leader", "standby" or "unknown"."""
    try:
        async with asyncio.timeout(STORE_TIMEOUT):
            await store.feed_position()
    except (StoreError, OSError) as error:
        store_state = f"unreachable: {error}"
    except TimeoutError:
        store_state = f"unreachable: no answer within {STORE_TIMEOUT:g}s"
    else:
        store_state = "ok"
    known = leadership or {}
    leaders = {
        region: ("unknown" if region not in known else "leader" if known[region] else "standby")
        for region in regions
    }
    ready = store_state == "ok" and "unknown" not in leaders.values()
    document: dict[str, object] = {"ready": ready, "store": store_state}
    if regions:
        document["regions"] = leaders
    return ready, document
