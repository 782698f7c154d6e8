"""Broken rules as a user reads them: `Problem`, `InvalidInput`, and `invalid_input`,
which turns pydantic's report into one problem per error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from servefleet.spec.rules import shown

__all__ = [
    "InvalidInput",
    "Problem",
    "invalid_input",
]

_NO_VALUE = object()


@dataclass(frozen=True)
class Problem:
    """One broken rule: the field it is about ("" for the input as a whole), what is
    wrong in words, and the value given when it is known."""

    field: str
    message: str
    value: object = _NO_VALUE

    @property
    def has_value(self) -> bool:
        return self.value is not _NO_VALUE

    @classmethod
    def of(cls, line: str, value: object = _NO_VALUE) -> Problem:
        """A problem from its one-line form, `field: message`."""
        named = _FIELD_IN_MESSAGE.match(line)
        return cls(named[1], named[2], value) if named else cls("", line, value)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidInput(ValueError):
    """User input broke one or more rules; each problem names its field.

    `problems` are the lines a user reads (`field: rule (got value)`); `details`
    are the same problems as data, with the value where it is known.
    """

    def __init__(self, problems: Sequence[str | Problem]) -> None:
        self.details = [p if isinstance(p, Problem) else Problem.of(p) for p in problems]
        self.problems = [str(problem) for problem in self.details]
        super().__init__("; ".join(self.problems))


_PYDANTIC_PHRASES = (
    ("Value error, ", ""),
    ("Input should be", "must be"),
    ("Field required", "is required"),
    ("Extra inputs are not permitted", "is not a known field"),
    ("List should have at least", "must have at least"),
)
_FIELD_IN_MESSAGE = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_./-]*): (.*)$", re.DOTALL)


def invalid_input(
    error: ValidationError | Iterable[Mapping[str, Any]], prefix: str = ""
) -> InvalidInput:
    """Turn pydantic's report (a `ValidationError`, or its `errors()` as another layer
    such as FastAPI passes them on) into one problem per error: `field: rule (got value)`."""
    details = error.errors() if isinstance(error, ValidationError) else error
    problems = []
    for detail in details:
        path = [str(part) for part in (prefix, *detail["loc"]) if part != ""]
        message = detail["msg"]
        for phrase, replacement in _PYDANTIC_PHRASES:
            message = message.replace(phrase, replacement)
        # Rules that span fields (model validators) name their field at the front.
        named = _FIELD_IN_MESSAGE.match(message)
        if named:
            path.append(named[1])
            message = named[2]
        given = detail.get("input")
        # A whole object is the input of a rule about several of its fields: not "the value".
        known = detail["type"] != "missing" and not isinstance(given, dict)
        shows_value = "(got " in message or isinstance(given, dict)
        if not shows_value and detail["type"] not in ("missing", "extra_forbidden"):
            message += f" (got {shown(given)})"
        problems.append(Problem(".".join(path), message, given if known else _NO_VALUE))
    return InvalidInput(problems)
