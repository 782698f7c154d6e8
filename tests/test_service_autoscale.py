"""`EndpointService.autoscale`: autoscaling switched on and off, its settings laid
over the declared ones, every refusal naming its field and leaving the record as
it was."""

from __future__ import annotations

from typing import Any

import pytest

from servefleet.service import EndpointService, OperationRefused
from servefleet.spec import AutoscalingMetric, InvalidInput, Region, RegionKind
from servefleet.store import EndpointNotFound, Store
from tests.factories import make_spec

CONCURRENCY_4 = [AutoscalingMetric(type="concurrency", target=4)]


@pytest.fixture
async def service(store: Store) -> EndpointService:
    await store.put_region(Region(name="r1", kind=RegionKind.LOCAL))
    return EndpointService(store)


async def test_autoscale_lays_its_settings_over_the_declared_ones(
    service: EndpointService,
) -> None:
    await service.deploy("llm", make_spec(replicas=2, autoscaling={"scale_up_window": 30}))

    on = await service.autoscale(
        "llm",
        settings={"min_replicas": 0, "max_replicas": 8, "metrics": CONCURRENCY_4},
    )

    autoscaling = on.spec.autoscaling
    assert autoscaling.enabled
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (0, 8)
    assert autoscaling.metrics == CONCURRENCY_4
    assert autoscaling.scale_up_window == 30  # declared before, kept
    assert on.spec.replicas == 2
    assert on.generation == 2

    changed = await service.autoscale("llm", settings={"scale_to_zero_after": 120})
    assert changed.spec.autoscaling == autoscaling.model_copy(update={"scale_to_zero_after": 120})


async def test_autoscale_off_runs_the_count_given_and_keeps_the_settings(
    service: EndpointService,
) -> None:
    await service.deploy("llm", make_spec(replicas=2))
    on = await service.autoscale("llm", settings={"min_replicas": 1, "max_replicas": 6})

    off = await service.autoscale("llm", enabled=False, replicas=3)

    assert not off.spec.autoscaling.enabled
    assert off.spec.replicas == 3
    assert off.spec.autoscaling == on.spec.autoscaling.model_copy(update={"enabled": False})
    await service.scale("llm", 4)  # no longer autoscaled
    kept = await service.autoscale("llm", enabled=False)
    assert kept.spec.replicas == 4


@pytest.mark.parametrize(
    ("call", "problems"),
    [
        pytest.param(
            {"settings": {"min_replicas": 0}},
            [
                "spec.autoscaling.min_replicas: 0 needs a concurrency or rps metric: cpu and "
                "memory are measured on running replicas, so nothing would start one again "
                "(got metrics [])"
            ],
            id="zero without a request metric",
        ),
        pytest.param(
            {"settings": {"max_replicas": 1, "min_replicas": 2}},
            ["spec.autoscaling.min_replicas: 2 must not exceed max_replicas (1)"],
            id="min above max",
        ),
        pytest.param(
            {"settings": {"scale_down_window": 0}},
            ["spec.autoscaling.scale_down_window: must be greater than 0 (got 0)"],
            id="window of 0",
        ),
        pytest.param(
            {"replicas": 3},
            [
                "replicas: only with turning autoscaling off: while it is on, the count is "
                "the autoscaler's, between min_replicas and max_replicas"
            ],
            id="a count while on",
        ),
        pytest.param(
            {"enabled": False, "settings": {"max_replicas": 4, "min_replicas": 2}},
            [
                "max_replicas: sets autoscaling; it cannot go with turning it off",
                "min_replicas: sets autoscaling; it cannot go with turning it off",
            ],
            id="settings while off",
        ),
        pytest.param(
            {"enabled": False, "replicas": -1},
            ["spec.replicas: must be greater than or equal to 0 (got -1)"],
            id="a negative count",
        ),
    ],
)
async def test_autoscale_refuses_naming_the_field(
    store: Store, service: EndpointService, call: dict[str, Any], problems: list[str]
) -> None:
    before = await service.deploy("llm", make_spec())

    with pytest.raises(InvalidInput) as refused:
        await service.autoscale("llm", **call)

    assert [str(problem) for problem in refused.value.details] == problems
    assert await store.get_endpoint("llm") == before


async def test_autoscale_to_zero_is_refused_for_a_kubernetes_target(
    store: Store, service: EndpointService
) -> None:
    await store.put_region(Region(name="eu", kind=RegionKind.KUBERNETES))
    before = await service.deploy("llm", make_spec(), ["r1", "eu"])

    with pytest.raises(InvalidInput, match=r"^spec\.autoscaling\.min_replicas: region 'eu'"):
        await service.autoscale("llm", settings={"min_replicas": 0, "metrics": CONCURRENCY_4})

    assert await store.get_endpoint("llm") == before


async def test_scale_while_autoscaled_says_how_to_change_the_bounds(
    service: EndpointService,
) -> None:
    await service.deploy("llm", make_spec())
    await service.autoscale("llm", settings={"min_replicas": 1, "max_replicas": 4})

    with pytest.raises(OperationRefused) as refused:
        await service.scale("llm", 3)

    assert str(refused.value) == (
        "replicas: 'llm' is autoscaled between 1 and 4, so its count is the autoscaler's; "
        "change the bounds (servefleet autoscale llm --min N --max M) or turn autoscaling "
        "off with a count (servefleet autoscale llm --off --replicas 3)"
    )


async def test_autoscale_of_an_unknown_endpoint_is_refused(service: EndpointService) -> None:
    with pytest.raises(EndpointNotFound):
        await service.autoscale("nothing", settings={"max_replicas": 3})
