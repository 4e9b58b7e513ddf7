"""Least privilege, tried on the real control plane (``tests/cluster``): what a stage pod
running model-written code (``allowCodeExecution``) can do with its token, what the operator's
pods carry, and what Pod Security ``restricted`` admits.

The namespace has the chart's RBAC and its stage admission policy (``install_identities``
with ``stage_policy``). Its stage Jobs are the operator's own (``manifests.build_job`` for
the stages of real EvalRuns) created by the admin; the real Job controller makes their pods
(no kubelet runs them: they stay Pending) and each stage pod's token comes from the
TokenRequest API bound to its pod, as a kubelet mounts it. With those tokens a stage may
create its own result ConfigMap, once; every forgery is tried and must be refused with the
API server's own answer (RBAC's 403, or the policy's message).
"""

from __future__ import annotations

import copy
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from qeval.api.common import SecretKeyRef
from qeval.api.documents import load_documents
from qeval.api.evalrun import EvalRun
from qeval.api.quantizedmodel import QuantizedModel
from qeval.k8s import manifests as m
from qeval.k8s.publish import publish
from qeval.k8s.settings import OperatorSettings
from qeval.plan import build_plan, quantize_stage
from qeval.stages.envelope import StageResult, StageStatus
from tests.cluster.chart import Identities, install_identities, render
from tests.cluster.controlplane import ISSUER, ControlPlane
from tests.conftest import EXAMPLES
from tests.kube.play import job_pods, stage_env, wait_for

NS = "least-privilege"
LONG_RUN = "a-run-whose-name-is-long-enough-to-cut-its-pod-names"  # 52 characters
# The runs whose stages are tried: (run, stage) -> the Job the operator would create.
TRIED = (
    ("demo", "evaluate-fp32"),  # publishes its own result
    ("demo", "evaluate-fp8"),  # another stage of the same run: the forgery's target
    ("demo", "evaluate-int8"),  # another, whose name is as long as the writer's
    ("demo", "aggregate"),  # publishes, then tries to change or delete it
    ("demo", "demo-model"),  # tries results that are not qeval's
    ("demo-b", "evaluate-fp32"),  # the same stage of another run
    (LONG_RUN, "evaluate-fp32"),  # names of 57 characters, the longest
    (LONG_RUN, "evaluate-fp8"),
)
POLICY_DENIED = "denied request"  # how the API server words a ValidatingAdmissionPolicy's no
NOT_ITS_OWN = "may only write the result ConfigMap of its own Job"
CREATE_ONLY = "may only create their result ConfigMap"


# --- requests with a token --------------------------------------------------------------------


def as_bearer(
    cp: ControlPlane, token: str, method: str, path: str, body: Any = None, patch: bool = False
) -> tuple[int, str]:
    """One request with a bearer token: the status and the body's text."""
    data = None if body is None else json.dumps(body).encode()
    content = "application/merge-patch+json" if patch else "application/json"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content}
    req = urllib.request.Request(cp.server + path, data=data, method=method, headers=headers)
    context = ssl.create_default_context(cafile=str(cp.ca_file))
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def pod_token(cp: ControlPlane, pod: dict[str, Any]) -> str:
    """The token a kubelet mounts in ``pod``: its ServiceAccount's, bound to the pod."""
    meta = pod["metadata"]
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [ISSUER],
            "expirationSeconds": 3600,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }
    account = pod["spec"]["serviceAccountName"]
    path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
    status, text = cp.request("POST", path, body)
    assert status == 201, text
    return str(json.loads(text)["status"]["token"])


def configmaps(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps"


# --- the namespace: runs, their stage Jobs, the Jobs' pods and their tokens ------------------


@dataclass
class TriedStage:
    """One stage of TRIED: its Job, the pod the Job controller made, the pod's token."""

    built: dict[str, Any]  # manifests.build_job's
    job: dict[str, Any]  # as the API server stored it
    pod: dict[str, Any]
    token: str

    @property
    def name(self) -> str:
        return str(self.job["metadata"]["name"])

    def result(self, **changes: Any) -> dict[str, Any]:
        """The result ConfigMap this stage publishes (as qeval.k8s.publish builds it), with
        ``changes`` to its top-level fields."""
        env = stage_env(self.job)
        labels = json.loads(env["QEVAL_RESULT_LABELS"])
        doc = document(self.job)
        manifest = m.build_result_configmap(
            self.name, env["QEVAL_RESULT_NAMESPACE"], doc.dump(), labels, None
        )
        manifest.update(changes)
        return manifest


@dataclass
class World:
    cp: ControlPlane
    ids: Identities
    runs: dict[str, dict[str, Any]]
    stages: dict[tuple[str, str], TriedStage]


def document(job: dict[str, Any]) -> StageResult:
    return StageResult(
        stage=m.stage_name(job["metadata"]),
        kind=job["metadata"]["labels"][m.LABEL_STAGE_KIND],
        status=StageStatus.SUCCEEDED,
        started_at="2026-12-02T05:00:00Z",
        finished_at="2026-12-02T05:01:00Z",
        wall_seconds=60.0,
        result={"forged": False},
    )


def demo_documents() -> tuple[dict[str, Any], dict[str, QuantizedModel]]:
    docs = load_documents(EXAMPLES / "evalrun.yaml")
    (run,) = [d for d in docs if isinstance(d, EvalRun)]
    return run.dump(), {d.name: d for d in docs if isinstance(d, QuantizedModel)}


def client_for(cp: ControlPlane, token: str, name: str) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    path = cp.token_kubeconfig(name, token)
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    return client.ApiClient(configuration)


@pytest.fixture(scope="module")
def world(control_plane: ControlPlane) -> Iterator[World]:
    cp = control_plane
    cp.create_namespace(NS)
    try:
        ids = install_identities(cp, NS, stage_policy=True)
        run_doc, models = demo_documents()
        runs: dict[str, dict[str, Any]] = {}
        for name in sorted({run for run, _ in TRIED}):
            body = run_doc | {"metadata": {"name": name, "namespace": NS}}
            cp.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump(body))
            runs[name] = cp.get("qeval.dev/v1alpha1/evalruns", NS, name) or {}
        settings = OperatorSettings()
        jobs = {}
        for run_name, stage_name in TRIED:
            run = EvalRun.model_validate(run_doc | {"metadata": {"name": run_name}})
            layout = m.cluster_layout(settings, NS, run_name)
            (stage,) = [s for s in build_plan(run, models, layout) if s.name == stage_name]
            job = m.build_job(stage, m.Owner.of(runs[run_name]), layout, settings)
            status, text = cp.request("POST", f"/apis/batch/v1/namespaces/{NS}/jobs", job)
            assert status == 201, text
            jobs[(run_name, stage_name)] = (job, json.loads(text))
        stages = {}
        for key, (built, job) in jobs.items():
            pod = wait_for(lambda j=job: next(iter(job_pods(cp, j)), None), f"a pod of {key}")
            stages[key] = TriedStage(built, job, pod, pod_token(cp, pod))
        # The policy is in force once the API server has loaded it: an unbound token's
        # write is refused (a dry run: nothing is stored either way).
        probe = stages[("demo", "demo-model")].result()
        wait_for(
            lambda: (
                POLICY_DENIED
                in as_bearer(
                    cp, cp.token(NS, "qeval-stage"), "POST", configmaps(NS) + "?dryRun=All", probe
                )[1]
            ),
            "the stage admission policy in force",
        )
        yield World(cp, ids, runs, stages)
    finally:
        cp.request("DELETE", f"/api/v1/namespaces/{NS}")
        policy = f"qeval-{NS}-qeval-operator-stage-results"  # cluster-scoped: removed too
        for kind in ("validatingadmissionpolicybindings", "validatingadmissionpolicies"):
            cp.request("DELETE", f"/apis/admissionregistration.k8s.io/v1/{kind}/{policy}")


def refused(answer: tuple[int, str], *words: str) -> str:
    """The API server's refusal message, checked: 403 or 422, saying ``words``."""
    status, text = answer
    message = str(json.loads(text).get("message", text)) if text.startswith("{") else text
    assert status in (403, 422), f"admitted ({status}): {text[:300]}"
    for word in words:
        assert word in message, message
    return message


# --- result ConfigMaps: each writable by its own stage pod only, once --------------------------


def test_a_stage_pod_publishes_its_own_result_once(world: World) -> None:
    cp, own = world.cp, world.stages[("demo", "evaluate-fp32")]
    env = stage_env(own.job)
    api = client_for(cp, own.token, "stage-evaluate-fp32")
    # The real publishing code, with the token the pod mounts.
    assert publish(document(own.job), env=env, api=api) == own.name
    stored = cp.get("v1/configmaps", NS, own.name)
    assert stored is not None and stored["immutable"] is True
    assert json.loads(stored["data"]["result.json"])["result"] == {"forged": False}
    # A retried pod publishes again: the policy admits it, the API server keeps the first.
    second = own.result(data={"result.json": json.dumps({"forged": True})})
    status, text = as_bearer(cp, own.token, "POST", configmaps(NS), second)
    assert status == 409, text
    again = cp.get("v1/configmaps", NS, own.name) or {}
    assert json.loads(again["data"]["result.json"])["result"] == {"forged": False}


@pytest.mark.parametrize(
    "target",
    [("demo", "evaluate-fp8"), ("demo", "evaluate-int8"), ("demo-b", "evaluate-fp32")],
    ids=["stage", "stage-of-the-same-length", "run"],
)
def test_a_stage_pod_cannot_write_another_stages_or_runs_result(
    world: World, target: tuple[str, str]
) -> None:
    """With every label right (the target's own), only the writer differs."""
    cp, writer, victim = world.cp, world.stages[("demo", "evaluate-fp32")], world.stages[target]
    forged = victim.result(data={"result.json": json.dumps({"forged": True})})
    message = refused(
        as_bearer(cp, writer.token, "POST", configmaps(NS), forged), POLICY_DENIED, NOT_ITS_OWN
    )
    assert writer.pod["metadata"]["name"] in message and victim.name in message
    assert cp.get("v1/configmaps", NS, victim.name) is None
    # The victim's own pod may (the refusal was about the writer, not the object).
    assert as_bearer(cp, victim.token, "POST", configmaps(NS) + "?dryRun=All", forged)[0] == 201


def test_a_stage_pod_cannot_write_a_configmap_named_by_a_prefix_of_its_name(world: World) -> None:
    """The pod demo-evaluate-fp32-<hash>-<5> starts with demo-evaluate-fp32- too: no Job
    has that name, and no pod of one may write it."""
    cp, writer = world.cp, world.stages[("demo", "evaluate-fp32")]
    pod = writer.pod["metadata"]["name"]
    shorter = pod.rsplit("-", 2)[0]
    assert shorter == "demo-evaluate-fp32" and pod.startswith(shorter + "-")
    forged = writer.result(metadata={**writer.result()["metadata"], "name": shorter})
    refused(as_bearer(cp, writer.token, "POST", configmaps(NS), forged), NOT_ITS_OWN)
    assert cp.get("v1/configmaps", NS, shorter) is None


def test_the_longest_names_bind_whole_through_their_pods_names(world: World) -> None:
    """Child names end at 57 characters, so the Job controller's pod name (the Job's name
    cut to 58, then 5 random characters) holds the whole name and its 8-character hash."""
    cp = world.cp
    own, neighbour = (
        world.stages[(LONG_RUN, "evaluate-fp32")],
        world.stages[(LONG_RUN, "evaluate-fp8")],
    )
    assert len(own.name) == len(neighbour.name) == m.CHILD_NAME_LIMIT
    pod = own.pod["metadata"]["name"]
    assert pod.startswith(own.name + "-") and len(pod) == m.CHILD_NAME_LIMIT + 6
    assert as_bearer(cp, own.token, "POST", configmaps(NS), own.result())[0] == 201
    refused(as_bearer(cp, own.token, "POST", configmaps(NS), neighbour.result()), NOT_ITS_OWN)
    # A longer name with the same prefix: no Job has one.
    longer = own.result(metadata={**own.result()["metadata"], "name": own.name + "x"})
    refused(as_bearer(cp, own.token, "POST", configmaps(NS), longer), NOT_ITS_OWN)


def test_a_stage_pod_cannot_change_or_delete_its_result_even_with_a_wider_role(
    world: World,
) -> None:
    cp, own = world.cp, world.stages[("demo", "aggregate")]
    assert as_bearer(cp, own.token, "POST", configmaps(NS), own.result())[0] == 201
    path = f"{configmaps(NS)}/{own.name}"
    relabel = {"metadata": {"labels": {m.LABEL_OWNER_UID: "another-run"}}}
    replaced = own.result(metadata={**own.result()["metadata"], "labels": {"x": "y"}})
    tries = {
        "update": lambda: as_bearer(cp, own.token, "PUT", path, replaced),
        "patch": lambda: as_bearer(cp, own.token, "PATCH", path, relabel, patch=True),
        "delete": lambda: as_bearer(cp, own.token, "DELETE", path),
    }
    # RBAC: the stage account may only create.
    for verb, attempt in tries.items():
        refused(attempt(), f'cannot {verb} resource "configmaps"')
    # Someone widens the stage account's rights: the policy still refuses.
    wider = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "wider", "namespace": NS},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": list(tries)}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "wider", "namespace": NS},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "wider"},
        "subjects": [{"kind": "ServiceAccount", "name": "qeval-stage", "namespace": NS}],
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([wider, binding]))
    try:
        wait_for(
            lambda: POLICY_DENIED in tries["delete"]()[1], "the wider Role in force", timeout=30
        )
        for attempt in tries.values():
            refused(attempt(), POLICY_DENIED, CREATE_ONLY)
    finally:
        cp.kubectl("delete", "-n", NS, "role/wider", "rolebinding/wider")
    stored = cp.get("v1/configmaps", NS, own.name) or {}
    assert stored["metadata"]["labels"] == own.result()["metadata"]["labels"]


def test_a_stage_pod_cannot_write_configmaps_that_are_not_immutable_qeval_results(
    world: World,
) -> None:
    cp, own = world.cp, world.stages[("demo", "demo-model")]
    meta = own.result()["metadata"]
    unlabelled = own.result(metadata={"name": own.name, "namespace": NS, "labels": {"a": "b"}})
    mutable = own.result(immutable=False)
    refused(as_bearer(cp, own.token, "POST", configmaps(NS), unlabelled), "qeval.dev/result=true")
    refused(as_bearer(cp, own.token, "POST", configmaps(NS), mutable), "immutable true")
    # Nor a generated name (no Job is called that).
    generated = own.result(metadata={**meta, "name": None, "generateName": own.name + "-"})
    refused(as_bearer(cp, own.token, "POST", configmaps(NS), generated), NOT_ITS_OWN)
    assert cp.get("v1/configmaps", NS, own.name) is None


def test_tokens_bound_to_no_pod_write_nothing(world: World) -> None:
    """A TokenRequest of the account's own (what ``install_identities`` hands out), as a
    process that learnt the account's name might get one: refused, even for a result that
    is right in every other way."""
    cp, own = world.cp, world.stages[("demo", "demo-model")]
    refused(
        as_bearer(cp, cp.token(NS, "qeval-stage"), "POST", configmaps(NS), own.result()),
        POLICY_DENIED,
        "bound to no pod",
    )
    assert cp.get("v1/configmaps", NS, own.name) is None


def test_a_stage_pod_cannot_forge_another_runs_result_through_its_own_configmaps_labels(
    world: World,
) -> None:
    """The policy binds the name; the labels of that one ConfigMap are the writer's to
    choose. Here the long run's stage publishes under its own name, labelled as the demo-b
    run's evaluate-fp32 (its owner uid, its stage) with a document naming that stage: the
    operator's result index must not take it for demo-b's."""
    from qeval.k8s.store import index_results

    cp = world.cp
    writer, victim = (
        world.stages[(LONG_RUN, "evaluate-fp8")],
        world.stages[("demo-b", "evaluate-fp32")],
    )
    victim_labels = victim.result()["metadata"]["labels"]
    forged = victim.result(metadata={"name": writer.name, "namespace": NS, "labels": victim_labels})
    status, text = as_bearer(cp, writer.token, "POST", configmaps(NS), forged)
    assert status == 201, text  # what the policy cannot see
    stored = cp.get("v1/configmaps", NS, writer.name) or {}
    indexed = index_results(stored)
    victim_uid = world.runs["demo-b"]["metadata"]["uid"]
    assert not indexed or victim_uid not in indexed, indexed


# --- owner references: OwnerReferencesPermissionEnforcement is on ----------------------------


def test_only_the_operator_may_block_its_owners_deletion(world: World) -> None:
    """The control plane runs OwnerReferencesPermissionEnforcement (as OpenShift does): a
    child with ``blockOwnerDeletion`` needs ``update`` on the owner's finalizers. The
    operator's Jobs set it and are admitted; a stage pod's result may not set it."""
    cp, own = world.cp, world.stages[("demo", "demo-model")]
    owner = m.Owner.of(world.runs["demo"])
    blocking = own.result()
    blocking["metadata"]["ownerReferences"] = [owner.reference(block_owner_deletion=True)]
    dry = configmaps(NS) + "?dryRun=All"
    refused(as_bearer(cp, own.token, "POST", dry, blocking), "cannot set blockOwnerDeletion")
    blocking["metadata"]["ownerReferences"] = [owner.reference(block_owner_deletion=False)]
    assert as_bearer(cp, own.token, "POST", dry, blocking)[0] == 201
    # The operator's account creates a stage Job that blocks its EvalRun's deletion.
    job = copy.deepcopy(own.built)
    job["metadata"]["name"] = "blocking"
    assert job["metadata"]["ownerReferences"] == [owner.reference()]
    assert job["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
    cp.kubectl(
        "create", "--dry-run=server", "-f", "-",
        input=yaml.safe_dump(job), kubeconfig=world.ids.operator,
    )  # fmt: skip


# --- pods: Pod Security restricted, no API token where none is needed -------------------------


def built_pods() -> list[tuple[str, dict[str, Any]]]:
    """Every pod the operator builds for the examples (each stage kind, and the servers),
    with a hub token to reference, and the operator's own pod from the chart."""
    settings = OperatorSettings()
    token = SecretKeyRef(name="hf-token", key="token")
    docs = load_documents(EXAMPLES / "evalrun.yaml") + load_documents(EXAMPLES / "llama-3.1-8b")
    models = {d.name: d for d in docs if isinstance(d, QuantizedModel)}
    out: list[tuple[str, dict[str, Any]]] = []
    for qm in models.values():
        owner = m.Owner("QuantizedModel", qm.name, NS, "uid")
        layout = m.cluster_layout(settings, NS, qm.name)
        job = m.build_job(quantize_stage(qm, layout), owner, layout, settings, token)
        out.append((f"{qm.name}/quantize", job["spec"]["template"]))
    for run in (d for d in docs if isinstance(d, EvalRun)):
        owner = m.Owner("EvalRun", run.name, NS, "uid")
        layout = m.cluster_layout(settings, NS, run.name)
        for stage in build_plan(run, models, layout):
            if stage.kind == "quantize":
                continue  # its QuantizedModel's, above
            if stage.serves:
                built = m.build_server(stage, owner, settings, token=token)[0]
            else:
                built = m.build_job(stage, owner, layout, settings, token)
            out.append((f"{run.name}/{stage.name}", built["spec"]["template"]))
    (operator,) = [
        o for o in render(f"qeval-{NS}", NS, only=("deployment.yaml",)) if o["kind"] == "Deployment"
    ]
    out.append(("operator", operator["spec"]["template"]))
    return out


def as_pod(name: str, template: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }


def test_every_pod_the_operator_builds_passes_pod_security_restricted(world: World) -> None:
    cp = world.cp
    labels = (cp.get("v1/namespaces", None, NS) or {})["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = built_pods()
    kinds = {name.split("/")[-1].split("-")[0] for name, _ in pods}
    assert {"quantize", "demo", "evaluate", "aggregate", "serve", "benchmark"} <= kinds
    assert {"similarity", "operator"} <= kinds
    docs = [as_pod(f"pod-{i}", template) for i, (_, template) in enumerate(pods)]
    done = cp.kubectl(
        "apply", "--dry-run=server", "-n", NS, "-f", "-", input=yaml.safe_dump_all(docs),
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("created (server dry run)") == len(docs), done.stdout
    # The namespace does enforce it: the same pod as root is refused.
    root = as_pod("as-root", pods[0][1])
    root["spec"] = {**root["spec"], "securityContext": {"runAsNonRoot": False}}
    done = cp.kubectl(
        "apply", "--dry-run=server", "-n", NS, "-f", "-", input=yaml.safe_dump(root), check=False
    )
    assert done.returncode != 0 and 'violates PodSecurity "restricted:latest"' in done.stderr


def token_volumes(pod: dict[str, Any]) -> list[str]:
    """The pod's volumes that project a ServiceAccount token."""
    return [
        v["name"]
        for v in pod["spec"].get("volumes", [])
        for source in v.get("projected", {}).get("sources", [])
        if "serviceAccountToken" in source
    ]


def test_server_pods_get_no_api_token_and_stage_pods_do(world: World) -> None:
    """The real Deployment and ReplicaSet controllers make a model server's pod; the
    ServiceAccount admission plugin mounts it no token (the stage pods publish: they get one)."""
    cp = world.cp
    docs = load_documents(EXAMPLES / "llama-3.1-8b")
    (run,) = [d for d in docs if isinstance(d, EvalRun) and d.name == "llama-3.1-8b-serving"]
    models = {d.name: d for d in docs if isinstance(d, QuantizedModel)}
    settings = OperatorSettings()
    layout = m.cluster_layout(settings, NS, "demo")
    stage = next(s for s in build_plan(run, models, layout) if s.serves)
    owner = m.Owner.of(world.runs["demo"])
    deployment, _ = m.build_server(stage, owner, settings)
    cp.kubectl("apply", "-n", NS, "-f", "-", input=yaml.safe_dump(deployment))
    selector = m.server_selector(owner, stage)
    (pod,) = wait_for(lambda: cp.list("v1/pods", NS, selector), "the server's pod")
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["serviceAccountName"] == "qeval-stage"
    assert token_volumes(pod) == []
    stage_pod = cp.get("v1/pods", NS, world.stages[("demo", "aggregate")].pod["metadata"]["name"])
    assert stage_pod is not None and len(token_volumes(stage_pod)) == 1


# --- secrets: only ever referenced --------------------------------------------------------------


def test_no_account_of_the_chart_may_read_secrets_and_pods_only_reference_them() -> None:
    """Neither the operator nor the stage pods may get, list or watch a Secret (the hub
    token reaches a pod as a secretKeyRef, which the kubelet resolves), and no rule uses *."""
    value_sets = (
        (),
        ("watchNamespaces={team-a,team-b}", "peering.enabled=true"),
        ("peering.enabled=true", "stages.namespaces={ml}"),
    )
    rules = [
        rule
        for sets in value_sets
        for o in render("qeval", "qeval-system", *sets)
        if o["kind"] in ("Role", "ClusterRole")
        for rule in o["rules"]
    ]
    assert len(rules) > 10
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert "secrets" not in rule["resources"], rule
    referenced = 0
    for name, template in built_pods():
        spec = template["spec"]
        assert not [v for v in spec.get("volumes", []) if "secret" in v], name
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref == {"name": "hf-token", "key": "token"}, name
                    referenced += 1
    assert referenced >= 5  # the stages that download (quantize, evaluate, serve, ...)
