"""`servefleet store init`: create or migrate the store's schema."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from servefleet.cli.app import state, store_app
from servefleet.cli.connect import require_store, run_on_store
from servefleet.cli.output import fail, out, redacted
from servefleet.store import Store

__all__ = ["store_init"]


@store_app.command(
    "init", epilog="Example: `SERVEFLEET_STORE=postgresql://... servefleet store init`"
)
def store_init(
    print_definition: Annotated[
        bool,
        typer.Option(
            "--print-definition",
            help="Print the DynamoDB table as a CloudFormation resource (JSON) instead of "
            "creating it, for infrastructure as code.",
        ),
    ] = False,
) -> None:
    """Create or migrate the store's schema (safe to run again)."""
    require_store("servefleet store init")
    if print_definition:
        from servefleet.store.dynamodb_table import cloudformation_definition

        try:
            definition = cloudformation_definition(state.store_url)
        except ValueError as error:
            fail(f"--print-definition: {error}")
        out.print(json.dumps(definition, indent=2), markup=False)
        return

    async def nothing(_store: Store) -> None:
        return None

    run_on_store(nothing, init=True)
    out.print(f"store ready: {redacted(state.store_url)}", markup=False)
