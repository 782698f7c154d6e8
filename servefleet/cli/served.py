"""`servefleet models NAME`: the models endpoint NAME serves (its `/v1/models`,
through the gateway), as the hidden verb `models served NAME`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from servefleet.cli.app import SERVED, models_app
from servefleet.cli.options import NameArgument
from servefleet.cli.output import check_output, out, print_documents
from servefleet.cli.requests import (
    CONNECT_TIMEOUT,
    EXIT_SERVER_ERROR,
    Answer,
    RegionOption,
    UrlOption,
    choose_target,
    end,
    exit_code,
    fetch,
    look_up,
    run_http,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = ["endpoint_models"]


@models_app.command(
    SERVED,
    hidden=True,
    epilog="Examples: `servefleet models llm`, `servefleet models llm -r eu-west -o json`",
)
def endpoint_models(
    name: NameArgument,
    region: RegionOption = None,
    url: UrlOption = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")] = "table",
) -> None:
    """List the models endpoint NAME serves (its /v1/models, through the gateway); exits
    like `invoke` on a failed request."""
    check_output(output, ("table", "yaml", "json"))
    target = choose_target(look_up(name), region, url)

    async def models_answer(session: aiohttp.ClientSession) -> Answer:
        return await fetch(session, "GET", target.url("/v1/models"), None, CONNECT_TIMEOUT * 3)

    answer = run_http(target, models_answer)
    code = exit_code(answer.status)
    if code:
        end(code, f"{target.described}: HTTP {answer.status}: {answer.reason}")
    document = answer.json()
    models = document.get("data") if isinstance(document, dict) else None
    if not isinstance(models, list):
        end(EXIT_SERVER_ERROR, f"{target.described}: /v1/models did not answer a model list")
    if output != "table":
        print_documents([entry for entry in models if isinstance(entry, dict)], output, many=True)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("MODEL", "OWNED BY"):
        table.add_column(column)
    for entry in models:
        if isinstance(entry, dict):
            table.add_row(str(entry.get("id", "-")), str(entry.get("owned_by", "-")))
    out.print(table)
