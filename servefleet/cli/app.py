"""The command tree: the typer apps every command registers on, and the global
options (`--store`, `--server`, `--token`) every command reads through `state`.

Command modules import this module and `output.py` (and the shared plumbing:
`fleet.py`, `requests.py`), never each other; `main.py` imports them all so
that they register.
"""

from __future__ import annotations

from typing import Annotated

import platformdirs
import typer
from typer import _click as click  # typer's own copy of click, which TyperGroup extends
from typer.core import TyperGroup

__all__ = [
    "SERVED",
    "app",
    "default_store_url",
    "models_app",
    "regions_app",
    "rollout_app",
    "state",
    "store_app",
    "tokens_app",
]

app = typer.Typer(
    name="servefleet",
    help="Keep GPU inference endpoints running in many regions from one declaration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
regions_app = typer.Typer(help="Register, list and remove regions.", no_args_is_help=True)
store_app = typer.Typer(help="Set up the store.", no_args_is_help=True)
tokens_app = typer.Typer(
    help="API tokens: create (shown once), list, revoke.", no_args_is_help=True
)
rollout_app = typer.Typer(
    help="Progressive rollouts: a new image wave by wave, by the endpoint's `rollout` "
    "policy, rolled back in every region when a guard rail breaks.",
    no_args_is_help=True,
)

SERVED = "served"
"""The hidden verb behind `models NAME`; `servefleet.cli.served` defines it."""


class _ModelsGroup(TyperGroup):
    """Resolves `models NAME` (NAME not a verb) to `models served NAME`."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [SERVED, *args]
        return super().resolve_command(ctx, args)


models_app = typer.Typer(
    cls=_ModelsGroup,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="The model store (upload, list, uri, delete), or what an endpoint serves.\n\n"
    "* `servefleet models upload ./llama --name llama-8b` stores a directory as a new version "
    "of a model, with a manifest (sizes, sha256); `models uri llama-8b` prints what to give "
    "`deploy --model-source`.\n\n"
    "* `servefleet models NAME [-r REGION] [--url URL] [-o json]` lists the models "
    "endpoint NAME serves (its `/v1/models`, through the gateway).",
    epilog="Examples: `servefleet models upload ./llama --name llama-8b`, "
    "`servefleet deploy llm --model-source $(servefleet models uri llama-8b) ...`, "
    "`servefleet models llm`",
)

app.add_typer(regions_app, name="regions")
app.add_typer(store_app, name="store")
app.add_typer(models_app, name="models")
app.add_typer(tokens_app, name="tokens")
app.add_typer(rollout_app, name="rollout")


def default_store_url() -> str:
    return str(platformdirs.user_data_path("servefleet") / "store.db")


class State:
    """The global options, as the callback parsed them."""

    store_url: str = ""
    store_named: bool = False
    """`--store` or `SERVEFLEET_STORE` was given (not the default file): the store
    wins over a saved login."""
    server_url: str | None = None
    """The servefleet API the store-backed verbs go through instead of the store, as
    `--server` or `SERVEFLEET_SERVER` (or their older names) gave it."""
    server_named_by: str = "--server"
    """The flag or variable that gave `server_url`, for the messages about it."""
    token: str | None = None


state = State()


@app.callback()
def _global_options(
    context: typer.Context,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="SERVEFLEET_STORE",
            help="Store URL: a SQLite file path (the default lives in your data directory) "
            "or postgresql://user@host/db.",
            show_default=False,
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="SERVEFLEET_SERVER",
            help="Base URL of a `servefleet serve` (e.g. https://fleet.example.com): the "
            "endpoint and region verbs go through its API instead of opening the store. "
            "Without it, the one `servefleet login` saved (unless --store is given).",
            show_default=False,
        ),
    ] = None,
    api: Annotated[
        str | None,
        typer.Option("--api", envvar="SERVEFLEET_API", hidden=True, show_default=False),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="SERVEFLEET_TOKEN",
            help="The API token sent with --server (prefer SERVEFLEET_TOKEN or `servefleet "
            "login`: a flag's value shows in the process list).",
            show_default=False,
        ),
    ] = None,
) -> None:
    state.store_url = store or default_store_url()
    state.store_named = bool(store)
    state.server_url, state.server_named_by = _server(context, {"server": server, "api": api})
    state.token = token or None


_SERVER_OPTIONS = (
    ("server", "--server", "SERVEFLEET_SERVER"),
    ("api", "--api", "SERVEFLEET_API"),
)
"""`--server` and its older name `--api` (the same option), in order of precedence."""


def _server(context: typer.Context, given: dict[str, str | None]) -> tuple[str | None, str]:
    """The API's URL and the flag or variable that named it: a flag before a
    variable, `--server` before `--api`."""
    from_variables: list[tuple[str | None, str]] = []
    for parameter, flag, variable in _SERVER_OPTIONS:
        url = given[parameter]
        if not url:
            continue
        if context.get_parameter_source(parameter) is click.core.ParameterSource.COMMANDLINE:
            return url, flag
        from_variables.append((url, variable))
    return from_variables[0] if from_variables else (None, "--server")
