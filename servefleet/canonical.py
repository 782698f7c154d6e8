"""Canonical JSON for digests: the text of `json.dumps(value, sort_keys=True,
separators=(",", ":"))`, written by orjson where that gives the same bytes.

Digests recorded on live objects and in the store (the workload hash, the fields
digest) were taken over the standard library's text, so any faster writer must
reproduce it byte for byte or every object would look changed after an upgrade.
orjson writes the same text but for three things, each visible in its output:
characters beyond ASCII (and DEL), which the standard library escapes; floats below
1e-4 in magnitude (`0.00001` and `1.5e-7` against `1e-05` and `1.5e-07`); and values
it refuses (integers beyond 64 bits, keys that are not strings, types beyond JSON's).
For those the standard library writes the text. (Checked on 1.8 million random
floats, alone, in lists and in maps: no difference escaped the test and none was
flagged needlessly.) One difference the output does not show: orjson writes a plain
`Enum` member (not a `str` or `int` one) by its value, where the standard library
hands it to `default`; servefleet digests JSON values only (a manifest, a workload
dumped in JSON mode), never such a member. It is several times faster than the
standard library on the manifests and workloads servefleet digests, work done for
every object applied and every watch event.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

import orjson

__all__ = ["canonical_json"]

_SHORT_EXPONENT: Final = re.compile(rb"e-[0-9](?![0-9])")
_OPTIONS: Final = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
"""Types the standard library does not write itself are left to `default`, as there."""


def canonical_json(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """`json.dumps(value, sort_keys=True, separators=(",", ":"), default=default)`,
    encoded (module docstring)."""
    try:
        encoded = orjson.dumps(value, default=default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        pass
    else:
        # Substring tests first: a regular expression over every byte cost more than
        # the encoding itself.
        if (
            encoded.isascii()
            and b"\x7f" not in encoded
            and b"0.0000" not in encoded
            and (b"e-" not in encoded or not _SHORT_EXPONENT.search(encoded))
        ):
            return encoded
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=default).encode()
