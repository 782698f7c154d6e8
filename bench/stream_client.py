"""A driver of streamed chat completions in a process of its own, for the
gateway-under-streams benchmark: `python -m bench.stream_client` says `{}`, then
answers each stdin line (see `bench.child`), a JSON command:

    {"targets": [URL, ...], "streams": N, "spread_s": S, "body": {...},
     "reference": SHA256, "loop_s": L}

N streams are started evenly over S seconds, the i-th to `targets[i % len]`, each
on a connection of its own. With `loop_s` each stream, once done, starts again until
L seconds have passed since the command (a closed loop of N users), and only the
counts are kept; without it every stream runs once and its time to first token
(from sending the POST to the first `data:` bytes) is kept. A stream counts as
identical when its body, with the per-request `"id"` and `"created"` masked, has
the `reference` SHA-256 (taken from a direct stream by the benchmark).

Several drivers share the load so that the client is not what limits the run;
each answers with its own CPU seconds over the command.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.child import die_with_parent, serve_commands
from servefleet.runtime.local.gateway import event_loop_factory

_PER_REQUEST = re.compile(rb'"id": "[a-z]+-[0-9a-f]+"|"created": \d+')


def normalized_digest(body: bytes) -> str:
    """SHA-256 of a completion stream with what differs per request masked."""
    return hashlib.sha256(_PER_REQUEST.sub(b"-", body)).hexdigest()


@dataclass
class _Tally:
    ttft_ms: list[float] = field(default_factory=list)
    completed: int = 0
    mismatched: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    open: int = 0
    peak_open: int = 0


async def _stream(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], reference: str, tally: _Tally
) -> float | None:
    """One stream; its time to first token in ms (None if it failed)."""
    tally.open += 1
    tally.peak_open = max(tally.peak_open, tally.open)
    started = time.perf_counter()
    first: float | None = None
    received = bytearray()
    try:
        async with session.post(url, json=body) as response:
            async for chunk in response.content.iter_any():
                if first is None and b"data:" in chunk:
                    first = time.perf_counter()
                received += chunk
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as error:
        name = type(error).__name__
        tally.errors[name] = tally.errors.get(name, 0) + 1
        tally.failed += 1
        return None
    finally:
        tally.open -= 1
    if status != 200 or not received.endswith(b"data: [DONE]\n\n"):
        name = f"status {status}" if status != 200 else "incomplete"
        tally.errors[name] = tally.errors.get(name, 0) + 1
        tally.failed += 1
        return None
    tally.completed += 1
    if normalized_digest(bytes(received)) != reference:
        tally.mismatched += 1
    return None if first is None else (first - started) * 1000


async def _user(
    session: aiohttp.ClientSession,
    url: str,
    command: dict[str, Any],
    delay: float,
    deadline: float | None,
    tally: _Tally,
) -> None:
    await asyncio.sleep(delay)
    while True:
        ttft = await _stream(session, url, command["body"], command["reference"], tally)
        if deadline is None:
            if ttft is not None:
                tally.ttft_ms.append(round(ttft, 3))
            return
        if time.monotonic() >= deadline:
            return


async def drive(command: dict[str, Any]) -> dict[str, Any]:
    targets: list[str] = command["targets"]
    count: int = command["streams"]
    spread: float = command["spread_s"]
    loop_s: float | None = command.get("loop_s")
    began_cpu, began = time.process_time(), time.monotonic()
    deadline = began + loop_s if loop_s is not None else None
    tally = _Tally()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(
            *(
                _user(
                    session, targets[i % len(targets)], command, spread * i / count, deadline, tally
                )
                for i in range(count)
            )
        )
    return {
        "ttft_ms": tally.ttft_ms,
        "completed": tally.completed,
        "mismatched": tally.mismatched,
        "failed": tally.failed,
        "errors": tally.errors,
        "peak_open": tally.peak_open,
        "cpu_s": round(time.process_time() - began_cpu, 3),
        "wall_s": round(time.monotonic() - began, 3),
    }


async def main() -> None:
    async def handle(line: str) -> dict[str, Any]:
        return await drive(json.loads(line))

    await serve_commands({}, handle)


if __name__ == "__main__":
    die_with_parent()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main())
