"""The progressive rollout's state machine (`servefleet.rollout`), driven through
random histories of signals, pauses, resumes and aborts, its state stored in the
endpoint record as a store keeps it (JSON) between decisions."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from servefleet.plan import desired_workload
from servefleet.rollout import (
    Action,
    Decision,
    RegionSignals,
    abort,
    breach,
    decide,
    pause,
    resume,
    start,
)
from servefleet.spec import (
    Endpoint,
    GuardRails,
    InvalidInput,
    RolloutPhase,
    RolloutPolicy,
    RolloutState,
)
from tests.factories import T0, make_endpoint

OLD = "ghcr.io/example/server:1.0"
NEW = "ghcr.io/example/server:2.0"
REGIONS = ["r1", "r2", "r3", "r4"]
HISTORIES = settings(max_examples=30, deadline=None)

Event = tuple[object, ...]


@st.composite
def policies(draw: st.DrawFn) -> tuple[RolloutPolicy, list[str]]:
    targets = draw(st.lists(st.sampled_from(REGIONS), min_size=1, max_size=4, unique=True))
    waves: list[list[str]] | None = None
    if len(targets) > 1 and draw(st.booleans()):
        cuts = sorted(draw(st.sets(st.integers(1, len(targets) - 1), min_size=1, max_size=3)))
        bounds = [0, *cuts, len(targets)]
        waves = [targets[low:high] for low, high in itertools.pairwise(bounds)]
    weights = sorted(draw(st.sets(st.integers(1, 99), min_size=1, max_size=3)))
    steps = [{"weight": weight, "hold": draw(st.integers(0, 60))} for weight in weights]
    policy = RolloutPolicy.model_validate(
        {
            "waves": waves,
            "steps": steps,
            "between_waves": draw(st.sampled_from(["auto", "wait"])),
            "guard_rails": {"min_requests": 50, "max_error_percent": 5, "readiness_deadline": 300},
        }
    )
    return policy, targets


@st.composite
def signals(draw: st.DrawFn) -> RegionSignals:
    requests = draw(st.integers(0, 400))
    return RegionSignals(
        canary_ready=draw(st.integers(0, 9)) > 0,
        canary_requests=requests,
        canary_errors=draw(st.integers(0, requests // 8) | st.integers(0, requests)),
        primary_requests=draw(st.integers(0, 400)),
        canary_p95=draw(st.none() | st.floats(0.01, 1.0)),
        primary_p95=draw(st.none() | st.floats(0.01, 1.0)),
    )


@st.composite
def healthy(draw: st.DrawFn) -> RegionSignals:
    requests = draw(st.integers(0, 400))
    latency = draw(st.none() | st.floats(0.01, 1.0))
    return RegionSignals(
        canary_ready=True,
        canary_requests=requests,
        canary_errors=draw(st.integers(0, requests // 50)),
        primary_requests=draw(st.integers(0, 400)),
        canary_p95=latency,
        primary_p95=latency,
    )


@st.composite
def events(draw: st.DrawFn, targets: list[str]) -> list[Event]:
    """Mostly ticks that see every region healthy, so rollouts get far; now and
    then a tick seeing anything, or a user's pause, resume or abort."""
    history: list[Event] = []
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(st.integers(0, 15))
        if kind == 0:
            history.append((draw(st.sampled_from(["pause", "resume", "abort"])),))
            continue
        if kind < 3:
            seen = draw(st.dictionaries(st.sampled_from(targets), signals()))
        else:
            seen = {region: draw(healthy()) for region in targets}
        history.append(("tick", draw(st.integers(1, 90)), seen))
    return history


@dataclass
class Step:
    before: RolloutState
    event: Event
    now: datetime
    decision: Decision | None


def run(
    policy: RolloutPolicy, targets: list[str], history: list[Event], *, stored: bool
) -> tuple[Endpoint, list[Step]]:
    """Play `history` on a new rollout; `stored` sends the record through JSON, as a
    store keeps it, before every decision (a process reading it afresh each time)."""
    endpoint = make_endpoint(regions=targets, rollout=policy.model_dump()).model_copy(
        update={"rollout": start(policy, targets, NEW, T0)}
    )
    now, steps = T0, []
    for event in history:
        if stored:
            endpoint = Endpoint.model_validate_json(endpoint.model_dump_json())
        state = endpoint.rollout
        assert state is not None
        decision = None
        if event[0] == "tick":
            seconds, seen = event[1], event[2]
            assert isinstance(seconds, int)
            assert isinstance(seen, dict)
            now += timedelta(seconds=seconds)
            decision = decide(policy, targets, state, seen, now)
            after = decision.state
        elif not state.phase.active:
            after = state  # the service refuses every verb on a finished rollout
        elif event[0] == "pause":
            after = pause(state, now)
        elif event[0] == "resume":
            waiting = state.phase is RolloutPhase.WAITING
            after = resume(policy, targets, state, now) if state.paused or waiting else state
        else:
            after = abort(state, now)
        steps.append(Step(state, event, now, decision))
        endpoint = endpoint.model_copy(update={"rollout": after})
    return endpoint, steps


def broken_in(policy: RolloutPolicy, targets: list[str], step: Step) -> list[str]:
    """The reached regions whose signals break a guard rail at this decision."""
    assert step.decision is not None
    waves = policy.waves_of(targets)
    deadline = step.before.wave_started_at + timedelta(
        seconds=policy.guard_rails.readiness_deadline
    )
    seen = step.event[2]
    assert isinstance(seen, dict)
    return [
        region
        for wave in waves[: step.before.wave + 1]
        for region in wave
        if breach(
            policy.guard_rails,
            seen.get(region, RegionSignals(canary_ready=False)),
            step.now > deadline,
        )
    ]


@HISTORIES
@given(data=st.data())
def test_a_breach_anywhere_rolls_every_region_back_and_nothing_is_promoted_after_it(
    data: st.DataObject,
) -> None:
    policy, targets = data.draw(policies())
    endpoint, steps = run(policy, targets, data.draw(events(targets)), stored=False)

    breached = False
    for step in steps:
        if step.decision is None or not step.before.phase.active:
            continue
        if broken_in(policy, targets, step):
            breached = True
            assert step.decision.action is Action.ROLL_BACK, step
            assert step.decision.state.phase is RolloutPhase.ROLLED_BACK
        else:
            assert step.decision.action is not Action.ROLL_BACK, step
    assert endpoint.rollout is not None
    if breached:
        assert endpoint.rollout.phase is RolloutPhase.ROLLED_BACK
        assert endpoint.rollout.reason.startswith("rolled back everywhere: ")
    if endpoint.rollout.phase is RolloutPhase.ROLLED_BACK:
        for region in targets:
            workload = desired_workload(endpoint, region)
            assert workload is not None
            assert (workload.primary.image, workload.canary, workload.canary_weight) == (
                OLD,
                None,
                0,
            )


@HISTORIES
@given(data=st.data())
def test_promotion_only_follows_the_last_step_of_the_last_wave_held(data: st.DataObject) -> None:
    policy, targets = data.draw(policies())
    _, steps = run(policy, targets, data.draw(events(targets)), stored=False)

    for step in steps:
        if step.decision is not None and step.decision.action is Action.PROMOTE:
            assert step.before.wave == len(policy.waves_of(targets)) - 1
            assert step.before.step == len(policy.steps) - 1
            assert not step.before.paused
            held = step.now - step.before.step_started_at
            assert held >= timedelta(seconds=policy.steps[-1].hold)
            assert not broken_in(policy, targets, step)
            assert step.decision.state.weights == {}


@HISTORIES
@given(data=st.data())
def test_a_rollout_resumes_identically_from_its_stored_state(data: st.DataObject) -> None:
    policy, targets = data.draw(policies())
    history = data.draw(events(targets))

    kept, kept_steps = run(policy, targets, history, stored=False)
    reread, reread_steps = run(policy, targets, history, stored=True)

    assert reread.rollout == kept.rollout
    assert [step.decision for step in reread_steps] == [step.decision for step in kept_steps]


@HISTORIES
@given(data=st.data())
def test_a_paused_rollout_holds_its_weights_unless_it_rolls_back(data: st.DataObject) -> None:
    policy, targets = data.draw(policies())
    _, steps = run(policy, targets, data.draw(events(targets)), stored=False)

    for step in steps:
        if step.decision is None or not step.before.paused or not step.before.phase.active:
            continue
        after = step.decision.state
        if step.decision.action is Action.ROLL_BACK:
            continue
        assert step.decision.action is Action.HOLD
        assert (after.weights, after.wave, after.step, after.phase) == (
            step.before.weights,
            step.before.wave,
            step.before.step,
            step.before.phase,
        )


@HISTORIES
@given(data=st.data())
def test_waves_run_in_order(data: st.DataObject) -> None:
    policy, targets = data.draw(policies())
    endpoint, steps = run(policy, targets, data.draw(events(targets)), stored=False)
    waves = policy.waves_of(targets)

    states = [step.before for step in steps]
    assert endpoint.rollout is not None
    states.append(endpoint.rollout)
    for before, after in itertools.pairwise(states):
        assert after.wave in (before.wave, before.wave + 1)
    for state in states:
        if state.phase.active:
            reached = {region for wave in waves[: state.wave + 1] for region in wave}
            assert set(state.weights) == reached
            current = {state.weights[region] for region in waves[state.wave]}
            assert current == {policy.steps[state.step].weight}


def test_a_healthy_rollout_goes_wave_by_wave_to_promotion() -> None:
    policy = RolloutPolicy.model_validate(
        {
            "waves": [["r1"], ["r2", "r3"]],
            "steps": [{"weight": 10, "hold": 30}, {"weight": 50, "hold": 30}],
        }
    )
    targets = ["r1", "r2", "r3"]
    state = start(policy, targets, NEW, T0)
    healthy = dict.fromkeys(targets, RegionSignals(canary_ready=True))
    actions = []
    now = T0
    for _ in range(8):
        now += timedelta(seconds=31)
        decision = decide(policy, targets, state, healthy, now)
        actions.append(decision.action)
        state = decision.state
    assert actions[:4] == [
        Action.RAISE_WEIGHT,
        Action.NEXT_WAVE,
        Action.RAISE_WEIGHT,
        Action.PROMOTE,
    ]
    assert state.phase is RolloutPhase.PROMOTED
    assert state.reason == f"every wave held; {NEW} promoted in every region"


def test_the_reason_names_the_share_the_rail_and_the_region() -> None:
    policy = RolloutPolicy.model_validate({"guard_rails": {"max_error_percent": 2}})
    state = start(policy, ["us-east-1", "eu-west-1"], NEW, T0)
    seen = {
        "us-east-1": RegionSignals(canary_ready=True, canary_requests=500, canary_errors=3),
        "eu-west-1": RegionSignals(canary_ready=True, canary_requests=312, canary_errors=31),
    }
    decision = decide(policy, ["us-east-1", "eu-west-1"], state, seen, T0)

    assert decision.action is Action.ROLL_BACK
    assert decision.reason == (
        "rolled back everywhere: canary 5xx 9.9 % > 2 % over 312 requests in eu-west-1"
    )


@pytest.mark.parametrize(
    ("seen", "past_deadline", "broken"),
    [
        (RegionSignals(canary_ready=False), False, ""),
        (
            RegionSignals(canary_ready=False),
            True,
            "the new version not ready within the readiness deadline",
        ),
        (RegionSignals(canary_ready=True, canary_requests=99, canary_errors=99), False, ""),
        (
            RegionSignals(canary_ready=True, canary_requests=100, canary_errors=3),
            False,
            "canary 5xx 3.0 % > 2 % over 100 requests",
        ),
        (
            RegionSignals(
                canary_ready=True,
                canary_requests=100,
                primary_requests=100,
                canary_p95=0.9,
                primary_p95=0.3,
            ),
            False,
            "canary p95 latency 900 ms is 3.0 x the primary's 300 ms > 2 x over 100 requests",
        ),
        (
            RegionSignals(canary_ready=True, canary_requests=100, canary_p95=0.9),
            False,
            "",
        ),
    ],
)
def test_guard_rails(seen: RegionSignals, past_deadline: bool, broken: str) -> None:
    assert breach(GuardRails(), seen, past_deadline) == broken


def test_a_rollout_cannot_start_on_waves_that_miss_or_invent_a_target() -> None:
    policy = RolloutPolicy.model_validate({"waves": [["r1"], ["r9"]]})
    with pytest.raises(InvalidInput) as refused:
        start(policy, ["r1", "r2"], NEW, T0)
    assert refused.value.problems == [
        "spec.rollout.waves.1: region 'r9' is not a target of the endpoint (targets: r1, r2)",
        "spec.rollout.waves: target region 'r2' is in no wave; every target goes in one",
    ]


def test_a_paused_rollout_holds_past_its_step_and_goes_on_after_resume() -> None:
    policy = RolloutPolicy.model_validate({"steps": [{"weight": 5, "hold": 10}, {"weight": 50}]})
    healthy = {"r1": RegionSignals(canary_ready=True)}
    paused = pause(start(policy, ["r1"], NEW, T0), T0)
    later = T0 + timedelta(hours=1)

    held = decide(policy, ["r1"], paused, healthy, later)
    assert (held.action, held.state.weights, held.reason) == (
        Action.HOLD,
        {"r1": 5},
        "paused by the user",
    )
    resumed = resume(policy, ["r1"], held.state, later)
    assert decide(policy, ["r1"], resumed, healthy, later).action is Action.HOLD
    raised = decide(policy, ["r1"], resumed, healthy, later + timedelta(seconds=10))
    assert (raised.action, raised.state.weights) == (Action.RAISE_WEIGHT, {"r1": 50})


def test_the_new_version_runs_only_where_the_rollout_has_reached_at_its_weight() -> None:
    policy = RolloutPolicy.model_validate({"waves": [["r1"], ["r2"]], "canary_replicas": 2})
    endpoint = make_endpoint(regions=["r1", "r2"], rollout=policy.model_dump(), replicas=3)
    rolling = endpoint.model_copy(update={"rollout": start(policy, ["r1", "r2"], NEW, T0)})

    reached, untouched = desired_workload(rolling, "r1"), desired_workload(rolling, "r2")
    assert reached is not None
    assert untouched is not None
    assert reached.canary is not None
    assert (reached.primary.image, reached.canary.image) == (OLD, NEW)
    assert (reached.canary_weight, reached.canary.replicas) == (5, 2)
    assert (untouched.canary, untouched.canary_weight) == (None, 0)
    assert untouched == desired_workload(endpoint, "r2")
    # A weight is intent (a new generation the regions report); a reason alone is not.
    assert rolling.intent() != endpoint.intent()
    state = rolling.rollout
    assert state is not None
    reasoned = rolling.model_copy(update={"rollout": state.model_copy(update={"reason": "x"})})
    assert reasoned.intent() == rolling.intent()
    raised = rolling.model_copy(
        update={"rollout": state.model_copy(update={"weights": {"r1": 25}})}
    )
    assert raised.intent() != rolling.intent()
