"""The stored API tokens and the roles they grant."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from servefleet.spec.rules import Rfc1123Label, SpecModel

__all__ = [
    "ApiToken",
    "Role",
]


class Role(StrEnum):
    """What an API token may do. Each role includes the ones before it: a deployer
    also reads, an admin also deploys."""

    VIEWER = "viewer"
    """Read endpoints, their status and the regions."""
    DEPLOYER = "deployer"
    """Every endpoint operation."""
    ADMIN = "admin"
    """Regions and tokens."""

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


class ApiToken(SpecModel):
    """A stored API token: the secret itself is never kept, only `digest`, the
    sha256 of `salt` and the secret (`servefleet.tokens` says why that suffices)."""

    name: Rfc1123Label
    role: Role
    salt: str
    digest: str
    created_at: datetime
