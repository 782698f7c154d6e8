"""`GET /v1/watch` over real HTTP: every endpoint first, then changes as they are
made, statuses as regions report them, resumption with `Last-Event-ID`, and a
compacted position answered with an event that says to list again."""

from __future__ import annotations

import aiohttp
import pytest

from servefleet.service import EndpointService
from servefleet.spec import RegionState, RegionStatus, Role
from servefleet.store.sqlite import SqliteStore
from servefleet.tokens import TokenService
from tests.api.conftest import API_LOOP, Api, Event, EventStream, running_api, unique
from tests.factories import make_spec

pytestmark = API_LOOP


def about(name: str, event: str = "endpoint") -> object:
    def matches(seen: Event) -> bool:
        if seen.event != event:
            return False
        if event == "endpoint":
            return bool(seen.data["metadata"]["name"] == name)
        if event == "status":
            return bool(seen.data["endpoint"] == name)
        return bool(seen.data["name"] == name)

    return matches


async def test_a_watch_starts_with_every_endpoint_then_follows_changes(api: Api) -> None:
    existing = unique("watched")
    await api.endpoint(existing)
    position = await api.store.feed_position()

    async with api.watch() as stream:
        first = await stream.until(about(existing))
        assert {event.id for event in first} == {str(position)}

        await api.call("POST", f"/v1/endpoints/{existing}/scale", {"replicas": 7})
        (*_, scaled) = await stream.until(about(existing))
        assert scaled.data["spec"]["replicas"] == 7
        assert scaled.data["metadata"]["revision"] == 2
        assert int(scaled.id or 0) > position

        await api.store.put_region_status(
            RegionStatus(endpoint=existing, region="r1", state=RegionState.READY)
        )
        (*_, status) = await stream.until(about(existing, "status"))
        assert (status.data["region"], status.data["state"]) == ("r1", "ready")


async def test_a_resumed_watch_gets_exactly_what_it_missed(api: Api) -> None:
    name = unique("resumed")
    await api.endpoint(name)
    async with api.watch() as stream:
        (*_, seen) = await stream.until(about(name))
    last_id = seen.id
    assert last_id is not None

    await api.call("POST", f"/v1/endpoints/{name}/scale", {"replicas": 3})
    await api.call("POST", f"/v1/endpoints/{name}/stop")

    async with api.watch(last_event_id=last_id) as stream:
        missed = [
            event
            for event in await stream.until(lambda event: event.id == str(int(last_id) + 2))
            if event.event != "status"
        ]
        # Each event carries the record as it is when sent: level, not history.
        assert [(event.event, event.id) for event in missed] == [
            ("endpoint", str(int(last_id) + 1)),
            ("endpoint", str(int(last_id) + 2)),
        ]
        assert {(event.data["state"], event.data["spec"]["replicas"]) for event in missed} == {
            ("stopped", 3)
        }

        await api.call("DELETE", f"/v1/endpoints/{name}")
        deleted = await api.store.get_endpoint(name)
        await api.store.purge_endpoint(name, expected_revision=deleted.revision)
        (*_, purged) = await stream.until(about(name, "purged"))
        assert purged.id == str(int(last_id) + 4)


async def test_a_bad_last_event_id_is_refused_before_the_stream(api: Api) -> None:
    newest = await api.store.feed_position()
    for given in ("yesterday", str(newest + 1)):
        answer = await api.call(
            "GET", "/v1/watch", role=Role.VIEWER, headers={"Last-Event-ID": given}
        )
        assert answer.status == 422
        assert answer.problem == {
            "field": "Last-Event-ID",
            "message": f"must be the id of an earlier event, at most {newest} (got {given!r})",
            "value": given,
        }


async def test_a_compacted_position_says_to_list_again(
    api: Api, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store = await SqliteStore.open(str(tmp_path_factory.mktemp("compact") / "store.db"))
    store.feed_retention = 2  # keeps the last two changes: position 1 is gone after five
    try:
        for region in api.regions:
            await store.put_region(await api.store.get_region(region))
        _, token = await TokenService(store).create("reader", "viewer")
        for index in range(5):
            await EndpointService(store).deploy(f"e{index}", make_spec())
        async with (
            running_api(store) as (url, _),
            aiohttp.ClientSession() as session,
            session.get(
                f"{url}/v1/watch",
                headers={"Authorization": f"Bearer {token}", "Last-Event-ID": "1"},
            ) as response,
        ):
            stream = EventStream(response)
            compacted = await stream.next()
            assert compacted is not None
            assert compacted.event == "compacted"
            assert compacted.data["message"].endswith(
                "list again (GET /v1/endpoints) and watch without Last-Event-ID"
            )
            assert await stream.next() is None
    finally:
        await store.close()
