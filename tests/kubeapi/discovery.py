"""The discovery documents a client reads before it names a resource: the server's
version, the API groups and versions served (only the custom resources installed)
and the resources of each group version."""

from __future__ import annotations

from typing import Any

from . import errors
from .resources import ResourceType, group_versions

SERVER_VERSION = {
    "major": "1",
    "minor": "36",
    "gitVersion": "v1.36.2-servefleet-test",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-11-26T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def group_list(served: tuple[ResourceType, ...]) -> dict[str, Any]:
    groups = [group_document(group, served) for group in group_versions(served)]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def group_document(group: str, served: tuple[ResourceType, ...]) -> dict[str, Any]:
    versions = group_versions(served).get(group)
    if versions is None:
        raise errors.PATH_NOT_FOUND
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def resource_list(group: str, version: str, served: tuple[ResourceType, ...]) -> dict[str, Any]:
    in_version = [r for r in served if r.group == group and r.version == version]
    if not in_version:
        raise errors.PATH_NOT_FOUND
    resources: list[dict[str, Any]] = []
    for resource in in_version:
        resources.extend(resource.discovery())
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }
