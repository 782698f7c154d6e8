"""Field paths and field sets, as structured-merge-diff (server-side apply) has them.

A path is a tuple of elements; an element is `("f", name)` for a struct field or map
key, `("k", '{"name":"x"}')` for an item of a list-map (canonical JSON of its keys),
`("v", json)` for an item of a set, `("i", "3")` for a list index. A field set is a
plain Python set of paths, each one a *member*. `fields_v1` renders a set in the
`metadata.managedFields[].fieldsV1` format (`f:`/`k:`/`v:`/`i:` and `.` for a member
that also has children).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

import orjson

PathElement = tuple[str, str]
Path = tuple[PathElement, ...]
FieldSet = set[Path]


def canonical(value: Any) -> str:
    """Sorted, compact JSON; orjson's where it can write `value` (an integer beyond
    64 bits it cannot), the same text as the standard library's but for floats below
    1e-4 in magnitude (`1e-7` against `1e-07`), which keys of list items do not hold."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def field(name: str) -> PathElement:
    return ("f", name)


def key(keys: dict[str, Any]) -> PathElement:
    return ("k", canonical(keys))


def value(item: Any) -> PathElement:
    return ("v", canonical(item))


def index(position: int) -> PathElement:
    return ("i", str(position))


def make(*names: str) -> Path:
    """A path of struct fields: `make("spec", "replicas")`."""
    return tuple(field(name) for name in names)


def element_string(element: PathElement) -> str:
    """One element the way structured-merge-diff prints it in messages."""
    kind, text = element
    if kind == "f":
        return f".{text}"
    if kind == "k":
        keys = json.loads(text)
        return "[" + ",".join(f"{name}={canonical(keys[name])}" for name in sorted(keys)) + "]"
    if kind == "v":
        return f"[={text}]"
    return f"[{text}]"


def path_string(path: Path) -> str:
    return "".join(element_string(element) for element in path)


#: How PathElement.Compare ranks the kinds of element: field names, keys, values, indices.
_KIND_RANK = {"f": 0, "k": 1, "v": 2, "i": 3}


def iteration_order(path: Path) -> tuple[tuple[int, int, str | int], ...]:
    """A sort key that lists paths the way Set.Iterate visits them: at each level the
    members (paths ending there) before the paths that go deeper, each group sorted
    by element. Keys and values compare by their canonical JSON, an approximation of
    structured-merge-diff's value ordering."""
    last = len(path) - 1
    return tuple(
        (
            0 if depth == last else 1,
            _KIND_RANK[kind],
            int(text) if kind == "i" else text,
        )
        for depth, (kind, text) in enumerate(path)
    )


class Prefixes:
    """A few short paths that others are tested against, prepared once (a scope's,
    for every write). A path lies at or below a prefix of length n when its first n
    elements are the prefix; most paths part from every prefix at their first one."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = {path for path in paths if path}  # an empty one covers nothing
        self._lengths = sorted({len(path) for path in self.paths} - {1})
        self._firsts = {path[0] for path in self.paths}
        self._wholly = {path[0] for path in self.paths if len(path) == 1}

    def split(self, paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
        """The paths at or below one of the prefixes, and the others."""
        firsts, wholly, lengths, prefixes = self._firsts, self._wholly, self._lengths, self.paths
        below: list[Path] = []
        others: list[Path] = []
        for path in paths:
            first = path[0] if path else None
            if first in firsts and (
                first in wholly or any(path[:length] in prefixes for length in lengths)
            ):
                below.append(path)
            else:
                others.append(path)
        return below, others


def _subset(paths: FieldSet, kept: list[Path], dropped: list[Path]) -> FieldSet:
    """`paths` but `dropped` (= `kept`, as a new set): built from the shorter list, as
    a set copied or added to reuses the hashes a set keeps, and a path's hash, over
    all its elements, is not cached."""
    if len(dropped) < len(kept):
        out = set(paths)
        out.difference_update(dropped)
        return out
    return set(kept)


def recursive_difference(paths: Iterable[Path], ignored: FieldSet | Prefixes) -> FieldSet:
    """The paths that are not in `ignored` and not below a path of `ignored` (for
    every field of every write)."""
    source = paths if isinstance(paths, set | frozenset) else set(paths)
    prefixes = ignored if isinstance(ignored, Prefixes) else Prefixes(ignored)
    below, others = prefixes.split(source)
    return _subset(source, others, below)


def restrict_to(paths: Iterable[Path], roots: FieldSet | Prefixes) -> FieldSet:
    """The paths at or below one of `roots`."""
    source = paths if isinstance(paths, set | frozenset) else set(paths)
    prefixes = roots if isinstance(roots, Prefixes) else Prefixes(roots)
    below, others = prefixes.split(source)
    return _subset(source, below, others)


def _encode_element(element: PathElement) -> str:
    return f"{element[0]}:{element[1]}"


def fields_v1(paths: Iterable[Path]) -> dict[str, Any]:
    """Render a field set as FieldsV1 JSON: shared between the callers that render
    the same set (every write encodes each manager's set again, and most are
    unchanged), so it must not be modified."""
    return _fields_v1(frozenset(paths))


@functools.lru_cache(maxsize=8192)
def _fields_v1(paths: frozenset[Path]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in paths:
        node = root
        for element in path:
            node = node.setdefault(_encode_element(element), {})
        node.setdefault(".", {})
    return _finish(root)


def _finish(node: dict[str, Any]) -> dict[str, Any]:
    children = {name: _finish(child) for name, child in node.items() if name != "."}
    if "." in node and not children:
        return {}
    out: dict[str, Any] = {".": {}} if "." in node else {}
    for name in sorted(children):
        out[name] = children[name]
    return out


def from_fields_v1(encoded: dict[str, Any], prefix: Path = ()) -> FieldSet:
    """Parse FieldsV1 JSON back into a field set."""
    paths: FieldSet = set()
    for name, child in encoded.items():
        if name == ".":
            paths.add(prefix)
            continue
        kind, _, text = name.partition(":")
        if kind in ("k", "v"):
            text = canonical(json.loads(text))
        path = (*prefix, (kind, text))
        if not child:
            paths.add(path)
        else:
            paths |= from_fields_v1(child, path)
    return paths
