"""Setting an endpoint's replica count, or its autoscaling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from servefleet.service.records import EndpointRecords, revise_spec, with_spec
from servefleet.service.refusals import OperationRefused
from servefleet.spec import Endpoint, InvalidInput, Problem

__all__ = [
    "ScalingOperations",
]


class ScalingOperations(EndpointRecords):
    """The replica count, or the autoscaler's bounds and pace."""

    async def scale(
        self, name: str, replicas: int, *, expected_revision: int | None = None
    ) -> Endpoint:
        def scale(current: Endpoint) -> Endpoint:
            autoscaling = current.spec.autoscaling
            if autoscaling.enabled:
                raise OperationRefused(
                    f"replicas: {name!r} is autoscaled between {autoscaling.min_replicas} and "
                    f"{autoscaling.max_replicas}, so its count is the autoscaler's; change the "
                    f"bounds (servefleet autoscale {name} --min N --max M) or turn autoscaling "
                    f"off with a count (servefleet autoscale {name} --off --replicas {replicas})"
                )
            return with_spec(current, revise_spec(current.spec, replicas=replicas))

        return await self._mutate(name, scale, expected_revision)

    async def autoscale(
        self,
        name: str,
        *,
        enabled: bool = True,
        settings: Mapping[str, Any] | None = None,
        replicas: int | None = None,
        expected_revision: int | None = None,
    ) -> Endpoint:
        """Turn autoscaling on with `settings` (fields of `AutoscalingSpec`: bounds,
        metrics, windows) laid over the ones declared, or off, running `replicas`
        (the declared count when None). The settings are kept while it is off, so
        turning it on again restores them."""
        given = dict(settings or {})
        if not enabled and given:
            raise InvalidInput(
                [
                    Problem(field, "sets autoscaling; it cannot go with turning it off")
                    for field in sorted(given)
                ]
            )
        if enabled and replicas is not None:
            raise InvalidInput(
                [
                    Problem(
                        "replicas",
                        "only with turning autoscaling off: while it is on, the count is "
                        "the autoscaler's, between min_replicas and max_replicas",
                        replicas,
                    )
                ]
            )

        def autoscale(current: Endpoint) -> Endpoint:
            autoscaling = {**current.spec.autoscaling.model_dump(), **given, "enabled": enabled}
            changes: dict[str, Any] = {"autoscaling": autoscaling}
            if replicas is not None:
                changes["replicas"] = replicas
            return with_spec(current, revise_spec(current.spec, **changes))

        return await self._mutate(name, autoscale, expected_revision)
