"""Fuzzing the API from its own OpenAPI document (schemathesis): requests that fit
the document and requests that break it (a wrong type, a missing field, a value out
of range), sent as an admin over real HTTP to a server over a real SQLite store.

Two properties for every request: no answer is a 5xx, and a refused one (4xx)
changes nothing (the endpoints, regions, tokens and the change feed compared before
and after). A path's `name` is sometimes that of a record seeded beforehand (an
endpoint with a canary, a region, a token), so changes and refusals about existing
records are tried, not only "404 no such endpoint".

The generation is derandomized and bounded (`EXAMPLES` a route and mode), so a run
sends the same requests each time and takes well under a minute. SQLite only: the
same run over PostgreSQL (150 requests a route and mode) found nothing more and
takes twice as long.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import hypothesis
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis.schemas import BaseSchema

from servefleet.service import EndpointService
from servefleet.spec import EndpointManifest, Region, RegionKind, Role
from servefleet.store import Store, open_store
from servefleet.tokens import TokenService
from tests.api.conftest import running_api

T = TypeVar("T")

EXAMPLES = 25
"""Generated requests per route and generation mode (positive, negative)."""


@dataclass
class FuzzTarget:
    """The API on a loop of its own (a thread), as the generated tests are plain
    functions; `run` waits there for a coroutine, such as a look at the store."""

    url: str
    store: Store
    token: str
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    def snapshot(self) -> tuple[Any, ...]:
        async def everything() -> tuple[Any, ...]:
            return (
                await self.store.list_endpoints(),
                await self.store.list_regions(),
                await self.store.list_tokens(),
                await self.store.feed_position(),
            )

        return self.run(everything())

    def seed(self, suffix: str) -> dict[str, list[str]]:
        """Records for the next route's requests to find: an endpoint with a canary,
        an unused region (r1 is in use), a token; the earlier ones may have been
        changed or removed by the route before."""

        endpoint, token = f"seeded-{suffix}", f"seeded-{suffix}"

        async def seed() -> None:
            manifest = {
                "metadata": {"name": endpoint},
                "spec": {"image": "ghcr.io/org/server:1.0"},
                "regions": ["r1"],
            }
            service = EndpointService(self.store)
            await service.create(EndpointManifest.model_validate(manifest))
            await service.canary(endpoint, image="ghcr.io/org/server:2.0")
            await self.store.put_region(Region(name="r2", kind=RegionKind.LOCAL))
            await TokenService(self.store).create(token, Role.VIEWER.value)

        self.run(seed())
        return {"endpoints": [endpoint], "regions": ["r1", "r2"], "tokens": [token]}


@contextlib.contextmanager
def _serving(url: str) -> Iterator[FuzzTarget]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()

    async def start() -> FuzzTarget:
        store = await open_store(url, init=True)
        stack.push_async_callback(store.close)
        await store.put_region(Region(name="r1", kind=RegionKind.LOCAL))
        _, admin = await TokenService(store).create("fuzzer", Role.ADMIN.value)
        api_url, _ = await stack.enter_async_context(running_api(store))
        return FuzzTarget(api_url, store, admin, loop)

    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    finally:
        asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    with _serving(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'store.db'}") as target:
        yield target


@pytest.fixture(scope="module")
def api_schema(fuzz_target: FuzzTarget) -> BaseSchema:
    """The app's own document, as served."""
    schema = schemathesis.openapi.from_dict(fuzz_target.run(_openapi(fuzz_target.url)))
    # Every request carries the fuzzer's own token (an admin's), so it gets past the
    # check; 401 and 403 are `test_auth`'s.
    schema.config.generation.update(with_security_parameters=False)
    # Streams never end; `test_watch` covers the watch, bad `Last-Event-ID`s included.
    return schema.exclude(path="/v1/watch")


async def _openapi(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/openapi.json") as answer:
        document: dict[str, Any] = await answer.json()
        return document


MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


@pytest.mark.slow(seconds=30)
@pytest.mark.timeout(300)  # about 25 s alone; several times that on a loaded machine
def test_no_request_gets_a_5xx_and_no_refused_one_changes_anything(
    fuzz_target: FuzzTarget, api_schema: BaseSchema
) -> None:
    failures: list[str] = []
    for index, result in enumerate(api_schema.get_all_operations()):
        operation = result.ok()
        seeded = fuzz_target.seed(str(index))
        names = seeded.get(operation.path.split("/")[2], []) if "{name}" in operation.path else []
        for mode in MODES:

            @hypothesis.settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            @hypothesis.given(
                case=operation.as_strategy(generation_mode=mode),
                aim=st.sampled_from([None, *names]),
            )
            def check(case: schemathesis.Case, aim: str | None) -> None:
                if aim is not None:
                    _aim(case, aim)
                _check(case, fuzz_target)

            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                # Nothing to break: a route without parameters or body (`GET /v1/regions`).
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
            except AssertionError as error:
                failures.append(f"{operation.label} ({mode.value}): {error}")
    assert not failures, "\n\n".join(failures)


def _aim(case: schemathesis.Case, name: str) -> None:
    """Point the request at the seeded record `name` (and a declaration's name too, or
    `PUT` refuses it at once)."""
    case.path_parameters = {**case.path_parameters, "name": name}
    if isinstance(case.body, dict) and isinstance(case.body.get("metadata"), dict):
        case.body = {**case.body, "metadata": {**case.body["metadata"], "name": name}}


def _check(case: schemathesis.Case, target: FuzzTarget) -> None:
    before = target.snapshot()
    response = case.call(
        base_url=target.url,
        headers={"Authorization": f"Bearer {target.token}"},
        timeout=10,
    )
    curl = case.as_curl_command(headers={"Authorization": "Bearer TOKEN"})
    assert response.status_code < 500, f"{response.status_code} {response.text[:300]}\n{curl}"
    if 400 <= response.status_code < 500:
        assert target.snapshot() == before, f"{response.status_code} changed the store\n{curl}"
