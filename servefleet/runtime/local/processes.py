"""Child processes of the local runtime: replicas and model stagings.

Replicas run as `command + args` (`replica_command`) with "{port}" replaced by a
free port, which is also in `PORT`, and "{model_dir}" by the directory of their
staged model, also in `SERVEFLEET_MODEL_DIR`. Every child is started from an
argv list (never a shell) with no stdin and a session of its own, so its whole
process group can be signalled: stopping one sends SIGTERM to the group, SIGKILL
after a grace period, and then SIGKILL to whatever is left of the group
(children of a replica that exited). On Linux each child also dies with the
process that started it (PR_SET_PDEATHSIG), so no replica outlives a killed
servefleet. What a child may see of servefleet's environment is decided by
`environment.child_environment`, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import socket
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO

from servefleet.plan import Version

__all__ = [
    "exit_reason",
    "free_port",
    "open_log",
    "replica_command",
    "signal_group",
    "start_child",
    "terminate",
]

_PR_SET_PDEATHSIG = 1


def replica_command(
    version: Version, port: int, model_dir: Path | None
) -> tuple[list[str], dict[str, str]]:
    """The argv of a replica process listening on `port`, and its own variables.
    `{image}` stands for the version's image: a local region runs a command, so
    this is how a new image (a rollout's) reaches what the command runs."""
    template = (version.command or []) + (version.args or [])
    image = version.image or ""
    argv = [part.replace("{port}", str(port)).replace("{image}", image) for part in template]
    own = {**version.env, "PORT": str(port)}
    if model_dir is not None:
        argv = [part.replace("{model_dir}", str(model_dir)) for part in argv]
        own["SERVEFLEET_MODEL_DIR"] = str(model_dir)
    return argv, own


async def start_child(
    argv: list[str], *, stdout: IO[bytes] | int, stderr: IO[bytes] | int, env: dict[str, str]
) -> asyncio.subprocess.Process:
    """Start a replica or staging process: no stdin, a session of its own (so its
    whole group can be signalled) and, where the OS allows, death with this process."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent(),
    )


async def terminate(process: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM to the process group, SIGKILL after `grace` seconds; then SIGKILL
    whatever is left of the group (children of a replica that exited)."""
    if process.returncode is None:
        signal_group(process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):  # not wait_for: see store.base.watch
                await process.wait()
        except TimeoutError:
            signal_group(process.pid, signal.SIGKILL)
            await process.wait()
    signal_group(process.pid, signal.SIGKILL)


def signal_group(pid: int, signum: signal.Signals) -> None:
    """Send `signum` to the process group `pid` leads, if any of it is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def exit_reason(returncode: int) -> str:
    """How a child ended, as the end of a sentence about it ("... exited with status 3")."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def open_log(path: Path, header: str) -> IO[bytes]:
    """Open a child's log file for appending, starting with `header`. Blocking: run
    in a thread."""
    path.parent.mkdir(parents=True, exist_ok=True)
    output = path.open("ab")
    output.write(header.encode())
    output.flush()
    return output


def free_port(given: Collection[int | None]) -> int:
    """A port nothing listens on now and not among `given` (the ports of the
    region's replicas). A replica that loses a race for it fails to bind, exits,
    and restarts."""
    while (port := _unused_port()) in given:
        pass
    return port


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has Linux SIGKILL the child when this process dies.

    Linux sends the signal when the *thread* that forked the child ends; that is
    the event loop's thread, which lives as long as the runtime does."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = _libc().prctl  # looked up here: the child must not load anything
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return die_with_parent
