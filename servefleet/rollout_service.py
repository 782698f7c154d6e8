"""The rollout verbs (`servefleet rollout start|pause|resume|abort`) and the step a
driver takes with the regions' signals, as changes of the endpoint record.

Each is one read-modify-CAS change through `EndpointService.change`, so it meets
every rule of the record and retries on another writer's conflict; the decisions
themselves are `servefleet.rollout`'s, on the signals `servefleet.rollout_signals`
reads from the regions' reports. A step that moves the weights or ends the
rollout is a new generation, which reconcilers apply through the change feed; a
pause, or a new reason alone, is written without one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from pydantic import ValidationError

from servefleet.rollout import Action, Decision, abort, decide, pause, resume, start
from servefleet.rollout_signals import signals_from_reports, step_baseline
from servefleet.service import EndpointService, OperationRefused, revise_spec, utc_now
from servefleet.spec import Endpoint, RegionStatus, RolloutPhase, RolloutState, invalid_input

__all__ = ["RolloutService"]


class RolloutService:
    def __init__(self, endpoints: EndpointService, clock: Callable[[], datetime] = utc_now) -> None:
        self._endpoints = endpoints
        self._clock = clock

    async def start(
        self, name: str, image: str, *, expected_revision: int | None = None
    ) -> Endpoint:
        """Begin rolling `image` out: the canary in the first wave's regions only."""

        def begin(current: Endpoint) -> Endpoint:
            if current.rollout is not None and current.rollout.phase.active:
                raise OperationRefused(
                    f"rollout: {name!r} is already rolling out {current.rollout.image}; "
                    f"abort it first (servefleet rollout abort {name})"
                )
            if current.spec.canary is not None:
                raise OperationRefused(
                    f"canary: {name!r} has a canary; promote or roll it back before a rollout"
                )
            if not current.desired_state.runs:
                # Its new version would never be ready: rolled back at the deadline.
                raise OperationRefused(
                    f"state: {name!r} is {current.desired_state.value}; start it before a rollout"
                )
            if image == current.spec.image and not current.spec.region_images:
                raise OperationRefused(f"image: {image!r} is what {name!r} runs already")
            policy = current.spec.rollout_policy
            try:
                state = start(policy, current.target_regions, image, self._clock())
            except ValidationError as error:
                raise invalid_input(error) from None
            return current.model_copy(update={"rollout": state})

        return await self._endpoints.change(name, begin, expected_revision=expected_revision)

    async def pause(self, name: str, *, expected_revision: int | None = None) -> Endpoint:
        """Hold the weights where they are (guard rails still roll back)."""

        def hold(current: Endpoint) -> Endpoint:
            state = _active(current, "pause")
            if state.paused:
                raise OperationRefused(f"rollout: {name!r} is paused already")
            return current.model_copy(update={"rollout": pause(state, self._clock())})

        return await self._endpoints.change(name, hold, expected_revision=expected_revision)

    async def resume(self, name: str, *, expected_revision: int | None = None) -> Endpoint:
        """Go on after a pause (the step holds again from now), or start the next wave."""

        def go_on(current: Endpoint) -> Endpoint:
            state = _active(current, "resume")
            if not state.paused and state.phase is not RolloutPhase.WAITING:
                raise OperationRefused(
                    f"rollout: {name!r} is neither paused nor waiting between waves"
                )
            resumed = resume(
                current.spec.rollout_policy, current.target_regions, state, self._clock()
            )
            return current.model_copy(update={"rollout": resumed})

        return await self._endpoints.change(name, go_on, expected_revision=expected_revision)

    async def abort(self, name: str, *, expected_revision: int | None = None) -> Endpoint:
        """Roll back now: the old version everywhere."""

        def back(current: Endpoint) -> Endpoint:
            state = _active(current, "abort")
            return current.model_copy(update={"rollout": abort(state, self._clock())})

        return await self._endpoints.change(name, back, expected_revision=expected_revision)

    async def advance(
        self, name: str, reports: Sequence[RegionStatus]
    ) -> tuple[Endpoint, Decision]:
        """Decide the rollout's next step from the regions' reports and store it; on
        promotion the new image becomes the primary's in every region. A step without
        the start of its window yet keeps the regions' traffic as it stands as that
        start (`rollout_signals`); a finished rollout keeps none."""
        decided: list[Decision] = []

        def step(current: Endpoint) -> Endpoint:
            state = current.rollout
            if state is None:
                raise OperationRefused(f"rollout: {name!r} has no rollout")
            decision = decide(
                current.spec.rollout_policy,
                current.target_regions,
                state,
                signals_from_reports(current, reports),
                self._clock(),
            )
            decided[:] = [decision]
            after = decision.state
            if not after.phase.active:
                after = after.model_copy(update={"baseline": None})
            elif after.baseline is None or after.baseline.step_started_at != after.step_started_at:
                baseline = step_baseline(after, reports)
                if baseline is not None:
                    after = after.model_copy(update={"baseline": baseline})
            updated = current.model_copy(update={"rollout": after})
            if decision.action is Action.PROMOTE:
                spec = revise_spec(current.spec, image=state.image, region_images={})
                updated = updated.model_copy(update={"spec": spec})
            return updated

        endpoint = await self._endpoints.change(name, step)
        return endpoint, decided[-1]


def _active(endpoint: Endpoint, verb: str) -> RolloutState:
    state = endpoint.rollout
    if state is None or not state.phase.active:
        raise OperationRefused(f"rollout: {endpoint.name!r} has no rollout under way to {verb}")
    return state
