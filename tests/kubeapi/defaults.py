"""Defaulting, as the real API server's registered defaulters do it on write."""

from __future__ import annotations

from typing import Any

PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def _image_pull_policy(image: str) -> str:
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return "Always"
    return "Always" if last.rsplit(":", 1)[1] == "latest" else "IfNotPresent"


def _probe(probe: dict[str, Any]) -> None:
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    http = probe.get("httpGet")
    if isinstance(http, dict):
        http.setdefault("scheme", "HTTP")
    grpc = probe.get("grpc")
    if isinstance(grpc, dict):
        grpc.setdefault("service", "")


def container(spec: dict[str, Any]) -> None:
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
    for env in spec.get("env") or []:
        field_ref = (env.get("valueFrom") or {}).get("fieldRef") if isinstance(env, dict) else None
        if isinstance(field_ref, dict):
            field_ref.setdefault("apiVersion", "v1")
    spec.setdefault("resources", {})
    spec.setdefault("terminationMessagePath", "/dev/termination-log")
    spec.setdefault("terminationMessagePolicy", "File")
    if isinstance(spec.get("image"), str):
        spec.setdefault("imagePullPolicy", _image_pull_policy(spec["image"]))
    for name in PROBES:
        if isinstance(spec.get(name), dict):
            _probe(spec[name])


_VOLUME_SOURCES = (
    "configMap",
    "secret",
    "emptyDir",
    "hostPath",
    "persistentVolumeClaim",
    "projected",
    "downwardAPI",
    "csi",
    "ephemeral",
    "nfs",
    "image",
)


def pod_spec(spec: dict[str, Any]) -> None:
    for name in ("initContainers", "containers"):
        for item in spec.get(name) or []:
            if isinstance(item, dict):
                container(item)
    for volume in spec.get("volumes") or []:
        if not isinstance(volume, dict):
            continue
        if not any(source in volume for source in _VOLUME_SOURCES):
            volume["emptyDir"] = {}
        for source in ("configMap", "secret", "projected", "downwardAPI"):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault("defaultMode", 420)
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    if spec.get("serviceAccountName"):
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")


def _qos_class(spec: dict[str, Any]) -> str:
    """pkg/apis/core/helper/qos.GetPodQOS, for cpu and memory."""
    requested = limited = False
    guaranteed = True
    for name in ("initContainers", "containers"):
        for item in spec.get(name) or []:
            resources = (item.get("resources") if isinstance(item, dict) else None) or {}
            requests = resources.get("requests") or {}
            limits = resources.get("limits") or {}
            for kind in ("cpu", "memory"):
                requested = requested or kind in requests
                limited = limited or kind in limits
                if kind not in limits or requests.get(kind, limits[kind]) != limits[kind]:
                    guaranteed = False
    if not requested and not limited:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def pod(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    for name in ("initContainers", "containers"):
        for item in spec.get(name) or []:
            resources = item.get("resources") if isinstance(item, dict) else None
            if isinstance(resources, dict) and isinstance(resources.get("limits"), dict):
                # SetDefaults_Pod: a limit without a request requests the limit
                requests = resources.setdefault("requests", {})
                for kind, limit in resources["limits"].items():
                    requests.setdefault(kind, limit)
    pod_spec(spec)
    spec.setdefault("enableServiceLinks", True)
    status = obj.get("status")
    if isinstance(status, dict):
        status.setdefault("qosClass", _qos_class(spec))


def deployment(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    template = spec.setdefault("template", {})
    pod_spec(template.setdefault("spec", {}))


def service(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    for port in spec.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            if "port" in port:
                port.setdefault("targetPort", port["port"])
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if spec["type"] == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)


def hpa(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("minReplicas", 1)
    behavior = spec.get("behavior")
    if isinstance(behavior, dict):
        up = behavior.setdefault("scaleUp", {})
        up.setdefault("stabilizationWindowSeconds", 0)
        up.setdefault("selectPolicy", "Max")
        up.setdefault(
            "policies",
            [
                {"type": "Pods", "value": 4, "periodSeconds": 15},
                {"type": "Percent", "value": 100, "periodSeconds": 15},
            ],
        )
        down = behavior.setdefault("scaleDown", {})
        down.setdefault("selectPolicy", "Max")
        down.setdefault("policies", [{"type": "Percent", "value": 100, "periodSeconds": 15}])


def namespace(obj: dict[str, Any]) -> None:
    name = obj.get("metadata", {}).get("name", "")
    obj["metadata"].setdefault("labels", {}).setdefault("kubernetes.io/metadata.name", name)
    obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])


def nothing(obj: dict[str, Any]) -> None:
    """Kinds without defaults (Ingress, Lease)."""
