"""`servefleet serve` and `servefleet tokens` as users run them: real processes, a
real SQLite file, requests over real HTTP (and HTTPS) on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import Result

from servefleet.cli.main import app
from servefleet.store import open_store
from servefleet.tokens import TokenService
from tests.cli.test_cli import COMMAND, prepare, servefleet
from tests.cli_runner import CliRunner

_LISTENING = re.compile(r"Uvicorn running on (https?://\S+)")


@contextlib.asynccontextmanager
async def serving(store_url: str, *args: str) -> AsyncIterator[str]:
    """`servefleet serve --port 0 *args` until the block ends; yields its URL."""
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        "serve",
        "--port",
        "0",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SERVEFLEET_STORE": store_url},
    )
    assert process.stderr is not None
    try:
        seen = []
        async with asyncio.timeout(30):
            while not (listening := _LISTENING.search("".join(seen))):
                line = (await process.stderr.readline()).decode()
                assert line, f"serve exited: {''.join(seen)}"
                seen.append(line)
        yield listening[1].replace("0.0.0.0", "127.0.0.1")
    finally:
        if process.returncode is None:
            process.terminate()
        # Stopped gracefully: the store closed, exit status 0.
        assert await process.wait() == 0


async def viewer_token(store_url: str) -> str:
    """A token made directly in the store (the CLI's way is tested above)."""
    store = await open_store(store_url)
    try:
        return (await TokenService(store).create("ci", "viewer"))[1]
    finally:
        await store.close()


async def get(url: str, token: str, context: ssl.SSLContext | None = None) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}, ssl=context) as answer,
    ):
        return answer.status


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., Result]:
    """`servefleet --store <a SQLite file> ...` in-process: no server, so no process."""
    runner = CliRunner()
    store = ["--store", f"sqlite:///{tmp_path / 'store.db'}"]
    return lambda *args: runner.invoke(app, [*store, *args], catch_exceptions=False)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (
            ["--host", "0.0.0.0"],
            "error: --host: 0.0.0.0 is not a loopback address, and without TLS every "
            "request's token would cross the network in clear text; give --ssl-certfile and "
            "--ssl-keyfile, or --insecure if a proxy in front terminates TLS\n",
        ),
        (
            ["--host", "10.1.2.3", "--ssl-certfile", "cert.pem"],
            "error: --ssl-certfile and --ssl-keyfile: give both (the certificate and its key)\n",
        ),
    ],
)
def test_serve_refuses_plain_http_off_loopback(
    cli: Callable[..., Result], args: list[str], reason: str
) -> None:
    refused = cli("serve", *args)

    assert (refused.exit_code, refused.stdout, refused.stderr) == (1, "", reason)


def test_tokens_are_made_listed_and_revoked(cli: Callable[..., Result]) -> None:
    created = cli("tokens", "create", "--name", "ops", "--role", "admin")
    assert created.exit_code == 0
    assert created.stdout.startswith("sf1.ops.")
    assert "printed only this once" in created.stderr
    taken = cli("tokens", "create", "--name", "ops", "--role", "viewer")
    assert (taken.exit_code, taken.stderr) == (
        1,
        "error: token 'ops' already exists; revoke it or choose another name\n",
    )
    bad = cli("tokens", "create", "--name", "x", "--role", "root")
    assert (bad.exit_code, bad.stderr) == (
        1,
        "error: role: must be 'viewer', 'deployer' or 'admin' (got 'root')\n",
    )
    listed = json.loads(cli("tokens", "list", "-o", "json").stdout)
    assert [(item["name"], item["role"]) for item in listed] == [("ops", "admin")]
    assert set(listed[0]) == {"name", "role", "created_at"}
    assert cli("tokens", "list").stdout.split()[:5] == ["NAME", "ROLE", "CREATED", "ops", "admin"]

    revoked = cli("tokens", "revoke", "ops")
    assert (revoked.exit_code, revoked.stdout) == (0, "token/ops revoked\n")

    again = cli("tokens", "revoke", "ops")
    assert (again.exit_code, again.stderr) == (1, "error: token 'ops' not found\n")
    assert json.loads(cli("tokens", "list", "-o", "json").stdout) == []


async def test_a_token_works_on_a_running_server_until_revoked(sqlite_url: str) -> None:
    store = await open_store(sqlite_url)
    try:
        _, token = await TokenService(store).create("ops", "admin")
        async with serving(sqlite_url) as url:
            assert await get(f"{url}/v1/regions", token) == 200
            assert await get(f"{url}/v1/regions", "sf1.ops.wrong") == 401

            await TokenService(store).revoke("ops")

            assert await get(f"{url}/v1/regions", token) == 401
    finally:
        await store.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(certificate)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return certificate, key


async def test_serve_on_a_public_address_with_tls(
    sqlite_url: str, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    token = await viewer_token(sqlite_url)
    trusted = ssl.create_default_context(cafile=str(cert))
    tls = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]

    async with serving(sqlite_url, "--host", "0.0.0.0", *tls) as url:
        assert url.startswith("https://")
        assert await get(f"{url}/v1/endpoints", token, trusted) == 200


async def test_get_over_the_api_prints_what_the_cli_prints(sqlite_url: str) -> None:
    await prepare(sqlite_url, ["r1", "r2"], replicas=2)
    token = await viewer_token(sqlite_url)
    printed = (await servefleet(sqlite_url, "get", "llm", "-o", "json")).json()

    async with (
        serving(sqlite_url) as url,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session,
        session.get(f"{url}/v1/endpoints/llm") as answer,
    ):
        assert await answer.json() == printed


async def test_serve_logs_json_lines_and_answers_monitoring_without_a_token(
    sqlite_url: str,
) -> None:
    """Verify `serve --log-format json`: uvicorn's lines are JSON objects, and
    /metrics (Prometheus text that parses), /healthz and /readyz need no token."""
    process = await asyncio.create_subprocess_exec(
        *(*COMMAND, "serve", "--port", "0", "--log-format", "json"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "SERVEFLEET_STORE": sqlite_url},
    )
    assert process.stderr is not None
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await process.stderr.readline()).decode()
                assert line, "serve exited"
                if line.startswith("{"):
                    entry = json.loads(line)
                    assert entry["level"] in {"info", "warning"}
                    if listening := _LISTENING.search(entry["message"]):
                        break
        url = listening[1]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/metrics") as scraped:
                assert scraped.status == 200
                families = {f.name for f in text_string_to_metric_families(await scraped.text())}
            assert "servefleet_gateway_requests" in families
            for probe in ("healthz", "readyz"):
                async with session.get(f"{url}/{probe}") as answer:
                    assert answer.status == 200, probe
    finally:
        process.terminate()
        assert await process.wait() == 0
