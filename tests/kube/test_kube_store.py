"""The emulator's object store: the API-server semantics controllers depend on, without HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kube.errors import ApiError
from tests.kube.patching import JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH
from tests.kube.resources import ResourceDef, crd_manifest
from tests.kube.selectors import label_selector
from tests.kube.store import ObjectStore, WatchEvent

pytestmark = pytest.mark.unit

WIDGETS = ResourceDef(
    group="example.com",
    version="v1",
    plural="widgets",
    kind="Widget",
    namespaced=True,
    status_subresource=True,
    schema={
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "x-kubernetes-validations": [
                    {"rule": "self.size <= self.limit", "message": "size must not exceed limit"},
                    {"rule": "self.size >= oldSelf.size", "message": "size may only grow"},
                ],
                "properties": {
                    "size": {"type": "integer", "minimum": 1},
                    "limit": {"type": "integer", "default": 10},
                    "ratio": {"type": "number"},
                    "mode": {"type": "string", "enum": ["a", "b"]},
                    "replicas": {"type": "integer"},
                },
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    },
)


@pytest.fixture
def store() -> ObjectStore:
    s = ObjectStore(history_per_resource=50)
    crd = crd_manifest([WIDGETS])
    crd["spec"]["versions"][0]["subresources"]["scale"] = {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
    }
    s.create(s.registry.resolve("apiextensions.k8s.io", "v1", "customresourcedefinitions"), None, crd)
    return s


def widgets(store: ObjectStore) -> ResourceDef:
    return store.registry.resolve("example.com", "v1", "widgets")


def configmaps(store: ObjectStore) -> ResourceDef:
    return store.registry.resolve("", "v1", "configmaps")


def widget(name: str = "w", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": 2, **spec},
    }


def error_of(fn: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args, **kwargs)
    return info.value


def test_create_sets_server_metadata_and_defaults(store: ObjectStore) -> None:
    obj = store.create(widgets(store), "default", {**widget(), "status": {"ignored": True}})
    meta = obj["metadata"]
    assert meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) == store.resource_version
    assert obj["spec"] == {"size": 2, "limit": 10}  # schema default applied
    assert "status" not in obj  # a status subresource ignores status on create


def test_already_exists_and_missing_namespace(store: ObjectStore) -> None:
    store.create(widgets(store), "default", widget())
    assert error_of(store.create, widgets(store), "default", widget()).code == 409
    missing = error_of(store.create, widgets(store), "nowhere", widget())
    assert missing.code == 404 and 'namespaces "nowhere" not found' in missing.message


def test_stale_resource_version_conflicts(store: ObjectStore) -> None:
    old = store.create(configmaps(store), "default", {"metadata": {"name": "c"}, "data": {"a": "1"}})
    store.patch(configmaps(store), "default", "c", MERGE_PATCH, {"data": {"a": "2"}})
    stale = {**old, "data": {"a": "3"}}
    err = error_of(store.replace, configmaps(store), "default", "c", stale)
    assert err.code == 409 and "the object has been modified" in err.message
    err = error_of(
        store.patch,
        configmaps(store),
        "default",
        "c",
        MERGE_PATCH,
        {"metadata": {"resourceVersion": old["metadata"]["resourceVersion"]}, "data": {"a": "4"}},
    )
    assert err.code == 409


def test_noop_write_keeps_resource_version_and_emits_nothing(store: ObjectStore) -> None:
    events: list[WatchEvent] = []
    obj = store.create(configmaps(store), "default", {"metadata": {"name": "c"}, "data": {"a": "1"}})
    store.subscribe(events.append)
    again = store.patch(configmaps(store), "default", "c", MERGE_PATCH, {"data": {"a": "1"}})
    assert again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    assert events == []


def test_generation_counts_spec_changes_only(store: ObjectStore) -> None:
    d = widgets(store)
    store.create(d, "default", widget())
    store.patch(d, "default", "w", MERGE_PATCH, {"metadata": {"labels": {"x": "y"}}})
    assert store.get(d, "default", "w")["metadata"]["generation"] == 1
    store.patch(d, "default", "w", MERGE_PATCH, {"status": {"phase": "up"}}, subresource="status")
    assert store.get(d, "default", "w")["metadata"]["generation"] == 1
    store.patch(d, "default", "w", MERGE_PATCH, {"spec": {"size": 3}})
    assert store.get(d, "default", "w")["metadata"]["generation"] == 2


def test_status_and_main_resource_are_separate(store: ObjectStore) -> None:
    d = widgets(store)
    store.create(d, "default", widget())
    store.patch(
        d, "default", "w", MERGE_PATCH, {"status": {"phase": "up"}, "spec": {"size": 9}}, subresource="status"
    )
    obj = store.get(d, "default", "w")
    assert obj["status"] == {"phase": "up"} and obj["spec"]["size"] == 2  # /status changes only status
    store.patch(d, "default", "w", MERGE_PATCH, {"status": {"phase": "down"}, "spec": {"size": 3}})
    obj = store.get(d, "default", "w")
    assert obj["status"] == {"phase": "up"} and obj["spec"]["size"] == 3  # the main resource not status


def test_scale_subresource_reads_and_writes_the_spec(store: ObjectStore) -> None:
    d = widgets(store)
    store.create(d, "default", widget(replicas=1))
    scale = store.patch(d, "default", "w", MERGE_PATCH, {"spec": {"replicas": 4}}, subresource="scale")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 4
    obj = store.get(d, "default", "w")
    assert obj["spec"]["replicas"] == 4 and obj["metadata"]["generation"] == 2


def test_schema_cel_and_strict_fields(store: ObjectStore) -> None:
    d = widgets(store)
    err = error_of(store.create, d, "default", widget(size=20))
    assert err.code == 422 and 'spec: Invalid value: "object": size must not exceed limit' in err.message
    err = error_of(store.create, d, "default", widget(size=0, mode="c"))
    assert (
        "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1" in err.message
    )
    assert 'spec.mode: Unsupported value: "c": supported values: "a", "b"' in err.message
    err = error_of(store.create, d, "default", widget(bogus=1), strict=True)
    assert err.code == 400 and 'unknown field "spec.bogus"' in err.message
    pruned = store.create(d, "default", widget(bogus=1))  # without Strict the server prunes
    assert "bogus" not in pruned["spec"]
    err = error_of(store.patch, d, "default", "w", MERGE_PATCH, {"spec": {"size": 1}})
    assert "size may only grow" in err.message  # a transition rule sees oldSelf


def test_cel_number_fields_are_doubles(store: ObjectStore) -> None:
    d = widgets(store)
    rules = d.schema["properties"]["spec"]["x-kubernetes-validations"]  # type: ignore[index]
    assert rules  # the store compiled them from the CRD
    obj = store.create(d, "default", widget(ratio=2))
    assert obj["spec"]["ratio"] == 2


def test_finalizers_hold_deletion_until_released(store: ObjectStore) -> None:
    d = widgets(store)
    store.create(d, "default", {**widget(), "metadata": {"name": "w", "finalizers": ["x/y"]}})
    deleting = store.delete(d, "default", "w")
    assert deleting["metadata"]["deletionTimestamp"]
    err = error_of(store.patch, d, "default", "w", MERGE_PATCH, {"metadata": {"finalizers": ["x/y", "x/z"]}})
    assert "no new finalizers" in err.message
    store.patch(d, "default", "w", MERGE_PATCH, {"metadata": {"finalizers": None}})
    assert error_of(store.get, d, "default", "w").code == 404


def _owned(name: str, owner: dict[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {"metadata": {"name": name, "ownerReferences": [ref]}, "data": {}}


@pytest.mark.parametrize("policy,survives", [("Background", False), ("Foreground", False), ("Orphan", True)])
def test_garbage_collection_by_owner_reference(store: ObjectStore, policy: str, survives: bool) -> None:
    owner = store.create(widgets(store), "default", widget())
    store.create(configmaps(store), "default", _owned("child", owner))
    grandchild_owner = store.get(configmaps(store), "default", "child")
    store.create(configmaps(store), "default", _owned("grandchild", grandchild_owner))
    store.delete(widgets(store), "default", "w", propagation=policy)
    names = {name for (key, _, name), _ in store.all_objects() if key == ("", "configmaps")}
    assert ("child" in names) is survives and ("grandchild" in names) is survives
    assert error_of(store.get, widgets(store), "default", "w").code == 404


def test_dangling_owner_is_collected(store: ObjectStore) -> None:
    ghost = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "gone", "uid": "no-such-uid"},
    }
    store.create(configmaps(store), "default", _owned("orphan", ghost))
    assert error_of(store.get, configmaps(store), "default", "orphan").code == 404


def test_deleting_a_namespace_deletes_its_objects(store: ObjectStore) -> None:
    ns = store.registry.resolve("", "v1", "namespaces")
    store.create(ns, None, {"metadata": {"name": "team"}})
    store.create(configmaps(store), "team", {"metadata": {"name": "c"}})
    store.delete(ns, None, "team")
    assert error_of(store.get, ns, None, "team").code == 404
    assert error_of(store.get, configmaps(store), "team", "c").code == 404


def test_deleting_a_crd_stops_serving_it(store: ObjectStore) -> None:
    store.create(widgets(store), "default", widget())
    crds = store.registry.resolve("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    store.delete(crds, None, "widgets.example.com")
    assert store.registry.find("example.com", "v1", "widgets") is None
    assert store.bucket(("example.com", "widgets")) == {}


def test_bad_cel_rule_rejects_the_crd(store: ObjectStore) -> None:
    bad = ResourceDef(
        group="example.com",
        version="v1",
        plural="gadgets",
        kind="Gadget",
        namespaced=True,
        schema={
            "type": "object",
            "properties": {
                "spec": {"type": "object", "x-kubernetes-validations": [{"rule": "self.size >>> 1"}]}
            },
        },
    )
    crds = store.registry.resolve("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    err = error_of(store.create, crds, None, crd_manifest([bad]))
    assert err.code == 422 and "compilation failed" in err.message


def test_patch_formats(store: ObjectStore) -> None:
    cm = configmaps(store)
    store.create(cm, "default", {"metadata": {"name": "c"}, "data": {"a": "1", "b": "2"}})
    obj = store.patch(
        cm,
        "default",
        "c",
        JSON_PATCH,
        [{"op": "remove", "path": "/data/a"}, {"op": "add", "path": "/data/c", "value": "3"}],
    )
    assert obj["data"] == {"b": "2", "c": "3"}
    assert (
        error_of(
            store.patch, cm, "default", "c", JSON_PATCH, [{"op": "test", "path": "/data/b", "value": "9"}]
        ).code
        == 422
    )
    deploy = store.registry.resolve("apps", "v1", "deployments")
    store.create(
        deploy,
        "default",
        {
            "metadata": {"name": "d"},
            "spec": {
                "template": {
                    "spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}
                }
            },
        },
    )
    obj = store.patch(
        deploy,
        "default",
        "d",
        STRATEGIC_PATCH,
        {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "b:2"}]}}}},
    )
    assert [c["image"] for c in obj["spec"]["template"]["spec"]["containers"]] == ["a:1", "b:2"]


def test_watch_history_and_compaction(store: ObjectStore) -> None:
    cm = configmaps(store)
    store.create(cm, "default", {"metadata": {"name": "c"}, "data": {"n": "0"}})
    start = store.resource_version
    for n in range(1, 4):
        store.patch(cm, "default", "c", MERGE_PATCH, {"data": {"n": str(n)}})
    assert [e.object["data"]["n"] for e in store.events_since(cm.storage_key, start)] == ["1", "2", "3"]
    for n in range(100):
        store.patch(cm, "default", "c", MERGE_PATCH, {"data": {"n": f"x{n}"}})
    assert error_of(store.events_since, cm.storage_key, start).code == 410


def test_label_selectors() -> None:
    obj = {"metadata": {"labels": {"app": "x", "tier": "web"}}}
    assert label_selector("app=x,tier in (web,db)")(obj)
    assert not label_selector("app=x,!tier")(obj)
    assert label_selector("app!=y,tier notin (db)")(obj)


def test_names_and_labels_are_validated(store: ObjectStore) -> None:
    svc = store.registry.resolve("", "v1", "services")
    err = error_of(store.create, svc, "default", {"metadata": {"name": "a" * 64}})
    assert "must be no more than 63 characters" in err.message
    err = error_of(
        store.create, configmaps(store), "default", {"metadata": {"name": "c", "labels": {"k": "v" * 64}}}
    )
    assert "metadata.labels" in err.message
