"""canonical_json writes the standard library's sorted, compact text byte for byte:
digests recorded by earlier versions (workload hashes, fields digests) must match."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from servefleet.canonical import canonical_json

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def standard(value: Any, default: Any = None) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=default).encode()


@settings(max_examples=2000)
@given(JSON_VALUES)
def test_any_json_value_is_written_as_the_standard_library_writes_it(value: Any) -> None:
    assert canonical_json(value) == standard(value)


def test_the_values_orjson_writes_otherwise_are_written_as_the_standard_library_does() -> None:
    for value in (
        {"image": "registry.local/modèle:1", "b": "\x7f", "a": "\u2028"},
        [1e-05, 1.5e-07, -2.5e-9, 0.0001, 1e16, 1e22],
        {"big": 2**64, "small": -(2**63) - 1},
        {"weight": 0.1, "replicas": 3, "enabled": True, "none": None},
    ):
        assert canonical_json(value) == standard(value)


class Tier(StrEnum):
    GOLD = "gold"


def test_other_types_go_to_default_as_with_the_standard_library() -> None:
    value = {"at": datetime(2026, 12, 6, tzinfo=UTC), "tier": Tier.GOLD, "ports": {8000: "http"}}
    assert canonical_json(value, default=str) == standard(value, default=str)
