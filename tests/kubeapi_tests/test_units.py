"""The test server's building blocks: selectors, quantities, field sets, merges, patches."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.kubeapi import fieldpath as fp
from tests.kubeapi import typed
from tests.kubeapi.patches import (
    PatchError,
    PatchFormatError,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from tests.kubeapi.quantity import QuantityError, parse_quantity
from tests.kubeapi.schema import Schema
from tests.kubeapi.selectors import (
    SelectorError,
    parse_field_selector,
    parse_label_selector,
    selector_from_object,
)
from tests.kubeapi.ssa import (
    STRIPPED,
    ApplyConflict,
    Conflict,
    ManagedFields,
    ManagerEntry,
    Scope,
    apply,
    update,
)

DEPLOYMENT = Schema.load().definition("io.k8s.api.apps.v1.Deployment")
MAIN = Scope(STRIPPED | {fp.make("status")})


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        pytest.param("a=1", {"a": "1"}, True, id="equals"),
        pytest.param("a==1", {"a": "2"}, False, id="double-equals"),
        pytest.param("a!=1", {}, True, id="not-equals-absent"),
        pytest.param("a in (1, 2)", {"a": "2"}, True, id="in"),
        pytest.param("a notin (1,2)", {}, True, id="notin-absent"),
        pytest.param("a notin (1,2)", {"a": "1"}, False, id="notin"),
        pytest.param("a", {"a": ""}, True, id="exists"),
        pytest.param("!a", {"a": "x"}, False, id="not-exists"),
        pytest.param("a,b=2", {"a": "x", "b": "2"}, True, id="and"),
        pytest.param("x.io/y=z", {"x.io/y": "z"}, True, id="prefixed"),
        pytest.param("a>3", {"a": "4"}, True, id="greater"),
        pytest.param("", {}, True, id="empty"),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(selector).matches(labels) is expected


@pytest.mark.parametrize("bad", ["a in ()", "a=b=c", "(", "a b", "-a=1", "a,,b"])
def test_label_selector_errors(bad: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(bad)


def test_field_selectors_and_label_selector_objects() -> None:
    obj = {"metadata": {"name": "x", "namespace": "n"}}
    assert parse_field_selector("metadata.name=x,metadata.namespace!=m").matches(obj)
    assert not parse_field_selector("metadata.name==y").matches(obj)
    with pytest.raises(SelectorError, match=r"field label not supported: spec\.x"):
        parse_field_selector("spec.x=1")
    selector = selector_from_object(
        {
            "matchLabels": {"b": "2"},
            "matchExpressions": [{"key": "a", "operator": "In", "values": ["y", "x"]}],
        }
    )
    assert str(selector) == "a in (x,y),b=2"
    assert selector.matches({"a": "x", "b": "2"})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", Fraction(1, 2)),
        ("16Gi", Fraction(16 * 2**30)),
        ("1.5", Fraction(3, 2)),
        ("2k", Fraction(2000)),
        ("1e3", Fraction(1000)),
        (4, Fraction(4)),
    ],
)
def test_quantities(text: str | int, value: Fraction) -> None:
    assert parse_quantity(text) == value


def test_bad_quantity() -> None:
    with pytest.raises(QuantityError):
        parse_quantity("12 apples")


_elements = st.one_of(
    st.builds(fp.field, st.sampled_from(["spec", "a", "b.c/d"])),
    st.builds(lambda n: fp.key({"name": n}), st.sampled_from(["x", "y"])),
    st.builds(fp.value, st.sampled_from(["p", 3])),
)


@given(st.sets(st.lists(_elements, min_size=1, max_size=4).map(tuple), max_size=8))
def test_fields_v1_round_trip(paths: set[fp.Path]) -> None:
    assert fp.from_fields_v1(fp.fields_v1(paths)) == paths


def test_path_strings() -> None:
    path = (*fp.make("spec", "ports"), fp.key({"protocol": "TCP", "port": 80}), fp.field("name"))
    assert fp.path_string(path) == '.spec.ports[port=80,protocol="TCP"].name'


def _container(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "i", **extra}


def _deployment(*containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {"template": {"spec": {"containers": list(containers)}}, **spec},
    }


def test_merge_keeps_live_items_and_orders_like_structured_merge_diff() -> None:
    live = _deployment(_container("a"), _container("b", args=["x"]))
    config = _deployment(_container("c"), _container("b", image="j"))
    merged = typed.merge(live, config, DEPLOYMENT)
    containers = merged["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["a", "c", "b"]
    assert containers[2] == {"name": "b", "image": "j", "args": ["x"]}


def test_compare_reports_added_removed_and_modified() -> None:
    old = _deployment(_container("a"), replicas=1)
    new = _deployment(_container("a", image="j"), paused=True)
    result = typed.compare(old, new, DEPLOYMENT)
    assert fp.make("spec", "paused") in result.added
    assert fp.make("spec", "replicas") in result.removed
    item = (*fp.make("spec", "template", "spec", "containers"), fp.key({"name": "a"}))
    assert (*item, fp.field("image")) in result.modified


def test_apply_prunes_what_the_manager_dropped_unless_someone_else_owns_it() -> None:
    first = _deployment(_container("a", args=["1"]), _container("b"), replicas=2)
    obj, managed = apply(
        _deployment(), first, DEPLOYMENT, ManagedFields(), "me", "apps/v1", False, MAIN
    )
    touched = typed.merge(obj, {"spec": {"paused": True}}, DEPLOYMENT)
    managed = update(obj, touched, DEPLOYMENT, managed, "other", "apps/v1", MAIN)
    second = _deployment(_container("a"))
    result, managed = apply(touched, second, DEPLOYMENT, managed, "me", "apps/v1", False, MAIN)
    assert result["spec"]["template"]["spec"]["containers"] == [{"name": "a", "image": "i"}]
    assert "replicas" not in result["spec"]
    assert result["spec"]["paused"] is True  # owned by "other"
    assert [entry.manager for entry in managed.entries] == ["me", "other"]


def test_apply_conflicts_name_the_other_manager() -> None:
    obj, managed = apply(
        _deployment(),
        _deployment(replicas=1),
        DEPLOYMENT,
        ManagedFields(),
        "me",
        "apps/v1",
        False,
        MAIN,
    )
    scaled = typed.merge(obj, {"spec": {"replicas": 4}}, DEPLOYMENT)
    managed = update(obj, scaled, DEPLOYMENT, managed, "hpa", "apps/v1", MAIN)
    with pytest.raises(ApplyConflict) as conflict:
        apply(scaled, _deployment(replicas=2), DEPLOYMENT, managed, "me", "apps/v1", False, MAIN)
    assert conflict.value.causes() == [
        {
            "reason": "FieldManagerConflict",
            "message": 'conflict with "hpa" using apps/v1',
            "field": ".spec.replicas",
        }
    ]
    result, after = apply(
        scaled, _deployment(replicas=2), DEPLOYMENT, managed, "me", "apps/v1", True, MAIN
    )
    assert result["spec"]["replicas"] == 2
    assert [entry.manager for entry in after.entries] == ["me"]


def test_managed_fields_are_listed_as_the_api_server_sorts_them() -> None:
    def entry(manager: str, operation: str, time: str | None) -> ManagerEntry:
        return ManagerEntry(manager, operation, "apps/v1", {fp.make("spec")}, time=time)

    managed = ManagedFields(
        [
            entry("b-late", "Update", "2026-12-04T15:00:16Z"),
            entry("a-late", "Update", "2026-12-04T15:00:16Z"),
            entry("z-early", "Update", "2026-12-04T15:00:15Z"),
            entry("scaler", "Update", None),
            entry("applier", "Apply", "2026-12-04T15:00:17Z"),
        ]
    )
    assert [raw["manager"] for raw in managed.encode()] == [
        "applier",
        "scaler",
        "z-early",
        "a-late",
        "b-late",
    ]


def test_conflicts_with_several_managers_group_their_fields() -> None:
    image = (*fp.make("spec", "template", "spec", "containers"), fp.key({"name": "llm"}))
    later = ManagerEntry("kubectl-set", "Update", "apps/v1", set(), time="2026-12-04T15:00:15Z")
    earlier = ManagerEntry("kubectl-edit", "Update", "apps/v1", set())
    conflict = ApplyConflict(
        [
            Conflict(later, (*image, fp.field("image"))),
            Conflict(
                earlier, (*image, fp.field("env"), fp.key({"name": "MODE"}), fp.field("value"))
            ),
            Conflict(earlier, fp.make("spec", "replicas")),
        ]
    )
    assert conflict.message() == (
        'Apply failed with 3 conflicts: conflicts with "kubectl-edit" using apps/v1:\n'
        "- .spec.replicas\n"
        '- .spec.template.spec.containers[name="llm"].env[name="MODE"].value\n'
        'conflicts with "kubectl-set" using apps/v1:\n'
        '- .spec.template.spec.containers[name="llm"].image'
    )


def test_validate_reports_undeclared_fields_and_types() -> None:
    bad = _deployment(_container("a", imagePolicy="x"), replicas="two")
    messages = sorted(str(error) for error in typed.validate(bad, DEPLOYMENT))
    assert messages == [
        ".spec.replicas: expected numeric (int or float), got string",
        '.spec.template.spec.containers[name="a"].imagePolicy: field not declared in schema',
    ]


def test_patches() -> None:
    live = _deployment(_container("a", env=[{"name": "X", "value": "1"}]), replicas=1)
    patched = strategic_merge_patch(
        live,
        {
            "spec": {
                "replicas": None,
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "a", "env": [{"name": "Y", "value": "2"}]},
                            {"name": "b", "image": "j"},
                        ]
                    }
                },
            }
        },
        DEPLOYMENT,
    )
    containers = patched["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["a", "b"]
    # without $setElementOrder an item the patch adds goes before the live ones
    assert [e["name"] for e in containers[0]["env"]] == ["Y", "X"]
    assert "replicas" not in patched["spec"]
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None}}) == {"a": {"c": 2}}
    assert json_patch({"a": [1, 2]}, [{"op": "add", "path": "/a/-", "value": 3}]) == {
        "a": [1, 2, 3]
    }


def _named(*names: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": name, **extra} for name in names]


def _containers_patch(order: list[str] | None, items: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": items}
    if order is not None:
        pod["$setElementOrder/containers"] = _named(*order)
    return {"spec": {"template": {"spec": pod}}}


@pytest.mark.parametrize(
    ("live", "patch", "expected"),
    [
        # the cases of apimachinery's strategicpatch tests, on containers
        pytest.param(
            ["1", "2"],
            _containers_patch(["4", "1", "2", "3"], _named("4", "3", image="j")),
            ["4", "1", "2", "3"],
            id="order-names-new-and-live-items",
        ),
        pytest.param(
            ["1", "3"],
            _containers_patch(["1", "2"], _named("1", "2", image="j")),
            ["1", "2", "3"],
            id="live-item-not-in-order-goes-after",
        ),
        pytest.param(
            ["3"],
            _containers_patch(["2"], [*_named("2"), {"name": "1", "$patch": "delete"}]),
            ["2", "3"],
            id="delete-missing-item",
        ),
        pytest.param(
            ["1", "2", "4"],
            _containers_patch(["2", "3"], [*_named("3"), {"name": "1", "$patch": "delete"}]),
            ["2", "4", "3"],
            id="add-and-delete",
        ),
        pytest.param(
            ["a", "b", "c"],
            _containers_patch(None, _named("c", "a", image="j")),
            ["b", "c", "a"],
            id="patch-order-without-directive",
        ),
        pytest.param(
            ["llm"],
            _containers_patch(["llm"], _named("llm", image="registry.local/other:1")),
            ["llm"],
            id="kubectl-set-image",
        ),
    ],
)
def test_strategic_merge_patch_orders_lists_like_apimachinery(
    live: list[str], patch: dict[str, Any], expected: list[str]
) -> None:
    patched = strategic_merge_patch(
        _deployment(*(_container(name) for name in live)), patch, DEPLOYMENT
    )
    containers = patched["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == expected
    assert all("$patch" not in c for c in containers)


def test_strategic_merge_patch_orders_and_deletes_primitives() -> None:
    live = _deployment()
    live["metadata"]["finalizers"] = ["1", "2", "3", "4"]
    patch = {
        "metadata": {
            "$setElementOrder/finalizers": ["1", "2"],
            "$deleteFromPrimitiveList/finalizers": ["3"],
        }
    }
    assert strategic_merge_patch(live, patch, DEPLOYMENT)["metadata"]["finalizers"] == [
        "1",
        "2",
        "4",
    ]


def test_strategic_merge_patch_refuses_an_order_the_list_contradicts() -> None:
    patch = _containers_patch(["a", "b"], _named("b", "a", image="j"))
    with pytest.raises(PatchError, match=r"doesn't match \$setElementOrder list"):
        strategic_merge_patch(_deployment(_container("a"), _container("b")), patch, DEPLOYMENT)


def test_retain_keys_drops_the_live_keys_it_does_not_list() -> None:
    live = _deployment(strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}})
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    patched = strategic_merge_patch(live, patch, DEPLOYMENT)
    assert patched["spec"]["strategy"] == {"type": "Recreate"}
    unlisted = {"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}}
    with pytest.raises(PatchFormatError, match="invalid patch format of retainKeys"):
        strategic_merge_patch(live, unlisted, DEPLOYMENT)
