"""A Kubernetes API server for tests (see `server.KubeApiServer`)."""

from .server import Fault, KubeApiServer, Latency, RequestInfo, matching

__all__ = ["Fault", "KubeApiServer", "Latency", "RequestInfo", "matching"]
