"""Answers as the real server writes them: JSON bodies, Status errors, a write's
warnings, watch events."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from .errors import ApiError
from .writes import WriteResult


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(error: ApiError) -> web.Response:
    return json_response(error.body(), error.code, error.headers or None)


def write_response(result: WriteResult) -> web.Response:
    response = json_response(result.body, 201 if result.created else 200)
    for warning in result.warnings:
        response.headers.add("Warning", f"299 - {json.dumps(warning)}")
    return response


async def write_event(response: web.StreamResponse, kind: str, obj: dict[str, Any]) -> None:
    await response.write(orjson.dumps({"type": kind, "object": obj}) + b"\n")
