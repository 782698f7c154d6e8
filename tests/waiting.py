"""Waiting for the world to reach a state, without asserting how long it took."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10) -> None:
    """Poll `check` until it holds; fail (TimeoutError) after `within` seconds."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - the state lives outside this process too
            await asyncio.sleep(0.02)
