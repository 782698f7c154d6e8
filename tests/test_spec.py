"""Input rules found by reading, beside the generated ones in test_spec_properties.py."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from servefleet.spec import EndpointSpec, invalid_input
from servefleet.store import open_store


def test_yaml_numbers_are_read_as_quantities() -> None:
    spec = EndpointSpec.model_validate(
        {"image": "ghcr.io/x/y:1", "resources": {"requests": {"cpu": 2}, "limits": {"cpu": 2.5}}}
    )

    assert spec.resources.requests == {"cpu": "2"}
    assert spec.resources.limits == {"cpu": "2.5"}


def test_a_label_key_with_an_empty_prefix_is_refused() -> None:
    with pytest.raises(ValidationError) as error:
        EndpointSpec.model_validate({"image": "ghcr.io/x/y:1", "labels": {"/team": "ml"}})

    assert invalid_input(error.value, "spec").problems == [
        "spec.labels: key prefix must be a DNS subdomain (got '/team')"
    ]


async def test_a_postgres_schema_name_with_a_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="store: schema must be"):
        await open_store("postgresql://postgres@127.0.0.1:5432/test?schema=abc%0A")
