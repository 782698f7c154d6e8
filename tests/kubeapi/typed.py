"""Schema-aware operations on JSON values, after structured-merge-diff.

These are the building blocks of server-side apply: validating an applied
configuration against the schema, turning a value into the set of fields it sets,
merging two values (list-maps by key), comparing two values into added / removed /
modified field sets (removing a set of fields from a value: `pruning.py`). Semantics follow
sigs.k8s.io/structured-merge-diff (v4): scalars, atomic maps and atomic lists are
leaves; struct fields and map keys are `f:` elements; items of list-maps are `k:`
elements (with the OpenAPI default filled in for a missing `protocol` key); items
of sets are `v:` elements. Values are plain JSON (dict, list, str, int, float, bool,
None); `MISSING` stands for an absent field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from . import fieldpath as fp
from .fieldpath import FieldSet, Path, PathElement
from .json_values import json_equal
from .schema import CONTAINERS, KEY_FIELD_DEFAULTS, TypeNode


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


@dataclass
class TypedError:
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{fp.path_string(self.path)}: {self.message}"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "map"
    return "null"


def _scalar_ok(value: Any, allowed: frozenset[str]) -> bool:
    if value is None or not allowed:
        return True
    if isinstance(value, bool):
        return "boolean" in allowed
    if isinstance(value, int):
        return bool({"integer", "number"} & allowed)
    if isinstance(value, float):
        return "number" in allowed or ("integer" in allowed and value.is_integer())
    if isinstance(value, str):
        return "string" in allowed
    return False


def _scalar_error(value: Any, node: TypeNode, path: Path) -> TypedError:
    return TypedError(path, f"expected {_expected(node.scalar_types)}, got {_json_type(value)}")


def _expected(allowed: frozenset[str]) -> str:
    if allowed == frozenset({"string"}):
        return "string"
    if allowed <= {"integer", "number"}:
        return "numeric (int or float)"
    if allowed == frozenset({"boolean"}):
        return "bool"
    return " or ".join(sorted(allowed))


def item_element(item: Any, node: TypeNode, position: int) -> PathElement:
    """The path element of one list item; raises ValueError when it has none."""
    if node.list_type == "map" and node.keys:
        if not isinstance(item, dict):
            raise ValueError(f"expected map, got {_json_type(item)}")
        keys: dict[str, Any] = {}
        for name in node.keys:
            if item.get(name) is not None:
                keys[name] = item[name]
            elif name in KEY_FIELD_DEFAULTS:
                keys[name] = KEY_FIELD_DEFAULTS[name]
            else:
                raise ValueError(
                    f'associative list with keys has an element that omits key field "{name}"'
                    " (and doesn't have default value)"
                )
        return fp.key(keys)
    if node.list_type == "set":
        return fp.value(item)
    return fp.index(position)


Skipped = dict[str, "bool | Skipped"]
"""Fields a walk leaves out, by name: True for the field and all below it, or the
same kind of mapping for the fields below it."""


def validate(
    value: Any,
    node: TypeNode,
    path: Path = (),
    fields: FieldSet | None = None,
    skipped: Skipped | None = None,
) -> list[TypedError]:
    """Type errors of `value`: undeclared fields, wrong scalar types, duplicate keys.
    With `fields`, what `to_field_set(value, node, skipped)` gives is added to it as
    well, when there are no errors (an apply validates the configuration, then takes
    its fields: one walk over it instead of two)."""
    errors: list[TypedError] = []
    _validate(value, node, path, errors, fields, skipped)
    return errors


def _walked(value: Any, node: TypeNode) -> bool:
    """Whether `to_field_set` walks into `value` (the opposite of `_is_leaf`)."""
    if isinstance(value, dict):
        return bool(value) and node.walks_dict
    return isinstance(value, list) and bool(value) and node.walks_list


def _validate(
    value: Any,
    node: TypeNode,
    path: Path,
    errors: list[TypedError],
    out: FieldSet | None = None,
    skipped: Skipped | None = None,
) -> None:
    """`validate`; `out`, when given, gets the fields of `value` (it is walked into)."""
    if value is None or node.kind == "any":
        return
    if node.kind == "scalar":
        if not _scalar_ok(value, node.scalar_types):
            errors.append(_scalar_error(value, node, path))
        return
    if node.kind in ("struct", "map"):
        if not isinstance(value, dict):
            errors.append(TypedError(path, f"expected map, got {_json_type(value)}"))
            return
        declared, other = node.children
        undeclared = None if node.kind == "struct" else other
        for name, child in value.items():
            child_node = declared.get(name, undeclared)
            if child_node is None:
                errors.append(TypedError((*path, fp.field(name)), "field not declared in schema"))
                continue
            below = skipped.get(name) if skipped else None
            collect = out if below is not True else None
            if child_node.kind == "scalar":
                # Most fields are scalars: their path is built only for an error.
                if type(child) not in child_node.accepts and not _scalar_ok(
                    child, child_node.scalar_types
                ):
                    errors.append(_scalar_error(child, child_node, (*path, fp.field(name))))
                if collect is not None:
                    collect.add((*path, ("f", name)))
                continue
            child_path = (*path, ("f", name))
            if collect is not None and not _walked(child, child_node):
                collect.add(child_path)  # a leaf: what is inside is checked, not collected
                collect = None
            _validate(
                child,
                child_node,
                child_path,
                errors,
                collect,
                below if isinstance(below, dict) else None,
            )
        return
    if not isinstance(value, list):
        errors.append(TypedError(path, f"expected list, got {_json_type(value)}"))
        return
    seen: set[PathElement] = set()
    elem = node.elem
    for position, item in enumerate(value):
        try:
            element = item_element(item, node, position)
        except ValueError as error:
            errors.append(TypedError(path, f"element {position}: {error}"))
            continue
        if element in seen and node.list_type != "atomic":
            errors.append(
                TypedError(path, f"duplicate entries for key {fp.element_string(element)}")
            )
            continue
        seen.add(element)
        item_path = (*path, element)
        if out is not None:
            out.add(item_path)
        _validate(item, elem, item_path, errors, out if _walked(item, elem) else None)


def drop_unknown(value: Any, node: TypeNode, path: Path = ()) -> tuple[Any, list[Path]]:
    """`value` without the fields its schema does not declare, and where they were."""
    dropped: list[Path] = []
    return _drop(value, node, path, dropped), dropped


def _drop(value: Any, node: TypeNode, path: Path, dropped: list[Path]) -> Any:
    if node.kind in ("struct", "map") and isinstance(value, dict):
        out = {}
        for name, child in value.items():
            child_node = node.child(name)
            if child_node is None:
                dropped.append((*path, fp.field(name)))
                continue
            out[name] = _drop(child, child_node, (*path, fp.field(name)), dropped)
        return out
    if node.kind == "list" and isinstance(value, list):
        return [
            _drop(item, node.elem, (*path, fp.index(position)), dropped)
            for position, item in enumerate(value)
        ]
    return value


def _is_leaf(value: Any, node: TypeNode) -> bool:
    if node.kind in ("scalar", "any") or node.atomic:
        return True
    if node.kind in ("struct", "map"):
        return not isinstance(value, dict) or not value
    return not isinstance(value, list) or not value


def to_field_set(value: Any, node: TypeNode, skipped: Skipped | None = None) -> FieldSet:
    """The fields `value` sets (its members), as structured-merge-diff computes them,
    but for the ones `skipped` (`Scope.fields_of`)."""
    out: FieldSet = set()
    if isinstance(value, dict):
        _fields_to_set(value, node, (), out, skipped)
    return out


def _to_set(value: Any, node: TypeNode, path: Path, out: FieldSet) -> None:
    if isinstance(value, dict) and value and node.walks_dict:
        _fields_to_set(value, node, path, out)
    elif isinstance(value, list) and value and node.walks_list:
        _items_to_set(value, node, path, out)
    else:
        out.add(path)  # a leaf (`_is_leaf`)


def _items_to_set(value: list[Any], node: TypeNode, path: Path, out: FieldSet) -> None:
    elem = node.elem
    for position, item in enumerate(value):
        try:
            element = item_element(item, node, position)
        except ValueError:
            continue
        item_path = (*path, element)
        out.add(item_path)
        _to_set(item, elem, item_path, out)


def _fields_to_set(
    value: dict[str, Any],
    node: TypeNode,
    path: Path,
    out: FieldSet,
    skipped: Skipped | None = None,
) -> None:
    # `_to_set` inlined for the fields of a map, most of a value: a call per field
    # was most of the walk's time.
    declared, other = node.children
    for name, child in value.items():
        below = skipped.get(name) if skipped else None
        if below is True:
            continue
        child_path = (*path, ("f", name))
        if isinstance(child, dict):
            child_node = declared.get(name, other)
            if child and child_node.walks_dict:
                # only a map's fields can be skipped: a leaf or a list is kept whole
                _fields_to_set(child, child_node, child_path, out, below or None)
                continue
        elif isinstance(child, list):
            child_node = declared.get(name, other)
            if child and child_node.walks_list:
                _items_to_set(child, child_node, child_path, out)
                continue
        out.add(child_path)  # a leaf (`_is_leaf`): a scalar whatever its type says


def _items(value: list[Any], node: TypeNode) -> tuple[list[PathElement], dict[PathElement, Any]]:
    order: list[PathElement] = []
    observed: dict[PathElement, Any] = {}
    for position, item in enumerate(value):
        try:
            element = item_element(item, node, position)
        except ValueError:
            element = fp.index(position)
        if element in observed:
            continue
        observed[element] = item
        order.append(element)
    return order, observed


def merge(lhs: Any, rhs: Any, node: TypeNode) -> Any:
    """Merge `rhs` (the applied configuration) into `lhs` (the live object).

    The result shares the parts it takes whole with `lhs` and `rhs` (copying them
    was half of a re-apply's merge, and the write normalizes the result into a
    new object anyway): copy it before modifying it."""
    if rhs is MISSING:
        return lhs
    if lhs is MISSING or node.kind in ("scalar", "any") or node.atomic:
        return rhs
    if isinstance(lhs, dict) and isinstance(rhs, dict):
        if not lhs and not rhs:
            return {}
        out: dict[str, Any] = {}
        declared, other = node.children
        for name, child in lhs.items():
            given = rhs.get(name, MISSING)
            if given is not MISSING:
                child = merge(child, given, declared.get(name, other))
            out[name] = child
        for name, child in rhs.items():
            if name not in lhs:
                out[name] = child
        return out
    if isinstance(lhs, list) and isinstance(rhs, list) and node.granular_list:
        if not lhs and not rhs:
            return []
        return _merge_items(lhs, rhs, node)
    return rhs


def _merge_items(lhs: list[Any], rhs: list[Any], node: TypeNode) -> list[Any]:
    lhs_order, lhs_items = _items(lhs, node)
    rhs_order, rhs_items = _items(rhs, node)
    shared = [element for element in rhs_order if element in lhs_items]
    next_shared = shared.pop(0) if shared else None
    merged_rhs: set[PathElement] = set()
    out: list[Any] = []
    left = right = 0
    while left < len(lhs_order) or right < len(rhs_order):
        if left < len(lhs_order) and right < len(rhs_order):
            element = lhs_order[left]
            if element == rhs_order[right]:
                merged_rhs.add(element)
                out.append(merge(lhs_items[element], rhs_items[element], node.elem))
                left += 1
                right += 1
                next_shared = shared.pop(0) if shared else None
                continue
            if element in rhs_items and next_shared is not None and next_shared != element:
                left += 1
                continue
        if left < len(lhs_order):
            element = lhs_order[left]
            if element not in rhs_items:
                out.append(lhs_items[element])
                left += 1
                continue
            if element in merged_rhs:
                left += 1
                continue
        if right < len(rhs_order):
            element = rhs_order[right]
            merged_rhs.add(element)
            out.append(merge(lhs_items.get(element, MISSING), rhs_items[element], node.elem))
            right += 1
            if next_shared == element:
                next_shared = shared.pop(0) if shared else None
    return out


@dataclass
class Comparison:
    added: FieldSet = field(default_factory=set)
    removed: FieldSet = field(default_factory=set)
    modified: FieldSet = field(default_factory=set)

    def changed(self) -> FieldSet:
        return self.added | self.modified

    def exclude(self, ignored: FieldSet | fp.Prefixes) -> Comparison:
        return Comparison(
            fp.recursive_difference(self.added, ignored),
            fp.recursive_difference(self.removed, ignored),
            fp.recursive_difference(self.modified, ignored),
        )

    def restrict(self, roots: FieldSet | fp.Prefixes) -> Comparison:
        return Comparison(
            fp.restrict_to(self.added, roots),
            fp.restrict_to(self.removed, roots),
            fp.restrict_to(self.modified, roots),
        )


def compare(lhs: Any, rhs: Any, node: TypeNode) -> Comparison:
    """The fields `rhs` adds, removes and modifies relative to `lhs` (whole objects)."""
    result = Comparison()
    names = list(lhs) + [name for name in rhs if name not in lhs]
    declared, other = node.children
    for name in names:
        _compare(
            lhs.get(name, MISSING),
            rhs.get(name, MISSING),
            declared.get(name, other),
            (("f", name),),
            result,
        )
    return result


def _compare(lhs: Any, rhs: Any, node: TypeNode, path: Path, result: Comparison) -> None:
    if lhs is MISSING:
        _every_path(rhs, node, path, result.added)
        return
    if rhs is MISSING:
        _every_path(lhs, node, path, result.removed)
        return
    if isinstance(lhs, CONTAINERS) and type(lhs) is type(rhs) and json_equal(lhs, rhs):
        # Equal values add, remove and modify nothing: most of an object is unchanged
        # by a write, and comparing it at C speed spares walking it.
        return
    same_shape = (isinstance(lhs, dict) and isinstance(rhs, dict)) or (
        isinstance(lhs, list) and isinstance(rhs, list)
    )
    if (_is_leaf(lhs, node) and _is_leaf(rhs, node)) or not same_shape:
        if not json_equal(lhs, rhs):
            result.modified.add(path)
        return
    if isinstance(lhs, dict):
        names = list(lhs) + [name for name in rhs if name not in lhs]
        declared, other = node.children
        for name in names:
            _compare(
                lhs.get(name, MISSING),
                rhs.get(name, MISSING),
                declared.get(name, other),
                (*path, ("f", name)),
                result,
            )
        return
    left_order, left_items = _items(lhs, node)
    right_order, right_items = _items(rhs, node)
    for element in right_order + [e for e in left_order if e not in right_items]:
        _compare(
            left_items.get(element, MISSING),
            right_items.get(element, MISSING),
            node.elem,
            (*path, element),
            result,
        )


def _every_path(value: Any, node: TypeNode, path: Path, out: FieldSet) -> None:
    """What `_compare` finds where one side is absent: `path` and every path below it
    (a field added to or removed from an object, such as a first status), walked
    without comparing."""
    out.add(path)
    if isinstance(value, dict) and value and node.walks_dict:
        declared, other = node.children
        for name, child in value.items():
            if isinstance(child, CONTAINERS):
                _every_path(child, declared.get(name, other), (*path, ("f", name)), out)
            else:
                out.add((*path, ("f", name)))  # a scalar is a leaf
    elif isinstance(value, list) and value and node.walks_list:
        order, items = _items(value, node)
        elem = node.elem
        for element in order:
            _every_path(items[element], elem, (*path, element), out)
