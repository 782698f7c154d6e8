"""`servefleet tokens create|list|revoke`: the API's bearer tokens, kept in the store.

These verbs work on the store directly (`--store`), so whoever holds the store's
credentials makes the first admin token; the API's `/v1/tokens` does the same for
admins afterwards.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from servefleet.cli.app import tokens_app
from servefleet.cli.connect import require_store, run_on_store
from servefleet.cli.output import check_output, err, out, print_documents
from servefleet.spec import ApiToken
from servefleet.tokens import TokenService

__all__ = ["create", "list_tokens", "revoke"]


@tokens_app.command(
    "create",
    epilog="Example: `servefleet tokens create --name ci --role deployer > ci.token`",
)
def create(
    name: Annotated[str, typer.Option(help="A name for the token (for list and revoke).")],
    role: Annotated[
        str,
        typer.Option(
            help="viewer (read), deployer (every endpoint operation) or admin (also regions "
            "and tokens)."
        ),
    ],
) -> None:
    """Create a token and print it; it is shown this once (the store keeps a hash)."""
    require_store("servefleet tokens create")
    _, secret = run_on_store(lambda store: TokenService(store).create(name, role))
    out.print(secret, markup=False)
    err.print(
        f"token/{name} created ({role}); it is printed only this once: keep it secret",
        markup=False,
    )


@tokens_app.command("list", epilog="Example: `servefleet tokens list -o json`")
def list_tokens(
    output: Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")] = "table",
) -> None:
    """List tokens: names, roles and when they were made (never the tokens)."""
    require_store("servefleet tokens list")
    check_output(output, ("table", "yaml", "json"))
    tokens: list[ApiToken] = run_on_store(lambda store: TokenService(store).list())
    if output != "table":
        shown = [t.model_dump(mode="json", include={"name", "role", "created_at"}) for t in tokens]
        print_documents(shown, output, many=True)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "ROLE", "CREATED"):
        table.add_column(column)
    for token in tokens:
        table.add_row(token.name, token.role.value, token.created_at.isoformat(timespec="seconds"))
    out.print(table)


@tokens_app.command("revoke", epilog="Example: `servefleet tokens revoke ci`")
def revoke(name: Annotated[str, typer.Argument(help="The token's name.")]) -> None:
    """Revoke a token: the API refuses it from the next request on."""
    require_store("servefleet tokens revoke")
    run_on_store(lambda store: TokenService(store).revoke(name))
    out.print(f"token/{name} revoked", markup=False)
