"""What a child process of the local runtime sees of servefleet's environment.

`servefleet up` runs with the operator's whole shell environment: the store's
URL (a PostgreSQL password in it), cloud credentials, API tokens. A replica is
third-party model-server code, so no child starts from that environment; each
starts from `child_environment`: a short allowlist, the variables its region's
`pass_env` names, then its own variables (the endpoint's `env`, `PORT`, ...).

The allowlist, and why each is there:

- `PATH`, `HOME`, `USER`, `LOGNAME`: finding programs and the user's files.
  `PATH` gets servefleet's interpreter directory in front, so `python` in a
  command is servefleet's own environment (the endpoint's `PATH`, if it sets
  one, is prefixed the same way).
- `LANG`, `LANGUAGE`, `LC_*`, `TZ`: text encoding and time, so a replica decodes
  and logs as the operator's shell does.
- `TMPDIR`: where temporary files may go (a small `/tmp` is common on GPU hosts).
- `VIRTUAL_ENV`, `PYTHONHOME`, `PYTHONPATH`: what makes `python` (servefleet's,
  first on `PATH`) find its standard library and packages, servefleet itself
  when it runs from a checkout (`python -m servefleet.demo`, the staging
  command). They hold paths, not secrets; an endpoint that needs another
  import path sets its own in `env`.
- `CUDA_VISIBLE_DEVICES`, `CUDA_HOME`, `NVIDIA_VISIBLE_DEVICES`,
  `NVIDIA_DRIVER_CAPABILITIES`, `LD_LIBRARY_PATH`: which GPUs a replica may use,
  and where the CUDA libraries are.
- `SSL_CERT_FILE`, `SSL_CERT_DIR`, `REQUESTS_CA_BUNDLE`: which certificate
  authorities to trust (a corporate CA), not a credential.

Left out on purpose: everything `SERVEFLEET_*` from the operator (`SERVEFLEET_STORE`
is the store's URL with its password, `SERVEFLEET_TOKEN` an API token),
`AWS_*` and every other cloud or Hugging Face credential, proxy settings (a proxy
URL may carry a password, and a replica serves a staged model: it needs no
network), `SHELL` and `TERM` (a replica's output goes to a log file, not a
terminal). A region's `pass_env` names what an operator wants passed besides.

The staging child (`python -m servefleet.stage`) is servefleet's own code, and
for an `s3://` source it also gets what reaching the model store takes: every
`AWS_*` variable (credentials, profile and config files, region, endpoint URL,
CA bundle, container and web-identity credentials: the chain botocore reads)
and the proxy settings. Other sources get none of them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping

__all__ = ["INHERITED", "child_environment"]

INHERITED = frozenset(
    {
        *("PATH", "HOME", "USER", "LOGNAME"),
        *("LANG", "LANGUAGE", "TZ", "TMPDIR"),
        *("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"),
        *("CUDA_VISIBLE_DEVICES", "CUDA_HOME", "LD_LIBRARY_PATH"),
        *("NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"),
        *("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"),
    }
)
"""Variables every child gets from servefleet's environment, when set there."""

_INHERITED_PREFIXES = ("LC_",)

_S3_STAGING_PREFIXES = ("AWS_",)
_PROXIES = frozenset(
    {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}
)

_NEVER_PASSED_PREFIX = "SERVEFLEET_"
"""Refused in `pass_env` by `Region`'s validation too; dropped here whoever asks."""


def child_environment(
    parent: Mapping[str, str],
    own: Mapping[str, str],
    *,
    pass_env: Iterable[str] = (),
    model_source: str | None = None,
) -> dict[str, str]:
    """The environment of a child started from `parent` (servefleet's): the
    allowlist, with `model_source`'s credentials for a staging child, then the
    `pass_env` names, then `own` (the child's own variables, which win)."""
    environment = {
        name: value
        for name, value in parent.items()
        if name in INHERITED or name.startswith(_INHERITED_PREFIXES)
    }
    if model_source is not None and model_source.startswith("s3://"):
        environment |= {
            name: value
            for name, value in parent.items()
            if name in _PROXIES or name.startswith(_S3_STAGING_PREFIXES)
        }
    environment |= {
        name: parent[name]
        for name in pass_env
        if name in parent and not name.startswith(_NEVER_PASSED_PREFIX)
    }
    environment |= own
    interpreter = os.path.dirname(sys.executable)
    environment["PATH"] = interpreter + os.pathsep + environment.get("PATH", os.defpath)
    return environment
