"""The service's refusals: an operation against the endpoint's current state, and
regions named that are not registered or not targeted.
"""

from __future__ import annotations

from servefleet.spec import InvalidInput, Problem

__all__ = [
    "OperationRefused",
    "RegionNotTargeted",
    "UnregisteredRegion",
    "busy",
]


class OperationRefused(Exception):
    """The operation breaks a rule about the endpoint's current state."""


class UnregisteredRegion(InvalidInput):
    """A region named for an endpoint is not registered.

    `field` is the name the user gave the regions under: the record's
    `target_regions`, a declaration's `regions`, the command line's `--region`. The
    service names its own; a front end that calls them something else renames it
    with `named`, so the one message reads right wherever the region came from.
    """

    def __init__(self, field: str, region: str, registered: list[str]) -> None:
        super().__init__(
            [
                Problem(
                    field,
                    f"region {region!r} is not registered "
                    f"(registered: {', '.join(registered) or 'none'})",
                    region,
                )
            ]
        )
        self.field = field
        self.region = region
        self.registered = registered

    def named(self, field: str) -> UnregisteredRegion:
        return UnregisteredRegion(field, self.region, self.registered)


class RegionNotTargeted(OperationRefused):
    """A registered region named for a change of one region's part of an endpoint is
    not one of the endpoint's targets. `field` and `named` as for `UnregisteredRegion`."""

    def __init__(self, field: str, region: str, endpoint: str, targets: list[str]) -> None:
        super().__init__(
            f"{field}: region {region!r} is not a target of {endpoint!r} "
            f"(targets: {', '.join(targets)})"
        )
        self.field = field
        self.region = region
        self.endpoint = endpoint
        self.targets = targets

    def named(self, field: str) -> RegionNotTargeted:
        return RegionNotTargeted(field, self.region, self.endpoint, self.targets)


def busy(name: str) -> OperationRefused:
    return OperationRefused(
        f"endpoint {name!r} is being changed by other writers too often; try again"
    )
