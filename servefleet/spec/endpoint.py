"""The endpoint: what a user declares about it (`EndpointSpec`, with its resources and
canary) and the record stored for it (`Endpoint`).
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from servefleet.spec.autoscaling import AutoscalingSpec
from servefleet.spec.rollout import RolloutPolicy, RolloutState
from servefleet.spec.rules import (
    Argv,
    EndpointName,
    Image,
    Labels,
    Quantities,
    RegionName,
    Rfc1123Label,
    SpecModel,
    distinct,
    env_names,
    env_values,
    parse_quantity,
    shown,
)

__all__ = [
    "CanarySpec",
    "DesiredState",
    "Endpoint",
    "EndpointSpec",
    "Resources",
]

# Model URIs are copied into init containers and replica environments; the
# character set is closed so no quote, `;`, `$`, backtick, space or newline passes.
_SAFE_PATH = r"[A-Za-z0-9._\-/+=@%,]*"
_MODEL_SOURCE = re.compile(
    r"^(?:"
    r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](?:/" + _SAFE_PATH + r")?"
    r"|gs://[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9](?:/" + _SAFE_PATH + r")?"
    r"|hf://[A-Za-z0-9][A-Za-z0-9._\-]*/[A-Za-z0-9][A-Za-z0-9._\-]*(?:@[A-Za-z0-9._\-/]+)?"
    r"|file:///" + _SAFE_PATH + r")\Z"
)
_URL_PATH = re.compile(r"^/(?:[A-Za-z0-9._~\-]+(?:/[A-Za-z0-9._~\-]+)*)?\Z")
_MODEL_PATH = re.compile(r"^/" + _SAFE_PATH + r"\Z")


class Resources(SpecModel):
    """CPU, memory and other requests and limits, as Kubernetes quantities."""

    requests: Quantities = Field(default_factory=dict)
    limits: Quantities = Field(default_factory=dict)

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Resources:
        for resource, request in self.requests.items():
            limit = self.limits.get(resource)
            if limit is not None and parse_quantity(request) > parse_quantity(limit):
                raise ValueError(
                    f"requests.{resource}: {request} must not exceed limits.{resource} ({limit})"
                )
        return self


class CanarySpec(SpecModel):
    """A second version that receives `weight` percent of the traffic.

    `image` replaces the primary image; `command`, `args` and `env` (merged over
    the primary's env) let a local-runtime canary differ from the primary too.
    """

    image: Image | None = None
    command: Argv = None
    args: Argv = None
    env: dict[str, str] = Field(default_factory=dict)
    weight: int = Field(default=10, ge=1, le=99)
    replicas: int = Field(default=1, ge=1, le=1000)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return env_values(env_names(value), info)


class EndpointSpec(SpecModel):
    """What to run: everything a user declares about an endpoint except its regions."""

    image: Image | None = None
    command: Argv = None
    args: Argv = None
    replicas: int = Field(default=1, ge=0, le=1000)
    port: int = Field(default=8000, ge=1, le=65535)
    health_path: str = "/health"
    env: dict[str, str] = Field(default_factory=dict)
    resources: Resources = Field(default_factory=Resources)
    accelerator: Literal["nvidia", "neuron", "none"] = "none"
    gpu_count: int = Field(default=0, ge=0, le=16)
    capacity_type: Literal["spot", "on-demand"] | None = None
    node_selector: Labels = Field(default_factory=dict)
    labels: Labels = Field(default_factory=dict)
    namespace: Rfc1123Label | None = None
    ingress_path: str | None = None
    region_images: dict[RegionName, Image] = Field(default_factory=dict)
    model_source: str | None = None
    model_path: str | None = None
    canary: CanarySpec | None = None
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    rollout: RolloutPolicy | None = None
    """How `servefleet rollout start` brings a new version in; None for the defaults."""

    @field_validator("health_path", "ingress_path")
    @classmethod
    def _url_path(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 512 or not _URL_PATH.match(value)):
            raise ValueError(
                "must be an absolute URL path of letters, digits and '._~-' segments, "
                f"without a trailing '/' (got {shown(value)})"
            )
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        return env_values(env_names(value), info)

    @field_validator("model_source")
    @classmethod
    def _model_source(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 1024 or not _MODEL_SOURCE.match(value)):
            raise ValueError(
                "must be s3://bucket/key, gs://bucket/key, hf://org/model or file:///abs/path, "
                "without quotes, ';', '$', backticks, spaces or newlines "
                f"(got {shown(value)})"
            )
        return value

    @field_validator("model_path")
    @classmethod
    def _model_path(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 1024 or not _MODEL_PATH.match(value)):
            raise ValueError(
                "must be an absolute path without quotes, ';', '$', backticks, spaces or "
                f"newlines (got {shown(value)})"
            )
        return value

    @property
    def rollout_policy(self) -> RolloutPolicy:
        return self.rollout or RolloutPolicy()

    @model_validator(mode="after")
    def _consistent(self) -> EndpointSpec:
        if self.image is None and not self.command:
            raise ValueError("image: an image or a command is required")
        if self.accelerator == "none" and self.gpu_count > 0:
            raise ValueError(
                f"gpu_count: {self.gpu_count} accelerators requested but accelerator is 'none' "
                "(set accelerator to 'nvidia' or 'neuron')"
            )
        return self


class DesiredState(StrEnum):
    """What the user wants. `deploying` and `running` both mean "run it"; the
    difference is reported, so moving between them does not bump `generation`."""

    DEPLOYING = "deploying"
    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"

    @property
    def runs(self) -> bool:
        return self in (DesiredState.DEPLOYING, DesiredState.RUNNING)

    @property
    def intent(self) -> str:
        return "run" if self.runs else self.value


class Endpoint(SpecModel):
    """The stored record. `generation` counts changes of intent; `revision` counts writes."""

    name: EndpointName
    spec: EndpointSpec
    desired_state: DesiredState = DesiredState.DEPLOYING
    target_regions: list[RegionName] = Field(min_length=1)
    generation: int = Field(default=1, ge=1)
    revision: int = Field(default=0, ge=0)
    created_at: datetime
    updated_at: datetime
    rollout: RolloutState | None = None
    """The progressive rollout under way, or the last one's outcome."""

    @field_validator("target_regions")
    @classmethod
    def _distinct_regions(cls, value: list[str]) -> list[str]:
        return distinct(value)

    @property
    def ingress_path(self) -> str:
        return self.spec.ingress_path or f"/inference/{self.name}"

    def intent(self) -> tuple[EndpointSpec, tuple[str, ...], str, object]:
        """The parts whose change is a new generation: a rollout's reason alone is not."""
        routing = None
        if self.rollout is not None:
            routing = (self.rollout.image, tuple(sorted(self.rollout.weights.items())))
        return (self.spec, tuple(self.target_regions), self.desired_state.intent, routing)
