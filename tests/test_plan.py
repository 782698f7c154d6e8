"""The pure decisions of `servefleet.plan`: workload, hash, watchdog, status."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from servefleet.plan import (
    Observed,
    VersionObservation,
    Workload,
    desired_workload,
    fleet_state,
    purgeable,
    region_status,
    status_changed,
    watchdog,
    workload_hash,
)
from servefleet.spec import DesiredState, Endpoint, RegionState, RegionStatus
from tests.factories import T0, make_endpoint, make_status, process_text

THRESHOLD = timedelta(seconds=300)


def planned(endpoint: Endpoint, region: str = "r1", **options: Any) -> Workload:
    workload = desired_workload(endpoint, region, **options)
    assert workload is not None
    return workload


def with_state(endpoint: Endpoint, state: DesiredState) -> Endpoint:
    return endpoint.model_copy(update={"desired_state": state})


def observed_for(workload: Workload, ready: int = 0, canary_ready: int = 0) -> Observed:
    return Observed(
        workload_hash=workload_hash(workload),
        primary=VersionObservation(ready=ready, running=ready),
        canary=VersionObservation(ready=canary_ready, running=canary_ready),
        routed=workload.routed,
    )


# The desired workload.


def test_a_running_endpoint_is_routed_with_its_replicas() -> None:
    workload = planned(make_endpoint(replicas=3, env={"B": "2", "A": "1"}))

    assert workload.primary.replicas == 3
    assert workload.routed
    assert workload.canary is None
    assert workload.canary_weight == 0
    assert workload.ingress_path == "/inference/llm"
    assert list(workload.primary.env) == ["A", "B"]


def test_stopped_means_zero_replicas_and_no_route() -> None:
    endpoint = with_state(
        make_endpoint(replicas=3, canary={"image": "ghcr.io/x/y:2", "replicas": 2}),
        DesiredState.STOPPED,
    )

    workload = planned(endpoint)

    assert workload.primary.replicas == 0
    assert workload.canary is not None
    assert workload.canary.replicas == 0
    assert workload.replicas_desired == 0
    assert not workload.routed


@pytest.mark.parametrize(
    ("state", "region"),
    [
        pytest.param(DesiredState.DELETED, "r1", id="deleted"),
        pytest.param(DesiredState.DEPLOYING, "r9", id="region-not-targeted"),
    ],
)
def test_nothing_is_desired_for_deleted_or_untargeted(state: DesiredState, region: str) -> None:
    assert desired_workload(with_state(make_endpoint(), state), region) is None


def test_canary_takes_its_weight_and_inherits_what_it_does_not_override() -> None:
    endpoint = make_endpoint(
        image=None,
        command=["python", "-m", "server"],
        env={"A": "1", "B": "1"},
        canary={"env": {"B": "2"}, "weight": 20, "replicas": 2},
    )

    workload = planned(endpoint)

    assert workload.canary is not None
    assert workload.canary_weight == 20
    assert workload.canary.command == ["python", "-m", "server"]
    assert workload.canary.env == {"A": "1", "B": "2"}
    assert workload.replicas_desired == 4


def test_removing_the_canary_sends_everything_to_the_primary() -> None:
    with_canary = make_endpoint(canary={"image": "ghcr.io/x/y:2", "weight": 30})
    without = with_canary.model_copy(
        update={"spec": with_canary.spec.model_copy(update={"canary": None})}
    )

    workload = planned(without)

    assert workload.canary is None
    assert workload.canary_weight == 0
    assert workload_hash(workload) != workload_hash(planned(with_canary))


def test_autoscaling_leaves_the_replica_count_to_the_autoscaler() -> None:
    endpoint = make_endpoint(
        replicas=5, autoscaling={"enabled": True, "min_replicas": 2, "max_replicas": 8}
    )

    workload = planned(endpoint)

    assert workload.primary.replicas is None
    assert workload.autoscaling is not None
    assert (workload.autoscaling.min_replicas, workload.autoscaling.max_replicas) == (2, 8)
    assert workload.replicas_desired == 2


def test_a_region_image_overrides_the_primary_image_there_only() -> None:
    endpoint = make_endpoint(regions=["r1", "r2"], region_images={"r2": "ecr.example/llm:1"})

    assert planned(endpoint, "r1").primary.image == "ghcr.io/example/server:1.0"
    assert planned(endpoint, "r2").primary.image == "ecr.example/llm:1"


def test_the_watchdog_unroutes_without_removing_replicas() -> None:
    workload = planned(make_endpoint(replicas=2), unrouted=True)

    assert not workload.routed
    assert workload.primary.replicas == 2


# The hash.

SPEC_CHANGES: list[tuple[str, Any]] = [
    ("image", "ghcr.io/example/server:2.0"),
    ("command", ["serve"]),
    ("args", ["--fast"]),
    ("replicas", 3),
    ("port", 9000),
    ("health_path", "/ready"),
    ("env", {"A": "1"}),
    ("resources", {"requests": {"cpu": "1"}}),
    ("accelerator", "nvidia"),
    ("capacity_type", "spot"),
    ("node_selector", {"pool": "gpu"}),
    ("labels", {"team": "ml"}),
    ("namespace", "llm"),
    ("ingress_path", "/v2/llm"),
    ("model_source", "s3://models-bucket/llama"),
    ("model_path", "/models/llama"),
    ("canary", {"image": "ghcr.io/example/server:2.0"}),
    ("autoscaling", {"enabled": True}),
]


@pytest.mark.parametrize(("field", "value"), SPEC_CHANGES, ids=[c[0] for c in SPEC_CHANGES])
def test_every_spec_field_reaches_the_hash(field: str, value: Any) -> None:
    """The reference design only ever rolled out replicas and image changes."""
    before = make_endpoint()
    after = make_endpoint(**{field: value})

    assert workload_hash(planned(before)) != workload_hash(planned(after))


def test_gpu_count_reaches_the_hash() -> None:
    one = make_endpoint(accelerator="nvidia", gpu_count=1)
    two = make_endpoint(accelerator="nvidia", gpu_count=2)

    assert workload_hash(planned(one)) != workload_hash(planned(two))


@given(
    env=st.dictionaries(
        st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), process_text(max_size=5)
    ),
    generation=st.integers(min_value=1, max_value=10**6),
)
def test_hash_ignores_env_order_and_generation(env: dict[str, str], generation: int) -> None:
    endpoint = make_endpoint(env=env)
    reordered = make_endpoint(env=dict(reversed(list(env.items()))))
    later = reordered.model_copy(update={"generation": generation})

    assert workload_hash(planned(endpoint)) == workload_hash(planned(later))


@given(replicas=st.integers(min_value=0, max_value=1000))
def test_planning_is_deterministic(replicas: int) -> None:
    endpoint = make_endpoint(replicas=replicas)

    assert planned(endpoint) == planned(endpoint)
    assert workload_hash(planned(endpoint)) == workload_hash(planned(endpoint))


# The watchdog.


def test_watchdog_starts_the_clock_at_the_first_unready_look() -> None:
    decision = watchdog(None, None, wants_replicas=True, now=T0, threshold=THRESHOLD)

    assert not decision.unrouted
    assert decision.unready_since == T0
    assert decision.recheck_at == T0 + THRESHOLD


def test_watchdog_unroutes_after_the_threshold_counted_from_the_stored_report() -> None:
    previous = make_status(unready_since=T0)
    workload = planned(make_endpoint())

    early = watchdog(
        previous,
        observed_for(workload),
        wants_replicas=True,
        now=T0 + THRESHOLD - timedelta(seconds=1),
        threshold=THRESHOLD,
    )
    late = watchdog(
        previous,
        observed_for(workload),
        wants_replicas=True,
        now=T0 + THRESHOLD,
        threshold=THRESHOLD,
    )

    assert not early.unrouted
    assert late.unrouted
    assert late.unready_since == T0


def test_watchdog_restores_the_route_once_a_replica_is_ready() -> None:
    previous = make_status(unready_since=T0, routed=False)
    workload = planned(make_endpoint())

    decision = watchdog(
        previous,
        observed_for(workload, ready=1),
        wants_replicas=True,
        now=T0 + 10 * THRESHOLD,
        threshold=THRESHOLD,
    )

    assert not decision.unrouted
    assert decision.unready_since is None


def test_watchdog_keeps_the_route_while_an_outgoing_version_serves() -> None:
    """A new version staging its model for longer than the threshold: the old
    version's replicas still answer, so the route stays."""
    previous = make_status(unready_since=T0)
    workload = planned(make_endpoint())
    rolling = observed_for(workload).model_copy(
        update={"primary": VersionObservation(ready=0, running=3, outgoing_ready=2)}
    )

    decision = watchdog(
        previous, rolling, wants_replicas=True, now=T0 + 10 * THRESHOLD, threshold=THRESHOLD
    )
    gone = watchdog(
        previous,
        observed_for(workload),
        wants_replicas=True,
        now=T0 + 10 * THRESHOLD,
        threshold=THRESHOLD,
    )

    assert not decision.unrouted
    assert decision.unready_since is None
    assert gone.unrouted


def test_watchdog_leaves_a_stopped_endpoint_alone() -> None:
    decision = watchdog(
        make_status(unready_since=T0),
        None,
        wants_replicas=False,
        now=T0 + 2 * THRESHOLD,
        threshold=THRESHOLD,
    )

    assert not decision.unrouted
    assert decision.unready_since is None


# The region's report.


def report(
    endpoint: Endpoint,
    workload: Workload | None,
    observed: Observed | None,
    previous: RegionStatus | None = None,
    error: str = "",
) -> RegionStatus:
    return region_status(
        endpoint, "r1", workload, observed, previous=previous, decision=None, error=error, now=T0
    )


def test_ready_when_the_current_workload_runs_with_every_replica_ready() -> None:
    endpoint = make_endpoint(replicas=2).model_copy(update={"generation": 4})
    workload = planned(endpoint)

    status = report(endpoint, workload, observed_for(workload, ready=2))

    assert status.state is RegionState.READY
    assert status.observed_generation == 4
    assert (status.replicas_ready, status.replicas_desired) == (2, 2)
    assert status.routed


def test_progressing_while_an_older_workload_is_in_place() -> None:
    old = make_endpoint(replicas=2)
    new = make_endpoint(replicas=3).model_copy(update={"generation": 2})
    previous = report(old, planned(old), observed_for(planned(old), ready=2))

    status = report(new, planned(new), observed_for(planned(old), ready=2), previous)

    assert status.state is RegionState.PROGRESSING
    assert status.observed_generation == 1


def test_degraded_when_a_ready_region_loses_a_replica() -> None:
    endpoint = make_endpoint(replicas=2)
    workload = planned(endpoint)
    ready = report(endpoint, workload, observed_for(workload, ready=2))

    status = report(endpoint, workload, observed_for(workload, ready=1), ready)

    assert status.state is RegionState.DEGRADED
    assert status.last_transition == T0


def test_stopped_once_no_replica_runs() -> None:
    endpoint = with_state(make_endpoint(), DesiredState.STOPPED)
    workload = planned(endpoint)

    status = report(endpoint, workload, observed_for(workload))

    assert status.state is RegionState.STOPPED
    assert not status.routed


def test_not_stopped_while_a_canary_replica_still_runs() -> None:
    endpoint = with_state(make_endpoint(canary={"image": "ghcr.io/x/y:2"}), DesiredState.STOPPED)
    workload = planned(endpoint)
    draining = Observed(workload_hash=workload_hash(workload), canary=VersionObservation(running=1))

    assert report(endpoint, workload, draining).state is RegionState.PROGRESSING
    assert report(endpoint, workload, observed_for(workload)).state is RegionState.STOPPED


def test_deleted_once_the_runtime_holds_nothing() -> None:
    endpoint = with_state(make_endpoint(), DesiredState.DELETED)
    workload = planned(make_endpoint())

    removing = report(endpoint, None, observed_for(workload, ready=1))
    removed = report(endpoint, None, None, removing)

    assert removing.state is RegionState.PROGRESSING
    assert removed.state is RegionState.DELETED


def test_an_apply_error_is_failed_with_the_message() -> None:
    endpoint = make_endpoint()

    status = report(endpoint, planned(endpoint), None, error="local regions run a command")

    assert status.state is RegionState.FAILED
    assert status.message == "local regions run a command"


def test_unrouted_by_the_watchdog_says_so() -> None:
    endpoint = make_endpoint()
    workload = planned(endpoint, unrouted=True)
    decision = watchdog(
        make_status(unready_since=T0),
        None,
        wants_replicas=True,
        now=T0 + THRESHOLD,
        threshold=THRESHOLD,
    )

    status = region_status(
        endpoint, "r1", workload, observed_for(workload), previous=None, decision=decision, now=T0
    )

    assert "traffic withdrawn" in status.message
    assert status.unready_since == T0
    assert not status.routed


def test_status_is_written_only_on_change_or_heartbeat() -> None:
    endpoint = make_endpoint()
    workload = planned(endpoint)
    first = report(endpoint, workload, observed_for(workload, ready=2))
    same_later = first.model_copy(update={"heartbeat": T0 + timedelta(seconds=10)})
    changed = first.model_copy(update={"replicas_ready": 1})
    beat = timedelta(seconds=300)

    assert status_changed(None, first, now=T0, heartbeat=beat)
    assert not status_changed(first, same_later, now=T0 + timedelta(seconds=10), heartbeat=beat)
    assert status_changed(first, changed, now=T0 + timedelta(seconds=10), heartbeat=beat)
    assert status_changed(first, same_later, now=T0 + beat, heartbeat=beat)


# Fleet-wide.


def test_running_only_when_every_target_region_is_ready_at_the_generation() -> None:
    endpoint = make_endpoint(regions=["r1", "r2"]).model_copy(update={"generation": 3})
    r1 = make_status("llm", "r1", state=RegionState.READY, observed_generation=3)
    r2_old = make_status("llm", "r2", state=RegionState.READY, observed_generation=2)
    r2 = make_status("llm", "r2", state=RegionState.READY, observed_generation=3)

    assert fleet_state(endpoint, [r1]) is DesiredState.DEPLOYING
    assert fleet_state(endpoint, [r1, r2_old]) is DesiredState.DEPLOYING
    assert fleet_state(endpoint, [r1, r2]) is DesiredState.RUNNING


def test_purge_waits_for_every_region_that_held_it() -> None:
    endpoint = with_state(make_endpoint(regions=["r1"]), DesiredState.DELETED)
    r1 = make_status("llm", "r1", state=RegionState.DELETED)
    former = make_status("llm", "r2", state=RegionState.READY)

    assert not purgeable(endpoint, [])
    assert not purgeable(endpoint, [r1, former])
    assert purgeable(endpoint, [r1, former.model_copy(update={"state": RegionState.DELETED})])
    assert not purgeable(make_endpoint(), [r1])
