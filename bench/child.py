"""A benchmark helper in a process of its own, driven by one-line JSON commands.

The benchmark's servers (test API servers, the reconciler under measurement) run in
processes of their own so that their CPU time and memory are theirs alone. Each
such `python -m bench.<host>` prints one JSON line when it is ready, then answers
every command line on stdin with one JSON line (`serve_commands`), until stdin
closes or SIGTERM.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from bench.report import REPO

Handler = Callable[[str], Awaitable[dict[str, Any]]]


class Child:
    def __init__(self, process: asyncio.subprocess.Process, hello: dict[str, Any]) -> None:
        self.process = process
        self.hello = hello
        """What it printed when it was ready."""
        self._lock = asyncio.Lock()

    async def ask(self, command: str, within: float = 60.0) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        async with self._lock, asyncio.timeout(within):
            self.process.stdin.write(command.encode() + b"\n")
            await self.process.stdin.drain()
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{command!r}: the child exited with {await self.process.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer


@asynccontextmanager
async def child(module: str, *args: str, log: Path, within: float = 60.0) -> AsyncIterator[Child]:
    """`python -m <module> <args>` once it has said hello; stopped (SIGTERM, then
    SIGKILL) on the way out. Its stderr goes to `log`."""
    with log.open("ab") as errors:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            limit=16 * 1024 * 1024,
        )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(within):
            line = await process.stdout.readline()
        if not line:
            tail = (await asyncio.to_thread(log.read_text, errors="replace"))[-2000:]
            raise RuntimeError(f"{module} exited with {await process.wait()}: {tail}")
        yield Child(process, json.loads(line))
    finally:
        await stop(process)


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            with suppress(ProcessLookupError):
                process.kill()
            await process.wait()


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have Linux SIGKILL this process when the benchmark that started it dies, so a
    benchmark killed mid-run leaves no server behind. Call it first thing in a host."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


class _Collections:
    """How long this process has stood still for its garbage collector, in all and
    at most at once (a host counts from its start: `count_collections`)."""

    def __init__(self) -> None:
        self.paused_s = 0.0
        self.longest_s = 0.0
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        paused = time.perf_counter() - self._began
        self.paused_s += paused
        self.longest_s = max(self.longest_s, paused)


_COLLECTIONS = _Collections()


def count_collections() -> None:
    """From now on, `own_usage` says how long the collector stopped this process."""
    if _COLLECTIONS not in gc.callbacks:
        gc.callbacks.append(_COLLECTIONS)


def own_usage() -> dict[str, float]:
    """This process's CPU seconds and memory, for a host's answers: `peak_rss_kb` is
    VmHWM (the peak resident set), `rss_kb` VmRSS now; and, once `count_collections`
    was called, the garbage collector's pauses (`gc_pause_s` in all, `gc_longest_pause_s`)."""
    memory = {"VmHWM": 0, "VmRSS": 0}
    with suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in memory:
                memory[key] = int(value.split()[0])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_s": time.process_time(),
        "user_s": usage.ru_utime,
        "system_s": usage.ru_stime,
        "peak_rss_kb": memory["VmHWM"] or usage.ru_maxrss,
        "rss_kb": memory["VmRSS"],
        "gc_pause_s": round(_COLLECTIONS.paused_s, 3),
        "gc_longest_pause_s": round(_COLLECTIONS.longest_s, 3),
    }


def say(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


async def serve_commands(hello: dict[str, Any], handle: Handler) -> None:
    """Say hello, then answer each stdin line with `handle(line)` until stdin closes
    or SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    say(hello)

    async def answer() -> None:
        while line := await reader.readline():
            try:
                say(await handle(line.decode().strip()))
            except Exception as error:  # the parent learns why, the host lives on
                say({"error": f"{type(error).__name__}: {error}"})

    answering = asyncio.create_task(answer())
    stopped = asyncio.create_task(stopping.wait())
    await asyncio.wait({answering, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in (answering, stopped):
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
