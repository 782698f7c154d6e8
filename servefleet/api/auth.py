"""Bearer tokens and roles: every route names the role it needs with `allow(role)`;
`tests/api/test_auth.py` fails for a route that does not. The exceptions are
`PUBLIC_PATHS` (`app.py`): the OpenAPI document; `/metrics`, `/healthz` and
`/readyz` (`monitoring.py`), because Prometheus scrapers and kubelet probes send no
token; and the dashboard's page, script and style (`dashboard.py`), which ask for a
token before they read anything. None of these answers holds a record.

401 for no token or one that is not live (malformed, unknown or revoked: the
answer is the same, so it tells a guesser nothing); 403 for a live token whose role
is below the route's. The token is never logged or echoed.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from servefleet.api.context import Tokens
from servefleet.spec import ApiToken, Role

__all__ = ["allow"]

_bearer = HTTPBearer(
    auto_error=False,
    description="A token from `servefleet tokens create --name NAME --role ROLE`.",
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def allow(role: Role) -> Any:
    """A route dependency admitting tokens whose role is `role` or above."""

    async def authorize(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        tokens: Tokens,
    ) -> ApiToken:
        if credentials is None:
            raise HTTPException(
                401, "send a token as `Authorization: Bearer TOKEN`", headers=_CHALLENGE
            )
        token = await tokens.authenticate(credentials.credentials)
        if token is None:
            raise HTTPException(401, "the token is unknown or revoked", headers=_CHALLENGE)
        if not token.role.allows(role):
            raise HTTPException(
                403,
                f"token {token.name!r} has role {token.role.value}; this needs {role.value}",
            )
        return token

    return Depends(authorize)
