"""The operations users perform on endpoints and regions, with their rules.

Every change of an endpoint is a read-modify-write loop: read the record, work out
the new one, write it with compare-and-set on `revision`, and on a conflict read
again and redo the change on top of what the other writer stored. So concurrent
writers (two CLI invocations, the CLI and a reconciler) never lose each other's
work, and a rule is always checked against the record it is applied to.

A change whose result equals the stored intent writes nothing, so re-applying
the same declaration leaves even `revision` untouched.

One module a concern: `records` (reading, and the write loop), `declarations`
(deploy, create, apply), `scaling`, `lifecycle` (image, stop, start, delete),
`canary`, `regions`, the rules they check (`checks`) and their refusals
(`refusals`); `endpoints` composes them into `EndpointService`.
"""

from servefleet.service.declarations import Applied, ApplyOutcome
from servefleet.service.endpoints import EndpointService
from servefleet.service.records import revise_spec, utc_now
from servefleet.service.refusals import OperationRefused, RegionNotTargeted, UnregisteredRegion

__all__ = [
    "Applied",
    "ApplyOutcome",
    "EndpointService",
    "OperationRefused",
    "RegionNotTargeted",
    "UnregisteredRegion",
    "revise_spec",
    "utc_now",
]
