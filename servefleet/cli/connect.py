"""How a command reaches the fleet: through a `servefleet serve`'s API when `--api`
(or `SERVEFLEET_API`) is given, else by opening the store. Either way it runs one
coroutine with `asyncio.run`, and the refusals a user can cause end the command as
one line per problem with exit status 1.

The commands that need the store or the processes themselves (`up`, `reconcile`,
`store init`, `tokens`, `serve`) refuse `--api` (`require_store`) rather than
quietly open a store on this machine, which is not the fleet the user named.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

from servefleet.cli.app import state
from servefleet.cli.fleet import ApiError, Fleet, StoreFleet
from servefleet.cli.output import fail
from servefleet.service import EndpointService, OperationRefused
from servefleet.spec import InvalidInput
from servefleet.store import Store, StoreError, open_store

__all__ = ["require_store", "run_on_fleet", "run_on_store"]

T = TypeVar("T")
Opened = TypeVar("Opened")


def run_on_fleet(operation: Callable[[Fleet], Awaitable[T]]) -> T:
    """Run `operation` on the fleet (the API's, or the store's); user errors end the
    command."""
    return _run(lambda: _api_fleet() if state.api_url else _store_fleet(), operation)


def run_on_store(operation: Callable[[Store], Awaitable[T]], *, init: bool = False) -> T:
    """Open the store, run `operation` on it, close it: for a command that needs the
    store itself; the caller has refused `--api` (`require_store`)."""
    return _run(lambda: _opened_store(init), operation)


def require_store(command: str) -> None:
    """End `command` (as the user typed it, e.g. `servefleet tokens`) if `--api` is set."""
    if state.api_url:
        fail(
            f"--api: `{command}` works on the store itself, not through the API "
            f"({state.api_url}); drop --api (or unset SERVEFLEET_API) and give --store"
        )


def _run(
    opened: Callable[[], AbstractAsyncContextManager[Opened]],
    operation: Callable[[Opened], Awaitable[T]],
) -> T:
    async def main() -> T:
        async with opened() as target:
            return await operation(target)

    try:
        return asyncio.run(main())
    except InvalidInput as error:
        fail(*error.problems)
    except (OperationRefused, StoreError, ApiError, ValueError) as error:
        fail(str(error))


@asynccontextmanager
async def _opened_store(init: bool) -> AsyncIterator[Store]:
    store: Store = await open_store(state.store_url, init=init)
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def _store_fleet() -> AsyncIterator[Fleet]:
    async with _opened_store(init=False) as store:
        yield StoreFleet(EndpointService(store))


def _api_fleet() -> AbstractAsyncContextManager[Fleet]:
    # Imported here: aiohttp is a cost the commands on the store need not pay.
    from servefleet.cli.api_fleet import connected

    assert state.api_url is not None
    return connected(state.api_url, state.token)
