"""Non-apply patches: JSON merge patch, strategic merge patch, JSON patch."""

from __future__ import annotations

from typing import Any

from .json_values import clone
from .schema import ANY, TypeNode


class PatchError(ValueError):
    """A patch that cannot be applied (a JSON patch: the API answers 422)."""


class StrategicPatchError(PatchError):
    """A strategic merge patch that cannot be applied: the API passes the error on
    unclassified (500; interpretStrategicMergePatchError's default)."""


class PatchFormatError(StrategicPatchError):
    """A malformed strategic merge patch directive: the API answers 400."""


DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList/"
RETAIN_KEYS = "$retainKeys"
SET_ELEMENT_ORDER = "$setElementOrder/"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return clone(patch)
    out = clone(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = merge_patch(out.get(name), value)
    return out


def strategic_merge_patch(target: Any, patch: Any, node: TypeNode) -> Any:
    """Strategic merge patch, with list merge keys and strategies from the schema.

    After apimachinery's strategicpatch (mergeMap / mergeSlice): `null` deletes,
    `$patch: replace|delete` in maps and list items, `$deleteFromPrimitiveList/<list>`,
    and the order of merged lists: the items the patch names in the patch's order (or
    in `$setElementOrder/<list>`'s), the other live items in their live order, the two
    interleaved by mergeSortedSlice. A live item goes first only when it came before
    the next named item in the live list, so an item the patch adds goes before the
    live items it does not name unless `$setElementOrder` places it. `$retainKeys`
    drops the live keys it does not list.
    """
    if not isinstance(patch, dict):
        return clone(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: clone(v) for k, v in patch.items() if not k.startswith("$")}
    if directive == "delete":
        return None
    if directive is not None:
        raise StrategicPatchError(f"unknown patch type: {directive} in map: {patch}")
    out = clone(target) if isinstance(target, dict) else {}
    if RETAIN_KEYS in patch:
        _retain_keys(out, patch)
    ordered = _apply_element_orders(out, patch, node)
    for name, value in patch.items():
        if name in ordered or name == RETAIN_KEYS:
            continue
        if name.startswith(DELETE_FROM_PRIMITIVE_LIST):
            field = name.removeprefix(DELETE_FROM_PRIMITIVE_LIST)
            if isinstance(out.get(field), list):
                out[field] = [item for item in out[field] if item not in (value or [])]
            continue
        if name.startswith("$"):
            continue
        child = node.child(name) or ANY
        if value is None:
            out.pop(name, None)
        elif isinstance(value, list) and child.kind == "list":
            out[name] = _patch_list(out.get(name), value, child)
        elif isinstance(value, dict):
            result = strategic_merge_patch(out.get(name), value, child)
            if result is None:
                out.pop(name, None)
            else:
                out[name] = result
        else:
            out[name] = clone(value)
    return out


def _retain_keys(out: dict[str, Any], patch: dict[str, Any]) -> None:
    """applyRetainKeysDirective: every key the patch sets must be listed, and the live
    keys that are not listed go."""
    retained = patch[RETAIN_KEYS]
    if not isinstance(retained, list):
        raise PatchFormatError("invalid patch format of retainKeys")
    for name, value in patch.items():
        directive = name == RETAIN_KEYS or name.startswith(
            (DELETE_FROM_PRIMITIVE_LIST, SET_ELEMENT_ORDER)
        )
        if value is None or directive:
            continue
        if name not in retained:
            raise PatchFormatError("invalid patch format of retainKeys")
    for name in [name for name in out if name not in retained]:
        del out[name]


def _apply_element_orders(out: dict[str, Any], patch: dict[str, Any], node: TypeNode) -> set[str]:
    """Merge each list that has a `$setElementOrder/<list>` into `out` in that order
    (mergePatchIntoOriginal); the names of the directives and lists it consumed."""
    consumed: set[str] = set()
    for name, order in patch.items():
        if not name.startswith(SET_ELEMENT_ORDER):
            continue
        consumed.add(name)
        field = name.removeprefix(SET_ELEMENT_ORDER)
        if not isinstance(order, list):
            raise PatchFormatError("invalid patch format of setElementOrder list")
        child = node.child(field) or ANY
        key = child.patch_merge_key
        live, listed = out.get(field), patch.get(field)
        _check_order(listed if isinstance(listed, list) else [], order, key)
        if field in patch:
            consumed.add(field)
            merged = _patch_list(live, listed, child) if isinstance(listed, list) else listed
        elif isinstance(live, list):
            merged = live
        else:
            continue
        if not isinstance(merged, list):
            raise StrategicPatchError(f"{field} must be a list to be ordered by {name}")
        live_items = live if isinstance(live, list) else []
        if key and isinstance(listed, list) and "merge" in child.patch_strategy.split(","):
            live_items = _live_slots_after_merge(live_items, listed, key)
        named = [item for item in merged if _position(order, item, key) >= 0]
        others = [item for item in merged if _position(order, item, key) < 0]
        out[field] = _interleave(others, _sorted_by(named, order, key), live_items, key)
    return consumed


def _live_slots_after_merge(live: list[Any], listed: list[Any], key: str) -> list[Any]:
    """The live list as mergePatchIntoOriginal orders by it after mergeSlice ran.

    mergeSlice deletes items in place (`append(original[:k], original[k+1:]...)`)
    and appends the new items to what is left, so the live slice, which keeps its
    length, then holds the remaining items, the first new items in the freed slots,
    and stale copies after them. The real order depends on it: apimachinery's own
    "add map and delete map from merging list" case is [2, 4, 3], not [2, 3, 4].
    """
    slots = list(live)
    length = len(slots)
    for item in listed:
        if isinstance(item, dict) and item.get("$patch") == "delete":
            value = _merge_key_of(item, key)
            while (position := _position(slots[:length], {key: value}, key)) >= 0:
                slots[position : length - 1] = slots[position + 1 : length]
                length -= 1
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in listed):
        return slots  # the patch's items replace the list: nothing is appended to it
    grown = slots[:length]
    for item in listed:
        if isinstance(item, dict) and "$patch" in item:
            continue
        if _position(grown, item, key) < 0:
            grown.append(item)
            if length < len(slots):
                slots[length] = item
                length += 1
    return slots


def _check_order(listed: list[Any], order: list[Any], key: str) -> None:
    """validatePatchWithSetOrderList: the patch names its items in the directive's order."""
    items = [i for i in listed if not (isinstance(i, dict) and i.get("$patch") == "delete")]
    position = order_position = 0
    while position < len(items) and order_position < len(order):
        if isinstance(items[position], dict) and "$patch" in items[position]:
            position += 1
            continue
        if _same_item(items[position], order[order_position], key):
            position += 1
        order_position += 1
    if position < len(items):
        raise StrategicPatchError(
            f"The order in patch list:\n{listed}\n doesn't match $setElementOrder list:\n{order}\n"
        )


def _merge_key_of(item: Any, key: str) -> Any:
    if not key:
        return item
    if not isinstance(item, dict) or key not in item:
        raise StrategicPatchError(f"map: {item} does not contain declared merge key: {key}")
    return item[key]


def _same_item(left: Any, right: Any, key: str) -> bool:
    return bool(_merge_key_of(left, key) == _merge_key_of(right, key))


def _position(items: list[Any], wanted: Any, key: str) -> int:
    """The index of the item of `items` with `wanted`'s merge key (or value), or -1."""
    value = _merge_key_of(wanted, key)
    for position, item in enumerate(items):
        candidate = item.get(key) if key and isinstance(item, dict) else item
        if candidate == value:
            return position
    return -1


def _sorted_by(items: list[Any], order: list[Any], key: str) -> list[Any]:
    """normalizeSliceOrder: `items` (each named in `order`) in `order`'s order."""
    return sorted(items, key=lambda item: _position(order, item, key))


def _interleave(live_only: list[Any], patched: list[Any], live: list[Any], key: str) -> list[Any]:
    """mergeSortedSlice: both lists keep their order; a live-only item goes first only
    when both it and the next patched item are live and it came first there."""
    out: list[Any] = []
    left = right = 0
    while left < len(live_only) or right < len(patched):
        if right >= len(patched):
            out.append(live_only[left])
            left += 1
            continue
        if left < len(live_only):
            mine = _position(live, live_only[left], key)
            theirs = _position(live, patched[right], key)
            if 0 <= mine < theirs:
                out.append(live_only[left])
                left += 1
                continue
        out.append(patched[right])
        right += 1
    return out


def _patch_list(target: Any, patch: list[Any], node: TypeNode) -> list[Any]:
    """mergeSliceHandler: a list without the merge strategy is replaced; one with it
    is merged item by item (by merge key, or by value for scalars), then ordered."""
    live = list(clone(target)) if isinstance(target, list) else []
    if "merge" not in node.patch_strategy.split(","):
        return [item for item in clone(patch) if not _is_directive(item)]
    key = node.patch_merge_key
    if not live and not patch:
        return live
    if not key or not any(isinstance(item, dict) for item in live + patch):
        merged = _without_duplicates(live + clone(patch))
        named = [item for item in merged if item in patch]
        others = [item for item in merged if item not in patch]
        return _interleave(others, _sorted_by(named, patch, ""), live, "")
    items: list[dict[str, Any]] = []
    for item in patch:
        if not isinstance(item, dict):
            raise StrategicPatchError(f"list element types are not identical: {patch}")
        directive = item.get("$patch")
        if directive == "delete":
            value = _merge_key_of(item, key)
            live = [existing for existing in live if existing.get(key) != value]
        elif directive == "replace":
            return [clone(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
        elif directive == "merge":
            raise StrategicPatchError("merging lists cannot yet be specified in the patch")
        elif directive is not None:
            raise StrategicPatchError(f"unknown patch type: {directive} in map: {item}")
        else:
            items.append(item)
    merged = list(live)
    for item in items:
        position = _position(merged, item, key)
        if position < 0:
            merged.append({k: clone(v) for k, v in item.items() if not k.startswith("$")})
        else:
            merged[position] = strategic_merge_patch(merged[position], item, node.elem)
    named = [item for item in merged if _position(items, item, key) >= 0]
    others = [item for item in merged if _position(items, item, key) < 0]
    return _interleave(others, _sorted_by(named, items, key), live, key)


def _without_duplicates(items: list[Any]) -> list[Any]:
    """deduplicateScalars: a later duplicate is replaced by the last item."""
    out = list(items)
    position = 0
    while position < len(out) - 1:
        later = position + 1
        while later < len(out):
            if out[position] == out[later]:
                out[later] = out[-1]
                out.pop()
            else:
                later += 1
        position += 1
    return out


def _is_directive(item: Any) -> bool:
    return isinstance(item, dict) and set(item) == {"$patch"}


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, dict):
            if part not in doc:
                raise PatchError(f"doc is missing path: /{'/'.join(parts)}")
            doc = doc[part]
        elif isinstance(doc, list):
            try:
                doc = doc[int(part)]
            except (ValueError, IndexError) as error:
                raise PatchError(f"doc is missing path: /{'/'.join(parts)}") from error
        else:
            raise PatchError(f"doc is missing path: /{'/'.join(parts)}")
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        else:
            position = int(last)
            if position > len(parent):
                raise PatchError("index out of range")
            parent.insert(position, value)
    else:
        raise PatchError("cannot add to a scalar")
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    try:
        if isinstance(parent, dict):
            del parent[last]
        elif isinstance(parent, list):
            del parent[int(last)]
        else:
            raise PatchError("cannot remove from a scalar")
    except (KeyError, ValueError, IndexError) as error:
        raise PatchError(f"unable to remove nonexistent key: {last}") from error
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = clone(target)
    for operation in operations:
        if not isinstance(operation, dict):
            raise PatchError("a JSON patch operation must be an object")
        op = operation.get("op")
        parts = _pointer(str(operation.get("path", "")))
        if op == "add":
            doc = _add(doc, parts, clone(operation.get("value")))
        elif op == "remove":
            doc = _remove(doc, parts)
        elif op == "replace":
            _resolve(doc, parts)
            doc = _add(_remove(doc, parts), parts, clone(operation.get("value")))
        elif op in ("move", "copy"):
            source = _pointer(str(operation.get("from", "")))
            value = clone(_resolve(doc, source))
            if op == "move":
                doc = _remove(doc, source)
            doc = _add(doc, parts, value)
        elif op == "test":
            if _resolve(doc, parts) != operation.get("value"):
                raise PatchError(f"testing value /{'/'.join(parts)} failed")
        else:
            raise PatchError(f"Unexpected kind: {op}")
    return doc
