"""The declaration a user applies and `get` prints (`servefleet/v1` `Endpoint`
documents), and the status shown in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from servefleet.spec.endpoint import Endpoint, EndpointSpec
from servefleet.spec.rules import EndpointName, RegionName, SpecModel, distinct
from servefleet.spec.status import RegionStatus

__all__ = [
    "EndpointManifest",
    "ManifestMetadata",
    "declared_more_than_once",
    "status_section",
]

API_VERSION: Literal["servefleet/v1"] = "servefleet/v1"


class ManifestMetadata(SpecModel):
    """`name` is the input; the rest is shown by `get` and ignored by `apply`."""

    name: EndpointName
    generation: int | None = None
    revision: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class EndpointManifest(SpecModel):
    """One document of `servefleet apply -f`, and what `servefleet get -o yaml` prints.

    `regions` and `state` may be left out: a new endpoint then goes to every
    registered region and runs; an existing one keeps what it has. `status` is
    shown by `get` and ignored by `apply`, so get's output applies unchanged.
    """

    api_version: Literal["servefleet/v1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["Endpoint"] = "Endpoint"
    metadata: ManifestMetadata
    regions: list[RegionName] | None = Field(default=None, min_length=1)
    state: Literal["deploying", "running", "stopped", "deleted"] | None = None
    spec: EndpointSpec
    status: dict[str, object] | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("regions")
    @classmethod
    def _distinct_regions(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else distinct(value)

    @classmethod
    def of(cls, endpoint: Endpoint, status: dict[str, object] | None = None) -> EndpointManifest:
        return cls(
            metadata=ManifestMetadata(
                name=endpoint.name,
                generation=endpoint.generation,
                revision=endpoint.revision,
                created_at=endpoint.created_at,
                updated_at=endpoint.updated_at,
            ),
            regions=endpoint.target_regions,
            state="running" if endpoint.desired_state.runs else endpoint.desired_state.value,
            spec=endpoint.spec,
            status=status,
        )

    def document(self) -> dict[str, object]:
        """Plain data for YAML or JSON; unset optional fields are left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def status_section(endpoint: Endpoint, statuses: list[RegionStatus]) -> dict[str, object]:
    """The `status` part of a declaration as `get` shows it: the desired state, one
    report per target region (`pending` until the region has written one) and the
    rollout's wave, step, weights and last decision when there is one."""
    by_region = {status.region: status for status in statuses}
    section: dict[str, object] = {
        "desiredState": endpoint.desired_state.value,
        "regions": {
            region: by_region[region].model_dump(mode="json", exclude={"endpoint", "region"})
            if region in by_region
            else {"state": "pending"}
            for region in endpoint.target_regions
        },
    }
    if endpoint.rollout is not None:
        # The baseline is the driver's bookkeeping (each region's counters at the
        # step's start): `rollout status` shows the window it yields instead.
        section["rollout"] = endpoint.rollout.model_dump(mode="json", exclude={"baseline"})
    return section


def declared_more_than_once(manifests: Sequence[EndpointManifest]) -> list[str]:
    """A problem for each endpoint name a batch of declarations holds more than once."""
    names = [manifest.metadata.name for manifest in manifests]
    return [
        f"metadata.name: {name!r} is declared more than once"
        for name in sorted({name for name in names if names.count(name) > 1})
    ]
