"""`/v1/tokens`: an admin's view of API tokens, and `/v1/whoami`: any caller's view
of its own (the dashboard learns from it which actions to offer). A token's secret
appears once, in the answer that creates it; other answers show names, roles and
dates only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, status
from pydantic import BaseModel, ConfigDict

from servefleet.api.auth import allow
from servefleet.api.context import Tokens
from servefleet.api.errors import ERROR_RESPONSES
from servefleet.spec import ApiToken, RegionName, Role

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["tokens"], responses=ERROR_RESPONSES)

Name = Annotated[RegionName, Path(description="The token's name.")]


class TokenInfo(BaseModel):
    name: str
    role: Role
    created_at: datetime

    @classmethod
    def of(cls, token: ApiToken) -> TokenInfo:
        return cls(name=token.name, role=token.role, created_at=token.created_at)


class NewToken(TokenInfo):
    token: str
    """The bearer token itself: shown this once, stored only as a salted hash."""


class CreateTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    role: str


@router.get("/whoami", summary="The calling token's name and role")
async def whoami(token: Annotated[ApiToken, allow(Role.VIEWER)]) -> TokenInfo:
    return TokenInfo.of(token)


@router.get("/tokens", dependencies=[allow(Role.ADMIN)], summary="List tokens")
async def list_tokens(tokens: Tokens) -> list[TokenInfo]:
    return [TokenInfo.of(token) for token in await tokens.list()]


@router.post(
    "/tokens",
    dependencies=[allow(Role.ADMIN)],
    status_code=status.HTTP_201_CREATED,
    summary="Create a token (its secret is in this answer only)",
)
async def create_token(request: CreateTokenRequest, tokens: Tokens) -> NewToken:
    record, secret = await tokens.create(request.name, request.role)
    return NewToken(**TokenInfo.of(record).model_dump(), token=secret)


@router.delete(
    "/tokens/{name}",
    dependencies=[allow(Role.ADMIN)],
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a token: it stops working at once",
)
async def revoke_token(name: Name, tokens: Tokens) -> None:
    await tokens.revoke(name)
