"""What the API server allocates to a Service: a cluster IP (from 10.96.0.0/16) and,
for NodePort and LoadBalancer Services, a node port for each port, kept across
updates and released on delete."""

from __future__ import annotations

import ipaddress
from random import Random
from typing import Any

_SERVICE_NETWORK = ipaddress.ip_network("10.96.0.0/16")
"""Built once: its size is computed once too."""


class ServiceAllocations:
    """Addresses and ports in use; `random` is the engine's (generated names draw from
    it too, so one seed decides both)."""

    def __init__(self, random: Random) -> None:
        self._random = random
        self._cluster_ips: set[str] = set()
        self._node_ports: set[int] = set()

    def assign(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        spec = obj["spec"]
        old_spec = (old or {}).get("spec") or {}
        if spec.get("type") == "ExternalName":
            return
        if not spec.get("clusterIP"):
            spec["clusterIP"] = old_spec.get("clusterIP") or self._allocate_cluster_ip()
        else:
            self._cluster_ips.add(spec["clusterIP"])
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        if spec.get("type") in ("NodePort", "LoadBalancer"):
            old_ports = {(p.get("port"), p.get("protocol")): p for p in old_spec.get("ports") or []}
            for port in spec.get("ports") or []:
                if "nodePort" not in port:
                    previous = old_ports.get((port.get("port"), port.get("protocol")), {})
                    port["nodePort"] = previous.get("nodePort") or self._allocate_node_port()

    def release(self, obj: dict[str, Any]) -> None:
        """Free a deleted Service's cluster IP."""
        self._cluster_ips.discard(obj.get("spec", {}).get("clusterIP", ""))

    def _allocate_cluster_ip(self) -> str:
        network = _SERVICE_NETWORK
        while True:
            candidate = str(network[self._random.randrange(11, network.num_addresses - 1)])
            if candidate not in self._cluster_ips:
                self._cluster_ips.add(candidate)
                return candidate

    def _allocate_node_port(self) -> int:
        while True:
            port = self._random.randrange(30000, 32768)
            if port not in self._node_ports:
                self._node_ports.add(port)
                return port
