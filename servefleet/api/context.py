"""What a route works with: the services over the store the app was created with."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from servefleet.service import EndpointService
from servefleet.store import Store
from servefleet.tokens import TokenService

__all__ = ["Endpoints", "Tokens", "store_of"]


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _endpoint_service(request: Request) -> EndpointService:
    return EndpointService(store_of(request))


def _token_service(request: Request) -> TokenService:
    return TokenService(store_of(request))


Endpoints = Annotated[EndpointService, Depends(_endpoint_service)]
Tokens = Annotated[TokenService, Depends(_token_service)]
