"""`servefleet reconcile`: the reconcilers of chosen kubernetes regions, no gateway.

This is `servefleet up` (`servefleet.cli.up.run`) for kubernetes regions only, as
it runs inside a cluster (`servefleet install-manifests`): each named region must
be registered and of kind kubernetes (a local region's replicas need the gateway
that `up` runs), and is reached through its kubeconfig or, inside a pod, the
pod's service account:

- `--in-cluster`: every region through the service account (a kubeconfig
  registered from a laptop means nothing in the pod);
- in a pod (`KUBERNETES_SERVICE_HOST` set) without it: the regions registered
  without a kubeconfig;
- elsewhere: each region's kubeconfig and context, as `up` does.
"""

from __future__ import annotations

from collections.abc import Sequence

from servefleet.spec import Region, RegionKind

__all__ = ["cluster_regions", "in_cluster_regions"]


def cluster_regions(registered: Sequence[Region], names: Sequence[str]) -> list[Region]:
    """The registered kubernetes regions `names`, in that order; a ValueError naming
    every other (unknown or local) name."""
    by_name = {region.name: region for region in registered}
    problems = []
    for name in names:
        region = by_name.get(name)
        if region is None:
            problems.append(
                f"--region: {name!r} is not registered "
                f"(servefleet regions add {name} --kind kubernetes ...)"
            )
        elif region.kind is not RegionKind.KUBERNETES:
            problems.append(
                f"--region: {name!r} is a {region.kind.value} region; "
                "`servefleet up` runs those, with their gateway"
            )
    if problems:
        raise ValueError("; ".join(problems))
    return [by_name[name] for name in dict.fromkeys(names)]


def in_cluster_regions(regions: Sequence[Region], *, forced: bool, in_pod: bool) -> frozenset[str]:
    """The regions reached with the pod's service account (see the module docstring)."""
    if forced and not in_pod:
        raise ValueError(
            "--in-cluster: KUBERNETES_SERVICE_HOST is not set; in-cluster credentials "
            "exist only inside a Kubernetes pod"
        )
    return frozenset(
        region.name for region in regions if forced or (in_pod and region.kubeconfig is None)
    )
