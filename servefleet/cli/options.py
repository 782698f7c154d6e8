"""Arguments and options several commands share, and how their values are read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from servefleet.cli.output import fail

__all__ = ["NameArgument", "TimeoutOption", "WaitOption", "key_value_pairs"]

NameArgument = Annotated[str, typer.Argument(help="Endpoint name.", show_default=False)]

WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="Show per-region progress until every target region has the change in place "
        "(exit 1 as soon as it has failed in every region where it is not).",
    ),
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", help="Seconds --wait waits before giving up.")
]


def key_value_pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    """`KEY=VALUE` flags as a mapping, or exit naming the flag."""
    pairs: dict[str, str] = {}
    for value in values or []:
        key, separator, item = value.partition("=")
        if not separator or not key:
            fail(f"{flag}: expected KEY=VALUE (got {value!r})")
        pairs[key] = item
    return pairs
