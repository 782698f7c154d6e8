"""`servefleet up` serves the HTTP API and its dashboard on loopback beside its
gateways, with the same tokens as `servefleet serve`."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import aiohttp

from tests.cli.test_cli import servefleet
from tests.scenarios.harness import up_process

_API_LINE = re.compile(r"API and dashboard: (http://127\.0\.0\.1:\d+)/")


async def test_up_serves_the_api_and_dashboard_with_tokens(sqlite_url: str, tmp_path: Path) -> None:
    created = await servefleet(sqlite_url, "tokens", "create", "--name", "ops", "--role", "viewer")
    assert created.code == 0, created
    token = created.stdout.strip()
    async with up_process(
        sqlite_url, "--regions", "r1", "--port", "0", "--demo", stderr=tmp_path / "up.log"
    ) as up:
        found = [m for line in up.announcement if (m := _API_LINE.search(line))]
        assert found, up.announcement
        api = found[0].group(1)
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{api}/v1/endpoints") as refused:
                assert refused.status == 401
            headers = {"Authorization": f"Bearer {token}"}
            async with client.get(f"{api}/v1/endpoints", headers=headers) as listed:
                assert listed.status == 200
                names = [item["metadata"]["name"] for item in await listed.json()]
                assert names == ["demo"]
            async with client.get(f"{api}/") as page:
                assert page.status == 200
                assert page.content_type == "text/html"


async def test_up_refuses_an_api_port_it_cannot_listen_on(sqlite_url: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        refused = await servefleet(
            sqlite_url, "up", "--regions", "r1", "--port", "0", "--api-port", str(port)
        )
    assert refused.code == 1
    assert refused.stderr.startswith(f"error: --api-port: cannot listen on 127.0.0.1:{port}: ")
    assert "Traceback" not in refused.stderr
    listed = await servefleet(sqlite_url, "regions", "list", "-o", "json")
    assert listed.json() == []  # nothing registered
