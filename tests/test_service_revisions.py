"""`expected_revision` (the API's If-Match): a change is made only to the record at
that revision, and a writer that gets there first is reported, not retried over."""

from __future__ import annotations

from typing import Any

import pytest

from servefleet.service import EndpointService
from servefleet.spec import EndpointManifest, Region, RegionKind
from servefleet.store import RevisionConflict, Store
from tests.factories import make_spec


class RacingStore:
    """A store where another writer changes the record between each read and the
    first write that follows it (the window a compare-and-set guards)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.raced = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def update_endpoint(self, endpoint: Any, *, expected_revision: int) -> Any:
        if not self.raced:
            self.raced = True
            current = await self.inner.get_endpoint(endpoint.name)
            other = current.model_copy(update={"spec": make_spec(replicas=9)})
            await self.inner.update_endpoint(other, expected_revision=current.revision)
        return await self.inner.update_endpoint(endpoint, expected_revision=expected_revision)


@pytest.fixture
async def service(store: Store) -> EndpointService:
    await store.put_region(Region(name="r1", kind=RegionKind.LOCAL))
    await EndpointService(store).deploy("llm", make_spec(replicas=1))
    return EndpointService(store)


async def test_a_change_at_the_current_revision_is_made(service: EndpointService) -> None:
    scaled = await service.scale("llm", 3, expected_revision=1)

    assert (scaled.revision, scaled.spec.replicas) == (2, 3)


async def test_a_stale_revision_is_refused_and_nothing_written(
    service: EndpointService, store: Store
) -> None:
    await service.scale("llm", 3)

    for change in (
        service.scale("llm", 5, expected_revision=1),
        service.stop("llm", expected_revision=1),
        service.delete("llm", expected_revision=1),
        service.apply(
            EndpointManifest.model_validate(
                {"metadata": {"name": "llm"}, "spec": make_spec(replicas=7).model_dump()}
            ),
            expected_revision=1,
        ),
    ):
        with pytest.raises(RevisionConflict) as refused:
            await change
        assert (refused.value.expected, refused.value.found) == (1, 2)

    stored = await store.get_endpoint("llm")
    assert (stored.revision, stored.spec.replicas, stored.desired_state.value) == (
        2,
        3,
        "deploying",
    )


async def test_a_writer_in_between_is_reported_not_retried_over(store: Store) -> None:
    await store.put_region(Region(name="r1", kind=RegionKind.LOCAL))
    await EndpointService(store).deploy("llm", make_spec(replicas=1))
    racing = RacingStore(store)

    with pytest.raises(RevisionConflict) as refused:
        await EndpointService(racing).scale("llm", 4, expected_revision=1)  # type: ignore[arg-type]

    assert (refused.value.expected, refused.value.found) == (1, 2)
    assert (await store.get_endpoint("llm")).spec.replicas == 9


async def test_without_a_revision_a_writer_in_between_is_built_upon(store: Store) -> None:
    await store.put_region(Region(name="r1", kind=RegionKind.LOCAL))
    await EndpointService(store).deploy("llm", make_spec(replicas=1, port=8000))
    racing = RacingStore(store)

    updated = await EndpointService(racing).update_image("llm", "ghcr.io/o/s:2")  # type: ignore[arg-type]

    assert (updated.revision, updated.spec.replicas, updated.spec.image) == (3, 9, "ghcr.io/o/s:2")
