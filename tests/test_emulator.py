"""The emulated API server (tests/kube/emulator.py), through real clients.

The ``kubernetes`` python client and the real kubectl 1.35 talk to it over HTTP; each test
gets a fresh server (the ``cluster`` fixture, with the repo's CRDs applied). Waits are
bounded polls on a condition, never sleeps.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from tests.conftest import EXAMPLES, ROOT
from tests.kube import binaries
from tests.kube.emulator import (
    Cluster,
    human_duration,
    jsonpath,
    merge_patch,
    parse_label_selector,
    strategic_merge_patch,
)

NS = "default"
GROUP, VERSION = "qeval.dev", "v1alpha1"
T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)  # the poll interval, not the oracle


@pytest.fixture
def api(cluster: Cluster) -> Iterator[Any]:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    with client.ApiClient(configuration) as api_client:
        yield api_client


def evalrun(name: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "EvalRun",
        "metadata": {"name": name, **meta},
        "spec": {"tasks": [{"name": "qeval_demo_facts"}]},
    }


def owner(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def sanitized(api: Any, obj: Any) -> dict[str, Any]:
    return dict(api.sanitize_for_serialization(obj))


# --- the python client -----------------------------------------------------------------------


def test_create_fills_metadata_and_refuses_duplicates_and_missing(
    api: Any, cluster: Cluster
) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api)
    first = core.create_namespaced_config_map(NS, {"metadata": {"name": "one"}, "data": {"a": "1"}})
    second = core.create_namespaced_config_map(NS, {"metadata": {"generateName": "gen-"}})
    assert first is not None, "a create is answered 201 with the object"
    one, gen = sanitized(api, first), sanitized(api, second)
    assert (one["kind"], one["apiVersion"]) == ("ConfigMap", "v1")
    meta = one["metadata"]
    assert meta["namespace"] == NS  # from the URL
    assert meta["generation"] == 1 and len(meta["uid"]) == 36
    stored = cluster.get("v1/configmaps", NS, "one")
    assert stored and stored["metadata"]["uid"] == meta["uid"]
    timestamp = stored["metadata"]["creationTimestamp"]  # as sent, not as the client parses it
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", timestamp)
    assert int(gen["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert re.fullmatch(r"gen-[a-z0-9]{5}", gen["metadata"]["name"])

    with pytest.raises(ApiException) as duplicate:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "one"}})
    assert duplicate.value.status == 409
    assert json.loads(duplicate.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nope", NS)
    status = json.loads(missing.value.body)
    assert (missing.value.status, status["kind"], status["reason"]) == (404, "Status", "NotFound")
    assert status["message"] == 'configmaps "nope" not found'
    with pytest.raises(ApiException) as no_namespace:
        core.create_namespaced_config_map("absent", {"metadata": {"name": "x"}})
    assert no_namespace.value.status == 404


def test_lists_have_kinds_versions_and_label_selectors(api: Any, cluster: Cluster) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    labels = {"a": {"app": "x", "tier": "db"}, "b": {"app": "y"}, "c": {"app": "x"}}
    for name, these in labels.items():
        core.create_namespaced_config_map(NS, {"metadata": {"name": name, "labels": these}})
    core.create_namespace({"metadata": {"name": "other"}})
    core.create_namespaced_config_map("other", {"metadata": {"name": "d", "labels": {"app": "x"}}})

    def names(selector: str, namespace: str | None = NS) -> list[str]:
        if namespace is None:
            found = core.list_config_map_for_all_namespaces(label_selector=selector)
        else:
            found = core.list_namespaced_config_map(namespace, label_selector=selector)
        return [item.metadata.name for item in found.items]

    assert names("app=x") == ["a", "c"]
    assert names("app==x,tier") == ["a"]
    assert names("app!=x") == ["b"]
    assert names("app in (x, y),!tier") == ["b", "c"]
    assert names("app notin (x)") == ["b"]
    assert names("app=x", namespace=None) == ["a", "c", "d"]
    status, body = cluster.request("GET", "/api/v1/namespaces/default/configmaps?limit=2")
    assert (status, body["kind"], body["apiVersion"]) == (200, "ConfigMapList", "v1")
    assert int(body["metadata"]["resourceVersion"]) >= 5
    assert len(body["items"]) == 2 and body["metadata"]["continue"]
    token = body["metadata"]["continue"]
    _, rest = cluster.request(
        "GET", f"/api/v1/namespaces/default/configmaps?limit=2&continue={token}"
    )
    assert [i["metadata"]["name"] for i in rest["items"]] == ["c"]
    _, by_field = cluster.request("GET", "/api/v1/configmaps?fieldSelector=metadata.name%3Dd")
    assert [i["metadata"]["namespace"] for i in by_field["items"]] == ["other"]
    assert [o["metadata"]["name"] for o in cluster.list("v1/configmaps", labels={"app": "x"})] == [
        "a",
        "c",
        "d",
    ]


def test_status_subresource_generation_and_optimistic_concurrency(api: Any) -> None:
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    custom = client.CustomObjectsApi(api)
    args = (GROUP, VERSION, NS, "evalruns", "run")
    body = dict(evalrun("run"), status={"phase": "Bogus"})
    created = custom.create_namespaced_custom_object(GROUP, VERSION, NS, "evalruns", body)
    assert "status" not in created, "the status subresource drops the status on create"

    labelled = custom.patch_namespaced_custom_object(*args, {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 1, "metadata is not the spec"
    spec = custom.patch_namespaced_custom_object(
        *args, {"spec": {"seed": 7}, "status": {"phase": "Ignored"}}
    )
    assert spec["metadata"]["generation"] == 2
    assert "status" not in spec, "the main resource does not write the status"
    status = custom.patch_namespaced_custom_object_status(
        *args, {"status": {"phase": "Running"}, "spec": {"seed": 8}, "metadata": {"labels": None}}
    )
    assert status["status"] == {"phase": "Running"}
    assert status["spec"]["seed"] == 7 and status["metadata"]["labels"] == {"a": "b"}
    assert status["metadata"]["generation"] == 2
    rvs = [int(o["metadata"]["resourceVersion"]) for o in (created, labelled, spec, status)]
    assert rvs == sorted(set(rvs))
    same = custom.patch_namespaced_custom_object_status(*args, {"status": {"phase": "Running"}})
    assert same["metadata"]["resourceVersion"] == status["metadata"]["resourceVersion"]

    unset = custom.patch_namespaced_custom_object(*args, {"spec": {"seed": None}})
    assert "seed" not in unset["spec"], "null deletes (RFC 7386)"
    stale = dict(unset, spec={"tasks": []})
    stale["metadata"] = dict(unset["metadata"], resourceVersion=spec["metadata"]["resourceVersion"])
    with pytest.raises(ApiException) as conflict:
        custom.replace_namespaced_custom_object(*args, stale)
    assert conflict.value.status == 409
    assert json.loads(conflict.value.body)["reason"] == "Conflict"
    replaced = custom.replace_namespaced_custom_object(*args, dict(unset, spec={"tasks": []}))
    assert replaced["spec"] == {"tasks": []} and replaced["status"] == {"phase": "Running"}
    assert replaced["metadata"]["generation"] == 4


def test_patch_flavours(api: Any, cluster: Cluster) -> None:
    from kubernetes import client

    batch = client.BatchV1Api(api)
    job = {
        "metadata": {"name": "job", "finalizers": ["a"]},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {"name": "main", "image": "one", "env": [{"name": "A", "value": "1"}]},
                        {"name": "side", "image": "two"},
                    ],
                }
            }
        },
    }
    batch.create_namespaced_job(NS, job)
    # The python client sends strategic merge patches for built-in types.
    patched = batch.patch_namespaced_job(
        "job",
        NS,
        {
            "metadata": {"finalizers": ["b"]},
            "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "new"}]}}},
        },
    )
    containers = patched.spec.template.spec.containers
    assert [(c.name, c.image) for c in containers] == [("main", "new"), ("side", "two")]
    assert containers[0].env[0].value == "1"
    assert patched.metadata.finalizers == ["a", "b"]
    path = "/apis/batch/v1/namespaces/default/jobs/job"
    rv = patched.metadata.resource_version
    test = [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"}]
    assert cluster.request("PATCH", path, test)[0] == 422  # kopf relies on this
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]
    status, body = cluster.request("PATCH", path, ops)
    assert (status, body["metadata"]["finalizers"]) == (200, ["b"])
    stale = {"metadata": {"resourceVersion": rv, "labels": {"x": "y"}}}
    assert cluster.request("PATCH", path, stale)[0] == 409
    cr = f"/apis/{GROUP}/{VERSION}/namespaces/default/evalruns"
    assert cluster.request("POST", cr, evalrun("r"))[0] == 201
    smp = "application/strategic-merge-patch+json"
    assert cluster.request("PATCH", f"{cr}/r", {"spec": {}}, content_type=smp)[0] == 415


def test_deletion_waits_for_finalizers_and_collects_owned_objects(
    api: Any, cluster: Cluster
) -> None:
    from kubernetes import client

    custom, core, batch = (
        client.CustomObjectsApi(api),
        client.CoreV1Api(api),
        client.BatchV1Api(api),
    )
    run = custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, "evalruns", evalrun("owner", finalizers=["qeval.dev/cleanup"])
    )
    pod_spec = {"containers": [{"name": "main", "image": "busybox"}], "restartPolicy": "Never"}
    job = batch.create_namespaced_job(
        NS,
        {
            "metadata": {"name": "child", "ownerReferences": [owner(run)]},
            "spec": {"template": {"spec": pod_spec}},
        },
    )
    job_owner = owner(sanitized(api, job) | {"apiVersion": "batch/v1", "kind": "Job"})
    core.create_namespaced_pod(
        NS, {"metadata": {"name": "grandchild", "ownerReferences": [job_owner]}, "spec": pod_spec}
    )
    core.create_namespaced_config_map(
        NS, {"metadata": {"name": "results", "ownerReferences": [owner(run)]}}
    )
    core.create_namespaced_config_map(NS, {"metadata": {"name": "unrelated"}})

    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, "evalruns", "owner")
    marked = cluster.get(f"{GROUP}/{VERSION}/evalruns", NS, "owner")
    assert marked and marked["metadata"]["deletionTimestamp"], "kept while finalizers remain"
    assert cluster.get("batch/v1/jobs", NS, "child"), "the owner still exists"
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, "evalruns", "owner", {"metadata": {"finalizers": None}}
    )
    assert cluster.get(f"{GROUP}/{VERSION}/evalruns", NS, "owner") is None
    wait_for(lambda: cluster.get("v1/pods", NS, "grandchild") is None, "the GC, recursively")
    assert cluster.get("batch/v1/jobs", NS, "child") is None
    assert cluster.get("v1/configmaps", NS, "results") is None
    assert cluster.get("v1/configmaps", NS, "unrelated") is not None

    parent = core.create_namespaced_config_map(NS, {"metadata": {"name": "parent"}})
    parent_ref = owner(sanitized(api, parent) | {"apiVersion": "v1", "kind": "ConfigMap"})
    core.create_namespaced_config_map(
        NS, {"metadata": {"name": "orphan", "ownerReferences": [parent_ref]}}
    )
    core.delete_namespaced_config_map("parent", NS, propagation_policy="Orphan")
    orphan = cluster.get("v1/configmaps", NS, "orphan")
    assert orphan is not None and "ownerReferences" not in orphan["metadata"]


def test_watch_from_a_resource_version_and_with_selectors(api: Any) -> None:
    from kubernetes import client, watch

    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "before"}})
    rv = core.list_namespaced_config_map(NS).metadata.resource_version
    core.create_namespaced_config_map(NS, {"metadata": {"name": "w", "labels": {"app": "x"}}})
    core.patch_namespaced_config_map("w", NS, {"data": {"k": "v"}})
    core.patch_namespaced_config_map("w", NS, {"metadata": {"labels": {"app": "gone"}}})
    core.delete_namespaced_config_map("w", NS)

    def events(**kwargs: Any) -> list[tuple[str, str, dict[str, str] | None]]:
        seen = []
        stream = watch.Watch().stream(
            core.list_namespaced_config_map, NS, timeout_seconds=1, **kwargs
        )
        for event in stream:
            seen.append((event["type"], event["object"].metadata.name, event["object"].data))
            if event["type"] == "DELETED":
                break
        return seen

    assert events(resource_version=rv) == [
        ("ADDED", "w", None),
        ("MODIFIED", "w", {"k": "v"}),
        ("MODIFIED", "w", {"k": "v"}),
        ("DELETED", "w", {"k": "v"}),  # the last state
    ]
    assert events(resource_version=rv, label_selector="app=x") == [
        ("ADDED", "w", None),
        ("MODIFIED", "w", {"k": "v"}),
        ("DELETED", "w", {"k": "v"}),  # it stopped matching
    ]
    assert events() == [("ADDED", "before", None)]  # no version: the current state first


def test_watch_bookmarks_timeouts_and_expired_versions(cluster: Cluster) -> None:
    def stream(path: str) -> list[dict[str, Any]]:
        with urllib.request.urlopen(cluster.url + path, timeout=5) as response:
            assert response.headers["Content-Type"] == "application/json"
            return [json.loads(line) for line in response]  # ends at timeoutSeconds

    cluster.request("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "a"}})
    initial = stream(
        "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true"
        "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=0.2"
    )
    assert [e["type"] for e in initial] == ["ADDED", "BOOKMARK"]
    bookmark = initial[-1]["object"]["metadata"]
    assert bookmark["annotations"] == {"k8s.io/initial-events-end": "true"}

    with Cluster(history_limit=3) as small:
        for name in "bcdef":
            small.request(
                "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": name}}
            )
        url = f"{small.url}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1"
        with urllib.request.urlopen(url, timeout=5) as response:
            (expired,) = [json.loads(line) for line in response]
    assert expired["type"] == "ERROR" and expired["object"]["code"] == 410


def test_namespaces_crds_and_discovery(cluster: Cluster) -> None:
    _, version = cluster.request("GET", "/version")
    assert (version["major"], version["minor"]) == ("1", "35")
    _, batch = cluster.request("GET", "/apis/batch/v1")
    jobs = {r["name"]: r for r in batch["resources"]}
    assert jobs["jobs"]["kind"] == "Job" and jobs["jobs"]["namespaced"]
    assert "watch" in jobs["jobs"]["verbs"] and "jobs/status" in jobs
    _, qeval = cluster.request("GET", f"/apis/{GROUP}/{VERSION}")
    runs = {r["name"]: r for r in qeval["resources"]}
    assert runs["evalruns"]["shortNames"] == ["er", "erun"]
    assert runs["evalruns"]["categories"] == ["qeval"] and "evalruns/status" in runs
    _, groups = cluster.request("GET", "/apis")
    assert GROUP in {g["name"] for g in groups["groups"]}
    for probe in ("/healthz", "/livez", "/readyz"):
        with urllib.request.urlopen(cluster.url + probe, timeout=5) as response:
            assert response.read() == b"ok"

    ns = "/api/v1/namespaces"
    assert cluster.request("POST", ns, {"metadata": {"name": "doomed"}})[0] == 201
    cm = {"metadata": {"name": "inside", "finalizers": ["x/y"]}}
    assert cluster.request("POST", f"{ns}/doomed/configmaps", cm)[0] == 201
    assert cluster.request("DELETE", f"{ns}/doomed")[1]["status"]["phase"] == "Terminating"
    assert cluster.request("POST", f"{ns}/doomed/configmaps", {"metadata": {"name": "n"}})[0] == 403
    patch = {"metadata": {"finalizers": None}}
    wait_for(
        lambda: (cluster.get("v1/configmaps", "doomed", "inside") or {})["metadata"].get(
            "deletionTimestamp"
        ),
        "the namespace controller to delete the content",
    )
    cluster.request("PATCH", f"{ns}/doomed/configmaps/inside", patch)
    wait_for(lambda: cluster.get("v1/namespaces", None, "doomed") is None, "the namespace to go")

    crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    _, crd = cluster.request("GET", f"{crds}/evalruns.{GROUP}")
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established == {"NamesAccepted": "True", "Established": "True"}
    cr = f"/apis/{GROUP}/{VERSION}/namespaces/default/evalruns"
    assert cluster.request("POST", cr, evalrun("r"))[0] == 201
    assert cluster.request("DELETE", f"{crds}/evalruns.{GROUP}")[0] == 200
    assert cluster.request("GET", cr)[0] == 404
    assert cluster.request("GET", f"/apis/{GROUP}/{VERSION}/quantizedmodels")[0] == 200


def test_request_counters(cluster: Cluster) -> None:
    cluster.reset_request_count()
    cluster.request("GET", "/api/v1/namespaces/default/configmaps")
    cluster.request("PATCH", "/api/v1/namespaces/default/configmaps/x", {"data": {}})
    cluster.get("v1/configmaps", NS, "x")  # not an API request
    assert cluster.request_count == 2
    assert cluster.request_counts == {"list v1/configmaps": 1, "patch v1/configmaps": 1}
    assert cluster.reset_request_count() == 2 and cluster.request_count == 0


def test_injected_errors_take_precedence_and_prevent_the_change(cluster: Cluster) -> None:
    import kmock

    cluster.emulator["post", kmock.resource("v1/configmaps")] << 500
    body = {"metadata": {"name": "x"}}
    assert cluster.request("POST", "/api/v1/namespaces/default/configmaps", body)[0] == 500
    assert cluster.get("v1/configmaps", NS, "x") is None


# --- kubectl ---------------------------------------------------------------------------------


def test_kubectl_applies_gets_waits_and_deletes(cluster: Cluster) -> None:
    applied = cluster.kubectl("apply", "-f", str(ROOT / "crds")).stdout
    assert "customresourcedefinition.apiextensions.k8s.io/evalruns.qeval.dev" in applied
    out = cluster.kubectl("apply", "-R", "-f", str(EXAMPLES)).stdout
    assert "evalrun.qeval.dev/demo created" in out
    assert "quantizedmodel.qeval.dev/llama-3.1-8b-fp8 created" in out
    again = cluster.kubectl("apply", "-f", str(EXAMPLES / "evalrun.yaml")).stdout
    assert "evalrun.qeval.dev/demo unchanged" in again

    runs = json.loads(cluster.kubectl("get", "evalruns", "-o", "json").stdout)
    assert runs["kind"] == "List"
    assert {r["metadata"]["name"] for r in runs["items"]} == {
        "demo",
        "llama-3.1-8b-openllm-v1",
        "llama-3.1-8b-serving",
    }
    table = cluster.kubectl("get", "er").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "PROGRESS", "RECOVERY", "AGE"]
    assert cluster.kubectl("get", "qm", "-o", "name").stdout.count("quantizedmodel") == 7

    waiting = subprocess.Popen(
        [
            str(binaries.kubectl()),
            f"--kubeconfig={cluster.kubeconfig}",
            "wait",
            "--for=jsonpath={.status.phase}=Succeeded",
            "evalrun/demo",
            "--timeout=10s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = f"/apis/{GROUP}/{VERSION}/namespaces/default/evalruns/demo/status"
    succeeded = {"phase": "Succeeded", "conditions": [{"type": "Succeeded", "status": "True"}]}
    assert cluster.request("PATCH", path, {"status": succeeded})[0] == 200
    out, err = waiting.communicate(timeout=15)
    assert waiting.returncode == 0, err
    assert out.strip() == "evalrun.qeval.dev/demo condition met"
    row = cluster.kubectl("get", "er", "demo", "-o", "wide").stdout.splitlines()[1].split()
    assert row[:2] == ["demo", "Succeeded"] and row[2] == "True"  # the priority-1 column

    typed = cluster.kubectl("create", "configmap", "x", "--from-literal=a=b", check=False)
    assert "reads JSON and YAML only" in typed.stderr  # protobuf bodies: a documented gap

    deleted = cluster.kubectl("delete", "-f", str(EXAMPLES / "evalrun.yaml")).stdout
    assert 'evalrun.qeval.dev "demo" deleted' in deleted
    missing = cluster.kubectl("get", "er", "demo", check=False)
    assert missing.returncode == 1
    assert 'evalruns.qeval.dev "demo" not found' in missing.stderr


def test_helm_binary_runs() -> None:
    out = subprocess.run(
        [str(binaries.helm()), "version", "--short"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("v4.")


# --- the pieces, directly --------------------------------------------------------------------


def test_merge_patches() -> None:
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2], "s": "x"}
    assert merge_patch(target, {"a": {"b": None}, "l": [3], "s": {"now": "dict"}}) == {
        "a": {"c": 2},
        "l": [3],
        "s": {"now": "dict"},
    }
    pod = {"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]}}
    kubectl_patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [{"name": "a", "image": "3"}],
        }
    }
    assert strategic_merge_patch(pod, kubectl_patch)["spec"]["containers"] == [
        {"name": "b", "image": "2"},
        {"name": "a", "image": "3"},
    ]
    remove = {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}
    assert strategic_merge_patch(pod, remove)["spec"]["containers"] == [{"name": "b", "image": "2"}]


def test_selectors_jsonpaths_and_ages() -> None:
    labels = {"app": "x", "n": "5"}
    assert parse_label_selector("app in (x,y), n>3, !missing")(labels)
    assert not parse_label_selector("app notin (x)")(labels)
    with pytest.raises(ValueError):
        parse_label_selector("app in x")
    status = {
        "status": {"conditions": [{"type": "A", "status": "F"}, {"type": "B", "status": "T"}]}
    }
    assert jsonpath(status, '.status.conditions[?(@.type=="B")].status') == ["T"]
    assert jsonpath(status, ".status.conditions[*].type") == ["A", "B"]
    assert jsonpath(status, ".status.missing") == []
    assert [human_duration(s) for s in (5, 125, 3 * 3600 + 60, 3 * 86400)] == [
        "5s",
        "2m5s",
        "3h1m",
        "3d",
    ]
