"""What every command prints and how it ends on an error.

Every error a user can cause ends as one line per problem on stderr, `error: `
and the problem (naming the field and the value), with exit status 1; usage
errors (an unknown flag) exit with 2, as click decides.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console

__all__ = [
    "LogFormatOption",
    "OutputOption",
    "check_output",
    "err",
    "fail",
    "out",
    "print_documents",
    "redacted",
]

# Piped output (scripts, `| grep`) gets wide tables instead of wrapped cells. No emoji
# codes: a value like ":smile:" must print as written, or `get | apply` would change it.
out = Console(
    highlight=False, emoji=False, soft_wrap=True, width=None if sys.stdout.isatty() else 250
)
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)

OutputOption = Annotated[str, typer.Option("--output", "-o", help="yaml or json.")]
LogFormatOption = Annotated[str, typer.Option(help="text or json.")]


def fail(*lines: str) -> NoReturn:
    for line in lines:
        err.print(f"error: {line}", markup=False)
    raise typer.Exit(1)


def check_output(output: str, allowed: tuple[str, ...], *, flag: str = "--output") -> None:
    if output not in allowed:
        fail(f"{flag}: must be one of {', '.join(allowed)} (got {output!r})")


def print_documents(documents: list[dict[str, Any]], output: str, *, many: bool) -> None:
    if output == "json":
        out.print(json.dumps(documents if many else documents[0], indent=2), markup=False)
    else:
        text = yaml.safe_dump_all(documents, sort_keys=False) if documents else ""
        out.print(text.rstrip("\n"), markup=False)


def redacted(url: str) -> str:
    """`url` with its password, if any, replaced by `***`."""
    scheme, separator, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if separator and at and ":" in credentials:
        return f"{scheme}://{credentials.split(':')[0]}:***@{host}"
    return url
