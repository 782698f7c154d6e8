"""Server-side apply and managed fields, after the kube-apiserver field manager.

`ManagedFields` holds one entry per manager identity (manager, operation,
subresource), each with the set of fields it owns. `apply` is structured-merge-diff's
Updater.Apply (merge, take the applied set, prune what the applier dropped and
nobody else owns, then check for conflicts with other managers); `update` is
Updater.Update (the writer takes every field it added or changed, away from anyone
else). Conflicts raise `ApplyConflict`, whose message and causes are the real
server's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import fieldpath as fp
from .fieldpath import FieldSet, Path
from .pruning import prune
from .schema import TypeNode
from .typed import Comparison, Skipped, compare, merge, to_field_set

#: Fields no manager ever owns (the field manager strips them before tracking).
STRIPPED: FieldSet = {
    fp.make("apiVersion"),
    fp.make("kind"),
    fp.make("metadata", "name"),
    fp.make("metadata", "namespace"),
    fp.make("metadata", "creationTimestamp"),
    fp.make("metadata", "selfLink"),
    fp.make("metadata", "uid"),
    fp.make("metadata", "clusterName"),
    fp.make("metadata", "generation"),
    fp.make("metadata", "managedFields"),
    fp.make("metadata", "resourceVersion"),
}

APPLY = "Apply"
UPDATE = "Update"


@dataclass
class ManagerEntry:
    """One manager's entry. Its `fields` are never modified in place (a change assigns
    a new set), so that copies of the entry share them: copying and hashing every
    manager's paths again was a good part of each write."""

    manager: str
    operation: str
    api_version: str
    fields: FieldSet
    subresource: str = ""
    time: str | None = None
    _encoded: tuple[FieldSet, dict[str, Any]] | None = field(
        default=None, repr=False, compare=False
    )
    """`fields` as FieldsV1, and the set it was rendered from."""

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.manager, self.operation, self.subresource)

    def identifier(self) -> str:
        """The manager's key in structured-merge-diff (BuildManagerIdentifier: the
        entry's JSON without fields and time, and without apiVersion for appliers)."""
        key: dict[str, str] = {"manager": self.manager, "operation": self.operation}
        if self.operation == UPDATE and self.api_version:
            key["apiVersion"] = self.api_version
        if self.subresource:
            key["subresource"] = self.subresource
        return json.dumps(key, separators=(",", ":"))

    def describe(self) -> str:
        """The manager the way conflict messages name it (printManager). It prints a
        time only for identifiers that carry one, and identifiers never do."""
        text = f'"{self.manager}"'
        if self.subresource:
            text += f' with subresource "{self.subresource}"'
        if self.operation == UPDATE:
            text += f" using {self.api_version}"
        return text

    def encoding_order(self) -> tuple[str, str, str, str, str]:
        """The sort key of sortEncodedManagedFields: operation ("Apply" first), the
        time's whole second (none sorts as the epoch), manager, apiVersion, subresource."""
        return (self.operation, self.time or "", self.manager, self.api_version, self.subresource)

    def encode(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
        }
        if self.time is not None:
            out["time"] = self.time
        out["fieldsType"] = "FieldsV1"
        encoded = self._encoded
        if encoded is None or encoded[0] is not self.fields:
            encoded = self._encoded = (self.fields, fp.fields_v1(self.fields))
        out["fieldsV1"] = encoded[1]
        if self.subresource:
            out["subresource"] = self.subresource
        return out

    def copy(self) -> ManagerEntry:
        """The same entry, over the same field set."""
        return ManagerEntry(
            self.manager,
            self.operation,
            self.api_version,
            self.fields,
            self.subresource,
            self.time,
            self._encoded,
        )

    @staticmethod
    def decode(raw: dict[str, Any]) -> ManagerEntry:
        return ManagerEntry(
            manager=str(raw.get("manager", "")),
            operation=str(raw.get("operation", UPDATE)),
            api_version=str(raw.get("apiVersion", "")),
            fields=fp.from_fields_v1(raw.get("fieldsV1") or {}),
            subresource=str(raw.get("subresource", "")),
            time=raw.get("time"),
        )


@dataclass
class ManagedFields:
    entries: list[ManagerEntry] = field(default_factory=list)

    def copy(self) -> ManagedFields:
        """New entries over the same field sets (`ManagerEntry`), built directly
        (`dataclasses.replace` looks its fields up on every call)."""
        return ManagedFields([entry.copy() for entry in self.entries])

    def get(self, ident: tuple[str, str, str]) -> ManagerEntry | None:
        return next((entry for entry in self.entries if entry.ident == ident), None)

    def put(self, entry: ManagerEntry) -> None:
        for position, existing in enumerate(self.entries):
            if existing.ident == entry.ident:
                self.entries[position] = entry
                return
        self.entries.append(entry)

    def owned(self) -> FieldSet:
        out: FieldSet = set()
        for entry in self.entries:
            out |= entry.fields
        return out

    def drop_empty(self) -> None:
        self.entries = [entry for entry in self.entries if entry.fields]

    def same_sets(self, other: ManagedFields) -> bool:
        mine = [(entry.ident, entry.api_version, entry.fields) for entry in self.entries]
        theirs = [(entry.ident, entry.api_version, entry.fields) for entry in other.entries]
        return mine == theirs

    def encode(self) -> list[dict[str, Any]]:
        """The entries as the API shows them: sorted like encodeManagedFields does, so
        that two edits within one second list their managers alphabetically."""
        return [entry.encode() for entry in sorted(self.entries, key=ManagerEntry.encoding_order)]

    @staticmethod
    def decode(raw: Iterable[dict[str, Any]]) -> ManagedFields:
        return ManagedFields([ManagerEntry.decode(item) for item in raw if item])


@dataclass
class Conflict:
    entry: ManagerEntry
    path: Path


class ApplyConflict(Exception):
    """An apply would change fields that other managers own.

    The message lists managers sorted by identifier, each with its paths in field
    set order (getConflictMessage). The real causes list the managers in Go map
    iteration order, which differs from one request to the next; here they come in
    the message's order.
    """

    def __init__(self, conflicts: list[Conflict]) -> None:
        self.conflicts = sorted(
            conflicts, key=lambda c: (c.entry.identifier(), fp.iteration_order(c.path))
        )
        super().__init__(self.message())

    def message(self) -> str:
        if len(self.conflicts) == 1:
            only = self.conflicts[0]
            return (
                f"Apply failed with 1 conflict: conflict with {only.entry.describe()}: "
                f"{fp.path_string(only.path)}"
            )
        lines: list[str] = []
        by_manager: dict[str, list[Conflict]] = {}
        for conflict in self.conflicts:
            by_manager.setdefault(conflict.entry.identifier(), []).append(conflict)
        for conflicts in by_manager.values():
            lines.append(f"conflicts with {conflicts[0].entry.describe()}:")
            lines.extend(f"- {fp.path_string(c.path)}" for c in conflicts)
        return f"Apply failed with {len(self.conflicts)} conflicts: " + "\n".join(lines)

    def causes(self) -> list[dict[str, str]]:
        return [
            {
                "reason": "FieldManagerConflict",
                "message": f"conflict with {conflict.entry.describe()}",
                "field": fp.path_string(conflict.path),
            }
            for conflict in self.conflicts
        ]


@dataclass
class Scope:
    """Which part of an object an operation may touch (main resource or subresource)."""

    ignored: FieldSet
    roots: FieldSet | None = None

    def __post_init__(self) -> None:
        # Prepared once: `managed_scope` hands out the same few scopes to every write.
        self._ignored = fp.Prefixes(self.ignored)
        self._roots = fp.Prefixes(self.roots) if self.roots is not None else None
        self._skipped = _skipped(self.ignored)
        self._names: set[str] | None = None
        """The top-level fields `compare` keeps, when the roots lie under fields."""
        self._filtered_by_names = False
        """Whether keeping `_names` leaves the comparison as `filter` would."""
        if self.roots is not None and all(root and root[0][0] == "f" for root in self.roots):
            self._names = {root[0][1] for root in self.roots}
            # Every path then begins with a root's field: if the roots are these
            # fields, and no ignored path begins with one of them, filter drops nothing.
            firsts = {root[0] for root in self.roots}
            self._filtered_by_names = all(len(root) == 1 for root in self.roots) and not any(
                path[0] in firsts for path in self._ignored.paths
            )

    def filter(self, comparison: Comparison) -> Comparison:
        result = comparison.exclude(self._ignored)
        return result.restrict(self._roots) if self._roots is not None else result

    def compare(self, old: dict[str, Any], new: dict[str, Any], node: TypeNode) -> Comparison:
        """`filter(compare(old, new))`, comparing only the top-level fields the roots
        lie under (a status write need not walk the spec: filter drops it anyway)."""
        names = self._names
        if names is not None:
            old = {name: value for name, value in old.items() if name in names}
            new = {name: value for name, value in new.items() if name in names}
            if self._filtered_by_names:
                return compare(old, new, node)
        return self.filter(compare(old, new, node))

    def owned(self, paths: Iterable[Path]) -> FieldSet:
        result = fp.recursive_difference(paths, self._ignored)
        return fp.restrict_to(result, self._roots) if self._roots is not None else result

    def fields_of(self, value: dict[str, Any], node: TypeNode) -> FieldSet:
        """`owned(to_field_set(value, node))`, leaving the ignored fields out as it
        walks (building the whole set, then filtering it, hashed every path twice)."""
        return self.walked(to_field_set(value, node, self._skipped))

    @property
    def skipped(self) -> Skipped | None:
        """The ignored fields as a walk of a value's fields leaves them out, when it can
        (`typed.to_field_set`, `typed.validate`)."""
        return self._skipped

    def walked(self, fields: FieldSet) -> FieldSet:
        """`owned` of the fields found by a walk that left out `skipped`."""
        if self._skipped is None:
            return self.owned(fields)
        return fp.restrict_to(fields, self._roots) if self._roots is not None else fields


def _skipped(ignored: FieldSet) -> Skipped | None:
    """`ignored` as `to_field_set` skips fields (None when a path holds anything but
    struct fields or map keys: those are filtered afterwards)."""
    tree: Skipped = {}
    for path in sorted(ignored, key=len):
        if not path:
            continue  # as fieldpath's filters, an empty path ignores nothing
        if any(kind != "f" for kind, _ in path):
            return None
        level: Skipped | bool = tree
        for _, name in path[:-1]:
            assert isinstance(level, dict)
            level = level.setdefault(name, {})
            if level is True:
                break
        else:
            assert isinstance(level, dict)
            level[path[-1][1]] = True
    return tree


def _take_over(
    old: dict[str, Any],
    new: dict[str, Any],
    node: TypeNode,
    managed: ManagedFields,
    acting: tuple[str, str, str],
    force: bool,
    scope: Scope,
) -> Comparison:
    comparison = scope.compare(old, new, node)
    changed = comparison.changed()
    conflicts: list[Conflict] = []
    losses: dict[tuple[str, str, str], FieldSet] = {}
    for entry in managed.entries:
        if entry.ident == acting:
            continue
        clash = entry.fields & changed
        if clash:
            conflicts.extend(Conflict(entry, path) for path in clash)
            losses[entry.ident] = clash
    if conflicts and not force:
        raise ApplyConflict(conflicts)
    removed = comparison.removed
    for entry in managed.entries:
        if entry.ident == acting:
            continue
        lost = losses.get(entry.ident)
        if lost or not entry.fields.isdisjoint(removed):
            # a new set (`ManagerEntry`), built only for an entry that loses fields
            entry.fields = entry.fields - (lost or set()) - removed
    return comparison


def apply(
    live: dict[str, Any],
    config: dict[str, Any],
    node: TypeNode,
    managed: ManagedFields,
    manager: str,
    api_version: str,
    force: bool,
    scope: Scope,
    applied: FieldSet | None = None,
) -> tuple[dict[str, Any], ManagedFields]:
    """Server-side apply of `config` onto `live` (both without managedFields);
    `applied`, the fields of `config` in scope, when they are known already."""
    managed = managed.copy()
    ident = (manager, APPLY, "")
    previous = managed.get(ident)
    last = previous.fields if previous else set()
    if applied is None:
        applied = scope.fields_of(config, node)
    managed.put(
        ManagerEntry(manager, APPLY, api_version, applied, time=previous.time if previous else None)
    )
    merged = merge(live, config, node)
    if not last <= applied:
        # Pruning removes only fields the applier owned before and no longer applies:
        # with every one of them applied again (a re-apply, most often) it keeps all.
        merged = prune(merged, last, managed.owned(), node)
    if any(entry.ident != ident for entry in managed.entries):
        # Alone (an object's creation, most often), the applier has no one to
        # conflict with or take fields from: the comparison would go unread.
        _take_over(live, merged, node, managed, ident, force, scope)
    managed.drop_empty()
    return merged, managed


def update(
    old: dict[str, Any],
    new: dict[str, Any],
    node: TypeNode,
    managed: ManagedFields,
    manager: str,
    api_version: str,
    scope: Scope,
    subresource: str = "",
) -> ManagedFields:
    """The managed fields after `manager` replaced `old` by `new` (a non-apply write)."""
    managed = managed.copy()
    ident = (manager, UPDATE, subresource)
    comparison = _take_over(old, new, node, managed, ident, True, scope)
    entry = managed.get(ident) or ManagerEntry(
        manager, UPDATE, api_version, set(), subresource=subresource
    )
    entry.fields = scope.owned(
        (entry.fields - comparison.removed) | comparison.modified | comparison.added
    )
    entry.api_version = api_version
    managed.put(entry)
    managed.drop_empty()
    return managed
