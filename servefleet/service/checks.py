"""The rules that need the registered regions or the whole record, checked before
any write.
"""

from __future__ import annotations

from collections.abc import Iterable

from servefleet.service.refusals import OperationRefused, UnregisteredRegion
from servefleet.spec import DesiredState, Endpoint, EndpointSpec, InvalidInput, Problem, Region

__all__ = [
    "check_region_images",
    "check_rollout",
    "check_scale_to_zero",
    "refuse_if_deleted",
    "region_names",
    "registered_targets",
]


def region_names(regions: list[Region]) -> list[str]:
    return [region.name for region in regions]


def registered_targets(
    registered: list[str], regions: Iterable[str] | None, field: str
) -> list[str]:
    """`regions`, each one registered (`field` is what the caller calls them), or
    every registered region when none are named."""
    if regions is None:
        if not registered:
            raise OperationRefused(
                "target_regions: no region is registered; add one with "
                "`servefleet regions add NAME --kind local`"
            )
        return registered
    targets = list(regions)
    for region in targets:
        if region not in registered:
            raise UnregisteredRegion(field, region, registered)
    return targets


def check_region_images(registered: list[str], spec: EndpointSpec) -> None:
    for region in spec.region_images:
        if region not in registered:
            raise UnregisteredRegion("spec.region_images", region, registered)


def check_scale_to_zero(known: list[Region], spec: EndpointSpec, targets: list[str]) -> None:
    """Refuse `min_replicas: 0` for a kubernetes region that scales with a
    HorizontalPodAutoscaler rather than have it quietly keep a replica: the API
    server refuses `minReplicas: 0` unless an alpha feature gate is on. A region
    registered with `--autoscaler keda` scales to zero through its ScaledObject.
    Checked whatever `enabled` says, like the spec's own autoscaling rules, so
    switching autoscaling on later meets no surprise."""
    if spec.autoscaling.min_replicas > 0:
        return
    cannot = {region.name for region in known if not region.scales_to_zero}
    for region in targets:
        if region in cannot:
            raise InvalidInput(
                [
                    Problem(
                        "spec.autoscaling.min_replicas",
                        f"region {region!r} scales with the HorizontalPodAutoscaler, which "
                        "cannot scale to zero; register it with --autoscaler keda, set "
                        f"min_replicas to 1 or more, or leave {region!r} out of the "
                        "regions (got 0)",
                        0,
                    )
                ]
            )


def check_rollout(endpoint: Endpoint) -> None:
    """The rollout policy's waves against the targets; and no manual canary beside a
    rollout under way, whose new version is the canary wherever it has reached."""
    if endpoint.spec.rollout is not None:
        problems = endpoint.spec.rollout.wave_problems(endpoint.target_regions)
        if problems:
            raise InvalidInput(problems)
    rollout = endpoint.rollout
    if rollout is not None and rollout.phase.active and endpoint.spec.canary is not None:
        raise OperationRefused(
            f"canary: {endpoint.name!r} is rolling out {rollout.image}, whose canary it is; "
            f"abort the rollout first (servefleet rollout abort {endpoint.name})"
        )


def refuse_if_deleted(endpoint: Endpoint) -> None:
    if endpoint.desired_state is DesiredState.DELETED:
        raise OperationRefused(f"endpoint {endpoint.name!r} is being deleted")
