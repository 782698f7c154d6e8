"""The `pods/log` subresource: which container instance a request names, and its log.

A real `GET .../pods/{name}/log` takes two hops, and so does this module:

1. the API server checks the options (`ValidatePodLogOptions`: 422 `PodLogOptions`),
   picks the container (`validateContainer` in pkg/registry/core/pod/strategy.go: 400
   when the pod has several and none is named, or the name is unknown) and, for a pod
   with no node yet, answers 204 No Content;
2. the kubelet picks the container *instance* from the pod's status
   (`validateContainerLogStatus` in pkg/kubelet/kubelet_pods.go: the running or last
   terminated one, `lastState.terminated` for `previous`) and streams its log. Its
   errors come back through the API server as 400 Status messages.

`ContainerLogs` holds the kubelet side: the lines each container instance (by
containerID) wrote, as they arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from . import clock, errors
from .errors import FieldError


@dataclass(frozen=True)
class LogLine:
    time: datetime
    #: one line with its newline (an unfinished last line has none)
    data: bytes


@dataclass
class ContainerLogs:
    """The log of every container instance, by containerID (`containerd://...`), and
    which instances are still running (their logs may grow: `follow` waits on them)."""

    _lines: dict[str, list[LogLine]] = field(default_factory=dict)
    _running: set[str] = field(default_factory=set)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def start(self, container_id: str) -> None:
        self._running.add(container_id)
        self._notify()

    def append(self, container_id: str, data: bytes) -> None:
        self._lines.setdefault(container_id, []).append(LogLine(datetime.now(UTC), data))
        self._notify()

    def finish(self, container_id: str) -> None:
        self._running.discard(container_id)
        self._notify()

    def forget(self, container_ids: list[str]) -> None:
        for container_id in container_ids:
            self._lines.pop(container_id, None)
            self._running.discard(container_id)
        self._notify()

    def lines(self, container_id: str) -> list[LogLine]:
        return list(self._lines.get(container_id, ()))

    def running(self, container_id: str) -> bool:
        return container_id in self._running

    async def changed(self) -> None:
        """Wait for the next change to any log."""
        await self._changed.wait()


@dataclass(frozen=True)
class LogOptions:
    """The query of a log request (`PodLogOptions`)."""

    container: str = ""
    previous: bool = False
    timestamps: bool = False
    follow: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since_seconds: int | None = None
    since_time: datetime | None = None


def _integer(query: Mapping[str, str], key: str) -> int | None:
    raw = query.get(key)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as error:
        raise errors.bad_request(f'strconv.ParseInt: parsing "{raw}": invalid syntax') from error


def _boolean(query: Mapping[str, str], key: str) -> bool:
    raw = query.get(key)
    if raw is None or raw == "":
        return False
    # Go's strconv.ParseBool, which the parameter codec uses
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise errors.bad_request(f'strconv.ParseBool: parsing "{raw}": invalid syntax')


def parse_options(pod_name: str, query: Mapping[str, str]) -> LogOptions:
    """The options of a log request, checked as `ValidatePodLogOptions` does."""
    since_time: datetime | None = None
    raw_time = query.get("sinceTime")
    if raw_time:
        since_time = clock.parse_time(raw_time)
    options = LogOptions(
        container=query.get("container", ""),
        previous=_boolean(query, "previous"),
        timestamps=_boolean(query, "timestamps"),
        follow=_boolean(query, "follow"),
        tail_lines=_integer(query, "tailLines"),
        limit_bytes=_integer(query, "limitBytes"),
        since_seconds=_integer(query, "sinceSeconds"),
        since_time=since_time,
    )
    problems: list[FieldError] = []
    if options.tail_lines is not None and options.tail_lines < 0:
        problems.append(
            FieldError(
                "Invalid", "tailLines", options.tail_lines, "must be greater than or equal to 0"
            )
        )
    if options.limit_bytes is not None and options.limit_bytes < 1:
        problems.append(
            FieldError("Invalid", "limitBytes", options.limit_bytes, "must be greater than 0")
        )
    if options.since_seconds is not None and options.since_time is not None:
        problems.append(
            FieldError(
                "Forbidden",
                "",
                detail="at most one of `sinceTime` or `sinceSeconds` may be specified",
            )
        )
    elif options.since_seconds is not None and options.since_seconds < 1:
        problems.append(
            FieldError("Invalid", "sinceSeconds", options.since_seconds, "must be greater than 0")
        )
    if problems:
        raise errors.invalid("", "PodLogOptions", pod_name, problems)
    return options


def container_names(pod: dict[str, Any]) -> list[str]:
    """Init containers, then containers, then ephemeral ones (podutil.VisitContainers)."""
    spec = pod.get("spec") or {}
    return [
        str(item.get("name"))
        for kind in ("initContainers", "containers", "ephemeralContainers")
        for item in spec.get(kind) or []
    ]


def choose_container(pod: dict[str, Any], requested: str) -> str:
    """The API server's `validateContainer`."""
    name = pod["metadata"]["name"]
    if requested:
        if requested not in container_names(pod):
            raise errors.bad_request(f"container {requested} is not valid for pod {name}")
        return requested
    containers = (pod.get("spec") or {}).get("containers") or []
    if len(containers) == 1:
        return str(containers[0].get("name"))
    if not containers:
        raise errors.bad_request(f"a container name must be specified for pod {name}")
    choices = " ".join(container_names(pod))  # Go prints a []string as [a b c]
    raise errors.bad_request(
        f"a container name must be specified for pod {name}, choose one of: [{choices}]"
    )


def container_instance(pod: dict[str, Any], container: str, previous: bool) -> str:
    """The containerID whose log the kubelet reads (`validateContainerLogStatus`)."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    found = next(
        (
            item
            for kind in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
            for item in status.get(kind) or []
            if item.get("name") == container
        ),
        None,
    )
    if found is None:
        raise errors.bad_request(f'container "{container}" in pod "{name}" is not available')
    state = found.get("state") or {}
    last = (found.get("lastState") or {}).get("terminated")
    last_id = str((last or {}).get("containerID") or "")
    if previous:
        if not last_id:
            raise errors.bad_request(
                f'previous terminated container "{container}" in pod "{name}" not found'
            )
        return last_id
    if state.get("running") is not None:
        return str(found.get("containerID") or "")
    terminated = state.get("terminated")
    if terminated is not None:
        if terminated.get("containerID"):
            return str(terminated["containerID"])
        if last_id:
            return last_id
        raise errors.bad_request(f'container "{container}" in pod "{name}" is terminated')
    if last is not None:
        if not last_id:
            raise errors.bad_request(f'container "{container}" in pod "{name}" is terminated')
        return last_id
    waiting = state.get("waiting")
    if waiting is not None:
        reason = waiting.get("reason") or ""
        explained = {
            "ErrImagePull": "image can't be pulled",
            "ImagePullBackOff": "trying and failing to pull image",
        }.get(reason, reason)
        raise errors.bad_request(
            f'container "{container}" in pod "{name}" is waiting to start: {explained}'
        )
    raise errors.bad_request(
        f'container "{container}" in pod "{name}" is waiting to start - no logs yet'
    )


def _stamp(moment: datetime) -> bytes:
    """RFC3339 with nine fixed fractional digits, as the kubelet prefixes lines."""
    return (moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z").encode()


def join(lines: list[LogLine], timestamps: bool) -> bytes:
    return b"".join((_stamp(line.time) + b" " if timestamps else b"") + line.data for line in lines)


def render(lines: list[LogLine], options: LogOptions, now: datetime) -> bytes:
    """The response body: since*, then tailLines, then limitBytes (the kubelet's order)."""
    cutoff: datetime | None = options.since_time
    if options.since_seconds is not None:
        cutoff = now - timedelta(seconds=options.since_seconds)
    selected = [line for line in lines if cutoff is None or line.time >= cutoff]
    if options.tail_lines is not None:
        selected = selected[len(selected) - options.tail_lines :] if options.tail_lines else []
    body = join(selected, options.timestamps)
    return body if options.limit_bytes is None else body[: options.limit_bytes]


def locate(pod: dict[str, Any], options: LogOptions) -> str | None:
    """The containerID a log request reads (None: no node yet, 204), or raises the
    real answer's `ApiError`."""
    container = choose_container(pod, options.container)
    if not (pod.get("spec") or {}).get("nodeName"):
        return None
    return container_instance(pod, container, options.previous)


def read(
    pod: dict[str, Any], options: LogOptions, logs: ContainerLogs, now: datetime
) -> bytes | None:
    """A log request's body without `follow` (None: 204)."""
    instance = locate(pod, options)
    return None if instance is None else render(logs.lines(instance), options, now)


__all__ = [
    "ContainerLogs",
    "LogLine",
    "LogOptions",
    "choose_container",
    "container_instance",
    "join",
    "locate",
    "parse_options",
    "read",
    "render",
]
