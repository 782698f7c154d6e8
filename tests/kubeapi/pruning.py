"""Pruning after an apply, after structured-merge-diff's Updater.prune: removing
from the merged object what the applier owned before and nobody owns now, with the
set operations it is built of (`remove_items`, `ensure_named`)."""

from __future__ import annotations

from typing import Any

from . import fieldpath as fp
from .fieldpath import FieldSet, Path
from .json_values import clone
from .schema import ANY, TypeNode
from .typed import item_element, to_field_set


def _prefixes(paths: FieldSet) -> set[Path]:
    out: set[Path] = set()
    for path in paths:
        for size in range(1, len(path)):
            out.add(path[:size])
    return out


def remove_items(value: dict[str, Any], paths: FieldSet, node: TypeNode) -> dict[str, Any]:
    """`value` without the members of `paths` (each with everything below it)."""
    if not paths:
        return clone(value)
    result = _remove(value, node, (), paths, _prefixes(paths))
    return result if isinstance(result, dict) else {}


def _remove(value: Any, node: TypeNode, path: Path, paths: FieldSet, parents: set[Path]) -> Any:
    if isinstance(value, dict) and not (node.atomic or node.kind in ("scalar",)):
        out: dict[str, Any] = {}
        for name, child in value.items():
            child_path = (*path, fp.field(name))
            if child_path in paths:
                continue
            if child_path in parents:
                out[name] = _remove(child, node.child(name) or ANY, child_path, paths, parents)
            else:
                out[name] = clone(child)
        return out if out or not path else None
    if isinstance(value, list) and node.granular_list:
        items: list[Any] = []
        for position, item in enumerate(value):
            try:
                element = item_element(item, node, position)
            except ValueError:
                items.append(clone(item))
                continue
            item_path = (*path, element)
            if item_path in paths:
                continue
            if item_path in parents:
                items.append(_remove(item, node.elem, item_path, paths, parents))
            else:
                items.append(clone(item))
        return items or None
    return clone(value)


_NAMED_CACHE: dict[tuple[int, Path], tuple[Path, ...]] = {}


def _named_prefixes(path: Path, root: TypeNode) -> tuple[Path, ...]:
    """The proper prefixes of `path` that end in a declared struct field."""
    cache_key = (id(root), path)
    cached = _NAMED_CACHE.get(cache_key)
    if cached is not None:
        return cached
    named: list[Path] = []
    node: TypeNode | None = root
    for size, (kind, text) in enumerate(path[:-1], start=1):
        if node is None:
            break
        if kind == "f" and node.kind == "struct" and text in node.fields:
            named.append(path[:size])
        node = node.child(text) if kind == "f" else node.elem
    if len(_NAMED_CACHE) > 200_000:
        _NAMED_CACHE.clear()
    result = _NAMED_CACHE[cache_key] = tuple(named)
    return result


def ensure_named(paths: FieldSet, root: TypeNode) -> FieldSet:
    """`paths` plus every struct field that is a parent of one of them."""
    out = set(paths)
    for path in paths:
        out.update(_named_prefixes(path, root))
    return out


def prune(
    merged: dict[str, Any], last: FieldSet, owned: FieldSet, node: TypeNode
) -> dict[str, Any]:
    """Remove from `merged` what the applier owned before (`last`) and nobody owns now.

    `owned` is the union of every manager's set after the apply, the applier's new
    set included. Mirrors Updater.prune + addBackOwnedItems + addBackDanglingItems.
    """
    if not last:
        return merged
    last_named = ensure_named(last, node)
    first = remove_items(merged, last_named, node)
    merged_set = ensure_named(to_field_set(merged, node), node)
    first_set = ensure_named(to_field_set(first, node), node)
    owned_named = ensure_named(owned, node)
    second = remove_items(merged, merged_set - (first_set | owned_named), node)
    second_set = ensure_named(to_field_set(second, node), node)
    return remove_items(merged, (merged_set - second_set) & last_named, node)
