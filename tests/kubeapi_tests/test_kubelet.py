"""The simulated kubelet and Deployment controller, over real HTTP: init containers
run as real subprocesses, their statuses and logs come back through the API."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.api_client import ApiClient

from tests.kubeapi import KubeApiServer, Kubelet
from tests.kubeapi.controller import HASH_LABEL, is_ready, plan_pods, template_hash
from tests.kubeapi.errors import ApiError
from tests.kubeapi.kubelet import NODE_NAME, go_duration, rewrite
from tests.kubeapi.podlog import LogLine, LogOptions, render
from tests.kubeapi_tests.conftest import client_of
from tests.waiting import eventually

NS = "llm"


@pytest.fixture
async def kube() -> AsyncIterator[KubeApiServer]:
    async with KubeApiServer(kubelet=Kubelet(backoff=0.05, backoff_cap=0.2)) as server:
        yield server


def python(code: str, *args: str, **extra: Any) -> dict[str, Any]:
    """An init container `python -c code args...` (named by `name=`)."""
    return {
        "name": extra.pop("name", "stage-model"),
        "image": "servefleet/stage:1",
        "command": ["python", "-c", code],
        "args": list(args),
        **extra,
    }


def deployment(name: str, *init: dict[str, Any], replicas: int = 1, **pod: Any) -> Any:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "initContainers": list(init),
                    "containers": [{"name": "inference", "image": "vllm/vllm-openai:v0.20.1"}],
                    **pod,
                },
            },
        },
    }


async def pods_of(core: client.CoreV1Api, app: str) -> list[Any]:
    return list((await core.list_namespaced_pod(NS, label_selector=f"app={app}")).items)


async def first_init_status(core: client.CoreV1Api, app: str) -> Any:
    """The first init container's status in the app's first pod, once there is one."""
    pods = await pods_of(core, app)
    statuses = pods[0].status.init_container_statuses if pods else None
    return statuses[0] if statuses else None


async def failed_once(core: client.CoreV1Api, app: str) -> None:
    async def failed() -> bool:
        status = await first_init_status(core, app)
        return bool(status and status.last_state.terminated)

    await eventually(failed, within=10)


async def ready_replicas(apps: client.AppsV1Api, name: str, wanted: int) -> None:
    async def ready() -> bool:
        current = await apps.read_namespaced_deployment_status(name, NS)
        status = current.status
        counts = (status.replicas, status.updated_replicas, status.ready_replicas)
        return status.observed_generation == current.metadata.generation and counts == (
            wanted,
            wanted,
            wanted,
        )

    await eventually(ready, within=10)


PRINT_LINES = "import sys\nfor n in range(3): print(f'line {n}')\nprint('oops', file=sys.stderr)"


async def test_init_container_runs_and_the_pod_becomes_ready(
    kube: KubeApiServer, api: ApiClient
) -> None:
    """Verify a Deployment's Pods: named by template hash, init container really run
    (log lines, statuses waiting → running → terminated Completed), Running and Ready,
    and the Deployment's status counted from them."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    start = (await core.list_namespaced_pod(NS)).metadata.resource_version
    await apps.create_namespaced_deployment(NS, deployment("llm", python(PRINT_LINES), replicas=2))
    await ready_replicas(apps, "llm", 2)

    created = await apps.read_namespaced_deployment("llm", NS)
    assert created.status.updated_replicas == 2
    assert created.status.available_replicas == 2
    assert created.status.unavailable_replicas is None
    assert created.status.observed_generation == created.metadata.generation
    progressing = {c.type: c for c in created.status.conditions}["Progressing"]
    pods = await pods_of(core, "llm")
    pod_hash = pods[0].metadata.labels[HASH_LABEL]
    assert progressing.message == f'ReplicaSet "llm-{pod_hash}" has successfully progressed.'
    for pod in pods:
        assert re.fullmatch(
            rf"llm-{pod_hash}-[bcdfghjklmnpqrstvwxz2456789]{{5}}", pod.metadata.name
        )
        owner = pod.metadata.owner_references[0]
        assert (owner.kind, owner.name, owner.controller) == ("ReplicaSet", f"llm-{pod_hash}", True)
        assert pod.spec.node_name == NODE_NAME
        assert pod.status.phase == "Running"
        assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"
        init = pod.status.init_container_statuses[0]
        assert (init.state.terminated.exit_code, init.state.terminated.reason) == (0, "Completed")
        assert init.ready is True
        main = pod.status.container_statuses[0]
        assert (main.ready, main.started, main.state.running is not None) == (True, True, True)

    name = pods[0].metadata.name
    text = await core.read_namespaced_pod_log(name, NS, container="stage-model")
    assert text == "line 0\nline 1\nline 2\noops\n"
    assert kube.pod_log(NS, name, "stage-model") == text
    assert await core.read_namespaced_pod_log(name, NS, container="stage-model", tail_lines=2) == (
        "line 2\noops\n"
    )
    limited = await core.read_namespaced_pod_log(name, NS, container="stage-model", limit_bytes=8)
    assert limited == "line 0\nl"
    stamped = await core.read_namespaced_pod_log(
        name, NS, container="stage-model", timestamps=True, tail_lines=1
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z oops\n", stamped)
    assert await core.read_namespaced_pod_log(name, NS) == ""  # the main container never ran

    stream = watch.Watch().stream(
        core.list_namespaced_pod,
        NS,
        field_selector=f"metadata.name={name}",
        resource_version=start,
        timeout_seconds=1,
    )
    async with stream:
        states = [
            state_name(e["object"].status.init_container_statuses[0].state)
            async for e in stream
            if e["object"].status.init_container_statuses
        ]
    changes = [state for n, state in enumerate(states) if n == 0 or states[n - 1] != state]
    assert changes == ["waiting", "running", "terminated"]


def state_name(state: Any) -> str:
    return str(next(kind for kind, value in state.to_dict().items() if value is not None))


async def test_servefleet_stage_runs_as_the_init_container(api: ApiClient, tmp_path: Path) -> None:
    """Verify the init container servefleet renders, `python -m servefleet.stage` with
    the source and directory in env only, stages a model into the pod's emptyDir and
    its last log line is the JSON `done` event; a missing source ends in the `error`
    event and a restart."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    source = tmp_path / "model"
    source.mkdir()
    (source / "weights.bin").write_bytes(b"w" * 4096)

    def stage(name: str, uri: str) -> Any:
        init = {
            "name": "stage-model",
            "image": "servefleet/stage:1",
            "command": ["python", "-m", "servefleet.stage"],
            "env": [
                {"name": "SERVEFLEET_MODEL_DIR", "value": "/models"},
                {"name": "SERVEFLEET_MODEL_SOURCE", "value": uri},
            ],
            "volumeMounts": [{"name": "model", "mountPath": "/models"}],
        }
        return deployment(name, init, volumes=[{"name": "model", "emptyDir": {}}])

    await apps.create_namespaced_deployment(NS, stage("good", source.as_uri()))
    await apps.create_namespaced_deployment(NS, stage("bad", (tmp_path / "absent").as_uri()))
    await ready_replicas(apps, "good", 1)
    [good] = await pods_of(core, "good")
    last = await raw_log(core, good.metadata.name, container="stage-model", tail_lines=1)
    assert json.loads(last) == {
        "event": "done",
        "bytes_total": 4096,
        "files": 1,
        "fetched": ["weights.bin"],
    }

    await failed_once(core, "bad")
    [bad] = await pods_of(core, "bad")
    assert bad.status.init_container_statuses[0].last_state.terminated.exit_code == 1
    previous = await raw_log(core, bad.metadata.name, container="stage-model", previous=True)
    assert json.loads(previous.splitlines()[-2])["event"] == "error"


async def raw_log(core: client.CoreV1Api, name: str, **options: Any) -> str:
    """A log as sent: the client's parsed form turns a JSON body into a Python repr."""
    response: Any = await core.read_namespaced_pod_log(name, NS, _preload_content=False, **options)
    return str(await response.text())


async def test_follow_streams_until_the_container_ends(
    kube: KubeApiServer, api: ApiClient, tmp_path: Path
) -> None:
    """Verify `follow=true` on a running init container: what it wrote so far, then
    its later lines, until it exits."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    go = tmp_path / "go"
    code = (
        "import os, sys, time\nprint('first', flush=True)\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.01)\nprint('second')"
    )
    await apps.create_namespaced_deployment(NS, deployment("llm", python(code, str(go))))

    async def started() -> bool:
        pods = await pods_of(core, "llm")
        try:
            return bool(pods) and kube.pod_log(NS, pods[0].metadata.name, "stage-model") != ""
        except ApiError:
            return False

    await eventually(started, within=10)
    [pod] = await pods_of(core, "llm")
    following = asyncio.create_task(
        raw_log(core, pod.metadata.name, container="stage-model", follow=True)
    )

    async def streaming() -> bool:
        return kube.count("get", "pods", "log") > 0

    await eventually(streaming, within=5)
    go.touch()
    assert await asyncio.wait_for(following, 10) == "first\nsecond\n"


async def test_failing_init_container_crash_loops(kube: KubeApiServer, api: ApiClient) -> None:
    """Verify a failing init container: terminated with its exit code and termination
    message, restarted (restartCount grows, lastState holds the failed run), waiting
    in CrashLoopBackOff in between; its previous run's log; the Pod stays Pending and
    the Deployment unavailable."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    code = (
        "import sys\nprint('fetching s3://models/x')\n"
        "open(sys.argv[1], 'w').write('no such key: s3://models/x')\nsys.exit(3)"
    )
    await apps.create_namespaced_deployment(
        NS, deployment("llm", python(code, "/dev/termination-log"))
    )

    async def crash_looping() -> bool:
        status = await first_init_status(core, "llm")
        if status is None:
            return False
        waiting = status.state.waiting
        return bool(
            status.restart_count >= 2
            and waiting is not None
            and waiting.reason == "CrashLoopBackOff"
        )

    await eventually(crash_looping, within=10)
    [pod] = await pods_of(core, "llm")
    status = pod.status.init_container_statuses[0]
    assert re.fullmatch(
        rf"back-off \d+ms restarting failed container=stage-model "
        rf"pod={pod.metadata.name}_{NS}\({pod.metadata.uid}\)",
        status.state.waiting.message,
    )
    last = status.last_state.terminated
    assert (last.exit_code, last.reason) == (3, "Error")
    assert last.message == "no such key: s3://models/x"
    assert last.container_id == status.container_id
    assert pod.status.phase == "Pending"
    initialized = {c.type: c for c in pod.status.conditions}["Initialized"]
    assert (initialized.status, initialized.reason) == ("False", "ContainersNotInitialized")
    assert initialized.message == "containers with incomplete status: [stage-model]"
    previous = await core.read_namespaced_pod_log(
        pod.metadata.name, NS, container="stage-model", previous=True
    )
    assert previous == "fetching s3://models/x\n"

    status_now = (await apps.read_namespaced_deployment_status("llm", NS)).status
    assert (status_now.replicas, status_now.unavailable_replicas) == (1, 1)
    assert status_now.ready_replicas is None
    available = {c.type: c for c in status_now.conditions}["Available"]
    assert available.status == "False"


async def test_fallback_to_logs_on_error(api: ApiClient) -> None:
    """Verify terminationMessagePolicy FallbackToLogsOnError: a failed run with an empty
    termination file gets the log's last 80 lines, cut to the last 2048 bytes."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    code = "import sys\nfor n in range(100): print(f'{n:03d}' + '.' * 36)\nsys.exit(1)"
    init = python(code, terminationMessagePolicy="FallbackToLogsOnError")
    await apps.create_namespaced_deployment(NS, deployment("llm", init))

    await failed_once(core, "llm")
    [pod] = await pods_of(core, "llm")
    message = pod.status.init_container_statuses[0].last_state.terminated.message
    expected = "".join(f"{n:03d}" + "." * 36 + "\n" for n in range(20, 100))[-2048:]
    assert message == expected


async def test_failed_rollout_keeps_the_old_pods_serving(
    kube: KubeApiServer, api: ApiClient
) -> None:
    """Verify a rollout whose init container keeps failing: new Pods crash-loop, the
    old ones stay Ready and counted; a fixed template then replaces everything."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    await apps.create_namespaced_deployment(
        NS, deployment("llm", python("print('v1')"), replicas=2)
    )
    await ready_replicas(apps, "llm", 2)
    old = {p.metadata.name for p in await pods_of(core, "llm")}

    broken = deployment("llm", python("import sys; sys.exit(1)"), replicas=2)
    await apps.replace_namespaced_deployment("llm", NS, broken)

    async def new_pods_restarted() -> bool:
        pods = await pods_of(core, "llm")
        fresh = [p for p in pods if p.metadata.name not in old]
        return len(fresh) == 2 and all(
            p.status.init_container_statuses
            and p.status.init_container_statuses[0].restart_count >= 1
            for p in fresh
        )

    await eventually(new_pods_restarted, within=10)
    pods = await pods_of(core, "llm")
    serving = [p for p in pods if p.metadata.name in old]
    assert len(serving) == 2
    assert all({c.type: c.status for c in p.status.conditions}["Ready"] == "True" for p in serving)
    status = (await apps.read_namespaced_deployment_status("llm", NS)).status
    assert (status.replicas, status.updated_replicas, status.ready_replicas) == (4, 2, 2)
    assert (status.available_replicas, status.unavailable_replicas) == (2, 2)
    progressing = {c.type: c for c in status.conditions}["Progressing"]
    assert progressing.reason == "ReplicaSetUpdated"

    fixed = deployment("llm", python("print('v3')"), replicas=2)
    await apps.replace_namespaced_deployment("llm", NS, fixed)
    await ready_replicas(apps, "llm", 2)
    final = await pods_of(core, "llm")
    stored = kube.get_object("deployments", NS, "llm")
    assert stored is not None
    wanted_hash = template_hash(stored["spec"]["template"])
    assert {p.metadata.labels[HASH_LABEL] for p in final} == {wanted_hash}
    assert not {p.metadata.name for p in final} & old


async def test_replacement_scale_to_zero_and_deletion(api: ApiClient) -> None:
    """Verify a Pod deleted by a client is replaced, scaling to 0 and deleting the
    Deployment delete its Pods."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    await apps.create_namespaced_deployment(NS, deployment("llm", python("pass")))
    await ready_replicas(apps, "llm", 1)
    [first] = await pods_of(core, "llm")
    await core.delete_namespaced_pod(first.metadata.name, NS)

    async def replaced() -> bool:
        pods = await pods_of(core, "llm")
        return [p.metadata.name for p in pods] != [first.metadata.name] and len(pods) == 1

    await eventually(replaced, within=10)
    await ready_replicas(apps, "llm", 1)

    await apps.patch_namespaced_deployment_scale("llm", NS, {"spec": {"replicas": 0}})

    async def no_pods() -> bool:
        return not await pods_of(core, "llm")

    await eventually(no_pods, within=10)
    scaled = await apps.read_namespaced_deployment_status("llm", NS)
    assert scaled.status.replicas is None
    assert scaled.status.observed_generation == scaled.metadata.generation

    await apps.patch_namespaced_deployment_scale("llm", NS, {"spec": {"replicas": 2}})
    await ready_replicas(apps, "llm", 2)
    await apps.delete_namespaced_deployment("llm", NS)
    await eventually(no_pods, within=10)


async def test_mount_paths_are_rewritten_and_no_shell_runs(api: ApiClient) -> None:
    """Verify an emptyDir shared by two init containers: env values and args under the
    mountPath point at the pod's directory (the first writes a file, the second reads
    it back); shell metacharacters reach the process as one argv element."""
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    hostile = "a; echo pwned > /tmp/x && $(id) | cat `whoami`"
    writer = python(
        "import os, sys\nopen(os.environ['OUT'], 'w').write(sys.argv[1])\n"
        "print(len(sys.argv) - 1, sys.argv[2], os.environ['SIDE'])",
        hostile,
        "/workshop",
        name="write",
        env=[{"name": "OUT", "value": "/work/out.txt"}, {"name": "SIDE", "value": "/work"}],
        volumeMounts=[{"name": "scratch", "mountPath": "/work"}],
    )
    reader = python(
        "import sys\nprint(open(sys.argv[1]).read())",
        "/work/out.txt",
        name="read",
        volumeMounts=[{"name": "scratch", "mountPath": "/work"}],
    )
    body = deployment("llm", writer, reader, volumes=[{"name": "scratch", "emptyDir": {}}])
    await apps.create_namespaced_deployment(NS, body)
    await ready_replicas(apps, "llm", 1)
    [pod] = await pods_of(core, "llm")
    written = await core.read_namespaced_pod_log(pod.metadata.name, NS, container="write")
    count, untouched, side = written.split()
    assert (count, untouched) == ("2", "/workshop")  # no boundary: not rewritten
    assert side != "/work"
    assert Path(side).is_absolute()
    read = await core.read_namespaced_pod_log(pod.metadata.name, NS, container="read")
    assert read == hostile + "\n"


async def test_restart_policy_never_and_start_errors(api: ApiClient) -> None:
    """Verify a Pod bound to the kubelet's node by a client runs too; with restartPolicy
    Never a failed init container fails the Pod; an executable that does not exist
    ends in StartError (exit code 128)."""
    core = client.CoreV1Api(api)
    for name, init in (
        ("exits", python("import sys; sys.exit(2)")),
        ("missing", {"name": "stage-model", "image": "x", "command": ["no-such-binary-here"]}),
    ):
        body: Any = {
            "metadata": {"name": name, "labels": {"app": "solo"}},
            "spec": {
                "nodeName": NODE_NAME,
                "restartPolicy": "Never",
                "initContainers": [init],
                "containers": [{"name": "main", "image": "x"}],
            },
        }
        await core.create_namespaced_pod(NS, body)

    async def both_failed() -> bool:
        return all(p.status.phase == "Failed" for p in await pods_of(core, "solo"))

    await eventually(both_failed, within=10)
    pods = {
        p.metadata.name: p.status.init_container_statuses[0] for p in await pods_of(core, "solo")
    }
    exits = pods["exits"]
    assert (exits.state.terminated.exit_code, exits.restart_count) == (2, 0)
    missing = pods["missing"].state.terminated
    assert (missing.exit_code, missing.reason) == (128, "StartError")
    assert 'exec: "no-such-binary-here"' in missing.message


async def test_stop_and_deletion_kill_init_processes_and_remove_directories(
    tmp_path: Path,
) -> None:
    """Verify a deleted Pod's and, at server stop, every running init process is
    killed and its directory removed."""
    sleeper = python(
        "import os, sys, time\nprint(os.getpid(), sys.argv[1], flush=True)\ntime.sleep(120)",
        "/data",
        volumeMounts=[{"name": "data", "mountPath": "/data"}],
    )
    seen: dict[str, tuple[int, Path]] = {}
    async with KubeApiServer(kubelet=Kubelet()) as kube, client_of(kube, tmp_path) as api:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        for name in ("doomed", "kept"):
            body = deployment(name, sleeper, volumes=[{"name": "data", "emptyDir": {}}])
            await apps.create_namespaced_deployment(NS, body)

        async def both_running() -> bool:
            for name in ("doomed", "kept"):
                pods = await pods_of(core, name)
                try:
                    text = kube.pod_log(NS, pods[0].metadata.name, "stage-model")
                except (IndexError, ApiError):  # no pod, or its container not started
                    return False
                if not text:
                    return False
                pid, directory = text.split()
                seen[name] = (int(pid), Path(directory))
            return True

        await eventually(both_running, within=10)
        assert all(alive(pid) and path.is_dir() for pid, path in seen.values())
        await apps.delete_namespaced_deployment("doomed", NS)

        async def doomed_gone() -> bool:
            pid, path = seen["doomed"]
            return not alive(pid) and not path.exists()

        await eventually(doomed_gone, within=10)
        assert alive(seen["kept"][0])
    pid, path = seen["kept"]
    assert not alive(pid)
    assert not path.exists()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_ready_delay_holds_readiness_back(tmp_path: Path) -> None:
    """Verify `ready_delay`: the Pod runs, not Ready, before it becomes Ready."""
    async with (
        KubeApiServer(kubelet=Kubelet(ready_delay=0.2)) as kube,
        client_of(kube, tmp_path) as api,
    ):
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        start = (await core.list_namespaced_pod(NS)).metadata.resource_version
        await apps.create_namespaced_deployment(NS, deployment("llm", python("pass")))
        await ready_replicas(apps, "llm", 1)
        stream = watch.Watch().stream(
            core.list_namespaced_pod, NS, resource_version=start, timeout_seconds=1
        )
        async with stream:
            seen = [
                (e["object"].status.phase, is_ready(e["object"].to_dict())) async for e in stream
            ]
    assert ("Running", False) in seen
    assert seen[-1] == ("Running", True)


async def test_kubelet_excludes_faked_readiness() -> None:
    """Verify auto_ready and mark_ready are refused while a kubelet sets Deployment
    status, and a Kubelet serves one server at a time."""
    with pytest.raises(ValueError, match="auto_ready and kubelet are exclusive"):
        KubeApiServer(kubelet=Kubelet(), auto_ready=0.05)
    kubelet = Kubelet()
    async with KubeApiServer(kubelet=kubelet) as kube:
        with pytest.raises(ValueError, match="exclusive"):
            kube.auto_ready = 0.1
        with pytest.raises(RuntimeError, match="mark_ready fakes what the kubelet does"):
            kube.mark_ready(NS, "llm")
        with pytest.raises(RuntimeError, match="already running"):
            await KubeApiServer(kubelet=kubelet).start()
    with pytest.raises(ValueError, match="backoff"):
        Kubelet(backoff=0)


# ------------------------------------------------------------ pure functions


def test_rewrite_maps_paths_at_boundaries_only() -> None:
    """Verify mount path rewriting: exact, below, not a prefix of a longer name."""
    mounts = [("/models/cache", "/tmp/p/c"), ("/models", "/tmp/p/m")]
    assert rewrite("/models", mounts) == "/tmp/p/m"
    assert rewrite("/models/a/b", mounts) == "/tmp/p/m/a/b"
    assert rewrite("/models/cache/x", mounts) == "/tmp/p/c/x"
    assert rewrite("/modelsx", mounts) == "/modelsx"
    assert rewrite("--dir=/models", mounts) == "--dir=/models"


def test_go_duration() -> None:
    """Verify back-off durations print as Go's time.Duration does."""
    assert [go_duration(s) for s in (0.05, 0.4, 1.6, 2, 10, 80, 300)] == [
        "50ms",
        "400ms",
        "1.6s",
        "2s",
        "10s",
        "1m20s",
        "5m0s",
    ]


def _pod(name: str, pod_hash: str, ready: bool, created: str = "2026-01-01T00:00:00Z") -> Any:
    return {
        "metadata": {"name": name, "labels": {HASH_LABEL: pod_hash}, "creationTimestamp": created},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_plan_pods_never_drops_below_desired_ready() -> None:
    """Verify the rollout plan: create missing new Pods, delete not-ready old Pods at
    once and ready old Pods only as new ones are ready; surplus new Pods go unready first."""
    assert plan_pods(2, "new", []).create == 2
    rolling = [_pod("o1", "old", True), _pod("o2", "old", True), _pod("n1", "new", True)]
    assert plan_pods(2, "new", rolling) == plan_pods(2, "new", rolling)
    plan = plan_pods(2, "new", rolling)
    assert (plan.create, len(plan.delete)) == (1, 1)
    stuck = [_pod("o1", "old", True), _pod("o2", "old", False), _pod("n1", "new", False)]
    assert plan_pods(1, "new", stuck).delete == ("o2",)
    surplus = [
        _pod("a", "new", True, "2026-01-01T00:00:00Z"),
        _pod("b", "new", False, "2026-01-01T00:00:00Z"),
        _pod("c", "new", True, "2026-01-02T00:00:00Z"),
    ]
    assert plan_pods(1, "new", surplus).delete == ("b", "c")
    assert set(plan_pods(0, "new", stuck).delete) == {"o1", "o2", "n1"}


def test_template_hash_is_stable_and_spelled_like_kubernetes() -> None:
    """Verify the template hash ignores key order and uses the safe alphabet's digits."""
    one = template_hash({"spec": {"a": 1, "b": 2}})
    assert one == template_hash({"spec": {"b": 2, "a": 1}})
    assert re.fullmatch(r"[456789bcdf]{1,10}", one)
    assert one != template_hash({"spec": {"a": 2}})


def test_render_applies_since_tail_and_limit_in_order() -> None:
    """Verify log rendering: sinceSeconds, then tailLines, then limitBytes."""
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    lines = [LogLine(now - timedelta(seconds=s), f"l{s}\n".encode()) for s in (30, 20, 10, 0)]
    assert render(lines, LogOptions(tail_lines=2), now) == b"l10\nl0\n"
    assert render(lines, LogOptions(tail_lines=0), now) == b""
    assert render(lines, LogOptions(since_seconds=15), now) == b"l10\nl0\n"
    assert render(lines, LogOptions(tail_lines=3, limit_bytes=5), now) == b"l20\nl"
    assert render(lines, LogOptions(tail_lines=1, timestamps=True), now) == (
        b"2026-11-26T12:00:00.000000000Z l0\n"
    )
