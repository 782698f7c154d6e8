"""get, list, create, update, patch, delete and deletecollection over HTTP: their
query parameters and bodies handed to the engine, its answer written back."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from . import errors
from .decoding import APPLY_YAML
from .engine import Engine
from .request_parsing import dry_run, parse_body, selectors, truthy
from .responses import json_response, write_response
from .routing import Route
from .writes import WriteOptions


async def serve(
    engine: Engine,
    request: web.Request,
    route: Route,
    verb: str,
    query: Mapping[str, str],
    content_type: str,
    user_agent: str,
) -> web.Response:
    """The answer to any verb but watch, on an object or a collection (`pods/log`
    aside)."""
    resource, namespace, name = route.resource, route.namespace or "", route.name
    if verb in ("list", "deletecollection"):
        labels, fields = selectors(query)
        if verb == "list":
            limit = query.get("limit") or "0"
            if not limit.isdigit():
                raise errors.bad_request(f"invalid limit: {limit}")
            listed = engine.list(
                resource, route.namespace, labels, fields, int(limit), query.get("continue", "")
            )
            return json_response(listed)
        return json_response(
            engine.delete_collection(resource, route.namespace, labels, fields, dry_run(query))
        )
    if verb == "get":
        assert name is not None
        if route.subresource == "scale":
            return json_response(engine.get_scale(resource, namespace, name))
        return json_response(engine.get(resource, namespace, name))
    raw = await request.read()
    options = WriteOptions(
        manager=query.get("fieldManager") or user_agent.split("/")[0][:128],
        dry_run=dry_run(query),
        field_validation=query.get("fieldValidation") or "Warn",
        force=truthy(query.get("force")),
    )
    if query.get("fieldValidation") and options.field_validation not in (
        "Strict",
        "Warn",
        "Ignore",
    ):
        raise errors.bad_request(
            f"fieldValidation parameter unsupported: {options.field_validation}"
        )
    if verb == "delete":
        assert name is not None
        body = parse_body(raw, content_type, allow_empty=True) or {}
        preconditions = body.get("preconditions") if isinstance(body, dict) else None
        return json_response(
            engine.delete(resource, namespace, name, preconditions, options.dry_run)
        )
    if verb == "create":
        if name is not None:
            raise errors.method_not_allowed()
        result = engine.create(resource, namespace, parse_body(raw, content_type), options)
        return write_response(result)
    assert name is not None
    if verb == "update":
        body = parse_body(raw, content_type)
        if route.subresource == "scale":
            result = engine.write_scale(resource, namespace, name, body, None, options)
        else:
            result = engine.replace(resource, namespace, name, body, options, route.subresource)
        return write_response(result)
    if verb == "patch":
        if route.subresource == "scale":
            if content_type == APPLY_YAML:
                raise errors.unsupported_media_type(content_type, [])
            body = parse_body(raw, "application/json")
            result = engine.write_scale(resource, namespace, name, body, content_type, options)
        else:
            result = engine.patch(
                resource, namespace, name, content_type, raw, options, route.subresource
            )
        return write_response(result)
    raise errors.method_not_allowed()
