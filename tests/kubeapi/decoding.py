"""A write's body as the real server decodes it, before anything is computed from
it: the content types of PATCH, fieldValidation (unknown fields dropped with a
warning, or refused), the name, namespace, apiVersion and kind the URL implies, and
an apply's configuration."""

from __future__ import annotations

from typing import Any

import yaml

from . import errors, typed
from . import fieldpath as fp
from .json_values import parse_json
from .resources import ResourceType
from .schema import TypeNode

APPLY_YAML = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = [JSON_PATCH, MERGE_PATCH, APPLY_YAML, STRATEGIC_PATCH]


def decode_body(
    resource: ResourceType, body: Any, field_validation: str, node: TypeNode
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
    if dropped and field_validation == "Strict":
        raise errors.bad_request(
            "strict decoding error: " + ", ".join(f'unknown field "{n}"' for n in names)
        )
    warnings = [] if field_validation == "Ignore" else [f'unknown field "{n}"' for n in names]
    return cleaned, warnings


def check_identity(resource: ResourceType, namespace: str, name: str, body: dict[str, Any]) -> None:
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
            "the namespace of the provided object does not match the namespace sent on the request"
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


def decode_applied(
    resource: ResourceType,
    raw: bytes,
    node: TypeNode,
    fields: fp.FieldSet | None = None,
    skipped: typed.Skipped | None = None,
) -> dict[str, Any]:
    """An apply's configuration, refused as the real server refuses it: not YAML or
    JSON, not a map, another apiVersion or kind, managedFields set, or not of the
    kind's schema (a typed patch object it cannot create). The fields it sets but
    `skipped` are added to `fields`, when given, as its schema is checked."""
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
    problems = typed.validate(config, node, (), fields, skipped)
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
    return config


def _decode_path(path: fp.Path) -> str:
    text = ""
    for kind, value in path:
        text += f".{value}" if kind == "f" else f"[{value}]"
    return text.lstrip(".")
