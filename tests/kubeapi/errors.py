"""API errors as the real server shapes them: `Status` bodies and field errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


def qualified(name: str, group: str) -> str:
    """`deployments.apps`, or just `services` in the core group."""
    return f"{name}.{group}" if group else name


def status_body(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
    }
    if reason:
        body["reason"] = reason
    if details:
        body["details"] = details
    body["code"] = code
    return body


def _details(name: str, group: str, kind: str, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details.update(extra)
    return details


@dataclass
class ApiError(Exception):
    """An error answer: HTTP status and Status body (plus optional headers)."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return status_body(self.code, self.reason, self.message, self.details)


def not_found(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{qualified(plural, group)} "{name}" not found',
        _details(name, group, plural),
    )


PATH_NOT_FOUND = ApiError(404, "NotFound", "the server could not find the requested resource", {})
"""The answer to a path that names no resource or discovery document."""


def already_exists(group: str, plural: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{qualified(plural, group)} "{name}" already exists',
        _details(name, group, plural),
    )


def conflict(group: str, plural: str, name: str, why: str | None = None) -> ApiError:
    reason = why or (
        "the object has been modified; please apply your changes to the latest version and"
        " try again"
    )
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {reason}',
        _details(name, group, plural),
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def internal(message: str) -> ApiError:
    """A plain 500 (an error the server did not classify: no reason, no details)."""
    return ApiError(500, "", message)


def method_not_allowed(
    message: str = "the server does not allow this method on the requested resource",
) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(accepted)}",
    )


def too_many_requests(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "TooManyRequests",
        "Too many requests, please try again later.",
        {"retryAfterSeconds": retry_after},
        {"Retry-After": str(retry_after)},
    )


def timeout(
    message: str = "the server was unable to return a response in the time allotted",
) -> ApiError:
    return ApiError(504, "Timeout", message)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


_TYPES = {
    "Invalid": "Invalid value",
    "Required": "Required value",
    "Duplicate": "Duplicate value",
    "NotSupported": "Unsupported value",
    "Forbidden": "Forbidden",
    "TooLong": "Too long",
}

_NO_VALUE = ("Required", "Forbidden", "TooLong")


class GoSyntax(str):
    """A bad value already written as the API server prints it (Go's %#v of an
    internal struct such as `core.ServicePort{...}`), to be shown as is."""


def go_value(value: Any) -> str:
    """A bad value printed roughly the way Go's %#v / %q would."""
    if isinstance(value, GoSyntax):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        inner = ", ".join(
            f"{json.dumps(k, ensure_ascii=False)}:{json.dumps(v, ensure_ascii=False)}"
            for k, v in sorted(value.items())
        )
        return f"map[string]string{{{inner}}}"
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


@dataclass
class FieldError:
    """One validation error (k8s.io/apimachinery/pkg/util/validation/field.Error)."""

    type: str
    field: str
    value: Any = None
    detail: str = ""

    def body(self) -> str:
        text = _TYPES[self.type]
        if self.type not in _NO_VALUE:
            text += f": {go_value(self.value)}"
        if self.detail:
            text += f": {self.detail}"
        return text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> dict[str, str]:
        return {"reason": f"FieldValue{self.type}", "message": self.body(), "field": self.field}


def invalid(group: str, kind: str, name: str, errors: list[FieldError]) -> ApiError:
    aggregate = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    return ApiError(
        422,
        "Invalid",
        f'{qualified(kind, group)} "{name}" is invalid: {aggregate}',
        _details(name, group, kind, causes=[error.cause() for error in errors]),
    )
