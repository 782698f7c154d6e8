"""Query parameters and bodies read as the real server reads them (its errors for
what it refuses)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from . import errors
from .json_values import parse_json
from .selectors import (
    FieldSelector,
    LabelSelector,
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)


def truthy(value: str | None) -> bool:
    """Query booleans as clients send them: true, True, 1 (kubernetes-asyncio: True)."""
    return value is not None and value.lower() in ("true", "1")


def selectors(query: Mapping[str, str]) -> tuple[LabelSelector, FieldSelector]:
    try:
        return (
            parse_label_selector(query.get("labelSelector")),
            parse_field_selector(query.get("fieldSelector")),
        )
    except SelectorError as error:
        raise errors.bad_request(str(error)) from error


def dry_run(query: Mapping[str, str]) -> bool:
    value = query.get("dryRun")
    if value and value != "All":
        raise errors.bad_request(f'dryRun: Unsupported value: "{value}": supported values: "All"')
    return value == "All"


def parse_body(raw: bytes, content_type: str, allow_empty: bool = False) -> Any:
    if not raw.strip():
        if allow_empty:
            return None
        raise errors.bad_request("the request body is empty")
    try:
        if "yaml" in content_type:
            return yaml.safe_load(raw)
        return parse_json(raw)
    except (ValueError, yaml.YAMLError) as error:
        raise errors.bad_request(f"couldn't get version/kind; json parse error: {error}") from error
