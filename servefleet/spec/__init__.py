"""The endpoint record and every rule about user input.

Everything a user can declare passes through these models before anything is
stored, so each rule lives here once and every error names the field it is
about. Nothing in this package does I/O or reads a clock.

One module a concern: `rules` (what the others share: names, images, labels,
quantities, env), `errors`, `autoscaling`, `rollout`, `endpoint`, `region`,
`status`, `traffic`, `api_tokens` and `manifest`. Importers take every name from here.
"""

from servefleet.spec.api_tokens import ApiToken, Role
from servefleet.spec.autoscaling import REQUEST_METRICS, AutoscalingMetric, AutoscalingSpec
from servefleet.spec.endpoint import CanarySpec, DesiredState, Endpoint, EndpointSpec, Resources
from servefleet.spec.errors import InvalidInput, Problem, invalid_input
from servefleet.spec.manifest import EndpointManifest, declared_more_than_once, status_section
from servefleet.spec.region import QUERY_PLACEHOLDERS, Region, RegionKind, fill_query
from servefleet.spec.rollout import (
    GuardRails,
    RolloutPhase,
    RolloutPolicy,
    RolloutState,
    RolloutStep,
    StepBaseline,
)
from servefleet.spec.rules import (
    MAX_NAME_LENGTH,
    STORED,
    DnsSubdomain,
    EndpointName,
    Image,
    RegionName,
    Rfc1123Label,
    parse_quantity,
)
from servefleet.spec.status import ModelStaging, RegionState, RegionStatus
from servefleet.spec.traffic import LATENCY_BOUNDS, RegionTraffic, VersionTraffic

__all__ = [
    "LATENCY_BOUNDS",
    "MAX_NAME_LENGTH",
    "QUERY_PLACEHOLDERS",
    "REQUEST_METRICS",
    "STORED",
    "ApiToken",
    "AutoscalingMetric",
    "AutoscalingSpec",
    "CanarySpec",
    "DesiredState",
    "DnsSubdomain",
    "Endpoint",
    "EndpointManifest",
    "EndpointName",
    "EndpointSpec",
    "GuardRails",
    "Image",
    "InvalidInput",
    "ModelStaging",
    "Problem",
    "Region",
    "RegionKind",
    "RegionName",
    "RegionState",
    "RegionStatus",
    "RegionTraffic",
    "Resources",
    "Rfc1123Label",
    "Role",
    "RolloutPhase",
    "RolloutPolicy",
    "RolloutState",
    "RolloutStep",
    "StepBaseline",
    "VersionTraffic",
    "declared_more_than_once",
    "fill_query",
    "invalid_input",
    "parse_quantity",
    "status_section",
]
