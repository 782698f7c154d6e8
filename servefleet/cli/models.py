"""`servefleet models`: the model store's verbs, and what an endpoint serves.

`models upload|list|uri|delete` work on the model store (`--models` /
`SERVEFLEET_MODELS`: a directory, by default in your data directory, or
`s3://bucket/prefix`). `models NAME`, where NAME is not one of those verbs,
asks endpoint NAME's `/v1/models` through its gateway instead: the group
(`app.py`) resolves an unknown first word to the hidden verb `served` (`served.py`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import platformdirs
import typer
from rich.table import Table

from servefleet.cli.app import models_app
from servefleet.cli.output import check_output, fail, out
from servefleet.models.store import (
    ModelStore,
    ModelStoreError,
    ModelVersion,
    check_name,
    check_version,
    open_model_store,
    parse_reference,
)

__all__ = ["default_models_url"]

T = TypeVar("T")


def default_models_url() -> str:
    return str(platformdirs.user_data_path("servefleet") / "models")


class _State:
    models_url: str = ""


_state = _State()


@models_app.callback()
def _models(
    models: Annotated[
        str | None,
        typer.Option(
            "--models",
            envvar="SERVEFLEET_MODELS",
            help="Model store: a directory (default: in your data directory) or "
            "s3://bucket/prefix (AWS credentials, region and AWS_ENDPOINT_URL from the "
            "usual AWS settings).",
            show_default=False,
        ),
    ] = None,
) -> None:
    _state.models_url = models or default_models_url()


def _run(operation: Callable[[ModelStore], Awaitable[T]]) -> T:
    async def main() -> T:
        async with open_model_store(_state.models_url) as store:
            return await operation(store)

    try:
        return asyncio.run(main())
    except ModelStoreError as error:
        fail(str(error))


def _described(model: ModelVersion) -> dict[str, Any]:
    return {
        "name": model.name,
        "version": model.version,
        "files": model.files,
        "total_bytes": model.total_bytes,
        "created": model.created.isoformat(),
        "uri": model.uri,
    }


@models_app.command(
    epilog="Examples: `servefleet models upload ./llama --name llama-8b`, "
    "`SERVEFLEET_MODELS=s3://my-bucket/models servefleet models upload ./llama --name llama-8b "
    "--version 2024-06`"
)
def upload(
    path: Annotated[Path, typer.Argument(help="Directory holding the model's files.")],
    name: Annotated[str, typer.Option("--name", help="Model name.", show_default=False)],
    version: Annotated[
        str | None,
        typer.Option(
            "--version",
            help="Version name (default: the next integer, or the interrupted upload's).",
        ),
    ] = None,
) -> None:
    """Store a directory as a new version of a model. Interrupted? Run it again: files
    already stored are skipped; the version appears only once every file is in."""
    try:
        check_name(name, "--name")
        if version is not None:
            check_version(version, "--version")
    except ModelStoreError as error:
        fail(str(error))
    uploaded = _run(lambda store: store.upload(path, name, version))
    model = uploaded.model
    out.print(
        f"model/{model.name}:{model.version} uploaded: {model.files} files, "
        f"{model.total_bytes} bytes ({uploaded.sent} sent, {uploaded.skipped} already stored)",
        markup=False,
    )
    out.print(model.uri, markup=False)


@models_app.command(
    "list", epilog="Examples: `servefleet models list`, `servefleet models list -o json`"
)
def list_models(
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """List every complete version in the model store."""
    check_output(output, ("table", "json"))
    models = _run(lambda store: store.list_versions())
    if output == "json":
        out.print(json.dumps([_described(model) for model in models], indent=2), markup=False)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "VERSION", "FILES", "BYTES", "CREATED", "URI"):
        table.add_column(column)
    for model in models:
        table.add_row(
            model.name,
            model.version,
            str(model.files),
            str(model.total_bytes),
            f"{model.created:%Y-%m-%d %H:%M:%S}",
            model.uri,
        )
    out.print(table)


ReferenceArgument = Annotated[
    str, typer.Argument(help="NAME or NAME:VERSION.", metavar="NAME[:VERSION]")
]


def _reference(text: str) -> tuple[str, str | None]:
    try:
        return parse_reference(text)
    except ModelStoreError as error:
        fail(str(error))


@models_app.command(
    epilog="Examples: `servefleet models uri llama-8b`, "
    "`servefleet deploy llm --model-source $(servefleet models uri llama-8b:2) ...`"
)
def uri(reference: ReferenceArgument) -> None:
    """Print the URI of a version (the latest without :VERSION) for `--model-source`."""
    name, version = _reference(reference)
    model = _run(lambda store: store.resolve(name, version))
    out.print(model.uri, markup=False)


@models_app.command(
    epilog="Examples: `servefleet models delete llama-8b:1`, `servefleet models delete llama-8b`"
)
def delete(reference: ReferenceArgument) -> None:
    """Delete one version, or without :VERSION every version of the model.
    Regions keep the copies they staged."""
    name, version = _reference(reference)
    for each in _run(lambda store: store.delete(name, version)):
        out.print(f"model/{name}:{each} deleted", markup=False)
