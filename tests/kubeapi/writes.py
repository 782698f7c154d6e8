"""The writes every verb shares: create, update (PUT and every non-apply write
funnels into one), delete, a controller's status write, and the last steps of each
(validation, the no-op check, managedFields times, the commit and its hooks)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import clock, errors, validation
from . import fieldpath as fp
from .decoding import check_identity, decode_body
from .json_values import clone, json_equal
from .normalization import finalize
from .reads import EngineReads
from .resources import NAMESPACES, SERVICES, ResourceType
from .schema import Schema
from .selectors import FieldSelector, LabelSelector
from .service_allocations import ServiceAllocations
from .ssa import STRIPPED, ManagedFields, Scope, update
from .store import Store, StoredObject

_STATUS = fp.make("status")


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


class EngineWrites(EngineReads):
    """The reads, and the writes the other verbs build on."""

    def __init__(self, store: Store, schema: Schema | None = None) -> None:
        super().__init__(store, schema)
        self._random = random.Random(0x6B75)
        self.services = ServiceAllocations(self._random)
        self.hooks: list[CommitHook] = []

    def _validate(
        self, resource: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        if old is not None and _checked_parts_kept(obj, old):
            # The old object passed these checks, on these very parts; its checks
            # against the object before it compare parts that are equal here.
            return
        problems = validation.metadata_errors(obj, resource.name_rule)
        problems += resource.validator(obj, old)
        if problems:
            raise errors.invalid(resource.group, resource.kind, obj["metadata"]["name"], problems)

    def commit(
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
        stamp = clock.now_rfc3339()
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

    def create(
        self, resource: ResourceType, namespace: str, body: Any, options: WriteOptions
    ) -> WriteResult:
        node = self.node(resource)
        cleaned, warnings = decode_body(resource, body, options.field_validation, node)
        check_identity(resource, namespace, "", cleaned)
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
        obj = finalize(resource, node, namespace, name, cleaned, None, self.services)
        zero = resource.zero()
        managed = update(
            zero,
            managed_view(obj),
            node,
            ManagedFields(),
            options.manager,
            resource.group_version,
            managed_scope(resource, ""),
        )
        result = self.commit(
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
        cleaned, warnings = decode_body(resource, body, options.field_validation, node)
        check_identity(resource, namespace, name, cleaned)
        old = self.require(resource, namespace, name)
        return self.update_at_version(
            resource, namespace, name, cleaned, old, options, subresource, warnings
        )

    def update_at_version(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        cleaned: dict[str, Any],
        old: StoredObject,
        options: WriteOptions,
        subresource: str,
        warnings: list[str],
    ) -> WriteResult:
        """The write of a PUT or a non-apply PATCH, `cleaned` over `old`: a conflict if
        it names a resourceVersion other than the stored one (optimistic concurrency)."""
        wanted = (cleaned.get("metadata") or {}).get("resourceVersion")
        if wanted and str(wanted) != old.obj["metadata"]["resourceVersion"]:
            raise errors.conflict(resource.group, resource.plural, name)
        result = self.write_update(resource, namespace, name, cleaned, old, options, subresource)
        result.warnings = warnings
        return result

    def write_update(
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
        obj = finalize(
            resource, node, namespace, name, candidate, old.obj, self.services, subresource
        )
        entry_subresource = subresource if manager_subresource is None else manager_subresource
        scope = managed_scope(resource, subresource)
        managed = update(
            read_only_view(old.obj),
            read_only_view(obj),
            node,
            old.managed,
            options.manager,
            resource.group_version,
            scope,
            entry_subresource,
        )
        return self.commit(
            resource,
            namespace,
            name,
            obj,
            managed,
            old,
            (options.manager, "Update", entry_subresource),
            options,
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
        stored = self.require(resource, namespace, name)
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
                self.services.release(final)
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
        obj = self.read_namespace(name)
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

    def set_status(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        status: dict[str, Any],
        manager: str,
    ) -> WriteResult:
        """Replace an object's status as a controller would (`manager`, Update, status)."""
        old = self.require(resource, namespace, name)
        # A write through the status subresource takes only the status of its candidate.
        return self.write_update(
            resource, namespace, name, {"status": status}, old, WriteOptions(manager), "status"
        )


_STATUS_SCOPE = Scope(STRIPPED, {_STATUS})
_ALL_BUT_STATUS = Scope(STRIPPED | {_STATUS})
_ALL = Scope(set(STRIPPED))


def managed_scope(resource: ResourceType, subresource: str) -> Scope:
    """The part of an object a write's managedFields entry records: never the fields
    the server sets; through `status` only the status; on a kind with a status
    subresource, all but the status. (The same three scopes for every write: each is
    prepared once.)"""
    if subresource == "status":
        return _STATUS_SCOPE
    if resource.default_status is not None:
        return _ALL_BUT_STATUS
    return _ALL


def _checked_parts_kept(obj: dict[str, Any], old: dict[str, Any]) -> bool:
    """Whether `obj` has the parts of `old` its validation reads (the spec, and the
    metadata's name, labels and annotations) as they are, the same objects: as a
    status write keeps them."""
    metadata, old_metadata = obj["metadata"], old["metadata"]
    return (
        obj.get("spec") is old.get("spec")
        and metadata.get("name") == old_metadata.get("name")
        and metadata.get("labels") is old_metadata.get("labels")
        and metadata.get("annotations") is old_metadata.get("annotations")
    )


_VOLATILE = ("resourceVersion", "managedFields")


def _without_volatile(obj: dict[str, Any]) -> dict[str, Any]:
    out = dict(obj)
    out["metadata"] = {k: v for k, v in obj["metadata"].items() if k not in _VOLATILE}
    return out


def managed_view(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the field manager sees it (no managedFields)."""
    out = clone(obj)
    out.get("metadata", {}).pop("managedFields", None)
    return out


def read_only_view(obj: dict[str, Any]) -> dict[str, Any]:
    """`managed_view` for reading only: it shares all but the top level and the
    metadata with `obj` (a field-set comparison never modifies what it compares,
    nor does a merge what it merges)."""
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": metadata}
