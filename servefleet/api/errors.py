"""How every refusal becomes an HTTP answer, in one place.

The wording is the service's and the store's, as the CLI prints it; this module only
picks the status and lays the problems out as data:

| raised                                                        | status    |
|---------------------------------------------------------------|-----------|
| request validation, `InvalidInput` (a field's rule)           | 422       |
| `EndpointNotFound`, `RegionNotFound`, `TokenNotFound`         | 404       |
| `RevisionConflict` (a stale `If-Match`), `EndpointExists`,    | 409       |
| `TokenExists`, `OperationRefused` (no canary, ...)            |           |
| any other `StoreError` (the store is unreachable, ...)        | 503       |
| no token, or one not live / a role too small (`auth.py`)      | 401 / 403 |
| a body over the server's limit (`limits.py`)                  | 413       |

Each refusal happens before anything is written, so none leaves a change behind.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from servefleet.service import OperationRefused
from servefleet.spec import InvalidInput, Problem, invalid_input
from servefleet.store import (
    EndpointExists,
    EndpointNotFound,
    RegionNotFound,
    RevisionConflict,
    StoreError,
    TokenExists,
    TokenNotFound,
)

__all__ = ["ERROR_RESPONSES", "ErrorBody", "error_response", "install_error_handlers"]

log = logging.getLogger(__name__)

ErrorKind = Literal[
    "invalid",
    "not_found",
    "conflict",
    "too_large",
    "unauthorized",
    "forbidden",
    "unavailable",
    "http",
]


class ProblemBody(BaseModel):
    field: str
    """The field the problem is about, as a dotted path ("" for the request as a whole)."""
    message: str
    value: Any = None
    """The value given, when it is known (absent otherwise)."""


class ErrorBody(BaseModel):
    error: ErrorKind
    message: str
    """Every problem on one line, as the CLI prints it after `error: `."""
    problems: list[ProblemBody]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (401, "No token, or an unknown or revoked one"),
        (403, "The token's role does not allow this"),
        (404, "No such endpoint, region or token"),
        (409, "A stale If-Match, a name that exists, or a rule about the current state"),
        (413, "The request body is larger than the server takes"),
        (422, "A field breaks a rule: its path, the value and the rule"),
        (503, "The store cannot be reached"),
    )
}

_STATUS_KIND: dict[int, ErrorKind] = {
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    503: "unavailable",
}


def _value(value: object) -> Any:
    """The value as JSON can carry it; its repr when it cannot be (bytes, or a number
    too large for a float, which JSON has no word for: 1e400 arrives as inf)."""
    try:
        encoded = jsonable_encoder(value)
        json.dumps(encoded, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return encoded


def error_response(
    status: int, problems: Iterable[Problem], headers: Mapping[str, str] | None = None
) -> JSONResponse:
    listed = list(problems)
    body: dict[str, Any] = {
        "error": _STATUS_KIND.get(status, "http"),
        "message": "; ".join(str(problem) for problem in listed),
        "problems": [
            {"field": problem.field, "message": problem.message}
            | ({"value": _value(problem.value)} if problem.has_value else {})
            for problem in listed
        ],
    }
    return JSONResponse(body, status_code=status, headers=headers)


_REFUSAL_STATUS: tuple[tuple[tuple[type[Exception], ...], int], ...] = (
    ((InvalidInput,), 422),
    ((EndpointNotFound, RegionNotFound, TokenNotFound), 404),
    ((RevisionConflict, EndpointExists, TokenExists, OperationRefused), 409),
)
"""First match wins; any other `StoreError` is the store's trouble, not the request's: 503."""


def _refusal_status(error: Exception) -> int:
    for kinds, status in _REFUSAL_STATUS:
        if isinstance(error, kinds):
            return status
    return 503


async def _refused(request: Request, error: Exception) -> JSONResponse:
    status = _refusal_status(error)
    if status == 503:
        log.warning("%s %s: the store refused: %s", request.method, request.url.path, error)
    if isinstance(error, InvalidInput):
        return error_response(status, error.details)
    if isinstance(error, RevisionConflict):
        return error_response(status, [Problem("If-Match", str(error), error.expected)])
    return error_response(status, [Problem.of(str(error))])


async def _invalid_request(request: Request, error: Exception) -> JSONResponse:
    """FastAPI's errors, each located by its field: the part of the request ("body",
    "query", "path", "header") is dropped from the front of the location, and
    names the problem only when nothing narrower does (a body that is no object)."""
    assert isinstance(error, RequestValidationError)
    parts, details = [], []
    for detail in error.errors():
        part, *field = detail["loc"]
        if detail["type"] == "json_invalid":
            reason = detail.get("ctx", {}).get("error", "")
            detail = {**detail, "msg": f"is not valid JSON: {reason} at {field[0]}"}
            field = []
        parts.append(part)
        details.append({**detail, "loc": tuple(field)})
    problems = [
        problem if problem.field else Problem(part, problem.message, problem.value)
        for part, problem in zip(parts, invalid_input(details).details, strict=True)
    ]
    return error_response(422, problems)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    cause = error.__cause__
    if isinstance(cause, UnicodeDecodeError):
        # FastAPI's answer (400, no field) to a JSON body that is not UTF-8 text; the
        # other undecodable bodies are 422s about `body` (`_invalid_request`).
        byte = cause.object[cause.start]
        reason = f"is not valid JSON: not UTF-8 text (byte 0x{byte:02x} at {cause.start})"
        return error_response(422, [Problem("body", reason)])
    return error_response(error.status_code, [Problem.of(str(error.detail))], error.headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    for refusal in (InvalidInput, OperationRefused, StoreError):
        app.add_exception_handler(refusal, _refused)
