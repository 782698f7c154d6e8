"""The rules every part of the spec shares: names, images, labels, quantities, env
names, and the base of its models.

Values that reach a runtime later (a model URI, command arguments, env) are
validated strictly because they must never be able to change the meaning of a
command line: no field is ever joined into a shell string. Each validator raises
`ValueError` with the rule in words, which pydantic reports against its field.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
)

__all__ = [
    "MAX_NAME_LENGTH",
    "STORED",
    "Argv",
    "DnsSubdomain",
    "EndpointName",
    "Image",
    "Labels",
    "Quantities",
    "RegionName",
    "Rfc1123Label",
    "SpecModel",
    "distinct",
    "env_names",
    "env_values",
    "label_key",
    "parse_quantity",
    "shown",
]

STORED = {"stored": True}
"""The validation context of a record read back from a store: a rule added for input
after the record was written (scale to zero needing a request metric) must not make
it unreadable, or one old record would stop every listing that holds it."""

MAX_NAME_LENGTH = 45
"""Endpoint names leave room for "-canary" and prefixes within 63-character labels."""

_RFC1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?\Z")
_RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# An OCI reference: [registry[:port]/]path[:tag][@digest], lowercase path components.
_IMAGE = re.compile(
    r"^(?:(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?\Z"
)
# Kubernetes quantity: a signed decimal, then a binary/decimal suffix or exponent.
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?\Z"
)
_QUANTITY_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)\Z")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?)\Z")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")


def shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _endpoint_name(value: str) -> str:
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"must be at most {MAX_NAME_LENGTH} characters (got {len(value)})")
    if not _RFC1035_LABEL.match(value):
        raise ValueError(
            "must be lowercase letters, digits and '-', start with a letter and end with a "
            f"letter or digit (got {shown(value)})"
        )
    return value


def _rfc1123_label(value: str) -> str:
    if len(value) > 63 or not _RFC1123_LABEL.match(value):
        raise ValueError(
            "must be at most 63 lowercase letters, digits and '-', starting and ending with "
            f"a letter or digit (got {shown(value)})"
        )
    return value


def _image(value: str) -> str:
    if len(value) > 255 or not _IMAGE.match(value):
        raise ValueError(
            f"is not a valid OCI image reference like 'ghcr.io/org/server:1.2' (got {shown(value)})"
        )
    return value


def label_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise ValueError(f"key prefix must be a DNS subdomain (got {shown(key)})")
    if len(name) > 63 or not _LABEL_NAME.match(name):
        raise ValueError(
            "key must be at most 63 letters, digits, '-', '_' or '.', starting and ending "
            f"with a letter or digit (got {shown(key)})"
        )


def _labels(value: dict[str, str]) -> dict[str, str]:
    for key, label in value.items():
        label_key(key)
        if len(label) > 63 or not _LABEL_VALUE.match(label):
            raise ValueError(
                f"value of {key!r} must be at most 63 letters, digits, '-', '_' or '.', "
                f"starting and ending with a letter or digit (got {shown(label)})"
            )
    return value


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes resource quantity ("500m", "16Gi", "1e3") as a number."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"is not a Kubernetes quantity like '500m' or '16Gi' (got {shown(text)})")
    number, suffix = match.group(1), match.group(2) or ""
    try:
        if suffix not in _QUANTITY_SUFFIX:  # an exponent; "E" and "Ei" are exa and exbi
            return Decimal(number + suffix)
        return Decimal(number) * _QUANTITY_SUFFIX[suffix]
    except InvalidOperation as error:
        raise ValueError(f"is not a Kubernetes quantity (got {shown(text)})") from error


def _quantities(value: dict[str, str]) -> dict[str, str]:
    for resource, quantity in value.items():
        label_key(resource)
        try:
            amount = parse_quantity(quantity)
        except ValueError as error:
            raise ValueError(f"{resource}: {error}") from None
        if amount < 0:
            raise ValueError(f"{resource}: must not be negative (got {shown(quantity)})")
    return value


def _documented(rule: re.Pattern[str], max_length: int) -> Any:
    """The rule in the JSON schema (OpenAPI), for clients and generated tests; the
    validator above stays the one that checks it, with its own wording."""
    pattern = rule.pattern.removesuffix(r"\Z") + "$"
    return Field(json_schema_extra={"pattern": pattern, "maxLength": max_length})


EndpointName = Annotated[
    str, AfterValidator(_endpoint_name), _documented(_RFC1035_LABEL, MAX_NAME_LENGTH)
]
Rfc1123Label = Annotated[str, AfterValidator(_rfc1123_label), _documented(_RFC1123_LABEL, 63)]
"""What Kubernetes accepts as a namespace name; region names follow the same rule."""
RegionName = Rfc1123Label
Image = Annotated[str, AfterValidator(_image), _documented(_IMAGE, 255)]
Labels = Annotated[dict[str, str], AfterValidator(_labels)]


def _numbers_as_quantities(value: object) -> object:
    """YAML reads `cpu: 2` as a number; a quantity is its text."""
    if not isinstance(value, dict):
        return value
    return {
        key: str(amount)
        if isinstance(amount, int | float) and not isinstance(amount, bool)
        else amount
        for key, amount in value.items()
    }


Quantities = Annotated[
    dict[str, str], BeforeValidator(_numbers_as_quantities), AfterValidator(_quantities)
]


class SpecModel(BaseModel):
    """The base of every model of the spec: an unknown field is an error, and a
    validated model never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


def distinct(regions: list[str]) -> list[str]:
    duplicates = sorted({region for region in regions if regions.count(region) > 1})
    if duplicates:
        raise ValueError(f"each region may appear once (got {duplicates} more than once)")
    return regions


def _no_nul(texts: list[str], info: ValidationInfo) -> str | None:
    """The first of `texts` that holds a NUL, unless read back from a store (a record
    written before this rule must stay readable)."""
    if info.context == STORED:
        return None
    return next((text for text in texts if "\x00" in text), None)


def _argv(value: list[str] | None, info: ValidationInfo) -> list[str] | None:
    # exec() takes NUL-terminated strings: an argument holding one cannot be passed
    # to any process, on either runtime, so it is refused before it is stored.
    held = _no_nul(value or [], info)
    if held is not None:
        raise ValueError(f"arguments must not contain a NUL character (got {shown(held)})")
    return value


Argv = Annotated[list[str] | None, AfterValidator(_argv)]
"""A command or its arguments: any text but NUL, never joined into a shell string."""


def env_values(value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
    """Env values hold any text but NUL, which no process environment can carry."""
    held = _no_nul(list(value.values()), info)
    if held is not None:
        name = next(name for name, text in value.items() if text == held)
        raise ValueError(f"{name}: a value must not contain a NUL character (got {shown(held)})")
    return value


def env_names(value: dict[str, str]) -> dict[str, str]:
    for name in value:
        if not _ENV_NAME.match(name):
            raise ValueError(
                "names must be letters, digits and '_', not starting with a digit "
                f"(got {shown(name)})"
            )
    return value


def _dns_subdomain(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError(
            f"must be a DNS subdomain: lowercase letters, digits, '-' and '.' (got {shown(value)})"
        )
    return value


DnsSubdomain = Annotated[str, AfterValidator(_dns_subdomain)]
