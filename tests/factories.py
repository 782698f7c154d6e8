"""Small builders for records in tests: `make_spec(replicas=3)`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

from servefleet.spec import Endpoint, EndpointSpec, RegionStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def process_text(max_size: int) -> st.SearchStrategy[str]:
    """Any text a process can be given as an argument or env value: exec() cannot pass a
    NUL, so the spec refuses one there."""
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=max_size)


def make_spec(**overrides: Any) -> EndpointSpec:
    fields: dict[str, Any] = {"image": "ghcr.io/example/server:1.0", "replicas": 2}
    fields.update(overrides)
    return EndpointSpec.model_validate(fields)


def make_endpoint(name: str = "llm", regions: list[str] | None = None, **spec: Any) -> Endpoint:
    return Endpoint(
        name=name,
        spec=make_spec(**spec),
        target_regions=regions or ["r1"],
        created_at=T0,
        updated_at=T0,
    )


def make_status(endpoint: str = "llm", region: str = "r1", **fields: Any) -> RegionStatus:
    return RegionStatus(endpoint=endpoint, region=region, **fields)
