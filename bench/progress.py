"""The live progress line: the running part's label and what it is doing now."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.status import Status

console = Console(stderr=True)
_current: list[tuple[str, Status]] = []


@contextmanager
def stage(label: str) -> Iterator[None]:
    """Show `label` on the progress line while the body runs."""
    with console.status(f"{label} …") as status:
        _current.append((label, status))
        try:
            yield
        finally:
            _current.pop()


def show(text: str) -> None:
    """Replace what the progress line says after the running part's label."""
    if _current:
        label, status = _current[-1]
        status.update(f"{label} · {text}")
