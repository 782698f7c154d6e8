"""A Kubernetes API server for tests (see `server.KubeApiServer`)."""

from .kubelet import Kubelet
from .resources import SCALED_OBJECTS
from .schema import CRDS
from .server import Fault, KubeApiServer, Latency, RequestInfo, matching

__all__ = [
    "CRDS",
    "SCALED_OBJECTS",
    "Fault",
    "KubeApiServer",
    "Kubelet",
    "Latency",
    "RequestInfo",
    "matching",
]
