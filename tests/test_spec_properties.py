"""Property tests for every rule about user input, through the models and the real CLI.

Invalid input: a valid declaration with exactly one field broken is refused with a
problem line that starts with that field's dotted path, and nothing is stored.
Valid input: whatever is accepted is shown by `get` in a form `apply` takes back
as "unchanged", without a new revision or generation.

The CLI runs in-process against a fresh SQLite store per example.
"""

from __future__ import annotations

import json
import re
import shutil
import string
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import Result

from servefleet.cli.main import app
from servefleet.spec import (
    Endpoint,
    EndpointManifest,
    EndpointSpec,
    invalid_input,
    parse_quantity,
)
from tests.cli_runner import CliRunner
from tests.factories import process_text

Document = dict[str, Any]
REGIONS = ("r1", "r2")
MAX_NAME_LENGTH = 45  # the rule, not spec.MAX_NAME_LENGTH: changing that must fail a test

# Each CLI example runs several commands on a store of its own, so they are fewer.
_SLOW = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
CLI_SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=_SLOW)
MODEL_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=_SLOW)
# Per rule (each rule is its own test case).
RULE_CLI_SETTINGS = settings(max_examples=3, deadline=None, suppress_health_check=_SLOW)
RULE_MODEL_SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=_SLOW)
# Per shape of valid spec (sparse and full).
SHAPE_CLI_SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=_SLOW)


# Valid values.

# Strings that YAML, JSON or rich might treat specially; each must survive get | apply.
TRICKY_TEXT = (
    ":smile:",
    "go :thumbs_up: now",
    "[bold]x[/bold]",
    "yes",
    "on",
    "null",
    "~",
    "true",
    "1e3",
    "0x1F",
    "1_000",
    "2026-01-01",
    "12:30:00",
    "=",
    "- item",
    "a: b",
    "# comment",
    "'",
    '"',
    "\\",
    "\t",
    " lead",
    "trail ",
    "",
    "\n",
    "a\nb",
    "\r\n",
    "\x85",
    "\u2028",
    "\ufeff",
    "\x1b[31m",
    "😀",
    "\U0001f680 rocket",
    "{",
    "&anchor",
    "*alias",
    "!tag",
    "%x",
    "@",
    "`",
    "|",
    ">",
    "$HOME; rm -rf /",
)
# Any text a process can be given (the "nul" rule breaks that).
free_text = st.one_of(
    process_text(max_size=20),
    st.sampled_from(TRICKY_TEXT),
    st.lists(st.sampled_from(TRICKY_TEXT) | process_text(max_size=4), max_size=3).map("".join),
)
text_lists = st.lists(free_text, max_size=3)

env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
envs = st.dictionaries(env_names, free_text, max_size=3)

_image_component = st.from_regex(
    r"[a-z0-9]{1,6}((\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}", fullmatch=True
)
_registries = st.sampled_from(
    [
        "ghcr.io",
        "docker.io",
        "localhost:5000",
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        "Registry.Example.COM",
        "quay.io:443",
    ]
)
_tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digests = st.binary(min_size=32, max_size=32).map(lambda digest: f"sha256:{digest.hex()}")


@st.composite
def images(draw: st.DrawFn) -> str:
    reference = "/".join(draw(st.lists(_image_component, min_size=1, max_size=3)))
    registry = draw(st.none() | _registries)
    if registry is not None:
        reference = f"{registry}/{reference}"
    tag = draw(st.none() | _tags)
    if tag is not None:
        reference += f":{tag}"
    digest = draw(st.none() | _digests)
    if digest is not None:
        reference += f"@{digest}"
    return reference


_label_name = st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,12}[A-Za-z0-9])?", fullmatch=True)
_dns_subdomain = st.from_regex(
    r"[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?){0,2}",
    fullmatch=True,
)
label_keys = _label_name | st.builds(
    lambda prefix, name: f"{prefix}/{name}", _dns_subdomain, _label_name
)
label_values = st.just("") | _label_name
labels = st.dictionaries(label_keys, label_values, max_size=3)

endpoint_names = st.from_regex(r"[a-z]([-a-z0-9]{0,43}[a-z0-9])?", fullmatch=True)
namespaces = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
url_paths = st.lists(st.from_regex(r"[A-Za-z0-9._~-]{1,8}", fullmatch=True), max_size=3).map(
    lambda segments: "/" + "/".join(segments)
)

_SAFE_CHARS = string.ascii_letters + string.digits + "._-/+=@%,"
_safe_paths = st.text(alphabet=_SAFE_CHARS, max_size=24)
model_paths = _safe_paths.map(lambda path: "/" + path)
_optional_key = st.just("") | _safe_paths.map(lambda path: "/" + path)
model_sources = st.one_of(
    st.builds(
        "s3://{}{}".format,
        st.from_regex(r"[a-z0-9][a-z0-9.\-]{1,20}[a-z0-9]", fullmatch=True),
        _optional_key,
    ),
    st.builds(
        "gs://{}{}".format,
        st.from_regex(r"[a-z0-9][a-z0-9._\-]{1,20}[a-z0-9]", fullmatch=True),
        _optional_key,
    ),
    st.from_regex(
        r"hf://[A-Za-z0-9][A-Za-z0-9._\-]{0,12}/[A-Za-z0-9][A-Za-z0-9._\-]{0,12}"
        r"(@[A-Za-z0-9._\-/]{1,12})?",
        fullmatch=True,
    ),
    _safe_paths.map(lambda path: "file:///" + path),
)

# Kubernetes resource names are label keys: hyphens and prefixes are common.
resource_names = (
    st.sampled_from(["cpu", "memory", "ephemeral-storage", "nvidia.com/gpu", "hugepages-2Mi"])
    | label_keys
)
_DECIMAL_SUFFIXES = ("", "n", "u", "m", "k", "M", "G", "T", "P", "E")
_BINARY_SUFFIXES = ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
_EXPONENTS = ("e3", "E6", "e-2", "e+1")
quantities = st.builds(
    "{}{}{}".format,
    st.sampled_from(["", "+"]),
    st.from_regex(r"[0-9]{1,5}(\.[0-9]{0,3})?|\.[0-9]{1,3}", fullmatch=True),
    st.sampled_from([*_DECIMAL_SUFFIXES, *_BINARY_SUFFIXES, *_EXPONENTS]),
)


def _ordered(pair: tuple[str, str]) -> tuple[str, str]:
    """(smaller, larger) by amount, so a request never exceeds its limit."""
    low, high = sorted(pair, key=parse_quantity)
    return low, high


@st.composite
def resources(draw: st.DrawFn) -> Document:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for name in draw(st.lists(resource_names, unique=True, max_size=3)):
        which = draw(st.sampled_from(["request", "limit", "both"]))
        if which == "request":
            requests[name] = draw(quantities)
        elif which == "limit":
            limits[name] = draw(quantities)
        else:
            requests[name], limits[name] = _ordered((draw(quantities), draw(quantities)))
    return draw(
        st.fixed_dictionaries(
            {}, optional={"requests": st.just(requests), "limits": st.just(limits)}
        )
    )


metric_targets = st.floats(
    min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False
) | st.integers(1, 10_000)


@st.composite
def autoscalings(draw: st.DrawFn) -> Document:
    autoscaling: Document = {}
    if draw(st.booleans()):
        autoscaling["enabled"] = draw(st.booleans())
    # The defaults are min 1 and max 10; whichever bound is given respects the other.
    bounds = draw(st.sampled_from(["neither", "min", "max", "both"]))
    if bounds == "min":
        autoscaling["min_replicas"] = draw(st.integers(0, 10))
    elif bounds == "max":
        autoscaling["max_replicas"] = draw(st.integers(1, 1000))
    elif bounds == "both":
        low, high = sorted((draw(st.integers(0, 1000)), draw(st.integers(1, 1000))))
        autoscaling["min_replicas"], autoscaling["max_replicas"] = low, high
    types = []
    if draw(st.booleans()):
        types = draw(
            st.lists(st.sampled_from(["cpu", "memory", "concurrency", "rps"]), unique=True)
        )
    # Scaling to zero needs a metric measured on the requests.
    if autoscaling.get("min_replicas") == 0 and not {"concurrency", "rps"} & set(types):
        types.append(draw(st.sampled_from(["concurrency", "rps"])))
    if types or draw(st.booleans()):
        autoscaling["metrics"] = [{"type": kind, "target": draw(metric_targets)} for kind in types]
    for window, most in (("scale_to_zero_after", 86_400), ("scale_down_window", 3600)):
        if draw(st.booleans()):
            autoscaling[window] = draw(st.integers(1, most))
    # The panic window is at most the stable one (60 s and 6 s unless given).
    stable = draw(st.none() | st.integers(1, 3600))
    if stable is not None:
        autoscaling["scale_up_window"] = stable
    if draw(st.booleans()) or (stable or 60) < 6:
        autoscaling["panic_window"] = draw(st.integers(1, stable or 60))
    if draw(st.booleans()):
        autoscaling["panic_threshold"] = draw(st.floats(1.1, 10) | st.sampled_from([1.1, 2, 10]))
    return autoscaling


canaries = st.fixed_dictionaries(
    {},
    optional={
        "image": st.none() | images(),
        "command": st.none() | text_lists,
        "args": st.none() | text_lists,
        "env": envs,
        "weight": st.integers(1, 99),
        "replicas": st.integers(1, 1000),
    },
)


@st.composite
def rollouts(draw: st.DrawFn) -> Document:
    """A rollout policy; its waves are left to the defaults (one wave of every target),
    since which regions a document targets is drawn apart from its spec."""
    weights = sorted(draw(st.sets(st.integers(1, 99), min_size=1, max_size=4)))
    steps = [{"weight": weight, "hold": draw(st.integers(0, 86_400))} for weight in weights]
    rails = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "max_error_percent": st.floats(0, 100),
                "min_requests": st.integers(1, 1_000_000),
                "max_latency_ratio": st.floats(1, 100),
                "readiness_deadline": st.integers(1, 86_400),
            },
        )
    )
    return {
        "steps": steps,
        "guard_rails": rails,
        "between_waves": draw(st.sampled_from(["auto", "wait"])),
        "canary_replicas": draw(st.integers(1, 1000)),
    }


_NULLABLE = {
    "args",
    "capacity_type",
    "namespace",
    "ingress_path",
    "model_source",
    "model_path",
    "canary",
    "rollout",
}


def _spec_fields(full: bool) -> st.SearchStrategy[Document]:
    """Every optional field of a spec; `full` gives all of them, otherwise any of them."""
    fields: dict[str, st.SearchStrategy[Any]] = {
        "args": text_lists,
        "replicas": st.integers(0, 1000),
        "port": st.integers(1, 65535),
        "health_path": url_paths,
        "env": envs,
        "resources": resources(),
        "capacity_type": st.sampled_from(["spot", "on-demand"]),
        "node_selector": labels,
        "labels": labels,
        "namespace": namespaces,
        "ingress_path": url_paths,
        "region_images": st.dictionaries(st.sampled_from(REGIONS), images(), max_size=2),
        "model_source": model_sources,
        "model_path": model_paths,
        "canary": canaries,
        "autoscaling": autoscalings(),
        "rollout": rollouts(),
    }
    if full:
        return st.fixed_dictionaries(fields)
    return st.fixed_dictionaries(
        {},
        optional={
            name: st.none() | field if name in _NULLABLE else field
            for name, field in fields.items()
        },
    )


@st.composite
def valid_specs(draw: st.DrawFn, full: bool = False) -> Document:
    spec: Document = draw(_spec_fields(full))
    # An image, a command, or both.
    runs = draw(st.sampled_from(["image", "command", "both"]))
    if runs != "command":
        spec["image"] = draw(images())
    if runs != "image":
        spec["command"] = draw(st.lists(free_text, min_size=1, max_size=3))
    elif draw(st.booleans()):
        spec["command"] = draw(st.none() | text_lists)
    # gpu_count only with an accelerator.
    accelerator = draw(st.sampled_from([None, "none", "nvidia", "neuron"]))
    if accelerator is not None:
        spec["accelerator"] = accelerator
    if accelerator in ("nvidia", "neuron"):
        spec["gpu_count"] = draw(st.integers(0, 16))
    elif draw(st.booleans()):
        spec["gpu_count"] = 0
    return spec


@st.composite
def valid_documents(
    draw: st.DrawFn, name: st.SearchStrategy[str] = endpoint_names, full: bool | None = None
) -> Document:
    shape = draw(st.booleans()) if full is None else full
    document: Document = {"metadata": {"name": draw(name)}, "spec": draw(valid_specs(shape))}
    if draw(st.booleans()):
        document = {"apiVersion": "servefleet/v1", "kind": "Endpoint", **document}
    regions = draw(st.none() | st.lists(st.sampled_from(REGIONS), min_size=1, unique=True))
    if regions is not None:
        document["regions"] = regions
    state = draw(st.sampled_from([None, "deploying", "running", "stopped"]))
    if state is not None:
        document["state"] = state
    return document


# Breaking exactly one field: each breaker returns the broken field's dotted path.

Breaker = Callable[[st.DrawFn, Document], str]


def _set(field: str, bad: st.SearchStrategy[Any]) -> Breaker:
    def breaker(draw: st.DrawFn, document: Document) -> str:
        document["spec"][field] = draw(bad)
        return f"spec.{field}"

    return breaker


def _in_canary(field: str, bad: st.SearchStrategy[Any]) -> Breaker:
    def breaker(draw: st.DrawFn, document: Document) -> str:
        canary = dict(document["spec"].get("canary") or {})
        canary[field] = draw(bad)
        document["spec"]["canary"] = canary
        return f"spec.canary.{field}"

    return breaker


def _in_autoscaling(field: str, bad: st.SearchStrategy[Any]) -> Breaker:
    def breaker(draw: st.DrawFn, document: Document) -> str:
        document["spec"]["autoscaling"] = {
            **(document["spec"].get("autoscaling") or {}),
            field: draw(bad),
        }
        return f"spec.autoscaling.{field}"

    return breaker


def _insert(text: str, piece: str, at: int) -> str:
    """`piece` at `at` (wrapped around), or at the very end for a negative `at`."""
    at = len(text) if at < 0 else at % (len(text) + 1)
    return text[:at] + piece + text[at:]


@st.composite
def _with_one_of(draw: st.DrawFn, valid: st.SearchStrategy[str], bad_chars: str) -> str:
    # The ends get their own chance: a pattern anchored with `$` lets a final "\n" through.
    at = draw(st.sampled_from([0, -1]) | st.integers(0, 500))
    return _insert(draw(valid), draw(st.sampled_from(bad_chars)), at)


_SHELL_CHARS = "'\";$` \n"
bad_model_sources = _with_one_of(model_sources, _SHELL_CHARS) | st.one_of(
    st.sampled_from(
        [
            "http://example.com/model",
            "https://huggingface.co/org/model",
            "ftp://host/model",
            "S3://bucket/key",
            "s3:/bucket/key",
            "file://relative/path",
            "hf://org-only",
            "bucket/key",
            "",
        ]
    ),
    st.builds("{}://{}".format, st.sampled_from(["http", "ssh", "oci", "git"]), _safe_paths),
)
bad_images = _with_one_of(images(), " \t\n") | st.builds(
    lambda registry, good, bad: f"{registry}/{good}/{bad}",
    _registries,
    _image_component,
    st.from_regex(r"[a-z0-9]{0,4}[A-Z][A-Za-z0-9]{0,4}", fullmatch=True),
)
bad_url_paths = st.one_of(
    st.from_regex(r"[A-Za-z0-9._~-]{1,8}(/[A-Za-z0-9._~-]{1,8}){0,2}", fullmatch=True),  # relative
    url_paths.filter(lambda path: path != "/").map(lambda path: path + "/"),  # trailing '/'
    _with_one_of(url_paths, " ?#%:;'\"$`\n"),
    st.sampled_from(["", "//", "/a//b", "health"]),
)
bad_env_names = st.one_of(
    st.from_regex(r"[0-9][A-Za-z0-9_]{0,6}", fullmatch=True),
    _with_one_of(env_names, "-=. $é\n"),
    st.just(""),
)
bad_label_keys = st.one_of(
    _with_one_of(_label_name, " $:;!é\n"),
    _label_name.map(lambda name: "-" + name),
    _label_name.map(lambda name: name + "_"),
    st.builds(lambda name: f"Example.COM/{name}", _label_name),
    st.builds(lambda name: f"a/b/{name}", _label_name),
    st.just("x" * 64),
    st.just(""),
)
bad_label_values = st.one_of(
    _with_one_of(_label_name, " $/:;!é\n"),
    _label_name.map(lambda name: "-" + name),
    _label_name.map(lambda name: name + "."),
    st.just("v" * 64),
)
bad_namespaces = st.one_of(
    namespaces.map(str.upper).filter(lambda ns: ns != ns.lower()),
    _with_one_of(namespaces, "_. A$"),
    namespaces.map(lambda ns: "-" + ns),
    namespaces.map(lambda ns: ns + "-"),
    st.just("n" * 64),
    st.just(""),
)
bad_names = st.one_of(
    endpoint_names.map(str.upper),
    _with_one_of(endpoint_names, "_. A$"),
    st.from_regex(r"[0-9][-a-z0-9]{0,10}", fullmatch=True),
    st.integers(MAX_NAME_LENGTH + 1, 80).map(lambda length: "a" * length),
    endpoint_names.map(lambda name: name + "-"),
    st.just(""),
)
bad_quantities = st.one_of(
    st.sampled_from(["", "abc", "1.2.3", "1Kb", "1 Gi", "Gi", "1e", "1i", "1KI", "0x10", "1,5"]),
    quantities.map(lambda quantity: "-" + quantity.lstrip("+")).filter(
        lambda quantity: parse_quantity(quantity) < 0
    ),
)
bad_metric_targets = st.one_of(
    st.floats(max_value=0),
    st.integers(max_value=0),
    st.sampled_from([float("inf"), float("nan"), float("-inf")]),
)


def _break_labels(field: str) -> Breaker:
    def breaker(draw: st.DrawFn, document: Document) -> str:
        labels = dict(document["spec"].get(field) or {})
        if draw(st.booleans()):
            labels[draw(bad_label_keys)] = draw(label_values)
        else:
            labels[draw(label_keys)] = draw(bad_label_values)
        document["spec"][field] = labels
        return f"spec.{field}"

    return breaker


def _break_env(draw: st.DrawFn, document: Document) -> str:
    where = draw(st.sampled_from(["spec", "canary"]))
    holder = document["spec"]
    if where == "canary":
        holder = dict(holder.get("canary") or {})
        document["spec"]["canary"] = holder
    holder["env"] = {**(holder.get("env") or {}), draw(bad_env_names): draw(free_text)}
    return "spec.env" if where == "spec" else "spec.canary.env"


def _break_with_nul(draw: st.DrawFn, document: Document) -> str:
    holder = document["spec"]
    where = draw(st.sampled_from(["spec", "spec.canary"]))
    if where == "spec.canary":
        holder = dict(holder.get("canary") or {})
        document["spec"]["canary"] = holder
    with_nul = draw(_with_one_of(free_text, "\x00"))
    field = draw(st.sampled_from(["command", "args", "env"]))
    if field == "env":
        name = draw(env_names)
        holder["env"] = {**(holder.get("env") or {}), name: with_nul}
        return f"{where}.env.{name}"
    holder[field] = [*draw(text_lists), with_nul]
    return f"{where}.{field}"


def _break_requests_over_limits(draw: st.DrawFn, document: Document) -> str:
    name = draw(resource_names)
    low, high = _ordered((draw(quantities), draw(quantities)))
    if parse_quantity(low) == parse_quantity(high):
        high = f"{parse_quantity(high) + 1}"
    resources = document["spec"].get("resources") or {}
    document["spec"]["resources"] = {
        "requests": {**resources.get("requests", {}), name: high},
        "limits": {**resources.get("limits", {}), name: low},
    }
    return f"spec.resources.requests.{name}"


def _break_quantity(draw: st.DrawFn, document: Document) -> str:
    kind = draw(st.sampled_from(["requests", "limits"]))
    name = draw(resource_names)
    resources = dict(document["spec"].get("resources") or {})
    resources[kind] = {name: draw(bad_quantities)}
    document["spec"]["resources"] = resources
    return f"spec.resources.{kind}.{name}"


def _break_autoscaling_bounds(draw: st.DrawFn, document: Document) -> str:
    high = draw(st.integers(1, 999))
    low = draw(st.integers(high + 1, 1000))
    document["spec"]["autoscaling"] = {
        **(document["spec"].get("autoscaling") or {}),
        "min_replicas": low,
        "max_replicas": high,
    }
    return "spec.autoscaling.min_replicas"


def _break_metric_target(draw: st.DrawFn, document: Document) -> str:
    document["spec"]["autoscaling"] = {
        **(document["spec"].get("autoscaling") or {}),
        "metrics": [
            {"type": draw(st.sampled_from(["cpu", "rps"])), "target": draw(bad_metric_targets)}
        ],
    }
    return "spec.autoscaling.metrics.0.target"


def _break_metric_types(draw: st.DrawFn, document: Document) -> str:
    kind = draw(st.sampled_from(["cpu", "memory", "concurrency", "rps"]))
    document["spec"]["autoscaling"] = {
        **(document["spec"].get("autoscaling") or {}),
        "metrics": [{"type": kind, "target": 1}, {"type": kind, "target": 2}],
    }
    return "spec.autoscaling.metrics"


def _break_scale_to_zero_without_a_request_metric(draw: st.DrawFn, document: Document) -> str:
    types = draw(st.lists(st.sampled_from(["cpu", "memory"]), unique=True))
    document["spec"]["autoscaling"] = {
        **(document["spec"].get("autoscaling") or {}),
        "min_replicas": 0,
        "metrics": [{"type": kind, "target": 50} for kind in types],
    }
    return "spec.autoscaling.min_replicas"


def _break_panic_window(draw: st.DrawFn, document: Document) -> str:
    stable = draw(st.integers(1, 3599))
    document["spec"]["autoscaling"] = {
        **(document["spec"].get("autoscaling") or {}),
        "scale_up_window": stable,
        "panic_window": draw(st.integers(stable + 1, 3600)),
    }
    return "spec.autoscaling.panic_window"


def _break_gpu_without_accelerator(draw: st.DrawFn, document: Document) -> str:
    document["spec"]["accelerator"] = draw(st.sampled_from(["none", None]))
    if document["spec"]["accelerator"] is None:
        del document["spec"]["accelerator"]
    document["spec"]["gpu_count"] = draw(st.integers(1, 16))
    return "spec.gpu_count"


def _break_nothing_to_run(draw: st.DrawFn, document: Document) -> str:
    document["spec"].pop("image", None)
    document["spec"]["command"] = draw(st.sampled_from([None, []]))
    return "spec.image"


def _break_region_image(draw: st.DrawFn, document: Document) -> str:
    region = draw(st.sampled_from(REGIONS))
    document["spec"]["region_images"] = {
        **(document["spec"].get("region_images") or {}),
        region: draw(bad_images),
    }
    return f"spec.region_images.{region}"


def _break_unknown_field(draw: st.DrawFn, document: Document) -> str:
    typo = draw(st.sampled_from(["replica", "imagee", "gpus", "healthPath", "Env"]))
    document["spec"][typo] = draw(st.integers(0, 3) | free_text)
    return f"spec.{typo}"


def _break_name(draw: st.DrawFn, document: Document) -> str:
    document["metadata"]["name"] = draw(bad_names)
    return "metadata.name"


def _break_regions(draw: st.DrawFn, document: Document) -> str:
    region = draw(st.sampled_from(REGIONS))
    bad = draw(st.sampled_from([[region, region], [], [region.upper()], [f"{region}_x"]]))
    document["regions"] = bad
    return "regions" if len(bad) != 1 else "regions.0"


def _break_state(draw: st.DrawFn, document: Document) -> str:
    # "deleted" is valid here: get shows it; apply refuses it (see the service-level test).
    document["state"] = draw(st.sampled_from(["Running", "paused", "started", ""]))
    return "state"


def _in_rollout(field: str, bad: st.SearchStrategy[Any]) -> Breaker:
    def breaker(draw: st.DrawFn, document: Document) -> str:
        rollout = dict(document["spec"].get("rollout") or {})
        rollout[field] = draw(bad)
        document["spec"]["rollout"] = rollout
        return f"spec.rollout.{field}"

    return breaker


def _break_rollout_step_order(draw: st.DrawFn, document: Document) -> str:
    high = draw(st.integers(1, 99))
    low = draw(st.integers(1, high))
    document["spec"]["rollout"] = {"steps": [{"weight": high}, {"weight": low}]}
    return "spec.rollout.steps.1.weight"


def _break_rollout_step_weight(draw: st.DrawFn, document: Document) -> str:
    document["spec"]["rollout"] = {"steps": [{"weight": draw(_outside(1, 99))}]}
    return "spec.rollout.steps.0.weight"


def _break_rollout_waves(draw: st.DrawFn, document: Document) -> str:
    region = draw(st.sampled_from(REGIONS))
    twice = draw(st.sampled_from([[[region, region]], [[region], [region]]]))
    empty = draw(st.sampled_from([[], [[]], [[region], []]]))
    waves = draw(st.sampled_from([twice, empty]))
    document["spec"]["rollout"] = {"waves": waves}
    if waves is twice or not waves:
        return "spec.rollout.waves"
    return f"spec.rollout.waves.{len(waves) - 1}"


def _break_rollout_guard_rail(draw: st.DrawFn, document: Document) -> str:
    rail, bad = draw(
        st.sampled_from(
            [
                (
                    "max_error_percent",
                    draw(st.floats(min_value=100.01) | st.floats(max_value=-0.01)),
                ),
                ("min_requests", draw(st.integers(max_value=0))),
                ("max_latency_ratio", draw(st.floats(max_value=0.99))),
                ("readiness_deadline", draw(st.integers(max_value=0))),
            ]
        )
    )
    document["spec"]["rollout"] = {"guard_rails": {rail: bad}}
    return f"spec.rollout.guard_rails.{rail}"


def _outside(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers outside low..high, the two nearest ones most of all."""
    return (
        st.sampled_from([low - 1, high + 1])
        | st.integers(max_value=low - 1)
        | st.integers(min_value=high + 1)
    )


BREAKERS: dict[str, Breaker] = {
    "replicas": _set("replicas", _outside(0, 1000)),
    "port": _set("port", _outside(1, 65535)),
    "gpu_count": _set("gpu_count", _outside(0, 16)),
    "gpu_without_accelerator": _break_gpu_without_accelerator,
    "accelerator": _set("accelerator", st.sampled_from(["amd", "NVIDIA", "gpu", ""])),
    "capacity_type": _set("capacity_type", st.sampled_from(["preemptible", "Spot", "ondemand"])),
    "env": _break_env,
    "nul": _break_with_nul,
    "health_path": _set("health_path", bad_url_paths),
    "ingress_path": _set("ingress_path", bad_url_paths),
    "model_source": _set("model_source", bad_model_sources),
    "model_path": _set(
        "model_path",
        _with_one_of(model_paths, _SHELL_CHARS) | _safe_paths.filter(lambda p: p[:1] != "/"),
    ),
    "image": _set("image", bad_images),
    "canary.image": _in_canary("image", bad_images),
    "region_image": _break_region_image,
    "canary.weight": _in_canary("weight", _outside(1, 99)),
    "canary.replicas": _in_canary("replicas", _outside(1, 1000)),
    "autoscaling.bounds": _break_autoscaling_bounds,
    "autoscaling.target": _break_metric_target,
    "autoscaling.types": _break_metric_types,
    "autoscaling.scale_to_zero": _break_scale_to_zero_without_a_request_metric,
    **{
        f"autoscaling.{window}": _in_autoscaling(
            window, st.integers(max_value=0) | st.sampled_from([-1.5, 0.5, "soon"])
        )
        for window in (
            "scale_to_zero_after",
            "scale_up_window",
            "scale_down_window",
            "panic_window",
        )
    },
    "autoscaling.panic_over_stable": _break_panic_window,
    "autoscaling.panic_threshold": _in_autoscaling(
        "panic_threshold", st.floats(max_value=1.09) | st.floats(min_value=10.01)
    ),
    "rollout.steps.order": _break_rollout_step_order,
    "rollout.steps.weight": _break_rollout_step_weight,
    "rollout.waves": _break_rollout_waves,
    "rollout.between_waves": _in_rollout(
        "between_waves", st.sampled_from(["manual", "Auto", "", 1])
    ),
    "rollout.guard_rails": _break_rollout_guard_rail,
    "requests_over_limits": _break_requests_over_limits,
    "quantity": _break_quantity,
    "labels": _break_labels("labels"),
    "node_selector": _break_labels("node_selector"),
    "namespace": _set("namespace", bad_namespaces),
    "nothing_to_run": _break_nothing_to_run,
    "unknown_field": _break_unknown_field,
    "name": _break_name,
    "regions": _break_regions,
    "state": _break_state,
}


@st.composite
def broken_documents(draw: st.DrawFn, rule: str) -> tuple[str, Document]:
    document = json.loads(json.dumps(draw(valid_documents(full=False))))  # a deep copy
    return BREAKERS[rule](draw, document), document


# Running the CLI.


def dump(documents: list[Document], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(documents if len(documents) > 1 else documents[0])
    return yaml.safe_dump_all(documents, sort_keys=False)


class Cli:
    """`servefleet --store URL ...` in-process, on the SQLite store in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.runner = CliRunner()
        self.store = ["--store", f"sqlite:///{directory / 'store.db'}"]

    def __call__(self, *args: str, stdin: str | None = None) -> Result:
        return self.runner.invoke(app, [*self.store, *args], input=stdin, catch_exceptions=False)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self(*args, stdin=stdin)
        assert (result.exit_code, result.stderr) == (0, ""), result.output
        return result.stdout

    def endpoints(self) -> list[Document]:
        listed: list[Document] = json.loads(self.ok("list", "-o", "json"))
        return listed


@pytest.fixture(scope="session")
def template_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with regions r1 and r2 registered through the CLI, copied for each example."""
    directory = tmp_path_factory.mktemp("template")
    cli = Cli(directory)
    for region in REGIONS:
        cli.ok("regions", "add", region, "--kind", "local")
    assert [region["name"] for region in json.loads(cli.ok("regions", "list", "-o", "json"))] == [
        *REGIONS
    ]
    assert cli.endpoints() == []
    return directory


@pytest.fixture
def new_cli(tmp_path_factory: pytest.TempPathFactory, template_store: Path) -> Callable[[], Cli]:
    """A CLI on a fresh store of its own (regions r1 and r2, no endpoint) per call."""

    def new() -> Cli:
        directory = tmp_path_factory.mktemp("store")
        for file in template_store.iterdir():
            shutil.copy(file, directory / file.name)
        return Cli(directory)

    return new


# Invalid input. Each rule is its own test case, so every rule is exercised on every run.

RULES = sorted(BREAKERS)
EXAMPLE_SPEC: Document = {"image": "ghcr.io/example/server:1.0"}


def _example(path: str, spec: Document, name: str = "llm") -> tuple[str, Document]:
    return path, {"metadata": {"name": name}, "spec": {**EXAMPLE_SPEC, **spec}}


# Regressions and edges that random generation may not reach in a short run.
KNOWN_CASES = [
    _example("spec.canary.weight", {"canary": {"image": "ghcr.io/x/y:2", "weight": 100}}),
    _example("spec.replicas", {"replicas": 1001}),
    _example("spec.port", {"port": 65536}),
    _example("spec.gpu_count", {"accelerator": "nvidia", "gpu_count": 17}),
    # +inf was accepted, stored as JSON null, and made the record unreadable.
    _example(
        "spec.autoscaling.metrics.0.target",
        {"autoscaling": {"metrics": [{"type": "cpu", "target": float("inf")}]}},
    ),
    # Scaling to zero: nothing measured on running replicas could start one again.
    _example("spec.autoscaling.min_replicas", {"autoscaling": {"min_replicas": 0}}),
    _example(
        "spec.autoscaling.min_replicas",
        {
            "autoscaling": {
                "enabled": True,
                "min_replicas": 0,
                "metrics": [{"type": "cpu", "target": 60}, {"type": "memory", "target": 70}],
            }
        },
    ),
    _example("spec.autoscaling.scale_to_zero_after", {"autoscaling": {"scale_to_zero_after": 0}}),
    _example("spec.autoscaling.scale_up_window", {"autoscaling": {"scale_up_window": -60}}),
    _example("spec.autoscaling.scale_down_window", {"autoscaling": {"scale_down_window": 0}}),
    _example("spec.autoscaling.panic_window", {"autoscaling": {"panic_window": 0}}),
    # The default stable window is 60 s, so a longer panic window is no burst.
    _example("spec.autoscaling.panic_window", {"autoscaling": {"panic_window": 61}}),
    _example("spec.autoscaling.panic_window", {"autoscaling": {"scale_up_window": 5}}),
    _example("spec.autoscaling.panic_threshold", {"autoscaling": {"panic_threshold": 1.0}}),
    # Resource names with '-' or '/' were left out of the path.
    _example(
        "spec.resources.requests.ephemeral-storage",
        {
            "resources": {
                "requests": {"ephemeral-storage": "2Gi"},
                "limits": {"ephemeral-storage": "1Gi"},
            }
        },
    ),
    _example(
        "spec.resources.limits.nvidia.com/gpu", {"resources": {"limits": {"nvidia.com/gpu": "-1"}}}
    ),
    _example("spec.model_source", {"model_source": "s3://bucket/key;rm -rf /"}),
    _example("spec.model_source", {"model_source": "hf://org/model@$(id)"}),
    _example("spec.image", {"image": "ghcr.io/Org/server:1.0"}),
    _example("spec.namespace", {"namespace": "n" * 64}),
    _example("metadata.name", {}, name="a" * (MAX_NAME_LENGTH + 1)),
    _example("metadata.name", {}, name="9llm"),
    # A pattern ending in `$` matched before a final newline, so these were accepted.
    _example("spec.model_source", {"model_source": "s3://bucket/key\n"}),
    _example("spec.env", {"env": {"TOKEN\n": "x"}}),
    _example("spec.env.TOKEN", {"env": {"TOKEN": "x\x00"}}),
    _example("spec.args", {"args": ["--flag", "\x00"]}),
    _example("spec.image", {"image": "ghcr.io/example/server:1.0\n"}),
    _example("spec.health_path", {"health_path": "/health\n"}),
    _example("spec.labels", {"labels": {"team": "ml\n"}}),
    _example("spec.resources.requests.cpu", {"resources": {"requests": {"cpu": "1\n"}}}),
    _example("metadata.name", {}, name="llm\n"),
    ("regions.0", {"metadata": {"name": "llm"}, "spec": EXAMPLE_SPEC, "regions": ["r1\n"]}),
    # Every character that could change a command line, where a path is otherwise allowed.
    *(
        _example("spec.model_source", {"model_source": f"{scheme}models/v1{char}x"})
        for char in _SHELL_CHARS
        for scheme in ("s3://bucket/", "gs://bucket/", "file:///", "hf://org/model@")
    ),
    *(_example("spec.model_path", {"model_path": f"/models/v1{char}x"}) for char in _SHELL_CHARS),
]
KNOWN_IDS = [f"{path}={index}" for index, (path, _) in enumerate(KNOWN_CASES)]


def _problems_of(error: pytest.ExceptionInfo[ValidationError], prefix: str = "") -> list[str]:
    return invalid_input(error.value, prefix).problems


def _assert_all_name(problems: list[str], path: str) -> None:
    assert problems
    for problem in problems:
        assert problem.startswith(f"{path}: "), (path, problems)


def check_refused_by_the_models(path: str, document: Document) -> None:
    with pytest.raises(ValidationError) as manifest_error:
        EndpointManifest.model_validate(document)
    _assert_all_name(_problems_of(manifest_error), path)

    if path.startswith("spec."):
        with pytest.raises(ValidationError) as spec_error:
            EndpointSpec.model_validate(document["spec"])
        _assert_all_name(_problems_of(spec_error, "spec"), path)
    if path == "metadata.name":
        when = datetime(2026, 1, 1, tzinfo=UTC)
        with pytest.raises(ValidationError) as endpoint_error:
            Endpoint.model_validate(
                {
                    "name": document["metadata"]["name"],
                    "spec": EXAMPLE_SPEC,
                    "target_regions": ["r1"],
                    "created_at": when,
                    "updated_at": when,
                }
            )
        _assert_all_name(_problems_of(endpoint_error), "name")


@pytest.mark.parametrize("rule", RULES)
@RULE_MODEL_SETTINGS
@given(data=st.data())
def test_a_broken_field_is_refused_by_the_models_naming_it(rule: str, data: st.DataObject) -> None:
    check_refused_by_the_models(*data.draw(broken_documents(rule), label="case"))


@pytest.mark.parametrize(("path", "document"), KNOWN_CASES, ids=KNOWN_IDS)
def test_known_broken_fields_are_refused_by_the_models(path: str, document: Document) -> None:
    check_refused_by_the_models(path, document)


def check_refused_by_apply(
    cli: Cli, path: str, position: int, documents: list[Document], fmt: str
) -> None:
    result = cli("apply", "-f", "-", stdin=dump(documents, fmt))

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    name = documents[position - 1]["metadata"]["name"]
    first, *problems = re.split(r"(?m)^error: ", result.stderr)  # a name may hold a newline
    assert first == "", result.stderr
    assert problems, result.output
    for problem in problems:
        assert problem.startswith(f"- document {position} ({name}): {path}: "), problems
    assert cli.endpoints() == []


@st.composite
def broken_batches(draw: st.DrawFn, rule: str) -> tuple[str, int, list[Document]]:
    """A broken document among valid ones: nothing of the batch may be written."""
    path, broken = draw(broken_documents(rule))
    valid = draw(
        st.lists(valid_documents(st.sampled_from(["companion-a", "companion-b"])), max_size=2)
    )
    valid = list({document["metadata"]["name"]: document for document in valid}.values())
    if broken["metadata"]["name"] in {document["metadata"]["name"] for document in valid}:
        broken["metadata"]["name"] = "broken"
    at = draw(st.integers(0, len(valid)))
    return path, at + 1, [*valid[:at], broken, *valid[at:]]


@pytest.mark.parametrize("rule", RULES)
@RULE_CLI_SETTINGS
@given(data=st.data(), fmt=st.sampled_from(["yaml", "json"]))
def test_apply_refuses_a_broken_field_on_stderr_and_stores_nothing(
    new_cli: Callable[[], Cli], rule: str, data: st.DataObject, fmt: str
) -> None:
    path, position, documents = data.draw(broken_batches(rule), label="batch")
    check_refused_by_apply(new_cli(), path, position, documents, fmt)


@pytest.mark.parametrize(
    ("path", "document", "fmt"),
    [(*case, ("yaml", "json")[index % 2]) for index, case in enumerate(KNOWN_CASES)],
    ids=KNOWN_IDS,
)
def test_apply_refuses_known_broken_fields_and_stores_nothing(
    new_cli: Callable[[], Cli], path: str, document: Document, fmt: str
) -> None:
    check_refused_by_apply(new_cli(), path, 1, [document], fmt)


def _unregistered_region_image(cli: Cli, document: Document, region: str) -> str:
    document["spec"]["region_images"] = {region: "ghcr.io/example/server:2.0"}
    return f"spec.region_images: region {region!r} is not registered"


def _deleted_state(cli: Cli, document: Document, region: str) -> str:
    document["state"] = "deleted"
    return "state: 'deleted' is reported by get, not applied"


def _scale_to_zero_in_a_kubernetes_region(cli: Cli, document: Document, region: str) -> str:
    cli.ok("regions", "add", region, "--kind", "kubernetes")
    document["regions"] = [*document.get("regions", REGIONS), region]
    document["spec"]["autoscaling"] = {
        **(document["spec"].get("autoscaling") or {}),
        "min_replicas": 0,
        "metrics": [{"type": "concurrency", "target": 4}],
    }
    return (
        f"spec.autoscaling.min_replicas: region {region!r} scales with the "
        "HorizontalPodAutoscaler, which cannot scale to zero; register it with --autoscaler keda"
    )


# Rules that need the store: checked by the service, still before anything is written.
# Each may register what it needs (`region` is not registered yet).
SERVICE_RULES: dict[str, Callable[[Cli, Document, str], str]] = {
    "region_images": _unregistered_region_image,
    "deleted_state": _deleted_state,
    "scale_to_zero_in_kubernetes": _scale_to_zero_in_a_kubernetes_region,
}


@pytest.mark.parametrize("rule", sorted(SERVICE_RULES))
@CLI_SETTINGS
@given(document=valid_documents(), region=st.sampled_from(["r3", "eu-west"]))
def test_apply_refuses_what_the_store_rules_out_and_stores_nothing(
    new_cli: Callable[[], Cli], rule: str, document: Document, region: str
) -> None:
    cli = new_cli()
    problem = SERVICE_RULES[rule](cli, document, region)

    result = cli("apply", "-f", "-", stdin=dump([document], "yaml"))

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {problem}"), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert cli.endpoints() == []


# Valid input.


@pytest.mark.parametrize("full", [False, True], ids=["sparse", "full"])
@MODEL_SETTINGS
@given(data=st.data())
def test_every_generated_valid_spec_is_accepted_and_dumps_to_itself(
    full: bool, data: st.DataObject
) -> None:
    spec = data.draw(valid_specs(full), label="spec")

    validated = EndpointSpec.model_validate(spec)

    for field, value in spec.items():
        if value is not None and field not in ("resources", "canary", "autoscaling", "rollout"):
            assert getattr(validated, field) == value
    assert EndpointSpec.model_validate(validated.model_dump(mode="json")) == validated
    assert EndpointSpec.model_validate_json(validated.model_dump_json()) == validated


def _shown(cli: Cli, name: str) -> Document:
    shown: Document = json.loads(cli.ok("get", name, "-o", "json"))
    return shown


def check_round_trip(cli: Cli, document: Document, fmt: str) -> None:
    """apply; then get -o yaml | apply and get -o json | apply are both "unchanged"."""
    name = document["metadata"]["name"]
    expected = EndpointSpec.model_validate(document["spec"])

    assert cli.ok("apply", "-f", "-", stdin=dump([document], fmt)) == f"endpoint/{name} created\n"

    stored = _shown(cli, name)
    assert EndpointSpec.model_validate(stored["spec"]) == expected
    assert stored["spec"] == expected.model_dump(mode="json", exclude_none=True)
    assert stored["regions"] == document.get("regions", list(REGIONS))
    assert stored["state"] == ("stopped" if document.get("state") == "stopped" else "running")
    assert (stored["metadata"]["generation"], stored["metadata"]["revision"]) == (1, 1)

    for output in ("yaml", "json"):
        shown = cli.ok("get", name, "-o", output)
        loaded = yaml.safe_load(shown) if output == "yaml" else json.loads(shown)
        assert EndpointSpec.model_validate(loaded["spec"]) == expected, output

        assert cli.ok("apply", "-f", "-", stdin=shown) == f"endpoint/{name} unchanged\n", output

        assert _shown(cli, name) == stored, output
    assert cli.endpoints() == [{key: value for key, value in stored.items() if key != "status"}]


@pytest.mark.parametrize("full", [False, True], ids=["sparse", "full"])
@SHAPE_CLI_SETTINGS
@given(data=st.data(), fmt=st.sampled_from(["yaml", "json"]))
def test_a_valid_spec_applies_and_gets_back_unchanged_in_yaml_and_json(
    new_cli: Callable[[], Cli], full: bool, data: st.DataObject, fmt: str
) -> None:
    document = data.draw(valid_documents(full=full), label="document")
    check_round_trip(new_cli(), document, fmt)


ROUND_TRIP_CASES = [
    # rich printed ":smile:" as an emoji, so get | apply changed the value.
    {"env": {"GREETING": ":smile:"}, "args": ["--banner", "[bold]hi[/bold] :rocket:"]},
    # JSON escapes this as a surrogate pair, which a YAML parser read as two characters.
    {"args": ["😀", "\U0001f680 rocket"]},
    # "E" is exa, "Ei" exbi: both were parsed as a malformed exponent and refused.
    {"resources": {"requests": {"memory": "1E"}, "limits": {"memory": "1Ei"}}},
    {"autoscaling": {"enabled": True, "metrics": [{"type": "rps", "target": 1e-300}]}},
    {"env": {"A": "\x85\u2028\t\r\n\x1b", "B": "yes", "C": "~", "D": "1e3", "E": "- x"}},
]


@pytest.mark.parametrize("spec", ROUND_TRIP_CASES)
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_known_valid_specs_round_trip(new_cli: Callable[[], Cli], spec: Document, fmt: str) -> None:
    document = {"metadata": {"name": "llm"}, "spec": {**EXAMPLE_SPEC, **spec}}
    check_round_trip(new_cli(), document, fmt)


@CLI_SETTINGS
@given(document=valid_documents(), replicas=st.integers(0, 1000))
def test_a_changed_replica_count_is_configured_as_a_new_generation(
    new_cli: Callable[[], Cli], document: Document, replicas: int
) -> None:
    """The round trip's "unchanged" is not a no-op: a real change is written."""
    name = document["metadata"]["name"]
    cli = new_cli()
    cli.ok("apply", "-f", "-", stdin=dump([document], "yaml"))
    shown = yaml.safe_load(cli.ok("get", name, "-o", "yaml"))
    changed = shown["spec"]["replicas"] != replicas
    shown["spec"]["replicas"] = replicas

    outcome = cli.ok("apply", "-f", "-", stdin=dump([shown], "yaml"))

    after = _shown(cli, name)
    assert after["spec"]["replicas"] == replicas
    expected = (2, "configured") if changed else (1, "unchanged")
    assert outcome == f"endpoint/{name} {expected[1]}\n"
    assert (after["metadata"]["generation"], after["metadata"]["revision"]) == (expected[0],) * 2
