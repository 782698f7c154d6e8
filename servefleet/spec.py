"""The endpoint record and every rule about user input.

Everything a user can declare passes through these models before anything is
stored, so each rule lives here once and every error names the field it is
about. Nothing in this module does I/O or reads a clock.

Values that reach a runtime later (a model URI, command arguments, env) are
validated strictly here because they must never be able to change the meaning
of a command line: no field is ever joined into a shell string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "MAX_NAME_LENGTH",
    "REQUEST_METRICS",
    "STORED",
    "ApiToken",
    "AutoscalingMetric",
    "AutoscalingSpec",
    "CanarySpec",
    "DesiredState",
    "Endpoint",
    "EndpointManifest",
    "EndpointSpec",
    "GuardRails",
    "InvalidInput",
    "ModelStaging",
    "Problem",
    "Region",
    "RegionKind",
    "RegionState",
    "RegionStatus",
    "Resources",
    "Role",
    "RolloutPhase",
    "RolloutPolicy",
    "RolloutState",
    "RolloutStep",
    "declared_more_than_once",
    "invalid_input",
    "parse_quantity",
    "status_section",
]

STORED = {"stored": True}
"""The validation context of a record read back from a store: a rule added for input
after the record was written (scale to zero needing a request metric) must not make
it unreadable, or one old record would stop every listing that holds it."""

MAX_NAME_LENGTH = 45
"""Endpoint names leave room for "-canary" and prefixes within 63-character labels."""

_RFC1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?\Z")
_RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# An OCI reference: [registry[:port]/]path[:tag][@digest], lowercase path components.
_IMAGE = re.compile(
    r"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?\Z"
)
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
# Kubernetes quantity: a signed decimal, then a binary/decimal suffix or exponent.
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?\Z"
)
_QUANTITY_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)\Z")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?)\Z")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _endpoint_name(value: str) -> str:
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"must be at most {MAX_NAME_LENGTH} characters (got {len(value)})")
    if not _RFC1035_LABEL.match(value):
        raise ValueError(
            "must be lowercase letters, digits and '-', start with a letter and end with a "
            f"letter or digit (got {_shown(value)})"
        )
    return value


def _rfc1123_label(value: str) -> str:
    if len(value) > 63 or not _RFC1123_LABEL.match(value):
        raise ValueError(
            "must be at most 63 lowercase letters, digits and '-', starting and ending with "
            f"a letter or digit (got {_shown(value)})"
        )
    return value


def _image(value: str) -> str:
    if len(value) > 255 or not _IMAGE.match(value):
        raise ValueError(
            "is not a valid OCI image reference like 'ghcr.io/org/server:1.2' "
            f"(got {_shown(value)})"
        )
    return value


def _label_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise ValueError(f"key prefix must be a DNS subdomain (got {_shown(key)})")
    if len(name) > 63 or not _LABEL_NAME.match(name):
        raise ValueError(
            "key must be at most 63 letters, digits, '-', '_' or '.', starting and ending "
            f"with a letter or digit (got {_shown(key)})"
        )


def _labels(value: dict[str, str]) -> dict[str, str]:
    for key, label in value.items():
        _label_key(key)
        if len(label) > 63 or not _LABEL_VALUE.match(label):
            raise ValueError(
                f"value of {key!r} must be at most 63 letters, digits, '-', '_' or '.', "
                f"starting and ending with a letter or digit (got {_shown(label)})"
            )
    return value


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes resource quantity ("500m", "16Gi", "1e3") as a number."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"is not a Kubernetes quantity like '500m' or '16Gi' (got {_shown(text)})")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix not in _QUANTITY_SUFFIX:  # an exponent; "E" and "Ei" are exa and exbi
            return Decimal(number + suffix)
        return Decimal(number) * _QUANTITY_SUFFIX[suffix]
    except InvalidOperation as error:
        raise ValueError(f"is not a Kubernetes quantity (got {_shown(text)})") from error


def _quantities(value: dict[str, str]) -> dict[str, str]:
    for resource, quantity in value.items():
        _label_key(resource)
        try:
            amount = parse_quantity(quantity)
        except ValueError as error:
            raise ValueError(f"{resource}: {error}") from None
        if amount < 0:
            raise ValueError(f"{resource}: must not be negative (got {_shown(quantity)})")
    return value


def _documented(rule: re.Pattern[str], max_length: int) -> Any:
    """The rule in the JSON schema (OpenAPI), for clients and generated tests; the
    validator above stays the one that checks it, with its own wording."""
    pattern = rule.pattern.removesuffix(r"\Z") + "$"
    return Field(json_schema_extra={"pattern": pattern, "maxLength": max_length})


EndpointName = Annotated[
    str, AfterValidator(_endpoint_name), _documented(_RFC1035_LABEL, MAX_NAME_LENGTH)
]
Rfc1123Label = Annotated[str, AfterValidator(_rfc1123_label), _documented(_RFC1123_LABEL, 63)]
"""What Kubernetes accepts as a namespace name; region names follow the same rule."""
RegionName = Rfc1123Label
Image = Annotated[str, AfterValidator(_image), _documented(_IMAGE, 255)]
Labels = Annotated[dict[str, str], AfterValidator(_labels)]


def _numbers_as_quantities(value: object) -> object:
    """YAML reads `cpu: 2` as a number; a quantity is its text."""
    if not isinstance(value, dict):
        return value
    return {
        key: str(amount)
        if isinstance(amount, int | float) and not isinstance(amount, bool)
        else amount
        for key, amount in value.items()
    }


Quantities = Annotated[
    dict[str, str], BeforeValidator(_numbers_as_quantities), AfterValidator(_quantities)
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class Resources(_Model):
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


class CanarySpec(_Model):
    """A second version that receives `weight` percent of the traffic.

    `image` replaces the primary image; `command`, `args` and `env` (merged over
    the primary's env) let a local-runtime canary differ from the primary too.
    """

    image: Image | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    weight: int = Field(default=10, ge=1, le=99)
    replicas: int = Field(default=1, ge=1, le=1000)

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _env(value)


class AutoscalingMetric(_Model):
    type: Literal["cpu", "memory", "concurrency", "rps"]
    target: float = Field(gt=0, allow_inf_nan=False)


REQUEST_METRICS = ("concurrency", "rps")
"""The metrics measured on the requests themselves, so they see load at zero replicas."""


class AutoscalingSpec(_Model):
    """Bounds and pace for an autoscaler; while enabled, servefleet never sets the replica count.

    The pace follows Knative's autoscaler (the one KServe runs on), with its defaults,
    so an endpoint moved from KServe scales as it did there: the count is the load
    averaged over `scale_up_window` (Knative's 60 s stable window) divided by the
    metric's target; a burst is caught over `panic_window` (6 s, Knative's 10 % of the
    stable window) once it asks for `panic_threshold` times the current replicas
    (2.0, Knative's 200 %). Knative scales to zero after about 90 s idle; a model
    server takes far longer than a small web service to start again, so
    `scale_to_zero_after` waits 300 s. `scale_down_window` keeps the highest count
    wanted over its last 60 s, like the HorizontalPodAutoscaler's scale-down
    stabilization (whose own default, 300 s, would hold idle replicas five times
    as long as Knative does).

    Kubernetes regions render the bounds and metrics as a HorizontalPodAutoscaler,
    which paces itself; the windows pace the local runtime's autoscaler.
    """

    enabled: bool = False
    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=10, ge=1, le=1000)
    metrics: list[AutoscalingMetric] = Field(default_factory=list)
    scale_to_zero_after: int = Field(default=300, gt=0, le=86_400)
    """Seconds with no request arriving or in flight before `min_replicas: 0` stops
    the last replica."""
    scale_up_window: int = Field(default=60, gt=0, le=3600)
    """Seconds of load averaged to decide the count (Knative's stable window)."""
    scale_down_window: int = Field(default=60, gt=0, le=3600)
    """The count never falls below the highest count wanted in this many seconds."""
    panic_window: int = Field(default=6, gt=0, le=3600)
    """Seconds of load averaged to catch a burst; at most `scale_up_window`."""
    panic_threshold: float = Field(default=2.0, ge=1.1, le=10, allow_inf_nan=False)
    """A burst asking for this many times the current replicas starts panic mode:
    the count follows the burst at once and does not fall until it has passed
    (Knative's panic threshold, 200 %, with its bounds of 110 % to 1,000 %)."""

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas: {self.min_replicas} must not exceed max_replicas "
                f"({self.max_replicas})"
            )
        kinds = [metric.type for metric in self.metrics]
        if len(kinds) != len(set(kinds)):
            raise ValueError(f"metrics: each type may appear once (got {kinds})")
        stored = info.context == STORED
        if self.min_replicas == 0 and not set(kinds) & set(REQUEST_METRICS) and not stored:
            raise ValueError(
                "min_replicas: 0 needs a concurrency or rps metric: cpu and memory are "
                "measured on running replicas, so nothing would start one again "
                f"(got metrics {kinds})"
            )
        if self.panic_window > self.scale_up_window:
            raise ValueError(
                f"panic_window: {self.panic_window} must not exceed scale_up_window "
                f"({self.scale_up_window}); a burst is a shorter look at the same load"
            )
        return self


class RolloutStep(_Model):
    """One step of a wave: the canary's share of its regions' requests, held a while."""

    weight: int = Field(ge=1, le=99)
    """Percent of requests for the new version; 100 % is the promotion that follows
    the last wave's last step."""
    hold: int = Field(default=60, ge=0, le=86_400)
    """Seconds the step holds with every guard rail met before the next one."""


class GuardRails(_Model):
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


class RolloutPolicy(_Model):
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
                _distinct(regions)
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


class RolloutState(_Model):
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

    @field_validator("weights")
    @classmethod
    def _percent(cls, value: dict[str, int]) -> dict[str, int]:
        for region, weight in value.items():
            if not 1 <= weight <= 99:
                raise ValueError(f"{region}: must be a percent from 1 to 99 (got {weight})")
        return value


def _distinct(regions: list[str]) -> list[str]:
    duplicates = sorted({region for region in regions if regions.count(region) > 1})
    if duplicates:
        raise ValueError(f"each region may appear once (got {duplicates} more than once)")
    return regions


def _env(value: dict[str, str]) -> dict[str, str]:
    for name in value:
        if not _ENV_NAME.match(name):
            raise ValueError(
                "names must be letters, digits and '_', not starting with a digit "
                f"(got {_shown(name)})"
            )
    return value


def _pass_env(names: list[str]) -> list[str]:
    _env(dict.fromkeys(names, ""))
    for name in names:
        if name.startswith("SERVEFLEET_"):
            raise ValueError(
                "servefleet's own variables never reach a replica (SERVEFLEET_STORE is the "
                f"store's URL with its password); set what an endpoint needs in its env "
                f"(got {_shown(name)})"
            )
    return names


class EndpointSpec(_Model):
    """What to run: everything a user declares about an endpoint except its regions."""

    image: Image | None = None
    command: list[str] | None = None
    args: list[str] | None = None
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
                f"without a trailing '/' (got {_shown(value)})"
            )
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        return _env(value)

    @field_validator("model_source")
    @classmethod
    def _model_source(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 1024 or not _MODEL_SOURCE.match(value)):
            raise ValueError(
                "must be s3://bucket/key, gs://bucket/key, hf://org/model or file:///abs/path, "
                "without quotes, ';', '$', backticks, spaces or newlines "
                f"(got {_shown(value)})"
            )
        return value

    @field_validator("model_path")
    @classmethod
    def _model_path(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 1024 or not _MODEL_PATH.match(value)):
            raise ValueError(
                "must be an absolute path without quotes, ';', '$', backticks, spaces or "
                f"newlines (got {_shown(value)})"
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


class Endpoint(_Model):
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
        return _distinct(value)

    @property
    def ingress_path(self) -> str:
        return self.spec.ingress_path or f"/inference/{self.name}"

    def intent(self) -> tuple[EndpointSpec, tuple[str, ...], str, object]:
        """The parts whose change is a new generation: a rollout's reason alone is not."""
        routing = None
        if self.rollout is not None:
            routing = (self.rollout.image, tuple(sorted(self.rollout.weights.items())))
        return (self.spec, tuple(self.target_regions), self.desired_state.intent, routing)


class RegionKind(StrEnum):
    LOCAL = "local"
    KUBERNETES = "kubernetes"


def _dns_subdomain(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError(
            f"must be a DNS subdomain: lowercase letters, digits, '-' and '.' (got {_shown(value)})"
        )
    return value


def _annotation_keys(value: dict[str, str]) -> dict[str, str]:
    for key in value:
        _label_key(key)
    return value


def _annotation_key_or_none(value: str) -> str:
    """An annotation key, or "" for none."""
    if value:
        _label_key(value)
    return value


def _quantity(value: str) -> str:
    if parse_quantity(value) < 0:
        raise ValueError(f"must not be negative (got {_shown(value)})")
    return value


DnsSubdomain = Annotated[str, AfterValidator(_dns_subdomain)]


def _metric_name(value: str) -> str:
    if not _METRIC_NAME.match(value):
        raise ValueError(
            "must be a metric name: a letter, '_' or ':', then letters, digits, '_', ':', "
            f"'.' or '-', at most 253 (got {_shown(value)})"
        )
    return value


_METRIC_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:.-]{0,252}\Z")
MetricName = Annotated[str, AfterValidator(_metric_name)]
"""A metric as a custom metrics API serves it (one path segment; Prometheus names
such as `vllm:num_requests_running` included)."""


def _http_url(value: str) -> str:
    if len(value) > 2048 or not _HTTP_URL.match(value):
        raise ValueError(
            "must be an http:// or https:// URL with a host and no spaces, such as "
            f"http://prometheus.monitoring:9090 (got {_shown(value)})"
        )
    return value


_HTTP_URL = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/\S*)?\Z")


class Region(_Model):
    """A place endpoints run: this machine (`local`) or a Kubernetes cluster.

    A kubernetes region also says how its workloads are rendered; a setting left
    None takes the renderer's default (`runtime.kubernetes.install.region_settings`).
    """

    name: RegionName
    kind: RegionKind
    kubeconfig: str | None = None
    context: str | None = None
    namespace: Rfc1123Label = "default"
    ingress_class: DnsSubdomain | None = None
    ingress_annotations: Annotated[dict[str, str], AfterValidator(_annotation_keys)] | None = None
    """Every Ingress's annotations (replacing the defaults)."""
    healthcheck_annotation: Annotated[str, AfterValidator(_annotation_key_or_none)] | None = None
    """The annotation key that receives an endpoint's health path; "" for none."""
    canary_routing: Literal["alb", "nginx"] | None = None
    service_account: DnsSubdomain | None = None
    """The service account of every workload pod."""
    stage_image: Image | None = None
    """The image of the model-staging init container."""
    startup_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    model_volume_size_limit: Annotated[str, AfterValidator(_quantity)] | None = None
    pods_metrics: bool | None = None
    """Whether concurrency/rps autoscaling metrics are rendered (needs a metrics adapter)."""
    concurrency_metric: MetricName | None = None
    """The per-pod metric a `concurrency` target is rendered on (the metrics adapter's
    name for requests in flight)."""
    rps_metric: MetricName | None = None
    """The per-pod metric an `rps` target is rendered on (requests per second)."""
    autoscaler: Literal["hpa", "keda"] | None = None
    """What scales autoscaled endpoints: a HorizontalPodAutoscaler (the default), or
    a KEDA ScaledObject, which can scale to zero (`min_replicas: 0`)."""
    prometheus_url: Annotated[str, AfterValidator(_http_url)] | None = None
    """The Prometheus a keda region's request-metric triggers query (KEDA's
    `serverAddress`), e.g. http://prometheus.monitoring:9090."""
    pass_env: Annotated[list[str], AfterValidator(_pass_env)] | None = None
    """Variables of `servefleet up`'s environment its local replicas and staging
    children get besides the allowlist (`runtime.local.environment`)."""

    @model_validator(mode="after")
    def _kind_settings(self) -> Region:
        if self.kind is RegionKind.LOCAL and (self.kubeconfig or self.context):
            raise ValueError("kubeconfig: only kubernetes regions take a kubeconfig or context")
        if self.kind is RegionKind.LOCAL:
            for name in _KUBERNETES_ONLY:
                value = getattr(self, name)
                if value is not None:
                    raise ValueError(
                        f"{name}: only kubernetes regions take this setting (got {_shown(value)})"
                    )
        elif self.pass_env is not None:
            raise ValueError(
                "pass_env: only local regions take this setting; a kubernetes pod's "
                f"environment is its spec's env (got {_shown(self.pass_env)})"
            )
        elif self.autoscaler == "keda" and self.prometheus_url is None:
            raise ValueError(
                "prometheus_url: a keda region needs the Prometheus its concurrency and "
                "rps triggers query (--prometheus-url)"
            )
        elif self.autoscaler != "keda" and self.prometheus_url is not None:
            raise ValueError(
                "prometheus_url: only a region with autoscaler keda queries Prometheus "
                f"(got {_shown(self.prometheus_url)})"
            )
        return self

    @property
    def scales_to_zero(self) -> bool:
        """Whether an endpoint may autoscale to zero replicas here: a local region's
        own autoscaler can, a kubernetes region's only through KEDA."""
        return self.kind is RegionKind.LOCAL or self.autoscaler == "keda"


_KUBERNETES_ONLY = (
    "ingress_class",
    "ingress_annotations",
    "healthcheck_annotation",
    "canary_routing",
    "service_account",
    "stage_image",
    "startup_timeout",
    "model_volume_size_limit",
    "pods_metrics",
    "concurrency_metric",
    "rps_metric",
    "autoscaler",
    "prometheus_url",
)


class RegionState(StrEnum):
    PENDING = "pending"
    PROGRESSING = "progressing"
    READY = "ready"
    DEGRADED = "degraded"
    STOPPED = "stopped"
    FAILED = "failed"
    DELETED = "deleted"


class ModelStaging(_Model):
    """How far a region has copied and verified an endpoint's model."""

    bytes_done: int = 0
    bytes_total: int | None = None
    """None until the source's manifest has been read."""
    complete: bool = False


class RegionStatus(_Model):
    """One region's report on one endpoint; written only by that region's reconciler."""

    endpoint: EndpointName
    region: RegionName
    state: RegionState = RegionState.PENDING
    observed_generation: int = 0
    replicas_ready: int = 0
    replicas_desired: int = 0
    canary_ready: int = 0
    canary_desired: int = 0
    routed: bool = False
    message: str = ""
    scale_reason: str = ""
    """Why `replicas_desired` and `canary_desired` are what they are, when the
    region's own autoscaler chose them (a local region); "" otherwise."""
    last_transition: datetime | None = None
    heartbeat: datetime | None = None
    unready_since: datetime | None = None
    staging: ModelStaging | None = None
    """Copying `model_source` into the region before replicas start; None without one."""


_NO_VALUE = object()


@dataclass(frozen=True)
class Problem:
    """One broken rule: the field it is about ("" for the input as a whole), what is
    wrong in words, and the value given when it is known."""

    field: str
    message: str
    value: object = _NO_VALUE

    @property
    def has_value(self) -> bool:
        return self.value is not _NO_VALUE

    @classmethod
    def of(cls, line: str, value: object = _NO_VALUE) -> Problem:
        """A problem from its one-line form, `field: message`."""
        named = _FIELD_IN_MESSAGE.match(line)
        return cls(named[1], named[2], value) if named else cls("", line, value)

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class Role(StrEnum):
    """What an API token may do. Each role includes the ones before it: a deployer
    also reads, an admin also deploys."""

    VIEWER = "viewer"
    """Read endpoints, their status and the regions."""
    DEPLOYER = "deployer"
    """Every endpoint operation."""
    ADMIN = "admin"
    """Regions and tokens."""

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


class ApiToken(_Model):
    """A stored API token: the secret itself is never kept, only `digest`, the
    sha256 of `salt` and the secret (`servefleet.tokens` says why that suffices)."""

    name: Rfc1123Label
    role: Role
    salt: str
    digest: str
    created_at: datetime


class InvalidInput(ValueError):
    """User input broke one or more rules; each problem names its field.

    `problems` are the lines a user reads (`field: rule (got value)`); `details`
    are the same problems as data, with the value where it is known.
    """

    def __init__(self, problems: Sequence[str | Problem]) -> None:
        self.details = [p if isinstance(p, Problem) else Problem.of(p) for p in problems]
        self.problems = [str(problem) for problem in self.details]
        super().__init__("; ".join(self.problems))


_PYDANTIC_PHRASES = (
    ("Value error, ", ""),
    ("Input should be", "must be"),
    ("Field required", "is required"),
    ("Extra inputs are not permitted", "is not a known field"),
    ("List should have at least", "must have at least"),
)
_FIELD_IN_MESSAGE = re.compile(r"^([A-Za-z0-9_][A-Za-z0-9_./-]*): (.*)$", re.DOTALL)


def invalid_input(
    error: ValidationError | Iterable[Mapping[str, Any]], prefix: str = ""
) -> InvalidInput:
    """Turn pydantic's report (a `ValidationError`, or its `errors()` as another layer
    such as FastAPI passes them on) into one problem per error: `field: rule (got value)`."""
    details = error.errors() if isinstance(error, ValidationError) else error
    problems = []
    for detail in details:
        path = [str(part) for part in (prefix, *detail["loc"]) if part != ""]
        message = detail["msg"]
        for phrase, replacement in _PYDANTIC_PHRASES:
            message = message.replace(phrase, replacement)
        # Rules that span fields (model validators) name their field at the front.
        named = _FIELD_IN_MESSAGE.match(message)
        if named:
            path.append(named[1])
            message = named[2]
        given = detail.get("input")
        # A whole object is the input of a rule about several of its fields: not "the value".
        known = detail["type"] != "missing" and not isinstance(given, dict)
        shows_value = "(got " in message or isinstance(given, dict)
        if not shows_value and detail["type"] not in ("missing", "extra_forbidden"):
            message += f" (got {_shown(given)})"
        problems.append(Problem(".".join(path), message, given if known else _NO_VALUE))
    return InvalidInput(problems)


API_VERSION: Literal["servefleet/v1"] = "servefleet/v1"


class ManifestMetadata(_Model):
    """`name` is the input; the rest is shown by `get` and ignored by `apply`."""

    name: EndpointName
    generation: int | None = None
    revision: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class EndpointManifest(_Model):
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
        return None if value is None else _distinct(value)

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
        section["rollout"] = endpoint.rollout.model_dump(mode="json")
    return section


def declared_more_than_once(manifests: Sequence[EndpointManifest]) -> list[str]:
    """A problem for each endpoint name a batch of declarations holds more than once."""
    names = [manifest.metadata.name for manifest in manifests]
    return [
        f"metadata.name: {name!r} is declared more than once"
        for name in sorted({name for name in names if names.count(name) > 1})
    ]
