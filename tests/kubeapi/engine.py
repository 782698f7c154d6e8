"""The API semantics, independent of HTTP: create, get, list, update, patch, apply,
delete, the `scale` and `status` subresources, validation, defaulting and
managed fields. Every method either returns the answer body or raises `ApiError`.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import yaml

from . import errors, patches, typed, validation
from . import fieldpath as fp
from .errors import ApiError
from .json_values import clone, json_equal, parse_json
from .resources import DEPLOYMENTS, NAMESPACES, SCALE_DEFINITION, SERVICES, ResourceType
from .schema import ANY, MICROTIME_REF, TIME_REF, Schema, TypeNode
from .selectors import FieldSelector, LabelSelector, SelectorError, selector_from_object
from .ssa import STRIPPED, ApplyConflict, ManagedFields, Scope, apply, update
from .store import Store, StoredObject

APPLY_YAML = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = [JSON_PATCH, MERGE_PATCH, APPLY_YAML, STRATEGIC_PATCH]

_STATUS = fp.make("status")
_SPEC = fp.make("spec")


_TIME_REFS: Final = (TIME_REF, MICROTIME_REF)


def now_rfc3339() -> str:
    return _rfc3339(int(time.time()))


@functools.lru_cache(maxsize=1)
def _rfc3339(second: int) -> str:
    """Formatted once per second: most writes stamp a time, several per write."""
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WriteOptions:
    manager: str
    dry_run: bool = False
    field_validation: str = "Warn"  # the server's default when the query has none
    force: bool = False


@dataclass
class WriteResult:
    body: dict[str, Any]
    """The object as stored, not a copy (each write would copy it once more just to
    encode it): read or encode it, never modify it."""
    created: bool = False
    changed: bool = True
    warnings: list[str] = field(default_factory=list)


CommitHook = Callable[[ResourceType, dict[str, Any], dict[str, Any] | None], None]


class Engine:
    def __init__(self, store: Store, schema: Schema | None = None) -> None:
        self.store = store
        self.schema = schema or Schema.load()
        self._nodes: dict[str, TypeNode] = {}
        self._cluster_ips: set[str] = set()
        self._node_ports: set[int] = set()
        self._random = random.Random(0x6B75)
        self.hooks: list[CommitHook] = []

    # ----------------------------------------------------------------- helpers

    def node(self, resource: ResourceType) -> TypeNode:
        node = self._nodes.get(resource.definition)
        if node is None:
            node = self._nodes[resource.definition] = self.schema.definition(resource.definition)
        return node

    def _scope(self, resource: ResourceType, subresource: str) -> Scope:
        if subresource == "status":
            return Scope(STRIPPED, {_STATUS})
        if resource.default_status is not None:
            return Scope(STRIPPED | {_STATUS})
        return Scope(set(STRIPPED))

    def _require(self, resource: ResourceType, namespace: str, name: str) -> StoredObject:
        stored = self.store.get(resource, namespace, name)
        if stored is None:
            raise errors.not_found(resource.group, resource.plural, name)
        return stored

    def peek(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        """The stored object itself, not a copy (`get`), for a caller that only reads
        it: a stored object is never modified, each write stores a new one."""
        return self._require(resource, namespace, name).obj

    def _allocate_cluster_ip(self) -> str:
        network = ipaddress.ip_network("10.96.0.0/16")
        while True:
            candidate = str(network[self._random.randrange(11, network.num_addresses - 1)])
            if candidate not in self._cluster_ips:
                self._cluster_ips.add(candidate)
                return candidate

    def _allocate_node_port(self) -> int:
        while True:
            port = self._random.randrange(30000, 32768)
            if port not in self._node_ports:
                self._node_ports.add(port)
                return port

    def _normalize(self, value: Any, node: TypeNode) -> Any:
        """Drop nulls and empty maps/lists (Go's omitempty), canonicalise timestamps.
        (Scalars other than timestamps are kept without a call: every write
        normalizes its whole object.)"""
        if isinstance(value, dict):
            out = {}
            for name, child in value.items():
                if child is None:
                    continue
                child_node = node.child(name) or ANY
                if isinstance(child, dict | list):
                    child = self._normalize(child, child_node)
                    if not child and child_node.kind in ("map", "list"):
                        continue
                elif isinstance(child, str) and child_node.ref in _TIME_REFS:
                    child = self._normalize(child, child_node)
                out[name] = child
            return out
        if isinstance(value, list):
            elem = node.elem
            return [
                self._normalize(item, elem)
                if isinstance(item, dict | list)
                or (isinstance(item, str) and elem.ref in _TIME_REFS)
                else item
                for item in value
                if item is not None
            ]
        if isinstance(value, str) and node.ref in _TIME_REFS:
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError as error:
                raise errors.bad_request(
                    f'parsing time "{value}" as "2006-01-02T15:04:05Z07:00": cannot parse'
                ) from error
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            parsed = parsed.astimezone(UTC)
            if node.ref == TIME_REF:
                return parsed.strftime("%Y-%m-%dT%H:%M:%SZ")
            return parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return value

    def _decode_body(
        self, resource: ResourceType, body: Any, options: WriteOptions, node: TypeNode
    ) -> tuple[dict[str, Any], list[str]]:
        """Check a create/update body against the schema (fieldValidation semantics)."""
        if not isinstance(body, dict):
            raise errors.bad_request(
                f'{resource.kind} in version "{resource.version}" cannot be handled as a '
                f"{resource.kind}: the body is not a JSON object"
            )
        # Duplicate list keys decode fine into the real server's structs; its
        # validation refuses them (422) where the kind says so, e.g. Service ports.
        problems = [
            e
            for e in typed.validate(body, node)
            if "not declared" not in e.message and "duplicate entries" not in e.message
        ]
        if problems:
            raise errors.bad_request(
                f'{resource.kind} in version "{resource.version}" cannot be handled as a '
                f"{resource.kind}: {problems[0]}"
            )
        cleaned, dropped = typed.drop_unknown(body, node)
        names = [_decode_path(path) for path in dropped]
        if dropped and options.field_validation == "Strict":
            raise errors.bad_request(
                "strict decoding error: " + ", ".join(f'unknown field "{n}"' for n in names)
            )
        warnings = (
            [] if options.field_validation == "Ignore" else [f'unknown field "{n}"' for n in names]
        )
        return cleaned, warnings

    def _check_identity(
        self, resource: ResourceType, namespace: str, name: str, body: dict[str, Any]
    ) -> None:
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise errors.bad_request("metadata must be an object")
        body_name = metadata.get("name")
        if body_name and name and body_name != name:
            raise errors.bad_request(
                f"the name of the object ({body_name}) does not match the name on the URL ({name})"
            )
        body_ns = metadata.get("namespace")
        if resource.namespaced and body_ns and body_ns != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the"
                " request"
            )
        api_version = body.get("apiVersion")
        if api_version and api_version != resource.group_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API"
                f" version ({resource.group_version})"
            )
        kind = body.get("kind")
        if kind and kind != resource.kind:
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({resource.kind})"
            )

    def _finalize(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        candidate: dict[str, Any],
        old: dict[str, Any] | None,
        subresource: str = "",
    ) -> dict[str, Any]:
        """The object a write stores: normalized, defaulted, server fields set."""
        node = self.node(resource)
        obj = self._normalize(candidate, node)
        if subresource == "status" and old is not None:
            status = obj.get("status")
            obj = clone(old)
            if status is None:
                obj.pop("status", None)
            else:
                obj["status"] = status
        obj["apiVersion"] = resource.group_version
        obj["kind"] = resource.kind
        metadata = obj.setdefault("metadata", {})
        metadata["name"] = name
        if resource.namespaced:
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        for key in ("managedFields", "resourceVersion", "uid", "creationTimestamp", "generation"):
            metadata.pop(key, None)
        for key in ("selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"):
            metadata.pop(key, None)
        if old is not None:
            old_meta = old["metadata"]
            metadata["uid"] = old_meta["uid"]
            metadata["creationTimestamp"] = old_meta["creationTimestamp"]
            if "generation" in old_meta:
                metadata["generation"] = old_meta["generation"]
        else:
            metadata["uid"] = str(uuid.uuid4())
            metadata["creationTimestamp"] = now_rfc3339()
        if resource.default_status is not None and subresource != "status":
            if old is None:
                obj["status"] = resource.default_status()
            elif "status" in old:
                obj["status"] = clone(old["status"])
            else:
                obj.pop("status", None)
        resource.defaulter(obj)
        if resource is SERVICES:
            self._service_allocations(obj, old)
        if resource.has_generation:
            if old is None:
                metadata["generation"] = 1
            elif subresource != "status" and not json_equal(old.get("spec"), obj.get("spec")):
                metadata["generation"] = int(old["metadata"].get("generation", 0)) + 1
        metadata["resourceVersion"] = old["metadata"]["resourceVersion"] if old else ""
        ordered = {"kind": obj.pop("kind"), "apiVersion": obj.pop("apiVersion")}
        ordered["metadata"] = _order_metadata(obj.pop("metadata"))
        ordered.update(obj)
        return ordered

    def _service_allocations(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = obj["spec"]
        old_spec = (old or {}).get("spec") or {}
        if spec.get("type") == "ExternalName":
            return
        if not spec.get("clusterIP"):
            spec["clusterIP"] = old_spec.get("clusterIP") or self._allocate_cluster_ip()
        else:
            self._cluster_ips.add(spec["clusterIP"])
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        if spec.get("type") in ("NodePort", "LoadBalancer"):
            old_ports = {(p.get("port"), p.get("protocol")): p for p in old_spec.get("ports") or []}
            for port in spec.get("ports") or []:
                if "nodePort" not in port:
                    previous = old_ports.get((port.get("port"), port.get("protocol")), {})
                    port["nodePort"] = previous.get("nodePort") or self._allocate_node_port()

    def _validate(
        self, resource: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        problems = validation.metadata_errors(obj, resource.name_rule)
        problems += resource.validator(obj, old)
        if problems:
            raise errors.invalid(resource.group, resource.kind, obj["metadata"]["name"], problems)

    def _commit(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        obj: dict[str, Any],
        managed: ManagedFields,
        old: StoredObject | None,
        acting: tuple[str, str, str],
        options: WriteOptions,
    ) -> WriteResult:
        """Validate, detect a no-op, stamp managedFields times and store."""
        self._validate(resource, obj, old.obj if old else None)
        if old is not None:
            before = _without_volatile(old.obj)
            if json_equal(before, _without_volatile(obj)) and managed.same_sets(old.managed):
                return WriteResult(old.obj, changed=False)
        stamp = now_rfc3339()
        previous = {entry.ident: entry for entry in (old.managed.entries if old else [])}
        for entry in managed.entries:
            earlier = previous.get(entry.ident)
            if entry.ident == acting:
                # the real server records no time for entries written through /scale
                entry.time = None if acting[2] == "scale" else stamp
            elif earlier is not None:
                entry.time = earlier.time
        obj["metadata"]["managedFields"] = managed.encode()
        if not obj["metadata"]["managedFields"]:
            del obj["metadata"]["managedFields"]
        if options.dry_run:
            return WriteResult(obj, created=old is None)
        stored = StoredObject(resource, obj, managed)
        self.store.commit(resource, namespace, name, stored, old.obj if old else None)
        for hook in self.hooks:
            hook(resource, obj, old.obj if old else None)
        return WriteResult(obj, created=old is None)

    # -------------------------------------------------------------------- reads

    def get(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        if resource is NAMESPACES:
            return self._namespace(name)
        return clone(self._require(resource, namespace, name).obj)

    def _namespace(self, name: str) -> dict[str, Any]:
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

    # ------------------------------------------------------------------- writes

    def create(
        self, resource: ResourceType, namespace: str, body: Any, options: WriteOptions
    ) -> WriteResult:
        node = self.node(resource)
        cleaned, warnings = self._decode_body(resource, body, options, node)
        self._check_identity(resource, namespace, "", cleaned)
        metadata = cleaned.setdefault("metadata", {})
        name = metadata.get("name") or ""
        if not name and metadata.get("generateName"):
            suffix = "".join(self._random.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
            name = f"{metadata['generateName']}{suffix}"
        if not name:
            raise errors.invalid(
                resource.group,
                resource.kind,
                "",
                [
                    errors.FieldError(
                        "Required", "metadata.name", detail="name or generateName is required"
                    )
                ],
            )
        if self.store.get(resource, namespace, name) is not None:
            raise errors.already_exists(resource.group, resource.plural, name)
        obj = self._finalize(resource, namespace, name, cleaned, None)
        zero = resource.zero()
        managed = update(
            zero,
            _managed_view(obj),
            node,
            ManagedFields(),
            options.manager,
            resource.group_version,
            self._scope(resource, ""),
        )
        result = self._commit(
            resource,
            namespace,
            name,
            obj,
            managed,
            None,
            (options.manager, "Update", ""),
            options,
        )
        result.created = True
        result.warnings = warnings
        return result

    def replace(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        options: WriteOptions,
        subresource: str = "",
    ) -> WriteResult:
        """PUT: full update with optimistic concurrency on metadata.resourceVersion."""
        node = self.node(resource)
        cleaned, warnings = self._decode_body(resource, body, options, node)
        self._check_identity(resource, namespace, name, cleaned)
        old = self._require(resource, namespace, name)
        wanted = (cleaned.get("metadata") or {}).get("resourceVersion")
        if wanted and str(wanted) != old.obj["metadata"]["resourceVersion"]:
            raise errors.conflict(resource.group, resource.plural, name)
        result = self._write_update(resource, namespace, name, cleaned, old, options, subresource)
        result.warnings = warnings
        return result

    def _write_update(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        candidate: dict[str, Any],
        old: StoredObject,
        options: WriteOptions,
        subresource: str,
        manager_subresource: str | None = None,
    ) -> WriteResult:
        node = self.node(resource)
        obj = self._finalize(resource, namespace, name, candidate, old.obj, subresource)
        entry_subresource = subresource if manager_subresource is None else manager_subresource
        scope = self._scope(resource, subresource)
        managed = update(
            _compared_view(old.obj),
            _compared_view(obj),
            node,
            old.managed,
            options.manager,
            resource.group_version,
            scope,
            entry_subresource,
        )
        return self._commit(
            resource,
            namespace,
            name,
            obj,
            managed,
            old,
            (options.manager, "Update", entry_subresource),
            options,
        )

    def patch(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        raw: bytes,
        options: WriteOptions,
        subresource: str = "",
    ) -> WriteResult:
        if content_type == APPLY_YAML:
            return self._apply(resource, namespace, name, raw, options, subresource)
        if options.force:
            raise _patch_options_invalid(
                "force", "Forbidden", "may not be specified for non-apply patch"
            )
        try:
            patch = parse_json(raw or b"null")
        except ValueError as error:
            raise errors.bad_request(f"error decoding patch: {error}") from error
        old = self._require(resource, namespace, name)
        current = _managed_view(old.obj)
        try:
            if content_type == MERGE_PATCH:
                candidate = patches.merge_patch(current, patch)
            elif content_type == STRATEGIC_PATCH:
                candidate = patches.strategic_merge_patch(current, patch, self.node(resource))
            elif content_type == JSON_PATCH:
                candidate = patches.json_patch(current, patch)
            else:
                raise errors.unsupported_media_type(content_type, PATCH_TYPES)
        except patches.PatchFormatError as error:
            raise errors.bad_request(str(error)) from error
        except patches.StrategicPatchError as error:
            raise errors.internal(str(error)) from error
        except patches.PatchError as error:
            raise ApiError(422, "Invalid", str(error)) from error
        if not isinstance(candidate, dict):
            raise errors.bad_request("the patch did not produce an object")
        cleaned, warnings = self._decode_body(resource, candidate, options, self.node(resource))
        self._check_identity(resource, namespace, name, cleaned)
        wanted = (cleaned.get("metadata") or {}).get("resourceVersion")
        if wanted and str(wanted) != old.obj["metadata"]["resourceVersion"]:
            raise errors.conflict(resource.group, resource.plural, name)
        result = self._write_update(resource, namespace, name, cleaned, old, options, subresource)
        result.warnings = warnings
        return result

    def _apply(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        raw: bytes,
        options: WriteOptions,
        subresource: str,
    ) -> WriteResult:
        if not options.manager:
            raise _patch_options_invalid("fieldManager", "Required", "is required for apply patch")
        if subresource:
            # apply through a subresource is not modelled here
            raise errors.unsupported_media_type(
                APPLY_YAML, [JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH]
            )
        try:
            config = parse_json(raw)
        except ValueError:
            try:
                config = yaml.safe_load(raw)
            except yaml.YAMLError as error:
                raise errors.bad_request(f"error decoding YAML: {error}") from error
        if not isinstance(config, dict):
            raise errors.bad_request("error decoding YAML: the applied configuration is not a map")
        version = config.get("apiVersion")
        if version != resource.group_version:
            raise errors.bad_request(
                "Incorrect version specified in apply patch. Specified patch version: "
                f"{version or ''}, expected: {resource.group_version}"
            )
        if config.get("kind") != resource.kind:
            raise errors.bad_request(
                f"the kind in the applied configuration ({config.get('kind') or ''}) does not "
                f"match the kind of the resource ({resource.kind})"
            )
        metadata = config.get("metadata") or {}
        if metadata.get("managedFields") is not None:
            raise errors.bad_request("metadata.managedFields must be nil")
        node = self.node(resource)
        problems = typed.validate(config, node)
        if problems:
            where = f"{metadata.get('namespace') or ''}/{metadata.get('name') or ''}"
            group_version = resource.group_version if resource.group else f"/{resource.version}"
            detail = (
                str(problems[0])
                if len(problems) == 1
                else "errors:\n" + "\n".join(f"  {p}" for p in problems)
            )
            raise errors.internal(
                f"failed to create typed patch object ({where}; {group_version}, "
                f"Kind={resource.kind}): {detail}"
            )
        self._check_identity(resource, namespace, name, config)
        old = self.store.get(resource, namespace, name)
        wanted = metadata.get("resourceVersion")
        if wanted and (old is None or str(wanted) != old.obj["metadata"]["resourceVersion"]):
            raise errors.conflict(resource.group, resource.plural, name)
        live = _managed_view(old.obj) if old else resource.zero()
        scope = self._scope(resource, subresource)
        try:
            merged, managed = apply(
                live,
                config,
                node,
                old.managed if old else ManagedFields(),
                options.manager,
                resource.group_version,
                options.force,
                scope,
            )
        except ApplyConflict as conflict:
            raise ApiError(
                409, "Conflict", conflict.message(), {"causes": conflict.causes()}
            ) from conflict
        obj = self._finalize(
            resource, namespace, name, merged, old.obj if old else None, subresource
        )
        return self._commit(
            resource, namespace, name, obj, managed, old, (options.manager, "Apply", ""), options
        )

    def delete(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        preconditions: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        if resource is NAMESPACES:
            return self._delete_namespace(name, dry_run)
        stored = self._require(resource, namespace, name)
        metadata = stored.obj["metadata"]
        preconditions = preconditions or {}
        wanted_uid = preconditions.get("uid")
        if wanted_uid and wanted_uid != metadata["uid"]:
            raise errors.conflict(
                resource.group,
                resource.plural,
                name,
                f"Precondition failed: UID in precondition: {wanted_uid}, "
                f"UID in object meta: {metadata['uid']}",
            )
        wanted_rv = preconditions.get("resourceVersion")
        if wanted_rv and str(wanted_rv) != metadata["resourceVersion"]:
            raise errors.conflict(
                resource.group,
                resource.plural,
                name,
                "Precondition failed: ResourceVersion in precondition: "
                f"{wanted_rv}, ResourceVersion in object meta: {metadata['resourceVersion']}",
            )
        final = clone(stored.obj)
        if not dry_run:
            self.store.commit(resource, namespace, name, None, None, deleted=final)
            if resource is SERVICES:
                self._cluster_ips.discard(final.get("spec", {}).get("clusterIP", ""))
        if resource.returns_deleted_object:
            return clone(final)
        details: dict[str, Any] = {"name": name}
        if resource.group:
            details["group"] = resource.group
        details["kind"] = resource.plural
        details["uid"] = metadata["uid"]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }

    def _delete_namespace(self, name: str, dry_run: bool) -> dict[str, Any]:
        obj = self._namespace(name)
        if not dry_run:
            for (_, ns, item), stored in list(self.store.objects.items()):
                if ns == name:
                    self.delete(stored.resource, ns, item)
            if self.store.get(NAMESPACES, "", name) is not None:
                self.store.commit(NAMESPACES, "", name, None, None, deleted=clone(obj))
        obj.setdefault("status", {})["phase"] = "Terminating"
        return obj

    def delete_collection(
        self,
        resource: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        deleted = []
        for stored in self.store.items(resource, namespace, labels, fields):
            metadata = stored.obj["metadata"]
            obj = clone(stored.obj)
            if not dry_run:
                self.delete(resource, metadata.get("namespace", ""), metadata["name"])
            obj.pop("kind", None)
            obj.pop("apiVersion", None)
            deleted.append(obj)
        return {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.group_version,
            "metadata": {"resourceVersion": str(self.store.resource_version)},
            "items": deleted,
        }

    # -------------------------------------------------------------- subresources

    def get_scale(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        return _scale_of(self._require(resource, namespace, name).obj)

    def write_scale(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        content_type: str | None,
        options: WriteOptions,
    ) -> WriteResult:
        """PUT (content_type None) or PATCH of `deployments/scale`."""
        old = self._require(resource, namespace, name)
        scale = _scale_of(old.obj)
        if content_type is None:
            candidate = body
        elif content_type == MERGE_PATCH:
            candidate = patches.merge_patch(scale, body)
        elif content_type == STRATEGIC_PATCH:
            candidate = patches.strategic_merge_patch(
                scale, body, self.schema.definition(SCALE_DEFINITION)
            )
        elif content_type == JSON_PATCH:
            try:
                candidate = patches.json_patch(scale, body)
            except patches.PatchError as error:
                raise ApiError(422, "Invalid", str(error)) from error
        else:
            raise errors.unsupported_media_type(
                content_type, [JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH]
            )
        if not isinstance(candidate, dict):
            raise errors.bad_request("Scale body must be an object")
        wanted = (candidate.get("metadata") or {}).get("resourceVersion")
        if wanted and str(wanted) != old.obj["metadata"]["resourceVersion"]:
            raise errors.conflict(resource.group, resource.plural, name)
        replicas = (candidate.get("spec") or {}).get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid(
                "autoscaling",
                "Scale",
                name,
                [
                    errors.FieldError(
                        "Invalid", "spec.replicas", replicas, "must be greater than or equal to 0"
                    )
                ],
            )
        new = _managed_view(old.obj)
        new.setdefault("spec", {})["replicas"] = replicas
        result = self._write_update(resource, namespace, name, new, old, options, "", "scale")
        result.body = _scale_of(result.body)
        return result

    def set_status(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        status: dict[str, Any],
        manager: str,
    ) -> WriteResult:
        """Replace an object's status as a controller would (`manager`, Update, status)."""
        old = self._require(resource, namespace, name)
        # A write through the status subresource takes only the status of its candidate.
        return self._write_update(
            resource, namespace, name, {"status": status}, old, WriteOptions(manager), "status"
        )


# ----------------------------------------------------------------------- helpers


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


def _decode_path(path: fp.Path) -> str:
    text = ""
    for kind, value in path:
        text += f".{value}" if kind == "f" else f"[{value}]"
    return text.lstrip(".")


def _patch_options_invalid(field_name: str, kind: str, detail: str) -> ApiError:
    problem = errors.FieldError(kind, field_name, detail=detail)
    return ApiError(
        422,
        "Invalid",
        f'PatchOptions.meta.k8s.io "" is invalid: {problem}',
        {"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [problem.cause()]},
    )


_VOLATILE = ("resourceVersion", "managedFields")


def _without_volatile(obj: dict[str, Any]) -> dict[str, Any]:
    out = dict(obj)
    out["metadata"] = {k: v for k, v in obj["metadata"].items() if k not in _VOLATILE}
    return out


def _managed_view(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the field manager sees it (no managedFields)."""
    out = clone(obj)
    out.get("metadata", {}).pop("managedFields", None)
    return out


def _compared_view(obj: dict[str, Any]) -> dict[str, Any]:
    """`_managed_view` for reading only: it shares all but the top level and the
    metadata with `obj` (a field-set comparison never modifies what it compares)."""
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": metadata}


_META_ORDER = (
    "name",
    "generateName",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
)


def _order_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    ordered = {key: metadata[key] for key in _META_ORDER if key in metadata}
    ordered.update({k: v for k, v in metadata.items() if k not in ordered})
    return ordered


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


def _scale_of(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj["metadata"]
    selector = (obj.get("spec") or {}).get("selector")
    try:
        selector_text = str(selector_from_object(selector))
    except SelectorError:
        selector_text = ""
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata.get("namespace", ""),
            "uid": metadata["uid"],
            "resourceVersion": metadata["resourceVersion"],
            "creationTimestamp": metadata["creationTimestamp"],
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
        "status": {
            "replicas": (obj.get("status") or {}).get("replicas", 0),
            "selector": selector_text,
        },
    }


__all__ = ["DEPLOYMENTS", "Engine", "WriteOptions", "WriteResult"]
