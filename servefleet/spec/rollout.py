"""A progressive rollout: its policy in the spec (waves, steps, guard rails) and its
state, stored with the endpoint (`servefleet.rollout` moves it on).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from servefleet.spec.errors import Problem
from servefleet.spec.rules import Image, RegionName, SpecModel, distinct
from servefleet.spec.traffic import RegionTraffic

__all__ = [
    "GuardRails",
    "RolloutPhase",
    "RolloutPolicy",
    "RolloutState",
    "RolloutStep",
    "StepBaseline",
]


class RolloutStep(SpecModel):
    """One step of a wave: the canary's share of its regions' requests, held a while."""

    weight: int = Field(ge=1, le=99)
    """Percent of requests for the new version; 100 % is the promotion that follows
    the last wave's last step."""
    hold: int = Field(default=60, ge=0, le=86_400)
    """Seconds the step holds with every guard rail met before the next one."""


class GuardRails(SpecModel):
    """What rolls a rollout back, judged in each region over the current step."""

    max_error_percent: float = Field(default=2.0, ge=0, le=100, allow_inf_nan=False)
    """The most 5xx answers the canary may give, in percent of its requests."""
    min_requests: int = Field(default=100, ge=1, le=1_000_000)
    """Canary requests in a region before its 5xx share and latency count."""
    max_latency_ratio: float = Field(default=2.0, ge=1, le=100, allow_inf_nan=False)
    """The most the canary's p95 latency may be, as a multiple of the primary's (not
    None for "no rail": `get -o yaml` leaves a None out, and apply would read the
    default back; 100 is as good as none)."""
    readiness_deadline: int = Field(default=600, gt=0, le=86_400)
    """Seconds from a wave's start within which the canary must be ready in every
    region the rollout has reached."""


def _default_steps() -> list[RolloutStep]:
    return [RolloutStep(weight=weight) for weight in (5, 25, 50)]


class RolloutPolicy(SpecModel):
    """How a new version reaches the regions (`servefleet rollout start`): wave after
    wave, each through `steps`, rolled back everywhere on any guard rail's breach."""

    waves: list[Annotated[list[RegionName], Field(min_length=1)]] | None = Field(
        default=None, min_length=1
    )
    """Ordered groups of target regions; None for one wave of them all."""
    steps: list[RolloutStep] = Field(default_factory=_default_steps, min_length=1, max_length=20)
    guard_rails: GuardRails = Field(default_factory=GuardRails)
    between_waves: Literal["auto", "wait"] = "auto"
    """Start the next wave at once, or wait for `servefleet rollout resume`."""
    canary_replicas: int = Field(default=1, ge=1, le=1000)
    """Replicas of the new version in each region it has reached."""

    @model_validator(mode="after")
    def _ordered(self) -> RolloutPolicy:
        for index, (before, step) in enumerate(zip(self.steps, self.steps[1:], strict=False)):
            if step.weight <= before.weight:
                raise ValueError(
                    f"steps.{index + 1}.weight: each step must raise the weight "
                    f"(got {step.weight} after {before.weight})"
                )
        if self.waves is not None:
            regions = [region for wave in self.waves for region in wave]
            try:
                distinct(regions)
            except ValueError as error:
                raise ValueError(f"waves: {error}") from None
        return self

    def waves_of(self, targets: Sequence[str]) -> list[list[str]]:
        """The waves for these target regions."""
        return [list(wave) for wave in self.waves] if self.waves else [list(targets)]

    def wave_problems(self, targets: Sequence[str]) -> list[Problem]:
        """Regions named in a wave but not targeted, and targets in no wave."""
        if self.waves is None:
            return []
        named = {region for wave in self.waves for region in wave}
        problems = [
            Problem(
                f"spec.rollout.waves.{index}",
                f"region {region!r} is not a target of the endpoint "
                f"(targets: {', '.join(targets)})",
                region,
            )
            for index, wave in enumerate(self.waves)
            for region in wave
            if region not in targets
        ]
        problems += [
            Problem(
                "spec.rollout.waves",
                f"target region {region!r} is in no wave; every target goes in one",
                region,
            )
            for region in targets
            if region not in named
        ]
        return problems


class RolloutPhase(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"
    """A wave is done; the next starts on `servefleet rollout resume`."""
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"

    @property
    def active(self) -> bool:
        return self in (RolloutPhase.RUNNING, RolloutPhase.WAITING)


class StepBaseline(SpecModel):
    """The reached regions' traffic as they had reported it when a step began: the
    start of the window its guard rails are judged over. Kept with the state, so a
    driver taking over mid-step judges the same window."""

    step_started_at: datetime
    """The step it was taken for (`RolloutState.step_started_at`)."""
    regions: dict[RegionName, RegionTraffic] = Field(default_factory=dict)


class RolloutState(SpecModel):
    """Where a rollout is, stored with the endpoint; `servefleet.rollout` moves it on."""

    image: Image
    phase: RolloutPhase = RolloutPhase.RUNNING
    paused: bool = False
    wave: int = Field(default=0, ge=0)
    step: int = Field(default=0, ge=0)
    weights: dict[RegionName, int] = Field(default_factory=dict)
    """The new version's percent in each region it has reached; empty once done."""
    started_at: datetime
    wave_started_at: datetime
    step_started_at: datetime
    reason: str = ""
    """The last decision, in words."""
    decided_at: datetime
    baseline: StepBaseline | None = None
    """Where the current step's window starts; None until the driver has taken it."""

    @field_validator("weights")
    @classmethod
    def _percent(cls, value: dict[str, int]) -> dict[str, int]:
        for region, weight in value.items():
            if not 1 <= weight <= 99:
                raise ValueError(f"{region}: must be a percent from 1 to 99 (got {weight})")
        return value
