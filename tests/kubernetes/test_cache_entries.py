"""What a watch cache keeps of each object (`watches.managed_entry`): what observe(),
apply() and remove() read, and nothing of what the decoder made per object that
other entries hold the same value of."""

from __future__ import annotations

import json
from typing import Any

from servefleet.runtime.kubernetes.watches import managed_entry

CONDITIONS = [
    {
        "type": "Available",
        "status": "True",
        "reason": "MinimumReplicasAvailable",
        "message": "Deployment has minimum availability.",
        "lastUpdateTime": "2026-12-06T05:00:00Z",
        "lastTransitionTime": "2026-12-06T05:00:00Z",
    },
    {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "llm-5d8f" has timed out progressing.',
        "lastUpdateTime": "2026-12-06T05:10:00Z",
        "lastTransitionTime": "2026-12-06T05:10:00Z",
    },
]


def deployment(name: str, conditions: list[dict[str, str]]) -> dict[str, Any]:
    """As a watch event brings it: decoded from JSON on its own."""
    text = json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "namespace": "llm",
                "labels": {
                    "app.kubernetes.io/managed-by": "servefleet",
                    "app.kubernetes.io/name": name,
                    "servefleet.io/role": "primary",
                },
                "resourceVersion": "42",
                "generation": 1,
                "managedFields": [
                    {
                        "manager": "servefleet",
                        "operation": "Apply",
                        "fieldsType": "FieldsV1",
                        "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}},
                    }
                ],
            },
            "spec": {
                "replicas": 2,
                "template": {"spec": {"containers": [{"name": "server", "image": "llm:1"}]}},
            },
            "status": {"replicas": 2, "readyReplicas": 2, "conditions": conditions},
        }
    )
    decoded: dict[str, Any] = json.loads(text)
    return decoded


def test_entries_of_separately_decoded_objects_share_their_repeated_strings() -> None:
    first = managed_entry("Deployment", deployment("llm", CONDITIONS[:1]))
    second = managed_entry("Deployment", deployment("llm", CONDITIONS[:1]))

    for key in ("namespace", "name"):
        assert first["metadata"][key] is second["metadata"][key], key
    # Of the labels only the one naming the endpoint, held once.
    assert first["metadata"]["labels"] == {"app.kubernetes.io/name": "llm"}
    assert first["metadata"]["labels"]["app.kubernetes.io/name"] is second["metadata"]["name"]
    assert first["image"] is second["image"]
    assert first["metadata"]["managedFields"] == [
        {"manager": "servefleet", "subresource": "", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    ]
    (first_owner,) = first["metadata"]["managedFields"]
    (second_owner,) = second["metadata"]["managedFields"]
    assert first_owner["fieldsV1"] is second_owner["fieldsV1"]
    assert first_owner["fieldsV1"] is second_owner["fieldsV1"]


def test_only_conditions_that_say_the_rollout_is_stuck_are_kept() -> None:
    healthy = managed_entry("Deployment", deployment("llm", CONDITIONS[:1]))
    stuck = managed_entry("Deployment", deployment("llm", CONDITIONS))

    assert "conditions" not in healthy["status"]
    assert healthy["status"] == {"replicas": 2, "readyReplicas": 2}
    assert stuck["status"]["conditions"] == [
        {key: CONDITIONS[1][key] for key in ("type", "status", "reason", "message")}
    ]
