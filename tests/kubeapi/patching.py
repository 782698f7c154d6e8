"""PATCH of an object or of its `status`: the three non-apply patch formats
(`patches.py` computes them; their errors answer as the real server's) and
server-side apply (`ssa.py`), each ending in the writes every verb shares."""

from __future__ import annotations

from . import errors, patches
from .decoding import (
    APPLY_YAML,
    JSON_PATCH,
    MERGE_PATCH,
    PATCH_TYPES,
    STRATEGIC_PATCH,
    check_identity,
    decode_applied,
    decode_body,
)
from .errors import ApiError
from .fieldpath import FieldSet
from .json_values import parse_json
from .normalization import finalize
from .resources import ResourceType
from .ssa import ApplyConflict, ManagedFields, apply
from .writes import (
    EngineWrites,
    WriteOptions,
    WriteResult,
    managed_scope,
    managed_view,
    read_only_view,
)


class EnginePatches(EngineWrites):
    """PATCH, apply included."""

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
        old = self.require(resource, namespace, name)
        current = managed_view(old.obj)
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
        cleaned, warnings = decode_body(
            resource, candidate, options.field_validation, self.node(resource)
        )
        check_identity(resource, namespace, name, cleaned)
        return self.update_at_version(
            resource, namespace, name, cleaned, old, options, subresource, warnings
        )

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
        node = self.node(resource)
        scope = managed_scope(resource, subresource)
        walked: FieldSet = set()  # the fields of the configuration, found as it is checked
        config = decode_applied(resource, raw, node, walked, scope.skipped)
        check_identity(resource, namespace, name, config)
        old = self.store.get(resource, namespace, name)
        wanted = (config.get("metadata") or {}).get("resourceVersion")
        if wanted and (old is None or str(wanted) != old.obj["metadata"]["resourceVersion"]):
            raise errors.conflict(resource.group, resource.plural, name)
        # apply() only reads the live object: no copy of it
        live = read_only_view(old.obj) if old else resource.zero()
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
                scope.walked(walked),
            )
        except ApplyConflict as conflict:
            raise ApiError(
                409, "Conflict", conflict.message(), {"causes": conflict.causes()}
            ) from conflict
        obj = finalize(
            resource,
            node,
            namespace,
            name,
            merged,
            old.obj if old else None,
            self.services,
            subresource,
        )
        return self.commit(
            resource, namespace, name, obj, managed, old, (options.manager, "Apply", ""), options
        )


def _patch_options_invalid(field_name: str, kind: str, detail: str) -> ApiError:
    problem = errors.FieldError(kind, field_name, detail=detail)
    return ApiError(
        422,
        "Invalid",
        f'PatchOptions.meta.k8s.io "" is invalid: {problem}',
        {"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [problem.cause()]},
    )
