"""What a request names: the resource, namespace, name and subresource of its path
(or the discovery document it asks for), and its verb."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import errors
from .discovery import SERVER_VERSION, group_document, group_list, resource_list
from .request_parsing import truthy
from .resources import ResourceType, find


@dataclass
class Route:
    resource: ResourceType
    namespace: str | None
    name: str | None
    subresource: str
    watch_path: bool


def route_path(
    path: str, served: tuple[ResourceType, ...], host: str, port: int
) -> Route | dict[str, Any]:
    """The resource a path names, or a discovery document to answer with."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return {"paths": ["/api", "/api/v1", "/apis", "/version"]}
    if parts == ["version"]:
        return SERVER_VERSION
    if parts[0] == "api":
        if len(parts) == 1:
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{host}:{port}"}
                ],
            }
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis":
        if len(parts) == 1:
            return group_list(served)
        if len(parts) == 2:
            return group_document(parts[1], served)
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise errors.PATH_NOT_FOUND
    if not rest:
        return resource_list(group, version, served)
    watch_path = rest[0] == "watch"
    if watch_path:
        rest = rest[1:]
    namespace: str | None = None
    if (
        len(rest) >= 3
        and rest[0] == "namespaces"
        and not (group == "" and len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise errors.PATH_NOT_FOUND
    resource = find(group, version, rest[0], served)
    if resource is None:
        raise errors.PATH_NOT_FOUND
    name = rest[1] if len(rest) > 1 else None
    subresource = rest[2] if len(rest) > 2 else ""
    if subresource and subresource not in resource.subresources:
        raise errors.PATH_NOT_FOUND
    if resource.namespaced and namespace is None and name is not None:
        raise errors.PATH_NOT_FOUND
    if not resource.namespaced and namespace is not None:
        raise errors.PATH_NOT_FOUND
    return Route(resource, namespace, name, subresource, watch_path)


def verb(method: str, route: Route, query: Mapping[str, str]) -> str:
    """The request's verb as Kubernetes RBAC and audit name it."""
    if method == "GET":
        if route.subresource == "log":
            return "get"
        if route.watch_path or truthy(query.get("watch")):
            return "watch"
        return "get" if route.name else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if route.name else "deletecollection"
    return method.lower()
