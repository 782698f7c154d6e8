"""The work queue's contract: dedup, one worker per key, backoff, scheduling, the
backlog's lower priority."""

from __future__ import annotations

import asyncio

import pytest

from servefleet.ratelimit import TokenBucket
from servefleet.reconcile.queue import BACKLOG_TURN, QueueShutDown, WorkQueue


async def test_a_key_waits_in_the_queue_once() -> None:
    queue = WorkQueue()
    for key in ("a", "b", "a", "a"):
        queue.add(key)

    assert len(queue) == 2
    assert [await queue.get(), await queue.get()] == ["a", "b"]


async def test_a_key_added_while_processing_is_handed_out_after_done() -> None:
    queue = WorkQueue()
    queue.add("a")
    key = await queue.get()
    queue.add("a")

    assert len(queue) == 0  # not handed to a second worker while the first works
    queue.done(key)
    assert await asyncio.wait_for(queue.get(), 1) == "a"


async def test_done_without_a_new_add_does_not_requeue() -> None:
    queue = WorkQueue()
    queue.add("a")
    queue.done(await queue.get())

    assert len(queue) == 0


async def test_backoff_doubles_per_failure_up_to_the_cap_and_forget_resets() -> None:
    queue = WorkQueue(backoff_initial=0.01, backoff_max=0.05, rate=1000, burst=1000)

    delays = [queue.add_rate_limited("a") for _ in range(5)]
    queue.forget("a")

    assert delays == pytest.approx([0.01, 0.02, 0.04, 0.05, 0.05])
    assert queue.add_rate_limited("a") == pytest.approx(0.01)


async def test_rate_limited_key_arrives_after_its_delay() -> None:
    queue = WorkQueue(backoff_initial=0.05)
    queue.add_rate_limited("a")

    assert len(queue) == 0
    assert await asyncio.wait_for(queue.get(), 2) == "a"


async def test_the_earlier_schedule_wins() -> None:
    queue = WorkQueue()
    queue.add_after("a", 30)
    queue.add_after("a", 0.01)

    assert await asyncio.wait_for(queue.get(), 2) == "a"


async def test_keys_added_for_a_reason_go_before_the_backlog() -> None:
    queue = WorkQueue()
    for key in ("listed-1", "listed-2"):
        queue.add_backlog(key)
    queue.add("changed")

    assert len(queue) == 3
    assert [await queue.get() for _ in range(3)] == ["changed", "listed-1", "listed-2"]
    assert len(queue) == 0


async def test_a_backlogged_key_added_for_a_reason_is_promoted_and_handed_out_once() -> None:
    queue = WorkQueue()
    for key in ("listed-1", "listed-2", "listed-3"):
        queue.add_backlog(key)
    queue.add("listed-3")
    queue.add_backlog("listed-3")  # a later listing does not demote it

    assert len(queue) == 3
    assert [await queue.get() for _ in range(3)] == ["listed-3", "listed-1", "listed-2"]
    assert len(queue) == 0
    assert not queue.idle  # three keys being worked on
    for key in ("listed-1", "listed-2", "listed-3"):
        queue.done(key)
    assert queue.idle


async def test_a_backlogged_key_listed_while_worked_on_comes_back_once_done() -> None:
    queue = WorkQueue()
    queue.add_backlog("a")
    key = await queue.get()
    queue.add_backlog("a")

    assert len(queue) == 0
    queue.done(key)
    assert await asyncio.wait_for(queue.get(), 1) == "a"


async def test_a_stream_of_events_does_not_starve_the_backlog() -> None:
    queue = WorkQueue()
    queue.add_backlog("listed")
    handed_out = []
    for index in range(BACKLOG_TURN):
        queue.add(f"event-{index}")
        handed_out.append(await queue.get())

    assert handed_out[-1] == "listed"
    assert handed_out[:-1] == [f"event-{index}" for index in range(BACKLOG_TURN - 1)]


def test_token_bucket_spaces_requests_beyond_the_burst() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=2, clock=lambda: now[0])

    assert [bucket.delay(), bucket.delay(), bucket.delay()] == pytest.approx([0, 0, 0.1])
    now[0] = 1.0
    assert bucket.delay() == 0


async def test_a_key_wakes_one_waiting_worker() -> None:
    queue = WorkQueue()
    workers = [asyncio.ensure_future(queue.get()) for _ in range(8)]
    await asyncio.sleep(0)

    queue.add("a")
    queue.add_backlog("b")
    assert _asleep(queue) == 6  # two keys, two workers woken; the rest sleep on
    await asyncio.sleep(0)
    assert sorted(worker.result() for worker in workers if worker.done()) == ["a", "b"]
    queue.shut_down()
    await asyncio.gather(*workers, return_exceptions=True)


async def test_a_woken_worker_cancelled_before_it_runs_passes_its_key_on() -> None:
    queue = WorkQueue()
    first, second = asyncio.ensure_future(queue.get()), asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)

    queue.add("a")  # wakes `first`, which is cancelled before it takes the key
    first.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)

    assert first.cancelled()
    assert second.done()
    assert second.result() == "a"


def _asleep(queue: WorkQueue) -> int:
    """Workers waiting for a key that no key has woken yet."""
    return sum(not woken.done() for woken in queue._waiting)


async def test_shut_down_releases_waiting_workers() -> None:
    queue = WorkQueue()
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)

    queue.shut_down()

    with pytest.raises(QueueShutDown):
        await asyncio.wait_for(waiting, 1)
