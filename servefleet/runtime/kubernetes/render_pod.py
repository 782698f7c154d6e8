"""A version's Deployment and the pods it runs. Pure.

`render.render` calls `deployment` for the primary and, when one is set, the
canary; whether it carries `spec.replicas` is render.py's *Replicas and the
autoscaler*.

Pods
----
One container, `inference`: the version's image (the region override is applied
by the planner), command and args with `{port}` replaced by the port and, when
a model is staged, `{model_dir}` by its directory (as local regions do; `PORT`
and `SERVEFLEET_MODEL_DIR` are set too), env sorted by name, a named port `http`,
resources from the spec plus `nvidia.com/gpu` or `aws.amazon.com/neuron`
requests = limits = `gpu_count` (the count wins over the same key in
`resources`). An accelerator also brings its toleration (`<resource> Exists
NoSchedule`) and, when the spec gives no `node_selector`, the region's default
node selector for it; `capacity_type` adds `karpenter.sh/capacity-type`.
Probes all GET `health_path` on the container port, in this order: a
startupProbe polling every 10 s for `startup_timeout` seconds (a model that
loads for minutes is not killed: the reference design's 120 s liveness delay
restarted 4-minute loads in a loop), then readiness and liveness with no
initial delay, which only start once the startup probe passed.
`enableServiceLinks` is off: with a thousand endpoints in a namespace, the
service environment variables would run into the tens of thousands per pod.

Model staging: when `model_source` is set, an `emptyDir` volume `model` is
mounted at `model_path` (default `/models`) in both containers, and an init
container `stage-model` runs `python -m servefleet.stage` from the region's
`stage_image`. The source reaches it only as the environment variables
`SERVEFLEET_MODEL_SOURCE` and `SERVEFLEET_MODEL_DIR` (after the version's own
env, so credentials such as `HF_TOKEN` reach it too, and servefleet's names
win) — never in an argv element and never through a shell: no rendered
command is `sh -c`. `servefleet.stage` verifies, resumes and times out (its
docstring; `SERVEFLEET_STAGE_TIMEOUT` in the version's env reaches it too).
Its outcome goes to `/dev/termination-log` (`SERVEFLEET_STAGE_TERMINATION_LOG`;
the log's tail if it dies before writing one), which the kubelet reports as the
init container's termination message. The pods of such a version carry the label
`servefleet.io/stages-model=true` (`STAGING_SELECTOR`): the runtime watches only
those pods, for staging progress and failures (`staging.py`).
`model_path` without `model_source` renders nothing.

Errors: an image-less version (a local-only spec) raises `WorkloadUnsupported`,
naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from servefleet.plan import Version, Workload
from servefleet.runtime.base import WorkloadUnsupported
from servefleet.runtime.kubernetes.render_names import (
    LABEL_MANAGED_BY,
    MANAGED_SELECTOR,
    PORT_NAME,
    Manifest,
    object_labels,
    object_metadata,
    object_name,
    version_selector,
)
from servefleet.runtime.kubernetes.render_settings import PROBE_PERIOD, RegionSettings

__all__ = [
    "STAGE_CONTAINER",
    "STAGING_SELECTOR",
    "deployment",
]

LABEL_STAGES_MODEL: Final = "servefleet.io/stages-model"
STAGING_SELECTOR: Final = f"{MANAGED_SELECTOR},{LABEL_STAGES_MODEL}=true"
"""Label selector of the pods whose init container stages a model."""
STAGE_CONTAINER: Final = "stage-model"
"""The init container that stages the model."""

_ACCELERATOR_RESOURCE: Final[Mapping[str, str]] = {
    "nvidia": "nvidia.com/gpu",
    "neuron": "aws.amazon.com/neuron",
}
_CAPACITY_TYPE_LABEL: Final = "karpenter.sh/capacity-type"

_CONTAINER: Final = "inference"
_STAGE_COMMAND: Final = ("python", "-m", "servefleet.stage")
_MODEL_VOLUME: Final = "model"
_TERMINATION_LOG: Final = "/dev/termination-log"
_DEFAULT_MODEL_PATH: Final = "/models"

# Probe timing (the period of startup and readiness: `PROBE_PERIOD`). The startup
# probe covers the model load; readiness and liveness start only after it passed,
# so neither needs an initial delay.
_PROBE_TIMEOUT: Final = 5
_READINESS_FAILURES: Final = 3
_LIVENESS_PERIOD: Final = 15
_LIVENESS_FAILURES: Final = 4


def deployment(
    workload: Workload, settings: RegionSettings, version: Version, digest: str
) -> Manifest:
    """`version`'s Deployment; `spec.replicas` only when the version has a count
    (render.py, *Replicas and the autoscaler*)."""
    role = version.role
    spec: dict[str, Any] = {}
    if version.replicas is not None:
        spec["replicas"] = version.replicas
    spec["selector"] = {"matchLabels": version_selector(workload, role)}
    spec["strategy"] = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod_labels = object_labels(workload, role, LABEL_MANAGED_BY)
    if workload.model_source:
        pod_labels[LABEL_STAGES_MODEL] = "true"
    spec["template"] = {
        "metadata": {
            "labels": pod_labels,
            "annotations": {"kubectl.kubernetes.io/default-container": _CONTAINER},
        },
        "spec": _pod(workload, settings, version),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_metadata(
            workload, settings, object_name(workload.endpoint, role), role, digest
        ),
        "spec": spec,
    }


def _pod(workload: Workload, settings: RegionSettings, version: Version) -> dict[str, Any]:
    if version.image is None:
        field_name = "image" if version.role == "primary" else "canary.image"
        raise WorkloadUnsupported(
            f"{field_name}: kubernetes regions run container images; endpoint "
            f"{workload.endpoint!r} declares only a command — give it an image "
            f"(or region_images.{workload.region})"
        )
    model_dir = (workload.model_path or _DEFAULT_MODEL_PATH) if workload.model_source else None

    env = {**version.env, "PORT": str(workload.port)}
    if model_dir:
        env["SERVEFLEET_MODEL_DIR"] = model_dir
    container: dict[str, Any] = {"name": _CONTAINER, "image": version.image}
    if version.command:
        container["command"] = _expand(version.command, workload.port, model_dir)
    if version.args:
        container["args"] = _expand(version.args, workload.port, model_dir)
    container["env"] = _env(env)
    container["ports"] = [{"name": PORT_NAME, "containerPort": workload.port, "protocol": "TCP"}]
    resources = _resources(workload)
    if resources:
        container["resources"] = resources
    container["startupProbe"] = _probe(workload, PROBE_PERIOD, settings.startup_failure_threshold)
    container["readinessProbe"] = _probe(workload, PROBE_PERIOD, _READINESS_FAILURES)
    container["livenessProbe"] = _probe(workload, _LIVENESS_PERIOD, _LIVENESS_FAILURES)
    if model_dir:
        container["volumeMounts"] = [{"name": _MODEL_VOLUME, "mountPath": model_dir}]

    pod: dict[str, Any] = {}
    if settings.service_account is not None:
        pod["serviceAccountName"] = settings.service_account
    pod["enableServiceLinks"] = False
    node_selector = _node_selector(workload, settings)
    if node_selector:
        pod["nodeSelector"] = node_selector
    if workload.accelerator in _ACCELERATOR_RESOURCE:
        pod["tolerations"] = [
            {
                "key": _ACCELERATOR_RESOURCE[workload.accelerator],
                "operator": "Exists",
                "effect": "NoSchedule",
            }
        ]
    if workload.model_source and model_dir:
        stage_env = {
            **version.env,
            "SERVEFLEET_MODEL_SOURCE": workload.model_source,
            "SERVEFLEET_MODEL_DIR": model_dir,
            "SERVEFLEET_STAGE_TERMINATION_LOG": _TERMINATION_LOG,
        }
        pod["initContainers"] = [
            {
                "name": STAGE_CONTAINER,
                "image": settings.stage_image,
                "command": list(_STAGE_COMMAND),
                "env": _env(stage_env),
                "volumeMounts": [{"name": _MODEL_VOLUME, "mountPath": model_dir}],
                "terminationMessagePath": _TERMINATION_LOG,
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ]
        volume: dict[str, Any] = {}
        if settings.model_volume_size_limit is not None:
            volume["sizeLimit"] = settings.model_volume_size_limit
        pod["volumes"] = [{"name": _MODEL_VOLUME, "emptyDir": volume}]
    pod["containers"] = [container]
    return pod


def _expand(parts: list[str], port: int, model_dir: str | None) -> list[str]:
    """The placeholders local regions fill in, filled in the same way."""
    expanded = [part.replace("{port}", str(port)) for part in parts]
    if model_dir is None:
        return expanded
    return [part.replace("{model_dir}", model_dir) for part in expanded]


def _env(env: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": name, "value": env[name]} for name in sorted(env)]


def _resources(workload: Workload) -> dict[str, dict[str, str]]:
    requests = dict(workload.resources.requests)
    limits = dict(workload.resources.limits)
    device = _ACCELERATOR_RESOURCE.get(workload.accelerator)
    if device is not None and workload.gpu_count > 0:
        requests[device] = limits[device] = str(workload.gpu_count)
    resources = {}
    if requests:
        resources["requests"] = dict(sorted(requests.items()))
    if limits:
        resources["limits"] = dict(sorted(limits.items()))
    return resources


def _node_selector(workload: Workload, settings: RegionSettings) -> dict[str, str]:
    selector = dict(workload.node_selector)
    if not selector:
        selector = dict(settings.node_selectors.get(workload.accelerator, {}))
    if workload.capacity_type is not None:
        selector[_CAPACITY_TYPE_LABEL] = workload.capacity_type
    return dict(sorted(selector.items()))


def _probe(workload: Workload, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": workload.health_path, "port": workload.port},
        "periodSeconds": period,
        "timeoutSeconds": _PROBE_TIMEOUT,
        "failureThreshold": failures,
    }
