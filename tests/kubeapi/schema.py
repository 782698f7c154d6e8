"""The OpenAPI schema of the built-in kinds, as the server's typed operations see it.

The definitions come from the JSON schemas bundled with `kubernetes-validate` (a dev
dependency): the same OpenAPI the real kube-apiserver 1.36 publishes, including the
`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`, `x-kubernetes-map-type` and
patch-strategy extensions that server-side apply and strategic merge depend on.

Custom resources are typed by their CRD's `openAPIV3Schema`, as the real server
types them: the CRDs under `crds/` (published by their projects) add one definition
per version, named as the server's OpenAPI names them (`sh.keda.v1alpha1.ScaledObject`),
with `metadata` as ObjectMeta. They are served only by a server told they are
installed (`KubeApiServer(crds=...)`).

A `TypeNode` is one resolved type: a struct (declared fields), a map (free keys), a
list (atomic, set or map with keys) or a scalar. Nodes are built lazily and cached,
since the definitions are recursive.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal

import yaml

SCHEMA_VERSION = "v1.36.0-local-strict"

NodeKind = Literal["struct", "map", "list", "scalar", "any"]
ListType = Literal["atomic", "set", "map"]

#: Values the real API server defaults for list-map key fields when an item omits
#: them (from the OpenAPI `default`s): a container or service port without
#: `protocol` is keyed as TCP.
KEY_FIELD_DEFAULTS: dict[str, Any] = {"protocol": "TCP"}

CRDS = Path(__file__).parent / "crds"
"""Published CustomResourceDefinitions (README there)."""
OBJECT_META_REF = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
TIME_REF = "io.k8s.apimachinery.pkg.apis.meta.v1.Time"
MICROTIME_REF = "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime"


CONTAINERS: Final = (dict, list)
"""For `isinstance` in the walks over every field: a tuple, as `dict | list` would
build a union type at each test (twice the time)."""

_TIME_REFS: Final = (TIME_REF, MICROTIME_REF)
_PYTHON_TYPES: Final = {
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "number": (int, float),
}


class SchemaUnavailable(RuntimeError):
    """The bundled OpenAPI definitions could not be found."""


@dataclass(eq=False)
class TypeNode:
    """One resolved schema type."""

    kind: NodeKind
    atomic: bool = False
    scalar_types: frozenset[str] = frozenset()
    list_type: ListType = "atomic"
    keys: tuple[str, ...] = ()
    ref: str | None = None
    patch_strategy: str = ""
    patch_merge_key: str = ""
    required: tuple[str, ...] = ()
    _raw: dict[str, Any] = field(default_factory=dict, repr=False)
    _schema: Schema | None = field(default=None, repr=False)
    _fields: dict[str, TypeNode] | None = field(default=None, repr=False)
    _elem: TypeNode | None = field(default=None, repr=False)
    _children: tuple[dict[str, TypeNode], TypeNode] | None = field(default=None, repr=False)
    _timed: bool | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.walks_dict = self.kind in ("struct", "map") and not self.atomic
        """Whether a non-empty map of this type is walked into, not a leaf."""
        self.walks_list = self.kind == "list" and not self.atomic
        """Whether a non-empty list of this type is walked into, not a leaf."""
        kinds = [kind for name in self.scalar_types for kind in _PYTHON_TYPES.get(name, ())]
        self.accepts: frozenset[type] = frozenset((type(None), *kinds))
        """Python types a scalar of this type may always have (others are looked at
        closer: an integral float is an integer)."""

    @property
    def fields(self) -> dict[str, TypeNode]:
        """The declared fields of a struct (empty for other kinds)."""
        if self._fields is None:
            assert self._schema is not None
            props = self._raw.get("properties", {}) if self.kind == "struct" else {}
            self._fields = {name: self._schema.node(sub) for name, sub in props.items()}
        return self._fields

    @property
    def elem(self) -> TypeNode:
        """The element type of a map or list (`any` when undeclared)."""
        if self._elem is None:
            assert self._schema is not None
            if self.kind == "list":
                self._elem = self._schema.node(self._raw.get("items", {}))
            elif self.kind == "map":
                extra = self._raw.get("additionalProperties")
                self._elem = self._schema.node(extra if isinstance(extra, dict) else {})
            else:
                self._elem = ANY
        return self._elem

    def child(self, name: str) -> TypeNode | None:
        """The type of field/key `name`, or None when a struct does not declare it."""
        if self.kind == "struct":
            fields = self._fields if self._fields is not None else self.fields
            return fields.get(name)
        if self.kind == "map":
            return self.elem
        if self.kind == "any":
            return ANY
        return None

    @property
    def children(self) -> tuple[dict[str, TypeNode], TypeNode]:
        """`(declared, other)`: the type of field or key `name` is `declared.get(name,
        other)`, as `child(name) or ANY` gives it, in one dict lookup for the walks
        that visit every field of every write."""
        if self._children is None:
            if self.kind == "struct":
                self._children = (self.fields, ANY)
            elif self.kind == "map":
                self._children = ({}, self.elem)
            else:
                self._children = ({}, ANY)
        return self._children

    @property
    def timed_children(self) -> bool:
        """Whether a field or key of this type may hold a time (Time or MicroTime): the
        others' strings are kept as they are without a look at their type."""
        if self._timed is None:
            declared, other = self.children
            self._timed = other.ref in _TIME_REFS or any(
                child.ref in _TIME_REFS for child in declared.values()
            )
        return self._timed

    @property
    def granular_list(self) -> bool:
        return self.kind == "list" and self.list_type in ("set", "map")


ANY = TypeNode(kind="any")

_EXTENSION_KEYS = (
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-patch-strategy",
    "x-kubernetes-patch-merge-key",
)


class Schema:
    """The definitions of one Kubernetes version, with cached `TypeNode`s."""

    def __init__(self, definitions: dict[str, Any]) -> None:
        self._defs = definitions
        self._cache: dict[str, TypeNode] = {}

    @staticmethod
    @cache
    def load() -> Schema:
        spec = importlib.util.find_spec("kubernetes_validate")
        if spec is None or not spec.submodule_search_locations:
            raise SchemaUnavailable("kubernetes-validate is not installed (a dev dependency)")
        base = Path(next(iter(spec.submodule_search_locations)))
        path = base / "kubernetes-json-schema" / SCHEMA_VERSION / "_definitions.json"
        if not path.exists():
            raise SchemaUnavailable(f"no OpenAPI definitions at {path}")
        with path.open() as handle:
            document = json.load(handle)
        return Schema({**document["$defs"], **dict(_crd_definitions())})

    def definition(self, name: str) -> TypeNode:
        return self.node({"$ref": f"#/$defs/{name}"})

    def node(self, raw: dict[str, Any]) -> TypeNode:
        ref = raw.get("$ref")
        if ref is None:
            return self._build(raw, None)
        name = ref.rsplit("/", 1)[-1]
        overrides = {key: raw[key] for key in _EXTENSION_KEYS if key in raw}
        cache_key = name + json.dumps(overrides, sort_keys=True)
        node = self._cache.get(cache_key)
        if node is None:
            merged = dict(self._defs[name])
            merged.update(overrides)
            node = self._build(merged, name)
            self._cache[cache_key] = node
        return node

    def _build(self, raw: dict[str, Any], ref: str | None) -> TypeNode:
        patch = {
            "patch_strategy": raw.get("x-kubernetes-patch-strategy", ""),
            "patch_merge_key": raw.get("x-kubernetes-patch-merge-key", ""),
        }
        if "oneOf" in raw:
            kinds: set[str] = set()
            for option in raw["oneOf"]:
                kinds |= _types(option)
            return TypeNode(kind="scalar", scalar_types=frozenset(kinds), ref=ref, **patch)
        types = _types(raw)
        if "array" in types:
            list_type = raw.get("x-kubernetes-list-type", "atomic")
            return TypeNode(
                kind="list",
                list_type=list_type,
                atomic=list_type == "atomic",
                keys=tuple(raw.get("x-kubernetes-list-map-keys", ())),
                ref=ref,
                _raw=raw,
                _schema=self,
                **patch,
            )
        if "object" in types:
            atomic = raw.get("x-kubernetes-map-type") == "atomic"
            if "properties" in raw:
                return TypeNode(
                    kind="struct",
                    atomic=atomic,
                    ref=ref,
                    required=tuple(raw.get("required", ())),
                    _raw=raw,
                    _schema=self,
                    **patch,
                )
            if isinstance(raw.get("additionalProperties"), dict):
                return TypeNode(kind="map", atomic=atomic, ref=ref, _raw=raw, _schema=self, **patch)
            return TypeNode(kind="any", atomic=True, ref=ref, **patch)
        if not types:
            return TypeNode(kind="any", atomic=True, ref=ref, **patch)
        return TypeNode(kind="scalar", scalar_types=frozenset(types), ref=ref, **patch)


def crd_definition_name(group: str, version: str, kind: str) -> str:
    """How the server's OpenAPI names a custom resource's schema."""
    return ".".join([*reversed(group.split(".")), version, kind])


def _crd_definitions() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = dict(version["schema"]["openAPIV3Schema"])
            properties = dict(schema.get("properties", {}))
            properties["metadata"] = {"$ref": f"#/$defs/{OBJECT_META_REF}"}
            schema["properties"] = properties
            name = crd_definition_name(spec["group"], version["name"], spec["names"]["kind"])
            yield name, schema


def _types(raw: dict[str, Any]) -> set[str]:
    declared = raw.get("type", [])
    if isinstance(declared, str):
        declared = [declared]
    return {kind for kind in declared if kind != "null"}
