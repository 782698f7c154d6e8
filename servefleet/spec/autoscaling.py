"""The autoscaling block of an endpoint's spec: its bounds, metrics and pace."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, model_validator

from servefleet.spec.rules import STORED, SpecModel

__all__ = [
    "REQUEST_METRICS",
    "AutoscalingMetric",
    "AutoscalingSpec",
]


class AutoscalingMetric(SpecModel):
    type: Literal["cpu", "memory", "concurrency", "rps"]
    target: float = Field(gt=0, allow_inf_nan=False)


REQUEST_METRICS = ("concurrency", "rps")
"""The metrics measured on the requests themselves, so they see load at zero replicas."""


class AutoscalingSpec(SpecModel):
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
