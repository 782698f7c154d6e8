"""Plain JSON values as request bodies and stored objects hold them: read from a
body as Go's decoder reads it, copied deeply and compared as JSON (a boolean is
never a number). Nothing here knows a schema: `typed` builds on it.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Final, TypeVar, cast

import orjson

T = TypeVar("T")
_CONTAINERS: Final = (dict, list)
"""For `isinstance`: a tuple, as `dict | list` would build a union type at each test."""


def clone(value: T) -> T:
    """A deep copy of a JSON value: through orjson (several times faster than a walk,
    and much faster than copy.deepcopy), or by a walk where orjson cannot write it (an
    integer beyond 64 bits). Objects hold no NaN or infinity, which orjson would write
    as null: `parse_json` refuses them, as the real API server does."""
    try:
        if not isinstance(value, (dict, list)):
            return value
        return cast(T, orjson.loads(orjson.dumps(value)))
    except orjson.JSONEncodeError:
        return _walked(value)


_DIGITS_ONLY: Final = bytes(
    ord("0") if ord("0") <= byte <= ord("9") else ord(" ") for byte in range(256)
)
_LONG_NUMBER: Final = b"0" * 19
"""Digits enough for an integer orjson would read as a float (beyond 64 bits), looked
for among the body's digits (`_DIGITS_ONLY`: a tenth of a regular expression's time)."""


def parse_json(raw: str | bytes) -> Any:
    """A request body's JSON, refusing NaN and Infinity as Go's decoder does (the
    standard library would take them). orjson reads it, but for a body it refuses or
    that may hold a huge integer: the standard library's value or error then."""
    encoded = raw if isinstance(raw, bytes) else raw.encode(errors="surrogatepass")
    if _LONG_NUMBER not in encoded.translate(_DIGITS_ONLY):
        with contextlib.suppress(orjson.JSONDecodeError):
            return orjson.loads(raw)
    return json.loads(raw, parse_constant=_refuse_constant)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def _walked(value: T) -> T:
    if isinstance(value, dict):
        return cast(T, {key: _walked(item) for key, item in value.items()})
    if isinstance(value, list):
        return cast(T, [_walked(item) for item in value])
    return value


def json_equal(left: Any, right: Any) -> bool:
    """Deep equality of JSON values that does not confuse booleans with numbers.

    Python's own equality, at C speed, settles most cases: it is coarser (True == 1),
    so values it finds different are; values it finds equal are the same JSON when
    orjson writes them alike, else they are walked."""
    if left != right:
        return False
    if isinstance(left, _CONTAINERS):
        with contextlib.suppress(orjson.JSONEncodeError):
            if orjson.dumps(left) == orjson.dumps(right):
                return True
    return _json_equal(left, right)


def _json_equal(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_json_equal, left, right))
    if isinstance(left, _CONTAINERS) or isinstance(right, _CONTAINERS):
        return False
    return bool(left == right)
