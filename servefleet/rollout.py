"""The progressive rollout's decisions: a pure state machine.

A rollout brings a new image in wave after wave (`RolloutPolicy.waves`); in each
wave's regions the new version runs beside the old as the canary, its share of
requests raised step by step (`RolloutPolicy.steps`), each step held for its
`hold` while every guard rail holds. After the last wave's last step the new
version is promoted everywhere; a breach of any guard rail in any region the
rollout has reached rolls every region back to the old version at once.

`decide` takes the policy, the stored `RolloutState`, each region's signals over
the current step and `now`, and returns the next state with the action and its
reason; it reads no clock and does no I/O, so whoever drives it (`servefleet
rollout` verbs, the driver) can be restarted anywhere: the stored state is all
there is. `start`, `pause`, `resume` and `abort` are the user's transitions.

The rules, in the order `decide` applies them:
1. A finished rollout (promoted or rolled back) stays as it is.
2. A guard rail broken in any region reached so far rolls back everywhere, even
   while paused: pausing stops progress, never protection.
3. Paused, or waiting for `resume` between waves: hold.
4. A region of the current wave whose canary is not ready yet: hold.
5. The step has not held for its `hold` yet: hold.
6. Otherwise the next step, the next wave (or wait for resume), or promotion.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from servefleet.spec import (
    GuardRails,
    InvalidInput,
    RolloutPhase,
    RolloutPolicy,
    RolloutState,
)

__all__ = [
    "Action",
    "Decision",
    "RegionSignals",
    "abort",
    "breach",
    "decide",
    "pause",
    "resume",
    "start",
]


class Action(StrEnum):
    HOLD = "hold"
    RAISE_WEIGHT = "raise_weight"
    NEXT_WAVE = "next_wave"
    WAIT_FOR_RESUME = "wait_for_resume"
    PROMOTE = "promote"
    ROLL_BACK = "roll_back"
    DONE = "done"


@dataclass(frozen=True)
class RegionSignals:
    """One region's view of the rollout over the current step: whether the new
    version is ready, and both versions' requests, 5xx answers and p95 latency
    (seconds; None when nothing was measured)."""

    canary_ready: bool
    canary_requests: int = 0
    canary_errors: int = 0
    primary_requests: int = 0
    canary_p95: float | None = None
    primary_p95: float | None = None


NOT_REPORTED = RegionSignals(canary_ready=False)
"""What a region that reports nothing counts as: its canary is not ready."""


@dataclass(frozen=True)
class Decision:
    state: RolloutState
    action: Action
    reason: str


def start(policy: RolloutPolicy, targets: Sequence[str], image: str, now: datetime) -> RolloutState:
    """A rollout of `image` whose first wave starts at its first step."""
    problems = policy.wave_problems(targets)
    if problems:
        raise InvalidInput(problems)
    first = policy.waves_of(targets)[0]
    weight = policy.steps[0].weight
    return RolloutState(
        image=image,
        weights=dict.fromkeys(first, weight),
        started_at=now,
        wave_started_at=now,
        step_started_at=now,
        reason=f"wave 1 started: {weight} % in {', '.join(first)}",
        decided_at=now,
    )


def pause(state: RolloutState, now: datetime) -> RolloutState:
    return state.model_copy(
        update={"paused": True, "reason": "paused by the user", "decided_at": now}
    )


def resume(
    policy: RolloutPolicy, targets: Sequence[str], state: RolloutState, now: datetime
) -> RolloutState:
    """Unpaused, the current step holds again from `now`; waiting between waves,
    the next wave starts."""
    if state.phase is RolloutPhase.WAITING:
        return _next_wave(policy, targets, state, now).state
    return state.model_copy(
        update={
            "paused": False,
            "step_started_at": now,
            "reason": "resumed by the user",
            "decided_at": now,
        }
    )


def abort(state: RolloutState, now: datetime) -> RolloutState:
    return _rolled_back(state, "aborted by the user", now).state


def decide(
    policy: RolloutPolicy,
    targets: Sequence[str],
    state: RolloutState,
    signals: Mapping[str, RegionSignals],
    now: datetime,
) -> Decision:
    """The next state of the rollout, what it does, and why."""
    if not state.phase.active:
        return Decision(state, Action.DONE, state.reason)
    waves = policy.waves_of(targets)
    reached = [region for wave in waves[: state.wave + 1] for region in wave]
    deadline = state.wave_started_at + timedelta(seconds=policy.guard_rails.readiness_deadline)
    for region in reached:
        broken = breach(policy.guard_rails, signals.get(region, NOT_REPORTED), now > deadline)
        if broken:
            return _rolled_back(state, f"{broken} in {region}", now)
    if state.paused:
        return _hold(state, "paused by the user", now)
    if state.phase is RolloutPhase.WAITING:
        return _hold(state, f"wave {state.wave + 1} done; waiting for resume", now)
    wave = waves[state.wave]
    unready = [region for region in wave if not signals.get(region, NOT_REPORTED).canary_ready]
    if unready:
        return _hold(
            state,
            f"waiting for the new version to be ready in {', '.join(unready)} "
            f"(deadline {deadline:%H:%M:%S})",
            now,
        )
    step = policy.steps[state.step]
    held_until = state.step_started_at + timedelta(seconds=step.hold)
    if now < held_until:
        return _hold(
            state,
            f"wave {state.wave + 1} step {state.step + 1}: holding {step.weight} % "
            f"until {held_until:%H:%M:%S}",
            now,
        )
    if state.step + 1 < len(policy.steps):
        weight = policy.steps[state.step + 1].weight
        return _decided(
            state,
            Action.RAISE_WEIGHT,
            f"wave {state.wave + 1}: {step.weight} % held; raised to {weight} % "
            f"in {', '.join(wave)}",
            now,
            step=state.step + 1,
            step_started_at=now,
            weights={**state.weights, **dict.fromkeys(wave, weight)},
        )
    if state.wave + 1 < len(waves):
        if policy.between_waves == "wait":
            return _decided(
                state,
                Action.WAIT_FOR_RESUME,
                f"wave {state.wave + 1} done; waiting for resume",
                now,
                phase=RolloutPhase.WAITING,
            )
        return _next_wave(policy, targets, state, now)
    return _decided(
        state,
        Action.PROMOTE,
        f"every wave held; {state.image} promoted in every region",
        now,
        phase=RolloutPhase.PROMOTED,
        weights={},
    )


def breach(rails: GuardRails, signals: RegionSignals, past_deadline: bool) -> str:
    """The guard rail `signals` break, in words; "" when none is."""
    if not signals.canary_ready:
        return "the new version not ready within the readiness deadline" if past_deadline else ""
    requests = signals.canary_requests
    if requests < rails.min_requests:
        return ""
    errors = 100 * signals.canary_errors / requests
    if errors > rails.max_error_percent:
        return f"canary 5xx {errors:.1f} % > {rails.max_error_percent:g} % over {requests} requests"
    canary, primary = signals.canary_p95, signals.primary_p95
    limit = rails.max_latency_ratio
    if canary is not None and primary and signals.primary_requests:
        ratio = canary / primary
        if ratio > limit:
            return (
                f"canary p95 latency {canary * 1000:.0f} ms is {ratio:.1f} x the primary's "
                f"{primary * 1000:.0f} ms > {limit:g} x over {requests} requests"
            )
    return ""


def _next_wave(
    policy: RolloutPolicy, targets: Sequence[str], state: RolloutState, now: datetime
) -> Decision:
    wave = policy.waves_of(targets)[state.wave + 1]
    weight = policy.steps[0].weight
    return _decided(
        state,
        Action.NEXT_WAVE,
        f"wave {state.wave + 2} started: {weight} % in {', '.join(wave)}",
        now,
        phase=RolloutPhase.RUNNING,
        paused=False,
        wave=state.wave + 1,
        step=0,
        wave_started_at=now,
        step_started_at=now,
        weights={**state.weights, **dict.fromkeys(wave, weight)},
    )


def _rolled_back(state: RolloutState, reason: str, now: datetime) -> Decision:
    return _decided(
        state,
        Action.ROLL_BACK,
        f"rolled back everywhere: {reason}",
        now,
        phase=RolloutPhase.ROLLED_BACK,
        weights={},
    )


def _hold(state: RolloutState, reason: str, now: datetime) -> Decision:
    """Hold; the state changes only when the reason does, so a driver that writes
    what changed writes nothing while a step holds."""
    if state.reason == reason:
        return Decision(state, Action.HOLD, reason)
    return _decided(state, Action.HOLD, reason, now)


def _decided(
    state: RolloutState, action: Action, reason: str, now: datetime, **changes: object
) -> Decision:
    return Decision(
        state.model_copy(update={**changes, "reason": reason, "decided_at": now}),
        action,
        reason,
    )
