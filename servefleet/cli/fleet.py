"""How a command reaches the fleet: it opens the store, runs one coroutine on it
with `asyncio.run`, and closes it; the refusals a user can cause end the command
as one line per problem."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from servefleet.cli.app import state
from servefleet.cli.output import fail
from servefleet.service import EndpointService, OperationRefused
from servefleet.spec import InvalidInput
from servefleet.store import Store, StoreError, open_store

__all__ = ["run_on_store", "run_service"]

T = TypeVar("T")


def run_service(operation: Callable[[EndpointService], Awaitable[T]], *, init: bool = False) -> T:
    """Open the store, run `operation` on it, close it; user errors end the command."""
    return run_on_store(lambda store: operation(EndpointService(store)), init=init)


def run_on_store(operation: Callable[[Store], Awaitable[T]], *, init: bool = False) -> T:
    """`run_service` for a command that needs the store itself (tokens, the API server)."""

    async def main() -> T:
        store: Store = await open_store(state.store_url, init=init)
        try:
            return await operation(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except InvalidInput as error:
        fail(*error.problems)
    except (OperationRefused, StoreError, ValueError) as error:
        fail(str(error))
