"""A Kubernetes API server for tests (see `server.KubeApiServer`)."""

from .kubelet import Kubelet
from .request_controls import Fault, Latency, RequestInfo, matching
from .resources import SCALED_OBJECTS
from .schema import CRDS
from .server import KubeApiServer

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
