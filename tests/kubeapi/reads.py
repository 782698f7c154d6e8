"""The engine's base: the store and schema every operation works on, the lookup of
an object that must exist, and the reads (get, list with pages, the namespaces
that exist without being created)."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from . import errors, validation
from .json_values import clone
from .resources import NAMESPACES, ResourceType
from .schema import Schema, TypeNode
from .selectors import FieldSelector, LabelSelector
from .store import Store, StoredObject


class EngineReads:
    """The base of every operation: the store, and the schema by resource."""

    def __init__(self, store: Store, schema: Schema | None = None) -> None:
        self.store = store
        self.schema = schema or Schema.load()
        self._nodes: dict[str, TypeNode] = {}

    def node(self, resource: ResourceType) -> TypeNode:
        node = self._nodes.get(resource.definition)
        if node is None:
            node = self._nodes[resource.definition] = self.schema.definition(resource.definition)
        return node

    def require(self, resource: ResourceType, namespace: str, name: str) -> StoredObject:
        stored = self.store.get(resource, namespace, name)
        if stored is None:
            raise errors.not_found(resource.group, resource.plural, name)
        return stored

    def peek(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        """The stored object itself, not a copy (`get`), for a caller that only reads
        it: a stored object is never modified, each write stores a new one."""
        return self.require(resource, namespace, name).obj

    def get(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        if resource is NAMESPACES:
            return self.read_namespace(name)
        return clone(self.require(resource, namespace, name).obj)

    def read_namespace(self, name: str) -> dict[str, Any]:
        stored = self.store.get(NAMESPACES, "", name)
        if stored is not None:
            return clone(stored.obj)
        if validation.name_errors(name, "label"):
            raise errors.not_found("", "namespaces", name)
        return _implicit_namespace(name)

    def list(
        self,
        resource: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        limit: int = 0,
        continue_token: str = "",
    ) -> dict[str, Any]:
        """A list; with `limit`, one page and a `continue` token for the next. (Pages
        are cut from the current state, not from a snapshot at the first page.)"""
        list_rv = self.store.resource_version
        after: tuple[str, str] | None = None
        if continue_token:
            list_rv, after = _decode_continue(continue_token)
            if list_rv < self.store.floor(resource):
                raise errors.expired(
                    "The provided continue parameter is too old to display a consistent list"
                    " result. You can start a new list without the continue parameter."
                )
        items = [clone(s.obj) for s in self.store.items(resource, namespace, labels, fields)]
        if resource is NAMESPACES:
            present = {item["metadata"]["name"] for item in items}
            for name in sorted(self.store.namespaces_in_use() | {"default"}):
                implicit = _implicit_namespace(name)
                wanted = labels.matches(implicit["metadata"]["labels"]) and fields.matches(implicit)
                if name not in present and wanted:
                    items.append(implicit)
        if after is not None:
            items = [i for i in items if _position(i) > after]
        metadata: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if limit and len(items) > limit:
            metadata["continue"] = _encode_continue(list_rv, _position(items[limit - 1]))
            metadata["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.group_version,
            "metadata": metadata,
            "items": items,
        }


def _position(obj: dict[str, Any]) -> tuple[str, str]:
    metadata = obj["metadata"]
    return (str(metadata.get("namespace", "")), str(metadata["name"]))


def _encode_continue(rv: int, position: tuple[str, str]) -> str:
    raw = json.dumps({"rv": rv, "start": list(position)}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
        namespace, name = decoded["start"]
        return int(decoded["rv"]), (str(namespace), str(name))
    except (ValueError, KeyError, TypeError) as error:
        raise errors.bad_request(f"invalid continue token: {token}") from error


def _implicit_namespace(name: str) -> dict[str, Any]:
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"namespace/{name}")),
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"kubernetes.io/metadata.name": name},
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }
