"""Header fields as raw bytes, as llhttp parsed them and as they go on the wire:
no `CIMultiDict` built, copied, decoded and encoded again on each side."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Fields", "first", "format_fields"]

Fields = list[tuple[bytes, bytes]]
"""Header fields as they came: (name, value) bytes, names in the sender's case."""


def first(fields: Fields, name: bytes) -> bytes | None:
    """The value of the first field called `name` (lower case), if any."""
    for field, value in fields:
        if field.lower() == name:
            return value
    return None


def format_fields(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Header lines, each ended by CRLF."""
    return b"".join([name + b": " + value + b"\r\n" for name, value in fields])
