"""Validation of written objects: the checks the fixtures show, plus the obvious ones.

Each validator returns a list of `FieldError`; the server turns a non-empty list into
a 422 `Invalid` Status whose message and causes follow the real API server's.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import FieldError, GoSyntax, go_value
from .quantity import QuantityError, parse_quantity
from .selectors import (
    SelectorError,
    label_key_error,
    label_value_error,
    selector_from_object,
)

_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[^=]+$")

SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or"
    " '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used"
    " for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and"
    " must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex"
    " used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1035_MESSAGE = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an"
    " alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or"
    " 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)


def name_errors(name: str, rule: str, field: str = "metadata.name") -> list[FieldError]:
    """Errors for an object name under `rule` (subdomain, label or dns1035)."""
    if not name:
        return [FieldError("Required", field, detail="name or generateName is required")]
    if rule == "subdomain":
        limit, pattern, message = 253, _DNS1123_SUBDOMAIN, SUBDOMAIN_MESSAGE
    elif rule == "dns1035":
        limit, pattern, message = 63, _DNS1035_LABEL, DNS1035_MESSAGE
    else:
        limit, pattern, message = 63, _DNS1123_LABEL, LABEL_MESSAGE
    errors = []
    if len(name) > limit:
        errors.append(
            FieldError("Invalid", field, name, f"must be no more than {limit} characters")
        )
    if not pattern.match(name):
        errors.append(FieldError("Invalid", field, name, message))
    return errors


def metadata_errors(obj: dict[str, Any], name_rule: str) -> list[FieldError]:
    metadata = obj.get("metadata") or {}
    errors = name_errors(str(metadata.get("name") or ""), name_rule)
    labels = metadata.get("labels") or {}
    for key, value in labels.items():
        problem = label_key_error(str(key))
        if problem:
            errors.append(FieldError("Invalid", "metadata.labels", key, problem))
        problem = label_value_error(str(value))
        if problem:
            errors.append(FieldError("Invalid", "metadata.labels", value, problem))
    for key in metadata.get("annotations") or {}:
        problem = label_key_error(str(key))
        if problem:
            errors.append(FieldError("Invalid", "metadata.annotations", key, problem))
    return errors


def _non_negative(value: Any, field: str) -> list[FieldError]:
    if isinstance(value, int) and value < 0:
        return [FieldError("Invalid", field, value, "must be greater than or equal to 0")]
    return []


def _port(value: Any, field: str) -> list[FieldError]:
    if isinstance(value, int) and not 1 <= value <= 65535:
        return [FieldError("Invalid", field, value, "must be between 1 and 65535, inclusive")]
    return []


def _is_extended(resource: str) -> bool:
    if "/" not in resource:
        return False
    prefix = resource.split("/", 1)[0]
    return not (prefix == "kubernetes.io" or prefix.endswith(".kubernetes.io"))


def resources_errors(resources: dict[str, Any], field: str) -> list[FieldError]:
    errors: list[FieldError] = []
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    parsed: dict[str, dict[str, Any]] = {"limits": {}, "requests": {}}
    for kind, values in (("limits", limits), ("requests", requests)):
        for name, raw in values.items():
            try:
                quantity = parse_quantity(raw)
            except QuantityError as error:
                errors.append(FieldError("Invalid", f"{field}.{kind}[{name}]", raw, str(error)))
                continue
            if quantity < 0:
                errors.append(
                    FieldError(
                        "Invalid",
                        f"{field}.{kind}[{name}]",
                        raw,
                        "must be greater than or equal to 0",
                    )
                )
            parsed[kind][name] = quantity
    for name, request in parsed["requests"].items():
        limit = parsed["limits"].get(name)
        raw = requests[name]
        if _is_extended(name):
            if limit is None:
                errors.append(
                    FieldError(
                        "Required",
                        f"{field}.limits",
                        detail="Limit must be set for non overcommitable resources",
                    )
                )
            elif request != limit:
                errors.append(
                    FieldError(
                        "Invalid",
                        f"{field}.requests",
                        raw,
                        f"must be equal to {name} limit of {limits[name]}",
                    )
                )
        elif limit is not None and request > limit:
            errors.append(
                FieldError(
                    "Invalid",
                    f"{field}.requests",
                    raw,
                    f"must be less than or equal to {name} limit of {limits[name]}",
                )
            )
    return errors


def container_errors(containers: Any, field: str, required: bool) -> list[FieldError]:
    if not containers:
        return [FieldError("Required", field)] if required else []
    errors: list[FieldError] = []
    seen: set[str] = set()
    for position, spec in enumerate(containers):
        at = f"{field}[{position}]"
        if not isinstance(spec, dict):
            continue
        name = spec.get("name") or ""
        if not name:
            errors.append(FieldError("Required", f"{at}.name"))
        elif name in seen:
            errors.append(FieldError("Duplicate", f"{at}.name", name))
        else:
            errors.extend(name_errors(name, "label", f"{at}.name"))
        seen.add(name)
        if not spec.get("image"):
            errors.append(FieldError("Required", f"{at}.image"))
        for index, port in enumerate(spec.get("ports") or []):
            errors.extend(_port(port.get("containerPort"), f"{at}.ports[{index}].containerPort"))
        for index, env in enumerate(spec.get("env") or []):
            env_name = env.get("name") or ""
            if not env_name:
                errors.append(FieldError("Required", f"{at}.env[{index}].name"))
            elif not _ENV_NAME.match(env_name):
                errors.append(
                    FieldError(
                        "Invalid",
                        f"{at}.env[{index}].name",
                        env_name,
                        "a valid environment variable name must consist only of printable ASCII"
                        " characters other than '='",
                    )
                )
        errors.extend(resources_errors(spec.get("resources") or {}, f"{at}.resources"))
    return errors


def pod_spec_errors(spec: dict[str, Any], field: str) -> list[FieldError]:
    errors = container_errors(spec.get("initContainers"), f"{field}.initContainers", False)
    errors += container_errors(spec.get("containers"), f"{field}.containers", True)
    return errors


def pod_template_errors(template: dict[str, Any], field: str) -> list[FieldError]:
    spec = template.get("spec") or {}
    errors = pod_spec_errors(spec, f"{field}.spec")
    policy = spec.get("restartPolicy")
    if policy is not None and policy != "Always":
        errors.append(
            FieldError(
                "NotSupported",
                f"{field}.spec.restartPolicy",
                policy,
                'supported values: "Always"',
            )
        )
    return errors


def deployment(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors = _non_negative(spec.get("replicas"), "spec.replicas")
    selector = spec.get("selector")
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not selector:
        errors.append(FieldError("Required", "spec.selector"))
    else:
        try:
            parsed = selector_from_object(selector)
        except SelectorError as error:
            errors.append(FieldError("Invalid", "spec.selector", selector, str(error)))
        else:
            if parsed.empty():
                errors.append(
                    FieldError(
                        "Invalid",
                        "spec.selector",
                        selector,
                        "empty selector is invalid for deployment",
                    )
                )
            elif not parsed.matches(labels):
                errors.append(
                    FieldError(
                        "Invalid",
                        "spec.template.metadata.labels",
                        labels,
                        "`selector` does not match template `labels`",
                    )
                )
    if old is not None and (old.get("spec") or {}).get("selector") != selector:
        errors.append(FieldError("Invalid", "spec.selector", selector, "field is immutable"))
    errors += pod_template_errors(template, "spec.template")
    for name in ("revisionHistoryLimit", "progressDeadlineSeconds", "minReadySeconds"):
        errors += _non_negative(spec.get(name), f"spec.{name}")
    return errors


_SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")


def pod(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    """The containers' checks only: spec immutability on update is not modelled."""
    return pod_spec_errors(obj.get("spec") or {}, "spec")


def _service_port_key(port: int, protocol: str) -> GoSyntax:
    """The value of a duplicate port's error: the `core.ServicePort{Protocol, Port}`
    key ValidateService looks ports up by, printed as Go's %#v prints that internal
    struct (every other field at its zero value)."""
    return GoSyntax(
        f'core.ServicePort{{Name:"", Protocol:{go_value(protocol)}, AppProtocol:(*string)(nil),'
        f' Port:{port}, TargetPort:intstr.IntOrString{{Type:0, IntVal:0, StrVal:""}},'
        " NodePort:0}"
    )


def service(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    """The checks of ValidateService servefleet can meet, in its order: each port
    (name required when there are several, names unique, number in range), the type,
    then (port, protocol) pairs unique."""
    spec = obj.get("spec") or {}
    errors: list[FieldError] = []
    kind = spec.get("type", "ClusterIP")
    ports = spec.get("ports") or []
    if not ports and kind != "ExternalName" and spec.get("clusterIP") != "None":
        errors.append(FieldError("Required", "spec.ports"))
    names: set[str] = set()
    for position, port in enumerate(ports):
        name = port.get("name") or ""
        if len(ports) > 1 and not name:
            errors.append(FieldError("Required", f"spec.ports[{position}].name"))
        elif name in names:
            errors.append(FieldError("Duplicate", f"spec.ports[{position}].name", name))
        elif name:
            names.add(name)
        errors += _port(port.get("port"), f"spec.ports[{position}].port")
    if kind not in _SERVICE_TYPES:
        supported = ", ".join(f'"{t}"' for t in _SERVICE_TYPES)
        errors.append(
            FieldError("NotSupported", "spec.type", kind, f"supported values: {supported}")
        )
    pairs: set[tuple[Any, Any]] = set()
    for position, port in enumerate(ports):
        pair = (port.get("port"), port.get("protocol", "TCP"))
        if pair in pairs:
            errors.append(
                FieldError("Duplicate", f"spec.ports[{position}]", _service_port_key(*pair))
            )
        pairs.add(pair)
    if old is not None:
        before = (old.get("spec") or {}).get("clusterIP")
        after = spec.get("clusterIP")
        if before and after and before != after:
            errors.append(
                FieldError("Invalid", "spec.clusterIPs[0]", after, "may not change once set")
            )
    return errors


def ingress(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors: list[FieldError] = []
    for rule_index, rule in enumerate(spec.get("rules") or []):
        paths = (rule.get("http") or {}).get("paths") or []
        for path_index, path in enumerate(paths):
            at = f"spec.rules[{rule_index}].http.paths[{path_index}]"
            path_type = path.get("pathType")
            if not path_type:
                errors.append(
                    FieldError("Required", f"{at}.pathType", detail="pathType must be specified")
                )
            elif path_type not in ("Exact", "Prefix", "ImplementationSpecific"):
                errors.append(
                    FieldError(
                        "NotSupported",
                        f"{at}.pathType",
                        path_type,
                        'supported values: "Exact", "ImplementationSpecific", "Prefix"',
                    )
                )
            value = path.get("path", "")
            if path_type in ("Exact", "Prefix") and not str(value).startswith("/"):
                errors.append(
                    FieldError("Invalid", f"{at}.path", value, "must be an absolute path")
                )
            backend = path.get("backend") or {}
            if not backend.get("service") and not backend.get("resource"):
                errors.append(
                    FieldError(
                        "Invalid",
                        f"{at}.backend",
                        backend,
                        "resource or service backend is required",
                    )
                )
    return errors


def hpa(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors: list[FieldError] = []
    target = spec.get("scaleTargetRef") or {}
    if not target.get("kind"):
        errors.append(FieldError("Required", "spec.scaleTargetRef.kind"))
    if not target.get("name"):
        errors.append(FieldError("Required", "spec.scaleTargetRef.name"))
    low = spec.get("minReplicas", 1)
    high = spec.get("maxReplicas")
    if isinstance(low, int) and low < 1:
        errors.append(
            FieldError("Invalid", "spec.minReplicas", low, "must be greater than or equal to 1")
        )
    if high is None:
        errors.append(FieldError("Required", "spec.maxReplicas"))
    elif isinstance(high, int) and isinstance(low, int) and high < low:
        errors.append(
            FieldError(
                "Invalid",
                "spec.maxReplicas",
                high,
                "must be greater than or equal to `minReplicas`",
            )
        )
    for position, metric in enumerate(spec.get("metrics") or []):
        resource = metric.get("resource") or {}
        utilization = (resource.get("target") or {}).get("averageUtilization")
        if isinstance(utilization, int) and utilization <= 0:
            errors.append(
                FieldError(
                    "Invalid",
                    f"spec.metrics[{position}].resource.target.averageUtilization",
                    utilization,
                    "must be greater than 0",
                )
            )
    return errors


def lease(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errors: list[FieldError] = []
    duration = spec.get("leaseDurationSeconds")
    if isinstance(duration, int) and duration <= 0:
        errors.append(
            FieldError("Invalid", "spec.leaseDurationSeconds", duration, "must be greater than 0")
        )
    errors += _non_negative(spec.get("leaseTransitions"), "spec.leaseTransitions")
    return errors


def nothing(obj: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    return []
