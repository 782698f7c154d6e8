"""The `scale` subresource of Deployments: an autoscaling/v1 Scale read from the
object, and its writes (PUT or any non-apply patch) as an update of spec.replicas
recorded under the `scale` subresource."""

from __future__ import annotations

from typing import Any

from . import errors, patches
from .decoding import JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH
from .errors import ApiError
from .resources import SCALE_DEFINITION, ResourceType
from .selectors import SelectorError, selector_from_object
from .writes import EngineWrites, WriteOptions, WriteResult, managed_view


class EngineScale(EngineWrites):
    """The `scale` subresource."""

    def get_scale(self, resource: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        return _scale_of(self.require(resource, namespace, name).obj)

    def write_scale(
        self,
        resource: ResourceType,
        namespace: str,
        name: str,
        body: Any,
        content_type: str | None,
        options: WriteOptions,
    ) -> WriteResult:
        """PUT (content_type None) or PATCH of `deployments/scale`."""
        old = self.require(resource, namespace, name)
        scale = _scale_of(old.obj)
        if content_type is None:
            candidate = body
        elif content_type == MERGE_PATCH:
            candidate = patches.merge_patch(scale, body)
        elif content_type == STRATEGIC_PATCH:
            candidate = patches.strategic_merge_patch(
                scale, body, self.schema.definition(SCALE_DEFINITION)
            )
        elif content_type == JSON_PATCH:
            try:
                candidate = patches.json_patch(scale, body)
            except patches.PatchError as error:
                raise ApiError(422, "Invalid", str(error)) from error
        else:
            raise errors.unsupported_media_type(
                content_type, [JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH]
            )
        if not isinstance(candidate, dict):
            raise errors.bad_request("Scale body must be an object")
        wanted = (candidate.get("metadata") or {}).get("resourceVersion")
        if wanted and str(wanted) != old.obj["metadata"]["resourceVersion"]:
            raise errors.conflict(resource.group, resource.plural, name)
        replicas = (candidate.get("spec") or {}).get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid(
                "autoscaling",
                "Scale",
                name,
                [
                    errors.FieldError(
                        "Invalid", "spec.replicas", replicas, "must be greater than or equal to 0"
                    )
                ],
            )
        new = managed_view(old.obj)
        new.setdefault("spec", {})["replicas"] = replicas
        result = self.write_update(resource, namespace, name, new, old, options, "", "scale")
        result.body = _scale_of(result.body)
        return result


def _scale_of(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = obj["metadata"]
    selector = (obj.get("spec") or {}).get("selector")
    try:
        selector_text = str(selector_from_object(selector))
    except SelectorError:
        selector_text = ""
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata.get("namespace", ""),
            "uid": metadata["uid"],
            "resourceVersion": metadata["resourceVersion"],
            "creationTimestamp": metadata["creationTimestamp"],
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
        "status": {
            "replicas": (obj.get("status") or {}).get("replicas", 0),
            "selector": selector_text,
        },
    }
