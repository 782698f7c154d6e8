"""Request bodies over the server's limit are refused with 413 before they are read
whole, and before the token is looked at (FastAPI reads bodies first)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp

from servefleet.spec import Role
from tests.api.conftest import API_LOOP, Api, running_api

pytestmark = API_LOOP

LIMIT = 1000


async def test_a_declared_length_over_the_limit_is_refused_unread(api: Api) -> None:
    before = await api.snapshot()
    async with (
        running_api(api.store, max_body_bytes=LIMIT) as (url, _),
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/endpoints", data=b"x" * (LIMIT + 1)) as answer,
    ):
        assert answer.status == 413
        assert await answer.json() == {
            "error": "too_large",
            "message": "body: the request body is larger than this server takes (1,000 bytes)",
            "problems": [
                {
                    "field": "body",
                    "message": "the request body is larger than this server takes (1,000 bytes)",
                }
            ],
        }
    assert await api.snapshot() == before


async def test_a_streamed_body_is_cut_off_at_the_limit(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"metadata": {"name": "big"}, "spec": {"env": {"A": "'
        for _ in range(10):
            yield b"y" * 200
        yield b'"}}}'

    before = await api.snapshot()
    headers = {
        "Authorization": f"Bearer {api.tokens[Role.DEPLOYER]}",
        "Content-Type": "application/json",
    }
    async with (
        running_api(api.store, max_body_bytes=LIMIT) as (url, _),
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/endpoints", data=chunks(), headers=headers) as answer,
    ):
        assert answer.status == 413
        assert (await answer.json())["problems"][0]["field"] == "body"
    assert await api.snapshot() == before


async def test_a_body_within_the_limit_is_taken(api: Api) -> None:
    answer = await api.call(
        "POST", "/v1/endpoints", {"metadata": {"name": "x" * 46}, "spec": {"image": "a/b:1"}}
    )
    assert answer.status == 422  # read and judged: the name is too long
