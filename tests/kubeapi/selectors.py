"""Label and field selectors: parsing the query syntax and matching objects."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

FIELD_SELECTOR_FIELDS = ("metadata.name", "metadata.namespace")


class SelectorError(ValueError):
    """A selector the API server would refuse (400 BadRequest)."""


@functools.lru_cache(maxsize=4096)
def label_key_error(key: str) -> str | None:
    """Why `key` is not a valid label key, or None. (Remembered: every write checks
    the keys of its labels and annotations, and the same few keys recur.)"""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _QUALIFIED_NAME.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start"
            " and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or"
            " '123-abc', regex used for validation is"
            " '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
        )
    return None


def label_value_error(value: str) -> str | None:
    """Why `value` is not a valid label value, or None."""
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _LABEL_VALUE.match(value):
        return (
            "a valid label must be an empty string or consist of alphanumeric characters, '-',"
            " '_' or '.', and must start and end with an alphanumeric character (e.g."
            " 'MyValue',  or 'my_value',  or '12345', regex used for validation is"
            " '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
        )
    return None


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # =, !=, in, notin, exists, !, gt, lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator in ("=", "in"):
            return present and value in self.values
        if self.operator in ("!=", "notin"):
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if not present or value is None:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        limit = int(self.values[0])
        return number > limit if self.operator == "gt" else number < limit

    def __str__(self) -> str:
        if self.operator == "exists":
            return self.key
        if self.operator == "!":
            return f"!{self.key}"
        if self.operator in ("in", "notin"):
            return f"{self.key} {self.operator} ({','.join(sorted(self.values))})"
        if self.operator in ("gt", "lt"):
            return f"{self.key}{'>' if self.operator == 'gt' else '<'}{self.values[0]}"
        return f"{self.key}{self.operator}{self.values[0]}"


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if not self.requirements:
            return True  # most watches select everything: each write is offered to them
        labels = labels or {}
        return all(requirement.matches(labels) for requirement in self.requirements)

    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in sorted(self.requirements, key=lambda r: r.key))


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


_SET_RE = re.compile(r"^(?P<key>[^\s!=<>()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_EQ_RE = re.compile(r"^(?P<key>[^\s!=<>()]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=<>(),]*)$")
_CMP_RE = re.compile(r"^(?P<key>[^\s!=<>()]+)\s*(?P<op>[<>])\s*(?P<value>-?\d+)$")
_KEY_RE = re.compile(r"^(?P<neg>!?)\s*(?P<key>[^\s!=<>(),]+)$")


def _checked_key(key: str, requirement: str) -> str:
    problem = label_key_error(key)
    if problem:
        raise SelectorError(f"unable to parse requirement: invalid label key {key!r}: {problem}")
    return key


def _checked_value(value: str) -> str:
    problem = label_value_error(value)
    if problem:
        raise SelectorError(
            f"unable to parse requirement: invalid label value: {value!r}: {problem}"
        )
    return value


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse `labelSelector` query syntax (=, ==, !=, in, notin, exists, !key, <, >)."""
    if text is None or not text.strip():
        return LabelSelector()
    requirements: list[Requirement] = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise SelectorError(f"found '', expected: identifier in selector {text!r}")
        if match := _SET_RE.match(part):
            values = tuple(
                _checked_value(v.strip()) for v in match["values"].split(",") if v.strip()
            )
            if not values:
                raise SelectorError(
                    f"unable to parse requirement: for 'in', 'notin' operators, values set"
                    f" can't be empty: {part!r}"
                )
            requirements.append(Requirement(_checked_key(match["key"], part), match["op"], values))
        elif match := _EQ_RE.match(part):
            op = "=" if match["op"] in ("=", "==") else "!="
            requirements.append(
                Requirement(_checked_key(match["key"], part), op, (_checked_value(match["value"]),))
            )
        elif match := _CMP_RE.match(part):
            op = "gt" if match["op"] == ">" else "lt"
            requirements.append(
                Requirement(_checked_key(match["key"], part), op, (match["value"],))
            )
        elif match := _KEY_RE.match(part):
            op = "!" if match["neg"] else "exists"
            requirements.append(Requirement(_checked_key(match["key"], part), op))
        else:
            raise SelectorError(f"unable to parse requirement: {part!r}")
    return LabelSelector(tuple(requirements))


def selector_from_object(selector: Mapping[str, Any] | None) -> LabelSelector:
    """A metav1.LabelSelector (matchLabels / matchExpressions) as a `LabelSelector`."""
    if not selector:
        return LabelSelector()
    requirements = [
        Requirement(key, "=", (str(value),))
        for key, value in (selector.get("matchLabels") or {}).items()
    ]
    operators = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expression in selector.get("matchExpressions") or []:
        operator = operators.get(str(expression.get("operator")))
        if operator is None:
            raise SelectorError(
                f"{expression.get('operator')!r} is not a valid label selector operator"
            )
        values = tuple(str(v) for v in expression.get("values") or ())
        requirements.append(Requirement(str(expression.get("key")), operator, values))
    return LabelSelector(tuple(requirements))


@dataclass(frozen=True)
class FieldSelector:
    terms: tuple[tuple[str, bool, str], ...] = ()  # (field, equal?, value)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        metadata = obj.get("metadata") or {}
        for name, equal, value in self.terms:
            actual = metadata.get(name.split(".", 1)[1], "")
            if (actual == value) != equal:
                return False
        return True

    def name(self) -> str | None:
        """The object name the selector pins down (`metadata.name=x`), if any."""
        for name, equal, value in self.terms:
            if name == "metadata.name" and equal:
                return value
        return None


def parse_field_selector(text: str | None) -> FieldSelector:
    if text is None or not text.strip():
        return FieldSelector()
    terms: list[tuple[str, bool, str]] = []
    for raw in text.split(","):
        part = raw.strip()
        match = re.match(r"^([^=!]+)(==|=|!=)(.*)$", part)
        if not match:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        name, op, value = match[1].strip(), match[2], match[3].strip()
        if name not in FIELD_SELECTOR_FIELDS:
            raise SelectorError(f"field label not supported: {name}")
        terms.append((name, op != "!=", value))
    return FieldSelector(tuple(terms))
