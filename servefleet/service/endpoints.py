"""`EndpointService`: every operation users perform on endpoints and regions."""

from __future__ import annotations

from servefleet.service.canary import CanaryOperations
from servefleet.service.declarations import DeclarationOperations
from servefleet.service.lifecycle import LifecycleOperations
from servefleet.service.regions import RegionOperations
from servefleet.service.scaling import ScalingOperations

__all__ = ["EndpointService"]


class EndpointService(
    DeclarationOperations,
    ScalingOperations,
    LifecycleOperations,
    CanaryOperations,
    RegionOperations,
):
    """The operations of each module beside this one, over one store and clock."""
