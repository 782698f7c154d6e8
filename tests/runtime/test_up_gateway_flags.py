"""`servefleet up`'s gateway flags: bad values are refused, naming the flag, before
anything starts."""

from __future__ import annotations

import pytest

from servefleet.store import open_store
from tests.cli.test_cli import servefleet


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        pytest.param(
            "--trusted-proxy",
            "proxy.example",
            "--trusted-proxy: not an IP address or network (got 'proxy.example')",
            id="trusted-proxy",
        ),
        pytest.param(
            "--upstream-read-timeout",
            "0",
            "--upstream-read-timeout: must be a number of seconds more than 0 (got 0)",
            id="upstream-read-timeout",
        ),
        pytest.param(
            "--max-connections",
            "0",
            "--max-connections: must be at least 1 (got 0)",
            id="max-connections",
        ),
    ],
)
async def test_up_refuses_a_bad_gateway_flag(
    sqlite_url: str, flag: str, value: str, message: str
) -> None:
    refused = await servefleet(sqlite_url, "up", "--regions", "r1", flag, value)
    assert refused.code == 1
    assert refused.stderr == f"error: {message}\n"
    store = await open_store(sqlite_url)
    try:
        assert await store.list_regions() == []  # refused before anything was written
    finally:
        await store.close()
