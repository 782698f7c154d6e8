"""A Kubernetes API server for tests (see `server.KubeApiServer`)."""

from .kubelet import Kubelet
from .server import Fault, KubeApiServer, Latency, RequestInfo, matching

__all__ = ["Fault", "KubeApiServer", "Kubelet", "Latency", "RequestInfo", "matching"]
