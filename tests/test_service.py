"""The rules of `EndpointService`, checked on a real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, cast

import pytest

from servefleet.plan import desired_workload
from servefleet.service import (
    ApplyOutcome,
    EndpointService,
    OperationRefused,
    RegionNotTargeted,
    UnregisteredRegion,
)
from servefleet.spec import (
    DesiredState,
    Endpoint,
    EndpointManifest,
    InvalidInput,
    Region,
    RegionKind,
)
from servefleet.store import EndpointNotFound, RegionNotFound, Store, open_store
from tests.conftest import EVERY_STORE
from tests.factories import T0, make_spec

pytestmark = EVERY_STORE

IMAGE_1 = "ghcr.io/example/server:1.0"
IMAGE_2 = "ghcr.io/example/server:2.0"


class Clock:
    """A clock that moves only when told, so every write's timestamp is known."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(store: Store, clock: Clock) -> EndpointService:
    return EndpointService(store, clock=clock)


async def register(store: Store, *names: str) -> None:
    for name in names:
        await store.put_region(Region(name=name, kind=RegionKind.LOCAL))


def manifest(name: str = "llm", **fields: Any) -> EndpointManifest:
    document: dict[str, Any] = {"metadata": {"name": name}, "spec": {"image": IMAGE_1}}
    document.update(fields)
    return EndpointManifest.model_validate(document)


# Deploy: where an endpoint goes.


async def test_deploy_to_an_unregistered_region_is_invalid_and_creates_nothing(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1")

    with pytest.raises(InvalidInput, match=r"^target_regions: region 'nowhere' is not regi"):
        await service.deploy("llm", make_spec(), ["r1", "nowhere"])

    with pytest.raises(EndpointNotFound):
        await store.get_endpoint("llm")


async def test_deploy_without_regions_targets_every_registered_region(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r2", "r1", "r3")

    endpoint = await service.deploy("llm", make_spec())

    assert endpoint.target_regions == ["r1", "r2", "r3"]
    assert (endpoint.generation, endpoint.revision) == (1, 1)
    assert endpoint.desired_state is DesiredState.DEPLOYING
    assert endpoint.created_at == endpoint.updated_at == T0
    assert await store.get_endpoint("llm") == endpoint


async def test_deploy_with_no_region_registered_is_refused_naming_target_regions(
    store: Store, service: EndpointService
) -> None:
    with pytest.raises(OperationRefused, match=r"^target_regions: no region is registered"):
        await service.deploy("llm", make_spec())

    assert await store.list_endpoints() == []


async def test_deploy_stopped_declares_without_running(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1")

    endpoint = await service.deploy("llm", make_spec(), stopped=True)

    assert endpoint.desired_state is DesiredState.STOPPED


# Apply: declarations.


async def test_apply_creates_then_configures_then_leaves_an_equal_declaration_alone(
    store: Store, service: EndpointService, clock: Clock
) -> None:
    await register(store, "r1", "r2")

    created = await service.apply(manifest(spec={"image": IMAGE_1, "replicas": 2}))
    assert created.outcome is ApplyOutcome.CREATED
    assert created.endpoint.target_regions == ["r1", "r2"]
    assert created.endpoint.desired_state is DesiredState.DEPLOYING
    assert (created.endpoint.generation, created.endpoint.revision) == (1, 1)

    clock.tick()
    configured = await service.apply(manifest(spec={"image": IMAGE_1, "replicas": 3}))
    assert configured.outcome is ApplyOutcome.CONFIGURED
    assert configured.endpoint.spec.replicas == 3
    assert (configured.endpoint.generation, configured.endpoint.revision) == (2, 2)
    assert configured.endpoint.updated_at == clock.now
    assert configured.endpoint.created_at == T0

    clock.tick()
    again = await service.apply(manifest(spec={"image": IMAGE_1, "replicas": 3}))
    assert again.outcome is ApplyOutcome.UNCHANGED
    assert again.endpoint == configured.endpoint
    assert await store.get_endpoint("llm") == configured.endpoint


async def test_apply_of_what_get_shows_is_unchanged(store: Store, service: EndpointService) -> None:
    await register(store, "r1", "r2")
    await service.deploy("llm", make_spec(env={"A": "1"}), ["r2"], stopped=True)
    endpoint = await service.canary("llm", image=IMAGE_2, weight=30)

    applied = await service.apply(EndpointManifest.of(endpoint, {"anything": "ignored"}))

    assert applied.outcome is ApplyOutcome.UNCHANGED
    assert await store.get_endpoint("llm") == endpoint


async def test_apply_without_state_or_regions_keeps_the_existing_ones(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1", "r2")
    await service.deploy("llm", make_spec(image=IMAGE_1), ["r2"], stopped=True)

    applied = await service.apply(manifest(spec={"image": IMAGE_2}))

    assert applied.outcome is ApplyOutcome.CONFIGURED
    assert applied.endpoint.spec.image == IMAGE_2
    assert applied.endpoint.target_regions == ["r2"]
    assert applied.endpoint.desired_state is DesiredState.STOPPED


async def test_apply_with_state_and_regions_sets_them(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1", "r2")
    await service.deploy("llm", make_spec(image=IMAGE_1), ["r2"], stopped=True)

    applied = await service.apply(manifest(regions=["r1", "r2"], state="running"))

    assert applied.endpoint.target_regions == ["r1", "r2"]
    assert applied.endpoint.desired_state.runs
    assert applied.endpoint.generation == 2


class _Watched:
    """A store that counts the reads `apply_all` makes and runs `before_update`
    (another writer) just before the first update of a record."""

    def __init__(self, store: Store, before_update: Callable[[], Awaitable[Any]] | None) -> None:
        self._store = store
        self._before_update = before_update
        self.reads = 0
        self.listings = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get_endpoint(self, name: str) -> Any:
        self.reads += 1
        return await self._store.get_endpoint(name)

    async def list_regions(self) -> Any:
        self.listings += 1
        return await self._store.list_regions()

    async def update_endpoint(self, endpoint: Any, *, expected_revision: int) -> Any:
        hook, self._before_update = self._before_update, None
        if hook is not None:
            await hook()
        return await self._store.update_endpoint(endpoint, expected_revision=expected_revision)


async def test_apply_all_reads_each_record_and_the_regions_once_for_check_and_write(
    store: Store, clock: Clock
) -> None:
    await register(store, "r1")
    watched = _Watched(store, None)
    applied = await EndpointService(cast(Store, watched), clock=clock).apply_all(
        [manifest(name) for name in ("a", "b", "c")]
    )
    assert [a.outcome for a in applied] == [ApplyOutcome.CREATED] * 3
    assert (watched.reads, watched.listings) == (3, 1)


async def test_apply_all_reads_again_a_record_another_writer_changed_after_the_check(
    store: Store, service: EndpointService, clock: Clock
) -> None:
    await register(store, "r1")
    await service.deploy("llm", make_spec(image=IMAGE_1, replicas=1))
    watched = _Watched(store, lambda: service.scale("llm", 3))
    service_of_watched = EndpointService(cast(Store, watched), clock=clock)

    (applied,) = await service_of_watched.apply_all([manifest(spec={"image": IMAGE_2})])

    assert applied.outcome is ApplyOutcome.CONFIGURED
    stored = await store.get_endpoint("llm")
    assert stored.revision == 3  # created, scaled by the other writer, then applied
    # The declaration, over the other writer's replicas.
    assert stored.spec == manifest(spec={"image": IMAGE_2}).spec
    assert watched.reads == 2  # the check's, and once more after the lost race


async def test_apply_refuses_an_unregistered_region_and_changes_nothing(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1")
    before = await service.deploy("llm", make_spec(image=IMAGE_1))

    # Named as the declaration names them: `regions`, `spec.region_images`.
    with pytest.raises(InvalidInput) as unregistered:
        await service.apply(manifest(regions=["nowhere"], spec={"image": IMAGE_2}))
    assert unregistered.value.problems == [
        "regions: region 'nowhere' is not registered (registered: r1)"
    ]
    with pytest.raises(InvalidInput) as unregistered:
        await service.apply(
            manifest(spec={"image": IMAGE_2, "region_images": {"nowhere": IMAGE_2}})
        )
    assert unregistered.value.problems == [
        "spec.region_images: region 'nowhere' is not registered (registered: r1)"
    ]

    assert await store.get_endpoint("llm") == before


SCALES_TO_ZERO: dict[str, Any] = {
    "image": IMAGE_1,
    "autoscaling": {
        "enabled": True,
        "min_replicas": 0,
        "metrics": [{"type": "concurrency", "target": 4}],
    },
}
NO_ZERO_IN_EU = (
    "spec.autoscaling.min_replicas: region 'eu' scales with the HorizontalPodAutoscaler, "
    "which cannot scale to zero; register it with --autoscaler keda, set min_replicas to 1 "
    "or more, or leave 'eu' out of the regions (got 0)"
)
KEDA = {"autoscaler": "keda", "prometheus_url": "http://prometheus.monitoring:9090"}


async def test_a_drain_survives_registrations_of_the_region_racing_it(
    service: EndpointService, store: Store
) -> None:
    """Each write is a compare-and-set on the record read: a registration that read
    the region before the drain was written starts again from the drained record."""
    await service.add_region(Region(name="eu", kind=RegionKind.KUBERNETES))

    await asyncio.gather(
        service.drain_region("eu"),
        *(
            service.add_region(Region(name="eu", kind=RegionKind.KUBERNETES, namespace=f"n{i}"))
            for i in range(8)
        ),
    )

    stored = await store.get_region("eu")
    assert stored.drained
    assert stored.namespace.startswith("n")
    with pytest.raises(RegionNotFound):
        await service.drain_region("nowhere")


async def test_scale_to_zero_is_refused_for_a_kubernetes_region_and_changes_nothing(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1")
    await store.put_region(Region(name="eu", kind=RegionKind.KUBERNETES))
    to_zero = make_spec(**SCALES_TO_ZERO)

    with pytest.raises(InvalidInput) as deployed:
        await service.deploy("llm", to_zero)  # every registered region, eu among them
    assert deployed.value.problems == [NO_ZERO_IN_EU]
    assert deployed.value.details[0].value == 0
    with pytest.raises(EndpointNotFound):
        await store.get_endpoint("llm")

    local = await service.deploy("llm", to_zero, ["r1"])  # a local region can
    with pytest.raises(InvalidInput) as moved:
        await service.apply(manifest(regions=["r1", "eu"], spec=SCALES_TO_ZERO))
    assert moved.value.problems == [NO_ZERO_IN_EU]
    assert await store.get_endpoint("llm") == local

    both = await service.deploy("both", make_spec(image=IMAGE_1), ["r1", "eu"])
    with pytest.raises(InvalidInput) as lowered:
        await service.apply_all([manifest("both", spec=SCALES_TO_ZERO)])
    assert lowered.value.problems == [NO_ZERO_IN_EU]
    assert await store.get_endpoint("both") == both


async def test_a_kubernetes_region_scaling_with_keda_takes_scale_to_zero(
    store: Store, service: EndpointService
) -> None:
    await store.put_region(Region(name="eu", kind=RegionKind.KUBERNETES, **KEDA))
    deployed = await service.deploy("llm", make_spec(**SCALES_TO_ZERO), ["eu"])
    assert deployed.spec.autoscaling.min_replicas == 0

    with pytest.raises(OperationRefused) as refused:
        await service.add_region(Region(name="eu", kind=RegionKind.KUBERNETES))
    assert str(refused.value).startswith("autoscaler: llm scale to zero in 'eu'")
    assert (await store.get_region("eu")).autoscaler == "keda"


async def test_a_region_holding_an_endpoint_at_zero_cannot_become_an_hpa_region(
    store: Store, service: EndpointService
) -> None:
    await register(store, "eu")
    await service.deploy("llm", make_spec(**SCALES_TO_ZERO))
    await service.deploy("deleted", make_spec(**SCALES_TO_ZERO))
    await service.delete("deleted")

    with pytest.raises(OperationRefused) as refused:
        await service.add_region(Region(name="eu", kind=RegionKind.KUBERNETES))

    assert str(refused.value) == (
        "autoscaler: llm scale to zero in 'eu' (autoscaling.min_replicas 0), which its "
        "HorizontalPodAutoscaler cannot: it keeps at least 1 replica; register the region "
        "with --autoscaler keda, or raise their min_replicas or move them first"
    )
    assert (await store.get_region("eu")).kind is RegionKind.LOCAL
    await service.add_region(Region(name="us", kind=RegionKind.KUBERNETES))  # holds none
    await service.add_region(Region(name="eu", kind=RegionKind.KUBERNETES, **KEDA))


async def test_concurrent_applies_of_one_new_declaration_create_it_once(
    store: Store, store_url: str
) -> None:
    await register(store, "r1")
    start = asyncio.Event()

    async def applier() -> ApplyOutcome:
        own = await open_store(store_url)
        try:
            await start.wait()
            return (await EndpointService(own).apply(manifest())).outcome
        finally:
            await own.close()

    appliers = [asyncio.create_task(applier()) for _ in range(8)]
    await asyncio.sleep(0.2)
    start.set()
    outcomes = await asyncio.gather(*appliers)

    assert sorted(outcomes) == sorted([ApplyOutcome.CREATED] + [ApplyOutcome.UNCHANGED] * 7)
    endpoint = await store.get_endpoint("llm")
    assert (endpoint.generation, endpoint.revision) == (1, 1)


# Generation: changes of intent.


async def test_generation_counts_changes_of_spec_targets_and_state_only(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1", "r2")
    await service.deploy("llm", make_spec(replicas=2), ["r1"])

    async def counters() -> tuple[int, int]:
        endpoint = await store.get_endpoint("llm")
        return endpoint.generation, endpoint.revision

    await service.scale("llm", 3)  # spec
    assert await counters() == (2, 2)
    await service.scale("llm", 3)  # the same spec again
    assert await counters() == (2, 2)
    await service.apply(manifest(regions=["r1", "r2"], spec={"image": IMAGE_1, "replicas": 3}))
    assert await counters() == (3, 3)  # targets

    stopped = await service.stop("llm")
    assert stopped.desired_state is DesiredState.STOPPED
    assert await counters() == (4, 4)
    assert await service.stop("llm") == stopped
    assert await counters() == (4, 4)

    started = await service.start("llm")
    assert started.desired_state is DesiredState.DEPLOYING
    assert await counters() == (5, 5)
    assert await service.start("llm") == started
    assert await counters() == (5, 5)


async def test_deploying_and_running_are_the_same_intent(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1")
    created = await service.deploy("llm", make_spec())
    running = created.model_copy(update={"desired_state": DesiredState.RUNNING})
    running = await store.update_endpoint(running, expected_revision=1)  # as a reconciler would

    assert await service.start("llm") == running
    assert (await service.apply(manifest(spec=created.spec.model_dump()))).outcome is (
        ApplyOutcome.UNCHANGED
    )
    assert (await store.get_endpoint("llm")).generation == 1


# Scale, images, canaries.


async def test_scale_is_refused_while_autoscaling_is_enabled(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1")
    autoscaled = make_spec(autoscaling={"enabled": True, "min_replicas": 2, "max_replicas": 5})
    before = await service.deploy("llm", autoscaled)

    with pytest.raises(OperationRefused, match=r"^replicas: 'llm' is autoscaled between 2 and 5"):
        await service.scale("llm", 4)

    assert await store.get_endpoint("llm") == before


async def test_scale_checks_the_count(store: Store, service: EndpointService) -> None:
    await register(store, "r1")
    before = await service.deploy("llm", make_spec())

    with pytest.raises(InvalidInput, match=r"^spec\.replicas: "):
        await service.scale("llm", -1)

    assert await store.get_endpoint("llm") == before


async def test_update_image_everywhere_and_in_one_region(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1", "r2", "r3")
    await service.deploy("llm", make_spec(image=IMAGE_1), ["r1", "r2"])

    everywhere = await service.update_image("llm", IMAGE_2)
    assert everywhere.spec.image == IMAGE_2
    assert everywhere.generation == 2

    override = "registry.eu.example.com/server:2.0"
    regional = await service.update_image("llm", override, region="r2")
    assert regional.spec.region_images == {"r2": override}
    assert regional.spec.image == IMAGE_2
    assert regional.generation == 3

    # A registered region the endpoint does not target, and one not registered at all.
    with pytest.raises(RegionNotTargeted) as untargeted:
        await service.update_image("llm", override, region="r3")
    assert str(untargeted.value) == "region: region 'r3' is not a target of 'llm' (targets: r1, r2)"
    with pytest.raises(UnregisteredRegion) as unregistered:
        await service.update_image("llm", override, region="nope")
    assert unregistered.value.problems == [
        "region: region 'nope' is not registered (registered: r1, r2, r3)"
    ]
    with pytest.raises(InvalidInput, match=r"^spec\.image: "):
        await service.update_image("llm", "Not An Image!")

    assert await store.get_endpoint("llm") == regional


async def test_adding_a_canary_needs_its_image_command_or_env(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1")
    before = await service.deploy("llm", make_spec())

    with pytest.raises(OperationRefused, match=r"^canary\.image: 'llm' has no canary yet"):
        await service.canary("llm", weight=20, replicas=2)
    assert await store.get_endpoint("llm") == before

    with_env = await service.canary("llm", env={"MODE": "new"})
    assert with_env.spec.canary is not None
    assert with_env.spec.canary.env == {"MODE": "new"}
    assert with_env.spec.canary.image is None

    await service.rollback("llm")
    with_image = await service.canary("llm", image=IMAGE_2)
    assert with_image.spec.canary is not None
    assert with_image.spec.canary.image == IMAGE_2


async def test_changing_a_canary_keeps_its_other_fields(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1")
    await service.deploy("llm", make_spec())
    await service.canary("llm", image=IMAGE_2, weight=20, replicas=3, env={"MODE": "new"})

    changed = await service.canary("llm", weight=50)

    assert changed.spec.canary is not None
    assert changed.spec.canary.model_dump() == {
        "image": IMAGE_2,
        "command": None,
        "args": None,
        "env": {"MODE": "new"},
        "weight": 50,
        "replicas": 3,
    }
    with pytest.raises(InvalidInput, match=r"^spec\.canary\.weight: "):
        await service.canary("llm", weight=150)
    assert await store.get_endpoint("llm") == changed


async def test_a_canary_s_env_is_laid_over_the_primary_s_key_by_key(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1")
    await service.deploy("llm", make_spec(env={"A": "primary", "B": "primary"}))
    await service.canary("llm", image=IMAGE_2, env={"B": "canary-1", "C": "canary-1"})

    changed = await service.canary("llm", env={"C": "canary-2", "D": "canary-2"})

    assert changed.spec.env == {"A": "primary", "B": "primary"}
    assert changed.spec.canary is not None
    assert changed.spec.canary.env == {"B": "canary-1", "C": "canary-2", "D": "canary-2"}
    workload = desired_workload(changed, "r1")
    assert workload is not None
    assert workload.canary is not None
    assert workload.canary.env == {
        "A": "primary",
        "B": "canary-1",
        "C": "canary-2",
        "D": "canary-2",
    }


async def test_promote_makes_the_canary_primary_and_removes_it(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1")
    await service.deploy("llm", make_spec(image=IMAGE_1, env={"A": "1", "B": "1"}))
    await service.canary("llm", image=IMAGE_2, env={"B": "2"})

    promoted = await service.promote("llm")

    assert promoted.spec.image == IMAGE_2
    assert promoted.spec.env == {"A": "1", "B": "2"}
    assert promoted.spec.canary is None
    assert await store.get_endpoint("llm") == promoted


async def test_rollback_removes_the_canary_and_keeps_the_primary(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1")
    await service.deploy("llm", make_spec(image=IMAGE_1))
    await service.canary("llm", image=IMAGE_2)

    rolled_back = await service.rollback("llm")

    assert rolled_back.spec.image == IMAGE_1
    assert rolled_back.spec.canary is None


@pytest.mark.parametrize("verb", ["promote", "rollback"])
async def test_promote_and_rollback_without_a_canary_are_refused(
    store: Store, service: EndpointService, verb: str
) -> None:
    await register(store, "r1")
    before = await service.deploy("llm", make_spec())

    with pytest.raises(OperationRefused, match=r"^canary: 'llm' has no canary to "):
        await getattr(service, verb)("llm")

    assert await store.get_endpoint("llm") == before


# Delete.


async def test_delete_marks_deleted_is_idempotent_and_then_everything_else_is_refused(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1", "r2")
    await service.deploy("llm", make_spec(), ["r1", "r2"])
    await service.canary("llm", image=IMAGE_2)

    deleted = await service.delete("llm")
    assert deleted.desired_state is DesiredState.DELETED
    assert deleted.generation == 3
    assert await service.delete("llm") == deleted

    operations: dict[str, Callable[[], Awaitable[object]]] = {
        "scale": lambda: service.scale("llm", 5),
        "update_image": lambda: service.update_image("llm", IMAGE_1),
        "update_image region": lambda: service.update_image("llm", IMAGE_1, region="r1"),
        "stop": lambda: service.stop("llm"),
        "start": lambda: service.start("llm"),
        "canary": lambda: service.canary("llm", weight=50),
        "promote": lambda: service.promote("llm"),
        "rollback": lambda: service.rollback("llm"),
        "apply": lambda: service.apply(manifest(spec={"image": IMAGE_2})),
        "apply unchanged": lambda: service.apply(EndpointManifest.of(deleted)),
    }
    for verb, operation in operations.items():
        with pytest.raises(OperationRefused, match=r"'llm' is being deleted"):
            await operation()
        assert await store.get_endpoint("llm") == deleted, verb


async def test_delete_of_a_missing_endpoint_names_it(service: EndpointService) -> None:
    with pytest.raises(EndpointNotFound, match="'ghost'"):
        await service.delete("ghost")


# Regions.


async def test_a_region_is_removed_only_once_no_endpoint_targets_it(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1", "r2")
    await service.deploy("llm", make_spec(), ["r1", "r2"])
    await service.deploy("other", make_spec(), ["r2"])

    with pytest.raises(OperationRefused, match=r"^region: 'r1' is still a target of llm"):
        await service.remove_region("r1")
    with pytest.raises(OperationRefused, match=r"^region: 'r2' is still a target of llm, other"):
        await service.remove_region("r2")

    # Moved away: allowed.
    await service.apply(manifest(regions=["r2"]))
    await service.remove_region("r1")
    assert [region.name for region in await service.list_regions()] == ["r2"]

    # Marked deleted, the endpoint is still being removed from its regions.
    await service.delete("other")
    await service.delete("llm")
    with pytest.raises(OperationRefused, match=r"still a target"):
        await service.remove_region("r2")
    for name in ("llm", "other"):
        deleted = await store.get_endpoint(name)
        await store.purge_endpoint(name, expected_revision=deleted.revision)
    await service.remove_region("r2")

    assert await service.list_regions() == []
    with pytest.raises(RegionNotFound, match="'r2'"):
        await service.remove_region("r2")


# Concurrency.


async def test_concurrent_writers_of_one_endpoint_lose_nothing(
    store: Store, store_url: str
) -> None:
    """Twenty writers, each on its own store, each changing a different part of the
    same endpoint at the same moment: every change is in the final record."""
    regions = [f"r{index:02}" for index in range(16)]
    await register(store, *regions)
    created = await EndpointService(store).deploy("llm", make_spec(image=IMAGE_1, replicas=1))
    assert created.target_regions == regions

    changes: list[Callable[[EndpointService], Awaitable[Endpoint]]] = [
        lambda service, region=region: service.update_image(
            "llm", f"ghcr.io/example/{region}:1.0", region=region
        )
        for region in regions
    ]
    changes += [
        lambda service: service.scale("llm", 7),
        lambda service: service.canary("llm", image=IMAGE_2, weight=30),
        lambda service: service.update_image("llm", "ghcr.io/example/server:9.0"),
        lambda service: service.stop("llm"),
    ]
    start = asyncio.Event()

    async def writer(change: Callable[[EndpointService], Awaitable[Endpoint]]) -> None:
        own = await open_store(store_url)
        try:
            await start.wait()
            await change(EndpointService(own))
        finally:
            await own.close()

    writers = [asyncio.create_task(writer(change)) for change in changes]
    await asyncio.sleep(0.3)  # every writer has its store open and waits
    start.set()
    await asyncio.gather(*writers)

    final = await store.get_endpoint("llm")
    assert final.spec.region_images == {
        region: f"ghcr.io/example/{region}:1.0" for region in regions
    }
    assert final.spec.replicas == 7
    assert final.spec.canary is not None
    assert (final.spec.canary.image, final.spec.canary.weight) == (IMAGE_2, 30)
    assert final.spec.image == "ghcr.io/example/server:9.0"
    assert final.desired_state is DesiredState.STOPPED
    assert (final.generation, final.revision) == (1 + len(changes), 1 + len(changes))


async def test_deploying_a_taken_name_is_refused_with_a_hint(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1")
    first = await service.deploy("llm", make_spec(replicas=1), ["r1"])

    with pytest.raises(OperationRefused, match=r"^name: endpoint 'llm' already exists; change it"):
        await service.deploy("llm", make_spec(replicas=5), ["r1"])

    assert await store.get_endpoint("llm") == first


async def test_a_deleted_endpoint_shows_as_deleted_and_deletion_is_not_applied(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1")
    await service.deploy("llm", make_spec(), ["r1"])
    live = await service.deploy("other", make_spec(), ["r1"])
    deleted = await service.delete("llm")

    assert EndpointManifest.of(deleted).state == "deleted"
    for name in ("other", "new"):
        with pytest.raises(InvalidInput, match=r"^state: 'deleted' is reported by get"):
            await service.apply(manifest(name, state="deleted"))
    assert await store.get_endpoint("other") == live
    with pytest.raises(EndpointNotFound):
        await store.get_endpoint("new")


async def test_a_region_named_by_an_image_override_cannot_be_removed(
    store: Store, service: EndpointService
) -> None:
    await register(store, "r1", "r2")
    await service.apply(
        manifest(regions=["r1"], spec={"image": IMAGE_1, "region_images": {"r2": IMAGE_2}})
    )

    with pytest.raises(OperationRefused, match=r"'r2' is still a target of llm"):
        await service.remove_region("r2")

    assert [region.name for region in await store.list_regions()] == ["r1", "r2"]
