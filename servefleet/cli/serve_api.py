"""`servefleet serve`: the HTTP API over the configured store, in the foreground.

Tokens travel in every request, so plain HTTP is allowed only on a loopback
address unless TLS is configured or `--insecure` says a TLS-terminating proxy
sits in front.
"""

from __future__ import annotations

import contextlib
import ipaddress
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from servefleet.cli.app import app, state
from servefleet.cli.connect import require_store, run_on_store
from servefleet.cli.logs import configure_logging
from servefleet.cli.output import LogFormatOption, check_output, err, fail, redacted
from servefleet.collector import pace_for_a_server
from servefleet.store import Store

__all__ = ["plain_http_refusal"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_end_the_server() -> Iterator[None]:
    """uvicorn stops gracefully on SIGINT or SIGTERM and then sends the signal again,
    to the handler that was there before it: this one lets it go, so `serve` closes
    the store and exits 0 instead of dying by the signal."""
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def plain_http_refusal(
    host: str, certfile: Path | None, keyfile: Path | None, insecure: bool
) -> str | None:
    """Why `serve` must not start with these flags, or None."""
    if (certfile is None) != (keyfile is None):
        return "--ssl-certfile and --ssl-keyfile: give both (the certificate and its key)"
    if certfile is None and not insecure and not _is_loopback(host):
        return (
            f"--host: {host} is not a loopback address, and without TLS every request's "
            "token would cross the network in clear text; give --ssl-certfile and "
            "--ssl-keyfile, or --insecure if a proxy in front terminates TLS"
        )
    return None


@app.command(
    epilog="Examples:\n\n"
    "* `servefleet serve` (http://127.0.0.1:8000, this machine only)\n\n"
    "* `servefleet serve --host 0.0.0.0 --ssl-certfile cert.pem --ssl-keyfile key.pem`"
)
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="TLS certificate (PEM), with --ssl-keyfile.")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="The certificate's key (PEM).")] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            help="Serve plain HTTP on a non-loopback address (only behind a proxy that "
            "terminates TLS)."
        ),
    ] = False,
    log_format: LogFormatOption = "text",
) -> None:
    """Run the HTTP API (/v1, described at /openapi.json) against the store; /metrics,
    /healthz and /readyz answer without a token."""
    from servefleet.api.server import ServerSettings, api_server

    require_store("servefleet serve")
    check_output(log_format, ("text", "json"), flag="--log-format")
    refusal = plain_http_refusal(host, ssl_certfile, ssl_keyfile, insecure)
    if refusal:
        fail(refusal)
    if not 0 <= port <= 65535:
        fail(f"--port: must be between 0 and 65535 (got {port})")
    if log_format == "json":
        configure_logging(log_format)
    settings = ServerSettings(
        host=host,
        port=port,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        uvicorn_logging=log_format == "text",
    )

    async def run(store: Store) -> None:
        if not await store.list_tokens():
            err.print(
                "no API tokens yet: every request will be refused until you create one "
                "with `servefleet tokens create --name NAME --role admin`",
                markup=False,
            )
        err.print(f"servefleet API on store {redacted(state.store_url)}", markup=False)
        with _signals_end_the_server():
            await api_server(store, settings).serve()

    pace_for_a_server()
    try:
        run_on_store(run)
    except (OSError, ssl.SSLError) as error:
        fail(f"serve: {error}")
