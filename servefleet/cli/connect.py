"""How a command reaches the fleet: through a `servefleet serve`'s API when
`--server` (or `SERVEFLEET_SERVER`) is given, or else when `servefleet login` saved
one and no `--store`/`SERVEFLEET_STORE` names a store; otherwise by opening the
store. Either way it runs one coroutine with `asyncio.run`, and the refusals a user
can cause end the command as one line per problem with exit status 1.

The token: `--token` or `SERVEFLEET_TOKEN`, else the saved one, which is sent only
to the server it was saved for.

The commands that need the store or the processes themselves (`up`, `reconcile`,
`store init`, `tokens`, `serve`) refuse `--server` (`require_store`) rather than
quietly open a store on this machine, which is not the fleet the user named; a
saved login does not concern them (it names where the verbs go by default).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

from servefleet.cli import saved_login
from servefleet.cli.app import state
from servefleet.cli.fleet import ApiError, Fleet, StoreFleet
from servefleet.cli.output import fail
from servefleet.service import EndpointService, OperationRefused
from servefleet.spec import InvalidInput
from servefleet.store import Store, StoreError, open_store

if TYPE_CHECKING:
    from servefleet.cli.api_fleet import ApiFleet

__all__ = ["require_store", "run_on_api", "run_on_fleet", "run_on_store"]

T = TypeVar("T")
Opened = TypeVar("Opened")


def run_on_fleet(operation: Callable[[Fleet], Awaitable[T]]) -> T:
    """Run `operation` on the fleet (the API's, or the store's); user errors end the
    command."""
    api = _api_target()
    if api is None:
        return _run(_store_fleet, operation)
    url, token, named_by = api
    return run_on_api(url, token, operation, named_by=named_by)


def run_on_api(
    url: str, token: str | None, operation: Callable[[ApiFleet], Awaitable[T]], *, named_by: str
) -> T:
    """Run `operation` on the API at `url` (which `named_by` gave); user errors end the
    command."""
    # Imported here: aiohttp is a cost the commands on the store need not pay.
    from servefleet.cli.api_fleet import connected

    return _run(lambda: connected(url, token, named_by=named_by), operation)


def run_on_store(operation: Callable[[Store], Awaitable[T]], *, init: bool = False) -> T:
    """Open the store, run `operation` on it, close it: for a command that needs the
    store itself; the caller has refused `--server` (`require_store`)."""
    return _run(lambda: _opened_store(init), operation)


def require_store(command: str) -> None:
    """End `command` (as the user typed it, e.g. `servefleet tokens`) if `--server` is
    set."""
    if state.server_url:
        named_by = state.server_named_by
        drop = f"drop {named_by}" if named_by.startswith("--") else f"unset {named_by}"
        fail(
            f"{named_by}: `{command}` works on the store itself, not through the API "
            f"({state.server_url}); {drop} and give --store"
        )


def _api_target() -> tuple[str, str | None, str] | None:
    """The API's URL and the token to send (and what named the URL), or None for the
    store."""
    if state.server_url is not None:
        token = state.token
        if token is None:
            saved = _saved_login()
            if saved is not None and saved.server.rstrip("/") == state.server_url.rstrip("/"):
                token = saved.token
        return state.server_url, token, state.server_named_by
    if state.store_named:
        return None
    saved = _saved_login()
    if saved is None:
        return None
    return saved.server, state.token or saved.token, str(saved_login.login_path())


def _saved_login() -> saved_login.SavedLogin | None:
    try:
        return saved_login.load()
    except ValueError as error:
        fail(str(error))


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
