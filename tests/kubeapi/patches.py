"""Non-apply patches: JSON merge patch, strategic merge patch, JSON patch."""

from __future__ import annotations

from typing import Any

from .schema import ANY, TypeNode
from .typed import clone


class PatchError(ValueError):
    """A patch that cannot be applied (the API answers 422 or 400)."""


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

    Supports `null` deletion, `$patch: replace|delete` in maps and list items, and
    `$deleteFromPrimitiveList/<field>`; other `$` directives (`$setElementOrder`,
    `$retainKeys`) are accepted and ignored.
    """
    if not isinstance(patch, dict):
        return clone(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: clone(v) for k, v in patch.items() if not k.startswith("$")}
    if directive == "delete":
        return None
    out = clone(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if name.startswith("$deleteFromPrimitiveList/"):
            field = name.split("/", 1)[1]
            out[field] = [item for item in out.get(field) or [] if item not in (value or [])]
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


def _patch_list(target: Any, patch: list[Any], node: TypeNode) -> list[Any]:
    current = list(clone(target)) if isinstance(target, list) else []
    if "merge" not in node.patch_strategy.split(","):
        return [item for item in clone(patch) if not _is_directive(item)]
    key = node.patch_merge_key
    if not key:
        merged = list(current)
        for item in patch:
            if item not in merged:
                merged.append(clone(item))
        return merged
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError("strategic merge patch list items must be maps")
        if item.get("$patch") == "replace":
            return [clone(i) for i in patch if not _is_directive(i)]
        position = next(
            (i for i, existing in enumerate(current) if existing.get(key) == item.get(key)), None
        )
        if item.get("$patch") == "delete":
            if position is not None:
                current.pop(position)
            continue
        if position is None:
            current.append({k: clone(v) for k, v in item.items() if not k.startswith("$")})
        else:
            current[position] = strategic_merge_patch(current[position], item, node.elem)
    return current


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
