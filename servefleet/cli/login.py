"""`servefleet login URL` and `servefleet logout`: save (or forget) the API the
endpoint and region verbs go through and the token they send, so that neither
`--server` nor `--token` is needed on every command (`saved_login.py` keeps them).

`login` checks the token against the API first (`GET /v1/whoami`, which any role
may call): a token the API refuses is never saved. The token comes from `--token`,
else `SERVEFLEET_TOKEN`, else standard input (asked for, unechoed, on a terminal);
it is never printed.
"""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from servefleet.cli import saved_login
from servefleet.cli.app import app, state
from servefleet.cli.connect import run_on_api
from servefleet.cli.output import fail, out

__all__ = ["login", "logout"]


@app.command(
    epilog="Examples: `servefleet login https://fleet.example.com` (asks for the token), "
    "`servefleet login https://fleet.example.com < team.token`",
)
def login(
    url: Annotated[
        str,
        typer.Argument(help="Base URL of a `servefleet serve`, e.g. https://fleet.example.com."),
    ],
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="The token (else SERVEFLEET_TOKEN, else standard input; a flag's value shows "
            "in the process list).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check a token against the API at URL and save both, readable by you alone: the
    endpoint and region verbs then go through that API without --server."""
    secret = (token or state.token or _read_token()).strip()
    if not secret:
        fail("--token: no token given (pass --token, set SERVEFLEET_TOKEN or type it)")
    name, role = run_on_api(url, secret, lambda fleet: fleet.whoami(), named_by="URL")
    server = url.rstrip("/")
    try:
        path = saved_login.save(saved_login.SavedLogin(server=server, token=secret))
    except OSError as error:
        fail(f"{saved_login.login_path()}: cannot save the login: {error.strerror or error}")
    out.print(f"logged in to {server} as token '{name}' ({role}); saved in {path}", markup=False)


@app.command(epilog="Example: `servefleet logout` (then the verbs use --store again)")
def logout() -> None:
    """Forget the API and token `servefleet login` saved."""
    path = saved_login.login_path()
    if saved_login.forget():
        out.print(f"logged out: removed {path}", markup=False)
    else:
        out.print(f"not logged in ({path} does not exist)", markup=False)


def _read_token() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline()
    try:
        return getpass.getpass("Token: ")
    except EOFError:  # Ctrl-D
        return ""
