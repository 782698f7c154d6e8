"""Running a real `Controller` for region r1 and waiting for it to converge."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from bench.runtime import RecordingRuntime
from bench.stores import REGION
from servefleet.reconcile.controller import Controller
from servefleet.reconcile.settings import ControllerSettings
from servefleet.service import utc_now
from servefleet.spec import DesiredState
from servefleet.store import Store

SETTINGS = ControllerSettings()
"""The defaults `servefleet up` starts from: 64 workers, resync and heartbeat every 300 s."""


class ControllerRun:
    def __init__(self, controller: Controller, task: asyncio.Task[None]) -> None:
        self.controller = controller
        self.task = task

    def check(self) -> None:
        """Raise what ended the controller early, if it did end."""
        if self.task.done():
            self.task.result()
            raise RuntimeError("the controller stopped")

    async def idle(self, within: float = 30.0, *, settle: float = 0.01) -> None:
        """Return once the queue is empty and no pass runs, twice `settle` seconds apart."""
        async with asyncio.timeout(within):
            while True:
                self.check()
                if self.controller.queue.idle:
                    await asyncio.sleep(settle)
                    if self.controller.queue.idle:
                        return
                await asyncio.sleep(0.002)

    async def converged(
        self, reader: Store, runtime: RecordingRuntime, count: int, within: float = 120.0
    ) -> float:
        """Wait until the runtime holds all `count` endpoints, every one is `running` in
        the store and the controller is idle; return how long that took (s)."""
        started = time.perf_counter()
        async with asyncio.timeout(within):
            while True:
                self.check()
                if len(runtime.held_workloads) >= count and self.controller.queue.idle:
                    deploying = await reader.list_endpoints(desired_state=DesiredState.DEPLOYING)
                    if not deploying:
                        await self.idle(within)
                        return time.perf_counter() - started
                await asyncio.sleep(0.05)


@asynccontextmanager
async def controller_running(
    store: Store, runtime: RecordingRuntime, settings: ControllerSettings = SETTINGS
) -> AsyncIterator[ControllerRun]:
    controller = Controller(store, runtime, REGION, settings, clock=utc_now)
    task = asyncio.create_task(controller.run(), name="bench-controller")
    try:
        yield ControllerRun(controller, task)
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
