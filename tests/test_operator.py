"""The operator for real (kopf, the kubernetes client) against the real control plane.

The API server, scheduler and the Job, Deployment and ReplicaSet controllers are real
(``tests/cluster``); the operator runs under the chart's RBAC (its ServiceAccount's token)
and stage results are published with the stage ServiceAccount's token. No kubelet runs
here: the test plays it for each pod the real controllers make and the scheduler binds
(``tests/kube/play.py``: the container exited, runs, or waits on an image pull), and plays
the stage processes by publishing their result ConfigMaps. Waits are bounded and wait on
conditions only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from qeval.api.common import GROUP, VERSION
from qeval.k8s import manifests as m
from qeval.stages.envelope import EXIT_RECORDED_FAILURE, StageResult, StageStatus
from tests.cluster.chart import Identities, install_identities
from tests.cluster.controlplane import ControlPlane
from tests.conftest import EXAMPLES
from tests.kube.play import (
    aggregate_result,
    evaluate_result,
    finish_job,
    free_port,
    job_pods,
    play_crash_loop,
    play_pod,
    publish_result,
    quantize_result,
    scheduled_pod,
    stage_env,
    stage_input,
    wait_for,
)
from tests.kube.running import Operator


@pytest.fixture
def identities(control_plane: ControlPlane, namespace: str) -> Identities:
    return install_identities(control_plane, namespace)


@pytest.fixture
def operator_env(
    identities: Identities, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    env = {
        "KUBECONFIG": str(identities.operator),  # the chart's RBAC is all it has
        "QEVAL_NAMESPACES": namespace,
        "QEVAL_RESYNC_SECONDS": "2",
        "QEVAL_IMAGE_PULL_TIMEOUT_SECONDS": "8",
        "QEVAL_METRICS_PORT": str(free_port()),
        "QEVAL_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
        "QEVAL_EVALUATOR_IMAGE": "registry.local/qeval/evaluator:test",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def operator(operator_env: dict[str, str]) -> Iterator[Operator]:
    op = Operator(int(operator_env["QEVAL_METRICS_PORT"])).start()
    yield op
    op.stop_now()


@pytest.fixture
def api(control_plane: ControlPlane) -> Any:
    """A client as the cluster's admin: the person applying the resources."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    return client.ApiClient(configuration)


@pytest.fixture
def kube(control_plane: ControlPlane, namespace: str, api: Any, identities: Identities) -> Kube:
    return Kube(control_plane, namespace, api, identities)


class Kube:
    """One test's namespace of the control plane: what the test reads and does there."""

    def __init__(self, cluster: ControlPlane, ns: str, api: Any, identities: Identities):
        self.cluster, self.ns, self.api, self.identities = cluster, ns, api, identities

    def apply(self, path: Path, names: set[str] | None = None) -> None:
        for doc in yaml.safe_load_all(path.read_text()):
            if names is not None and doc["metadata"]["name"] not in names:
                continue
            plural = {"EvalRun": "evalruns", "QuantizedModel": "quantizedmodels"}[doc["kind"]]
            self.create(plural, doc)

    def claim(self, name: str) -> None:
        """A PersistentVolumeClaim, bound to a volume of its own (as a user would make it)."""
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "200Gi"}},
            },
        }
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pvc))
        self.cluster.provide_volume(self.ns, name)

    def create(self, plural: str, body: dict[str, Any]) -> None:
        from kubernetes import client

        client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            GROUP, VERSION, self.ns, plural, body, field_validation="Strict"
        )

    def get(self, plural: str, name: str) -> dict[str, Any]:
        found = self.cluster.get(f"{GROUP}/{VERSION}/{plural}", self.ns, name)
        assert found is not None, f"{plural}/{name} is gone"
        return found

    def status(self, plural: str, name: str) -> dict[str, Any]:
        return self.get(plural, name).get("status") or {}

    def phase_is(self, plural: str, name: str, phase: str) -> dict[str, Any] | None:
        st = self.status(plural, name)
        return st if st.get("phase") == phase else None

    def stalled(self, plural: str, name: str, saying: str) -> dict[str, Any] | None:
        """The resource's Stalled condition once it is True and its message says ``saying``."""
        c = condition_of(self.status(plural, name), "Stalled")
        return c if c and c["status"] == "True" and saying in c["message"] else None

    def jobs(self, **labels: str) -> dict[str, dict[str, Any]]:
        """Jobs by stage name."""
        found = self.cluster.list("batch/v1/jobs", self.ns, labels or None)
        return {m.stage_name(j["metadata"]): j for j in found}

    def servers(self, kind: str, run: str) -> dict[str, dict[str, Any]]:
        """A run's Deployments (apps/v1/deployments) or Services (v1/services) by stage."""
        found = self.cluster.list(kind, self.ns, {m.LABEL_RUN: run})
        return {m.stage_name(o["metadata"]): o for o in found}

    def events_for(self, name: str) -> list[tuple[str, str]]:
        return [
            (e.get("type", ""), e.get("reason", ""))
            for e in self.cluster.list("v1/events", self.ns)
            if e.get("involvedObject", {}).get("name") == name
        ]

    def complete(
        self, stage: str, result: dict[str, Any], ok: bool = True, run: str | None = None
    ) -> None:
        """Play a stage pod: publish its result as the stage account, then exit 0 (or, as
        ``qeval <stage>`` does after publishing a Failed document, EXIT_RECORDED_FAILURE)."""
        job = self.jobs(**({m.LABEL_RUN: run} if run else {}))[stage]
        publish_result(job, result, ok, kubeconfig=self.identities.stage)
        finish_job(self.cluster, job, ok, exit_code=EXIT_RECORDED_FAILURE)


def job_failure(kube: Kube, job: dict[str, Any]) -> dict[str, Any]:
    """The Failed condition the real Job controller gave ``job`` (it says FailureTarget
    first, Failed once the pods are gone)."""

    def failed() -> dict[str, Any] | None:
        current = kube.cluster.get("batch/v1/jobs", kube.ns, job["metadata"]["name"]) or {}
        conditions = current.get("status", {}).get("conditions") or []
        return next(
            (c for c in conditions if c["type"] == "Failed" and c["status"] == "True"), None
        )

    return wait_for(failed, f"Job {job['metadata']['name']} to be Failed")


def condition_of(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), None)


# --- QuantizedModel ---------------------------------------------------------------------------


def test_a_quantized_model_runs_as_one_gpu_job_on_a_gpu_node_and_becomes_ready(
    kube: Kube, operator: Operator
) -> None:
    kube.claim("qeval-models")  # where the example writes its model
    kube.apply(EXAMPLES / "llama-3.1-8b" / "quantizedmodels.yaml", {"llama-3.1-8b-w4a16"})
    qm = kube.get("quantizedmodels", "llama-3.1-8b-w4a16")
    job = wait_for(lambda: kube.jobs().get("quantize-llama-3.1-8b-w4a16"), "the quantize Job")

    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:4] == ["qeval", "quantize", "--input", "env:QEVAL_STAGE_INPUT"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert job["metadata"]["ownerReferences"][0]["uid"] == qm["metadata"]["uid"]
    assert len(job["metadata"]["name"]) <= 63
    # The real scheduler puts it on the tainted H100 node, which only its toleration allows.
    assert scheduled_pod(kube.cluster, job)["spec"]["nodeName"] == "gpu-0"

    st = wait_for(lambda: kube.phase_is("quantizedmodels", "llama-3.1-8b-w4a16", "Quantizing"), "")
    types = {c["type"] for c in st["conditions"]}
    assert types == {"Accepted", "Quantizing", "Ready", "Stalled"}
    assert st["observedGeneration"] == 1

    kube.complete("quantize-llama-3.1-8b-w4a16", quantize_result(job))
    st = wait_for(lambda: kube.phase_is("quantizedmodels", "llama-3.1-8b-w4a16", "Ready"), "Ready")
    assert st["compressionRatio"] == 4.0
    assert st["output"] == "/mnt/volumes/qeval-models/llama-3.1-8b-w4a16"
    assert st["wallSeconds"] == 300.0
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Quantized")

    reasons = wait_for(
        lambda: (r := {x[1] for x in kube.events_for("llama-3.1-8b-w4a16")}) >= {"Ready"} and r,
        "events",
    )
    assert {"JobCreated", "Quantizing", "Ready"} <= reasons
    text = wait_for(
        lambda: operator.metrics_with("qeval_compression_ratio{"), "the compression ratio metric"
    )
    ns = kube.ns
    assert (
        f'qeval_compression_ratio{{namespace="{ns}",quantizedmodel="llama-3.1-8b-w4a16",'
        'scheme="W4A16"} 4.0' in text
    )
    assert f'qeval_jobs_created_total{{namespace="{ns}",stage_kind="quantize"}} 1.0' in text
    assert f'qeval_resources{{kind="QuantizedModel",namespace="{ns}",phase="Ready"}} 1.0' in text
    assert len(kube.jobs()) == 1  # never a second Job


def test_a_gpu_job_without_the_toleration_stays_pending_with_the_schedulers_reason(
    kube: Kube, operator: Operator
) -> None:
    (doc,) = [
        d
        for d in yaml.safe_load_all(
            (EXAMPLES / "llama-3.1-8b" / "quantizedmodels.yaml").read_text()
        )
        if d["metadata"]["name"] == "llama-3.1-8b-w4a16"
    ]
    del doc["spec"]["scheduling"]["tolerations"]  # the H100 node is tainted nvidia.com/gpu
    kube.claim("qeval-models")
    kube.create("quantizedmodels", doc)
    job = wait_for(lambda: kube.jobs().get("quantize-llama-3.1-8b-w4a16"), "the quantize Job")

    def unschedulable() -> dict[str, Any] | None:
        pods = [
            p
            for p in kube.cluster.list("v1/pods", kube.ns)
            if p["metadata"]["labels"].get("batch.kubernetes.io/job-name")
            == job["metadata"]["name"]
        ]
        for p in pods:
            for c in p.get("status", {}).get("conditions") or []:
                if c["type"] == "PodScheduled" and "untolerated taint" in c.get("message", ""):
                    return c
        return None

    # The claim is bound first; then the real scheduler says why no node fits: the A100
    # node fails the nodeSelector, the CPU node has no GPU, the H100 node has the taint.
    condition = wait_for(unschedulable, "the scheduler to give up on the pod", timeout=40)
    assert condition["reason"] == "Unschedulable"
    assert "0/3 nodes are available" in condition["message"]

    # The resource's status says so within a resync (2 s here; 60 s by default), with the
    # scheduler's own words (first, maybe, the claim not bound yet; then the taint); the
    # model waits (a node may free up or be added), it does not fail.
    stall = wait_for(
        lambda: kube.stalled("quantizedmodels", "llama-3.1-8b-w4a16", "untolerated taint"),
        "Stalled in the model's status",
        timeout=15,
    )
    assert stall["reason"] == "Unschedulable"
    assert "quantize-llama-3.1-8b-w4a16: Unschedulable: pod " in stall["message"]
    assert "0/3 nodes are available" in stall["message"]
    assert kube.status("quantizedmodels", "llama-3.1-8b-w4a16")["phase"] == "Quantizing"
    wait_for(
        lambda: ("Warning", "Unschedulable") in kube.events_for("llama-3.1-8b-w4a16"), "a Warning"
    )


def test_an_image_that_cannot_be_pulled_is_retried_then_fails_the_model(
    kube: Kube, operator: Operator
) -> None:
    kube.claim("qeval-models")
    kube.apply(EXAMPLES / "llama-3.1-8b" / "quantizedmodels.yaml", {"llama-3.1-8b-fp8"})
    job = wait_for(lambda: kube.jobs().get("quantize-llama-3.1-8b-fp8"), "the quantize Job")
    # Play the kubelet: the Job controller's pod cannot pull its image.
    waiting = {
        "reason": "ImagePullBackOff",
        "message": 'Back-off pulling image "ghcr.io/qeval/quantizer:0.1.0"',
    }
    play_pod(kube.cluster, scheduled_pod(kube.cluster, job), waiting=waiting)

    # A registry's rate limit passes: first the status says it is retrying (once the claim
    # is bound: until then the scheduler's reason comes first) ...
    stall = wait_for(
        lambda: kube.stalled("quantizedmodels", "llama-3.1-8b-fp8", "Back-off pulling image"),
        "Stalled on the image pull",
        timeout=15,
    )
    assert stall["reason"] == "ImagePullBackOff" and "retrying" in stall["message"]
    # ... and once it has lasted the pull timeout (8 s here, 600 s by default), it fails.
    st = wait_for(lambda: kube.phase_is("quantizedmodels", "llama-3.1-8b-fp8", "Failed"), "Failed")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ImagePullBackOff"
    assert "Back-off pulling image" in ready["message"]
    wait_for(lambda: ("Warning", "Failed") in kube.events_for("llama-3.1-8b-fp8"), "a Warning")


def test_a_stage_killed_for_memory_fails_at_once_and_says_oomkilled(
    kube: Kube, operator: Operator
) -> None:
    kube.claim("qeval-models")
    kube.apply(EXAMPLES / "llama-3.1-8b" / "quantizedmodels.yaml", {"llama-3.1-8b-w8a8-int8"})
    job = wait_for(lambda: kube.jobs().get("quantize-llama-3.1-8b-w8a8-int8"), "the quantize Job")
    # Play the kubelet: the kernel's OOM killer ends the container (exit 137, OOMKilled).
    play_pod(kube.cluster, scheduled_pod(kube.cluster, job), exit_code=137, reason="OOMKilled")
    st = wait_for(
        lambda: kube.phase_is("quantizedmodels", "llama-3.1-8b-w8a8-int8", "Failed"), "Failed"
    )
    ready = condition_of(st, "Ready")
    assert ready is not None and ready["reason"] == "OOMKilled"
    assert "limits.memory" in ready["message"]
    # The real Job controller applied the podFailurePolicy: no retry under the same limit.
    assert job_failure(kube, job)["reason"] == "PodFailurePolicy"
    assert len(job_pods(kube.cluster, job)) == 1


# --- EvalRun ---------------------------------------------------------------------------------


SCORES = {"fp32": 0.976, "fp8": 0.975, "int8": 0.972, "w4a16": 0.970, "w2a16-rtn": 0.90}


def test_the_demo_study_runs_to_the_end_across_an_operator_restart(
    kube: Kube, operator_env: dict[str, str]
) -> None:
    first = Operator(int(operator_env["QEVAL_METRICS_PORT"])).start()
    kube.apply(EXAMPLES / "evalrun.yaml")

    # Every QuantizedModel gets its Job; the run starts the demo model and waits for them.
    quantize = {m.LABEL_STAGE_KIND: "quantize"}
    wait_for(lambda: len(kube.jobs(**quantize)) == 4, "4 quantize Jobs")
    wait_for(lambda: "demo-model" in kube.jobs(), "the demo-model Job")
    st = wait_for(lambda: kube.phase_is("evalruns", "demo", "Running"), "Running")
    waiting = next(c for c in st["conditions"] if c["type"] == "WaitingForModels")
    assert waiting["status"] == "True"

    kube.complete("demo-model", {"path": "/mnt/volumes/qeval-data/cache/demo-model"})
    for stage, job in kube.jobs(**quantize).items():
        kube.complete(stage, quantize_result(job))
    evaluate = {m.LABEL_STAGE_KIND: "evaluate"}
    wait_for(lambda: len(kube.jobs(**evaluate)) == 5, "5 evaluate Jobs", timeout=60)

    # The operator goes away in the middle of the run; a new one picks up from the objects.
    first.stop_now()
    evaluations = {}
    for stage, job in list(kube.jobs(**evaluate).items())[:2]:
        evaluations[stage.removeprefix("evaluate-")] = evaluate_result(job, SCORES)
        kube.complete(stage, evaluations[stage.removeprefix("evaluate-")])
    second = Operator(free_port()).start()
    try:
        for stage, job in kube.jobs(**evaluate).items():
            name = stage.removeprefix("evaluate-")
            if name not in evaluations:
                evaluations[name] = evaluate_result(job, SCORES)
                kube.complete(stage, evaluations[name])
        job = wait_for(lambda: kube.jobs().get("aggregate"), "the aggregate Job")
        kube.complete("aggregate", aggregate_result(job, evaluations))
        st = wait_for(lambda: kube.phase_is("evalruns", "demo", "Succeeded"), "Succeeded")
        results = kube.cluster.list("v1/configmaps", kube.ns, {m.LABEL_RUN: "demo"})
        evaluated = [
            r for r in results if r["metadata"]["labels"][m.LABEL_STAGE_KIND] == "evaluate"
        ]
        assert len(evaluated) == 5
        # One Job per stage, whoever ran the operator: 4 quantize + demo + 5 evaluate + aggregate.
        assert len(kube.cluster.list("batch/v1/jobs", kube.ns)) == 11
        assert st["progress"] == "7/7"
        assert st["completedAt"] and st["startedAt"]
        recovery = {c["name"]: c["meanRecovery"] for c in st["candidates"]}
        assert recovery["w2a16-rtn"] == pytest.approx(0.90 / 0.976, abs=1e-3)
        assert st["meanRecovery"] == pytest.approx(0.90 / 0.976, abs=1e-3)
        succeeded = next(c for c in st["conditions"] if c["type"] == "Succeeded")
        assert (succeeded["status"], succeeded["reason"]) == ("True", "AllStagesSucceeded")

        text = wait_for(
            lambda: second.metrics_with("qeval_mean_recovery_ratio{"), "the recovery metrics"
        )
        ns = kube.ns
        assert (
            f'qeval_recovery_ratio{{filter="none",metric="acc",model="w4a16",namespace="{ns}",'
            'primary="true",run="demo",scheme="W4A16",task="qeval_demo_facts"}' in text
        )
        assert (
            f'qeval_score{{better="higher",filter="none",metric="acc",model="fp32",'
            f'namespace="{ns}",primary="true",run="demo",' in text
        )
        assert f'qeval_resources{{kind="EvalRun",namespace="{ns}",phase="Succeeded"}} 1.0' in text

        # Deleting the run: the real garbage collector removes its children (owner refs).
        from kubernetes import client

        client.CustomObjectsApi(kube.api).delete_namespaced_custom_object(
            GROUP, VERSION, kube.ns, "evalruns", "demo"
        )
        wait_for(lambda: not kube.jobs(**{m.LABEL_RUN: "demo"}), "the run's Jobs to go")
        wait_for(
            lambda: not kube.cluster.list("v1/configmaps", kube.ns, {m.LABEL_RUN: "demo"}),
            "the run's results to go",
        )
        wait_for(lambda: 'run="demo"' not in second.metrics(), "the run's metrics to go")
    finally:
        second.stop_now()


def test_a_failed_stage_fails_the_run_with_its_reason(kube: Kube, operator: Operator) -> None:
    kube.claim("qeval-models")
    kube.apply(EXAMPLES / "llama-3.1-8b" / "quantizedmodels.yaml", {"llama-3.1-8b-fp8"})
    run = {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "fp8-vs-bf16"},
        "spec": {
            "baseline": {"name": "bf16", "model": {"uri": "meta-llama/Llama-3.1-8B-Instruct"}},
            "candidates": [{"quantizedModel": "llama-3.1-8b-fp8", "name": "fp8"}],
            "tasks": [{"name": "gsm8k", "numFewshot": 5}],
        },
    }
    kube.create("evalruns", run)
    job = wait_for(lambda: kube.jobs().get("evaluate-bf16"), "the baseline's evaluate Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.local/qeval/evaluator:test"
    )
    finish_job(kube.cluster, job, ok=False)  # every pod exits 1, no result published
    kube.complete(
        "quantize-llama-3.1-8b-fp8",
        quantize_result(kube.jobs()["quantize-llama-3.1-8b-fp8"]),
        ok=False,
    )
    st = wait_for(
        lambda: kube.phase_is("quantizedmodels", "llama-3.1-8b-fp8", "Failed"), "the model to fail"
    )
    assert next(c for c in st["conditions"] if c["type"] == "Ready")["reason"] == "Crashed"
    # It recorded its failure: the real Job controller's podFailurePolicy failed the Job at
    # once, with no second pod on the GPUs (the crashed evaluation above was retried once).
    quantize = kube.jobs()["quantize-llama-3.1-8b-fp8"]
    assert len(job_pods(kube.cluster, quantize)) == 1
    assert job_failure(kube, quantize)["reason"] == "PodFailurePolicy"
    assert len(job_pods(kube.cluster, job)) == 2  # backoffLimit 1: one retry of a crash

    # The aggregate still runs, to report what happened.
    wait_for(lambda: kube.jobs().get("aggregate"), "the aggregate Job")
    kube.complete("aggregate", {"failures": []})
    st = wait_for(lambda: kube.phase_is("evalruns", "fp8-vs-bf16", "Failed"), "the run to fail")
    failures = {f["stage"]: f["reason"] for f in st["failures"]}
    assert failures["evaluate-bf16"] == "BackoffLimitExceeded"
    assert failures["quantize-llama-3.1-8b-fp8"] == "QuantizedModelFailed"
    assert failures["evaluate-fp8"] == "DependencyFailed"
    wait_for(lambda: ("Warning", "Failed") in kube.events_for("fp8-vs-bf16"), "a Warning")
    text = operator.metrics()
    assert (
        f'qeval_jobs_failed_total{{namespace="{kube.ns}",reason="BackoffLimitExceeded",'
        'stage_kind="evaluate"} 1.0' in text
    )


def test_a_spec_the_schema_refuses_never_reaches_the_operator(
    kube: Kube, operator: Operator
) -> None:
    run = {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "typo", "namespace": kube.ns},
        "spec": {
            "baseline": {"name": "base", "model": {"uri": "demo://tiny-llama"}},
            "candidates": [{"quantizedModel": "q", "name": "q"}],
            "tasks": [{"name": "qeval_demo_facts", "numFewShot": 5}],
        },
    }
    # kubectl apply validates strictly: the unknown field is refused, naming it.
    refused = kube.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(run), check=False)
    assert refused.returncode != 0
    assert 'unknown field "spec.tasks[0].numFewShot"' in refused.stderr
    # So is any client that asks for Strict. (One that leaves fieldValidation out gets the
    # server's Warn: the field is pruned with a warning and the typo lost; kubectl never.)
    from kubernetes import client

    with pytest.raises(client.ApiException) as e:
        kube.create("evalruns", run)  # Strict, as the tests' user asks for
    assert e.value.status == 400  # BadRequest: strict field validation
    assert 'unknown field \\"spec.tasks[0].numFewShot\\"' in str(e.value.body)
    assert kube.cluster.get(f"{GROUP}/{VERSION}/evalruns", kube.ns, "typo") is None
    assert not kube.jobs()


def test_an_invalid_spec_is_refused_by_the_operator_with_the_field_and_the_fix(
    kube: Kube, operator: Operator
) -> None:
    # Valid for the schema, but a model cannot be written to a hub: only the plan knows.
    qm = {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": "to-the-hub"},
        "spec": {
            "model": {"uri": "demo://tiny-llama"},
            "scheme": "W4A16",
            "output": {"uri": "hf://someone/tiny-w4a16"},
            "scheduling": {"gpus": 0},
        },
    }
    kube.create("quantizedmodels", qm)
    st = wait_for(lambda: kube.phase_is("quantizedmodels", "to-the-hub", "Failed"), "refused")
    accepted = next(c for c in st["conditions"] if c["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "InvalidSpec")
    assert "spec.output.uri" in accepted["message"]
    assert "pvc://<claim>/<path>" in accepted["message"]  # the fix
    assert not kube.jobs()
    wait_for(lambda: ("Warning", "InvalidSpec") in kube.events_for("to-the-hub"), "a Warning")


def test_changing_an_immutable_field_is_refused_at_admission_or_by_the_operator(
    kube: Kube, operator: Operator
) -> None:
    from kubernetes import client

    kube.apply(EXAMPLES / "evalrun.yaml")
    wait_for(lambda: "demo-model" in kube.jobs(), "the demo-model Job")
    wait_for(lambda: kube.phase_is("evalruns", "demo", "Running"), "Running")
    custom = client.CustomObjectsApi(kube.api)

    def patch(spec: dict[str, Any]) -> None:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, kube.ns, "evalruns", "demo", {"spec": spec}
        )

    # A field present before and after: the CRD's CEL rule refuses the change.
    with pytest.raises(client.ApiException) as e:
        patch({"seed": 7})
    assert e.value.status == 422
    assert "spec.seed is immutable" in str(e.value.body)
    # Setting an optional field that was unset is no transition CEL can see: the operator's
    # digest of the immutable fields catches it.
    patch({"modelArgs": {"dtype": "float32"}})
    st = wait_for(
        lambda: next(
            (
                c
                for c in kube.status("evalruns", "demo").get("conditions", [])
                if c["type"] == "Accepted" and c["status"] == "False"
            ),
            None,
        ),
        "the change to be refused",
    )
    assert st["reason"] == "SpecChanged"
    assert st["observedGeneration"] == 2
    before = set(kube.jobs())
    kube.complete("demo-model", {})
    # The run still reports progress, but starts nothing under the changed spec.
    wait_for(lambda: kube.status("evalruns", "demo").get("progress") == "1/7", "progress 1/7")
    assert set(kube.jobs()) == before


def test_kubectl_apply_get_explain_and_wait_with_the_operator_running(
    kube: Kube, operator: Operator
) -> None:
    kubectl = kube.cluster.kubectl
    ns = ["-n", kube.ns]
    applied = kubectl("apply", *ns, "-f", str(EXAMPLES)).stdout
    assert "evalrun.qeval.dev/demo created" in applied
    assert "quantizedmodel.qeval.dev/tiny-llama-w4a16 created" in applied

    kubectl("wait", *ns, "--for=jsonpath={.status.phase}=Running", "evalrun/demo", "--timeout=30s")
    kubectl("wait", *ns, "--for=condition=WaitingForModels", "er/demo", "--timeout=30s")
    kubectl(
        "wait", *ns, "--for=jsonpath={.status.phase}=Quantizing", "qm", "--all", "--timeout=30s"
    )
    # The real server's printer-column Table.
    table = kubectl("get", *ns, "evalruns").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "PHASE", "PROGRESS"]
    assert table[1].split()[:3] == ["demo", "Running", "0/7"]
    names = kubectl("get", *ns, "jobs", "-l", f"{m.LABEL_RUN}=demo", "-o", "name").stdout
    assert names.split() == [f"job.batch/{m.child_name('demo', 'demo-model')}"]
    explained = kubectl("explain", "evalrun.spec.tasks.numFewshot").stdout
    assert "few-shot" in explained.lower()


def study(name: str) -> dict[str, Any]:
    """The demo model against a hub model at a revision: both nameable, so reusable."""
    return {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": {
            "baseline": {"name": "fp32", "model": {"uri": "demo://tiny-llama"}},
            "candidates": [
                {
                    "name": "w4a16",
                    "model": {"uri": "RedHatAI/tiny-w4a16", "revision": "4f2a9c1"},
                    "scheme": "W4A16",
                }
            ],
            "tasks": [{"name": "qeval_demo_facts"}],
        },
    }


def finish_first_run(kube: Kube) -> dict[str, dict[str, Any]]:
    """Create ``study("first")`` and play its stages to Succeeded; its evaluations."""
    kube.create("evalruns", study("first"))
    evaluations = {}
    first = {m.LABEL_RUN: "first"}
    for stage in ("demo-model", "evaluate-fp32", "evaluate-w4a16"):
        job = wait_for(lambda s=stage: kube.jobs(**first).get(s), stage)
        result = evaluate_result(job, SCORES) if stage != "demo-model" else {}
        evaluations[stage.removeprefix("evaluate-")] = result
        kube.complete(stage, result, run="first")
    job = wait_for(lambda: kube.jobs(**first).get("aggregate"), "aggregate")
    kube.complete("aggregate", aggregate_result(job, evaluations), run="first")
    wait_for(lambda: kube.phase_is("evalruns", "first", "Succeeded"), "first done")
    return evaluations


def test_a_second_run_takes_the_evaluations_a_first_run_did(kube: Kube, operator: Operator) -> None:
    finish_first_run(kube)

    # The same study again: its evaluations are taken from the first run, not run again.
    kube.create("evalruns", study("second"))
    second = {m.LABEL_RUN: "second"}
    job = wait_for(lambda: kube.jobs(**second).get("aggregate"), "aggregate")
    assert set(kube.jobs(**second)) == {"aggregate"}
    source = f"/runs/{kube.ns}/first/stages/evaluate-fp32/result.json"
    assert stage_input(job)["baseline"]["evaluate"].endswith(source)
    # Listed as taken from another run (the operator's reuse), not as the result cache's.
    reused = ["fp32/qeval_demo_facts", "w4a16/qeval_demo_facts"]
    wait_for(lambda: kube.status("evalruns", "second").get("reused") == reused, "reused listed")
    assert kube.status("evalruns", "second").get("cached") in (None, [])


# --- model servers (backend vllm-server) ------------------------------------------------------

GPU_SCHEDULING = {
    "gpus": 1,
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


def served_run(name: str, ready_timeout: int = 900) -> dict[str, Any]:
    return {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": {
            "baseline": {"name": "bf16", "model": {"uri": "meta-llama/Llama-3.1-8B-Instruct"}},
            "candidates": [
                {
                    "name": "w4a16",
                    "scheme": "W4A16",
                    "model": {"uri": "RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w4a16"},
                }
            ],
            "tasks": [{"name": "gsm8k", "numFewshot": 5}],
            "backend": "vllm-server",
            "scheduling": GPU_SCHEDULING,
            "serving": {
                "maxModelLen": 4096,
                "numConcurrent": 16,
                "readyTimeoutSeconds": ready_timeout,
            },
            "performance": {
                "scenarios": [{"name": "synchronous", "kind": "synchronous", "requests": 8}]
            },
        },
    }


def server_pod(kube: Kube, deployment: dict[str, Any]) -> dict[str, Any]:
    """The server's pod, made by the real ReplicaSet controller and bound by the scheduler."""
    selector = deployment["spec"]["selector"]["matchLabels"]

    def bound() -> dict[str, Any] | None:
        pods = kube.cluster.list("v1/pods", kube.ns, selector)
        return next((p for p in pods if p["spec"].get("nodeName")), None)

    return wait_for(bound, f"a scheduled pod of {deployment['metadata']['name']}")


def benchmark_result(job: dict[str, Any]) -> dict[str, Any]:
    """What a benchmark stage reports (made up: the aggregate here reads evaluations only)."""
    inp = stage_input(job)
    p = {"p50": 0.02, "p90": 0.03, "p99": 0.04}
    point = {
        "model": inp["modelName"],
        "scenario": "synchronous",
        "backend": "vllm",
        "requests": 8,
        "latencySeconds": 1.2,
        "outputTokensPerSecond": 100.0,
        "requestsPerSecond": 0.8,
        "ttftSeconds": p,
        "e2eSeconds": p,
    }
    return {
        "modelName": inp["modelName"],
        "backend": "vllm",
        "points": [point],
        "requestsPath": f"{inp['outputDir']}/requests.jsonl",
    }


def test_a_vllm_server_per_model_serves_its_stages_and_goes_when_they_are_done(
    kube: Kube, operator: Operator
) -> None:
    kube.create("evalruns", served_run("served"))
    # One server (a Deployment and its Service) per model, before any client Job.
    deployments = wait_for(
        lambda: len(d := kube.servers("apps/v1/deployments", "served")) == 2 and d,
        "two server Deployments",
    )
    services = wait_for(
        lambda: len(s := kube.servers("v1/services", "served")) == 2 and s, "two Services"
    )
    assert set(deployments) == set(services) == {"serve-bf16", "serve-w4a16"}
    assert not kube.jobs(**{m.LABEL_RUN: "served"})
    pod = deployments["serve-bf16"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.local/qeval/evaluator:test"
    wait_for(lambda: ("Normal", "ServerCreated") in kube.events_for("served"), "an Event")

    # Its pod ready (the kubelet's part), the real controllers make the Deployment available,
    # and the server's own model's evaluation starts, pointed at its Service.
    bf16_pod = server_pod(kube, deployments["serve-bf16"])
    assert bf16_pod["spec"]["nodeName"] == "gpu-0"
    play_pod(kube.cluster, bf16_pod, exit_code=None, ready=True)
    job = wait_for(lambda: kube.jobs().get("evaluate-bf16"), "the baseline's evaluate Job")
    host = services["serve-bf16"]["metadata"]["name"]
    assert stage_input(job)["baseUrl"] == f"http://{host}.{kube.ns}.svc:8000"
    assert stage_input(job)["serving"]["numConcurrent"] == 16
    assert "evaluate-w4a16" not in kube.jobs()
    play_pod(kube.cluster, server_pod(kube, deployments["serve-w4a16"]), exit_code=None, ready=True)
    wait_for(lambda: kube.jobs().get("evaluate-w4a16"), "the candidate's evaluate Job")

    # The benchmark has its server to itself: it starts after that model's evaluation.
    evaluations = {}
    for name in ("bf16", "w4a16"):
        job = kube.jobs()[f"evaluate-{name}"]
        evaluations[name] = evaluate_result(job, {"bf16": 0.80, "w4a16": 0.79})
    kube.complete("evaluate-bf16", evaluations["bf16"])
    bench = wait_for(lambda: kube.jobs().get("benchmark-bf16"), "the baseline's benchmark")
    kube.complete("benchmark-bf16", benchmark_result(bench))

    # Its consumers done, the baseline's server is recorded, then removed; the other stays.
    wait_for(lambda: "serve-bf16" not in kube.servers("apps/v1/deployments", "served"), "gone")
    wait_for(lambda: "serve-bf16" not in kube.servers("v1/services", "served"), "its Service")
    assert "serve-w4a16" in kube.servers("apps/v1/deployments", "served")
    (record,) = kube.cluster.list("v1/configmaps", kube.ns, {m.LABEL_STAGE: "serve-bf16"})
    assert json.loads(record["data"]["result.json"])["status"] == "Succeeded"
    assert "served evaluate-bf16, benchmark-bf16" in record["data"]["result.json"]

    kube.complete("evaluate-w4a16", evaluations["w4a16"])
    bench = wait_for(lambda: kube.jobs().get("benchmark-w4a16"), "the candidate's benchmark")
    kube.complete("benchmark-w4a16", benchmark_result(bench))
    job = wait_for(lambda: kube.jobs().get("aggregate"), "the aggregate Job")
    kube.complete("aggregate", aggregate_result(job, evaluations))
    st = wait_for(lambda: kube.phase_is("evalruns", "served", "Succeeded"), "Succeeded")
    assert st["progress"] == "7/7"  # 2 servers, 2 evaluations, 2 benchmarks, the aggregate
    wait_for(lambda: not kube.servers("apps/v1/deployments", "served"), "no server left")
    wait_for(lambda: not kube.servers("v1/services", "served"), "no Service left")
    wait_for(lambda: ("Normal", "ServerStopped") in kube.events_for("served"), "an Event")


def test_a_server_that_never_becomes_ready_fails_the_run_with_the_reason(
    kube: Kube, operator: Operator
) -> None:
    kube.create("evalruns", served_run("stuck", ready_timeout=60))
    deployments = wait_for(
        lambda: len(d := kube.servers("apps/v1/deployments", "stuck")) == 2 and d,
        "two server Deployments",
    )
    # The baseline's server starts but never gets ready: its startup probe gives up 60 s
    # after the container started, the kubelet kills it and backs off restarting it.
    slow = server_pod(kube, deployments["serve-bf16"])
    killed = {
        "exitCode": 137,
        "reason": "Error",
        "startedAt": "2026-11-23T10:00:00Z",
        "finishedAt": "2026-11-23T10:01:00Z",
        "message": "Loading safetensors checkpoint shards: 40% Completed",
    }
    play_crash_loop(kube.cluster, slow, killed, restarts=1)
    # ... and the candidate's keeps exiting: only its pod shows why (the kubelet's part).
    crashing = server_pod(kube, deployments["serve-w4a16"])
    exited = {
        "exitCode": 1,
        "reason": "Error",
        "message": "torch.OutOfMemoryError: CUDA out of memory.",
    }
    play_crash_loop(kube.cluster, crashing, exited, restarts=3)
    # Nothing can be evaluated; the aggregate still runs to report it.
    wait_for(lambda: kube.jobs().get("aggregate"), "the aggregate Job", timeout=120)
    assert set(kube.jobs(**{m.LABEL_RUN: "stuck"})) == {"aggregate"}
    kube.complete("aggregate", {"failures": []})
    st = wait_for(lambda: kube.phase_is("evalruns", "stuck", "Failed"), "the run to fail")
    failures = {f["stage"]: f for f in st["failures"]}
    assert failures["serve-bf16"]["reason"] == "ServerNotReady"
    assert "not ready within 60 s of starting" in failures["serve-bf16"]["message"]
    assert "Loading safetensors" in failures["serve-bf16"]["message"]
    assert failures["serve-w4a16"]["reason"] == "CrashLoopBackOff"
    assert "CUDA out of memory" in failures["serve-w4a16"]["message"]
    assert failures["evaluate-bf16"]["reason"] == "DependencyFailed"
    # The failed servers are removed (their record stays), so they hold no GPU.
    wait_for(lambda: not kube.servers("apps/v1/deployments", "stuck"), "no server left")
    wait_for(lambda: ("Warning", "ServerNotReady") in kube.events_for("stuck"), "a Warning")
    text = operator.metrics()
    assert 'reason="CrashLoopBackOff",stage_kind="serve"' in text


# --- a finished result never changes; the API server's refusals are visible ---------------


def reported(kube: Kube, operator: Operator) -> bool:
    """Whether ``operator`` has reconciled a finished run of the namespace (its gauge is set)."""
    lines = operator.metrics().splitlines()
    return any(
        x.startswith("qeval_mean_recovery_ratio{") and f'namespace="{kube.ns}"' in x for x in lines
    )


def restart(first: Operator) -> Operator:
    """A new operator in place of ``first``: it rebuilds everything from the API server."""
    first.stop_now()
    return Operator(free_port()).start()


def finish_demo_study(kube: Kube) -> dict[str, Any]:
    """Apply examples/evalrun.yaml and play every stage to the end; the run's status."""
    kube.apply(EXAMPLES / "evalrun.yaml")
    wait_for(lambda: len(kube.jobs(**{m.LABEL_STAGE_KIND: "quantize"})) == 4, "4 quantize Jobs")
    kube.complete("demo-model", {"path": "/mnt/volumes/qeval-data/cache/demo-model"}, run="demo")
    for stage, job in kube.jobs(**{m.LABEL_STAGE_KIND: "quantize"}).items():
        kube.complete(stage, quantize_result(job))
    evaluate = {m.LABEL_STAGE_KIND: "evaluate"}
    wait_for(lambda: len(kube.jobs(**evaluate)) == 5, "5 evaluate Jobs", timeout=60)
    evaluations = {}
    for stage, job in kube.jobs(**evaluate).items():
        evaluations[stage.removeprefix("evaluate-")] = evaluate_result(job, SCORES)
        kube.complete(stage, evaluations[stage.removeprefix("evaluate-")])
    job = wait_for(lambda: kube.jobs().get("aggregate"), "the aggregate Job")
    kube.complete("aggregate", aggregate_result(job, evaluations))
    return wait_for(lambda: kube.phase_is("evalruns", "demo", "Succeeded"), "Succeeded")


def test_deleting_a_quantized_model_leaves_the_finished_run_as_it_was(
    kube: Kube, operator: Operator
) -> None:
    """It used to go back to WaitingForModels, its scores and verdicts nulled by the patch."""
    done = finish_demo_study(kube)
    assert done["candidates"] and done["meanRecovery"]
    from kubernetes import client

    custom = client.CustomObjectsApi(kube.api)
    custom.delete_namespaced_custom_object(
        GROUP, VERSION, kube.ns, "quantizedmodels", "tiny-llama-w4a16"
    )
    wait_for(
        lambda: (
            not kube.cluster.get(f"{GROUP}/{VERSION}/quantizedmodels", kube.ns, "tiny-llama-w4a16")
        ),
        "the QuantizedModel to go",
    )
    # Also its Jobs are gone (a TTL controller, a person): nothing is created again.
    for job in kube.cluster.list("batch/v1/jobs", kube.ns, {m.LABEL_RUN: "demo"}):
        kube.cluster.request(
            "DELETE",
            f"/apis/batch/v1/namespaces/{kube.ns}/jobs/{job['metadata']['name']}",
        )
    second = restart(operator)
    try:
        # The new operator has listed everything and reconciled the run (its gauge is set).
        wait_for(lambda: reported(kube, second), "the new operator's view of the run")
        assert kube.status("evalruns", "demo") == done
        assert not kube.cluster.list("batch/v1/jobs", kube.ns, {m.LABEL_RUN: "demo"})
    finally:
        second.stop_now()


def test_a_run_keeps_what_it_reused_when_the_run_it_came_from_is_deleted(
    kube: Kube, operator: Operator
) -> None:
    """It used to go from Succeeded 3/3 to Failed 1/3: the reused results went with the
    other run (owner references). The run now keeps its own copy of each."""
    first = {m.LABEL_RUN: "first"}
    evaluations = finish_first_run(kube)

    kube.create("evalruns", study("second"))
    second = {m.LABEL_RUN: "second"}
    job = wait_for(lambda: kube.jobs(**second).get("aggregate"), "aggregate")
    assert set(kube.jobs(**second)) == {"aggregate"}
    copies = kube.cluster.list("v1/configmaps", kube.ns, second)
    paths = {c["metadata"]["annotations"][m.ANNOTATION_RESULT_PATH] for c in copies}
    assert {p.split("/")[-2] for p in paths} == {"evaluate-fp32", "evaluate-w4a16"}
    assert all(f"/runs/{kube.ns}/first/stages/" in p for p in paths)
    kube.complete("aggregate", aggregate_result(job, evaluations), run="second")
    done = wait_for(lambda: kube.phase_is("evalruns", "second", "Succeeded"), "second done")
    # The demo model was not built (nothing needed it): done, not started, as its servers.
    assert done["progress"] == "4/4"

    from kubernetes import client

    client.CustomObjectsApi(kube.api).delete_namespaced_custom_object(
        GROUP, VERSION, kube.ns, "evalruns", "first"
    )
    gone = lambda: not kube.cluster.list("v1/configmaps", kube.ns, first)  # noqa: E731
    wait_for(gone, "the garbage collector to remove first's results", timeout=90)
    new = restart(operator)
    try:
        wait_for(lambda: reported(kube, new), "the new operator's view of the run")
        assert kube.status("evalruns", "second") == done
        assert len(kube.cluster.list("v1/configmaps", kube.ns, second)) == 3  # 2 copies + own
    finally:
        new.stop_now()


def test_a_stage_retried_after_publishing_keeps_its_first_result(
    kube: Kube, operator: Operator
) -> None:
    """A retry that succeeds must not replace a failure the run may already have reported:
    the first document published for a stage is its outcome (immutable, create-only)."""
    kube.apply(EXAMPLES / "evalrun.yaml", {"tiny-llama-w4a16"})
    stage = "quantize-tiny-llama-w4a16"
    job = wait_for(lambda: kube.jobs().get(stage), "the quantize Job")
    publish_result(job, None, ok=False, kubeconfig=kube.identities.stage)
    publish_result(job, quantize_result(job), ok=True, kubeconfig=kube.identities.stage)
    name = stage_env(job)["QEVAL_RESULT_CONFIGMAP"]
    cm = kube.cluster.get("v1/configmaps", kube.ns, name)
    assert cm is not None and cm["immutable"] is True
    doc = StageResult.model_validate_json(cm["data"][m.RESULT_KEY])
    assert (doc.status, doc.reason) == (StageStatus.FAILED, "Crashed")
    st = wait_for(lambda: kube.phase_is("quantizedmodels", "tiny-llama-w4a16", "Failed"), "Failed")
    assert condition_of(st, "Ready")["reason"] == "Crashed"  # type: ignore[index]
    # Not even the cluster's admin changes a published result in place.
    patch = json.dumps({"data": {m.RESULT_KEY: "{}"}})
    done = kube.cluster.kubectl(
        "patch", "configmap", name, "-n", kube.ns, "--type=merge", "-p", patch, check=False
    )
    assert done.returncode != 0 and "immutable" in done.stderr


def deny_jobs(kube: Kube, message: str) -> None:
    """A ValidatingAdmissionPolicy refusing every Job of the test's namespace: what a
    cluster's own policy (Kyverno, Gatekeeper, a VAP) answers, 422 Invalid."""
    name = f"deny-jobs-{kube.ns}"[:63]
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["batch"],
                        "apiVersions": ["v1"],
                        "resources": ["jobs"],
                        "operations": ["CREATE"],
                    }
                ]
            },
            "validations": [{"expression": "false", "message": message}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": kube.ns}}
            },
        },
    }
    kube.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([policy, binding]))

    def enforced() -> bool:  # a policy takes a moment to be loaded by the API server
        probe = ("create", "job", "probe", "--image=busybox", "--dry-run=server", "-n", kube.ns)
        done = kube.cluster.kubectl(*probe, check=False)
        return done.returncode != 0 and message in done.stderr

    wait_for(enforced, "the policy to be enforced", timeout=60)


def test_a_job_the_api_server_refuses_fails_the_stage_with_its_answer(
    kube: Kube, operator: Operator
) -> None:
    """It used to be an exception inside asyncio.gather, retried every resync forever."""
    message = "Jobs need the label team=ml (cluster policy)"
    deny_jobs(kube, message)
    try:
        kube.apply(EXAMPLES / "evalrun.yaml", {"tiny-llama-w4a16"})
        st = wait_for(
            lambda: kube.phase_is("quantizedmodels", "tiny-llama-w4a16", "Failed"), "Failed"
        )
        ready = condition_of(st, "Ready")
        assert ready is not None and ready["reason"] == "CreateInvalid"
        assert message in ready["message"] and "creating Job" in ready["message"]
        assert ("Warning", "CreateInvalid") in kube.events_for("tiny-llama-w4a16")
        assert not kube.jobs()
    finally:
        name = f"deny-jobs-{kube.ns}"[:63]
        kinds = "validatingadmissionpolicybinding,validatingadmissionpolicy"
        kube.cluster.kubectl("delete", kinds, name)


def test_a_job_over_the_quota_stalls_the_stage_until_the_quota_allows_it(
    kube: Kube, operator: Operator
) -> None:
    """403 Forbidden (exceeded quota) may pass later: the stage waits, Stalled says why,
    the create is retried with a backoff, and goes through once the quota is raised."""
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "jobs", "namespace": kube.ns},
        "spec": {"hard": {"count/jobs.batch": "0"}},
    }
    kube.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(quota))
    wait_for(
        lambda: (
            (kube.cluster.get("v1/resourcequotas", kube.ns, "jobs") or {})
            .get("status", {})
            .get("hard")
        ),
        "the quota to be in force",
    )
    kube.apply(EXAMPLES / "evalrun.yaml", {"tiny-llama-w4a16"})
    st = wait_for(
        lambda: kube.stalled("quantizedmodels", "tiny-llama-w4a16", "exceeded quota"),
        "Stalled: exceeded quota",
    )
    assert st["reason"] == "CreateForbidden"
    assert kube.phase_is("quantizedmodels", "tiny-llama-w4a16", "Quantizing")
    wait_for(
        lambda: ("Warning", "CreateForbidden") in kube.events_for("tiny-llama-w4a16"), "a Warning"
    )
    quota["spec"]["hard"]["count/jobs.batch"] = "5"
    kube.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(quota))
    wait_for(lambda: kube.jobs().get("quantize-tiny-llama-w4a16"), "the Job", timeout=60)
    c = wait_for(
        lambda: (
            (c := condition_of(kube.status("quantizedmodels", "tiny-llama-w4a16"), "Stalled"))
            and c["status"] == "False"
            and c
        ),
        "Stalled to clear",
    )
    assert c["reason"] == "PodsRunning"


def test_a_quantized_model_with_a_61_character_name_runs(kube: Kube, operator: Operator) -> None:
    """Its stage is named quantize-<61 characters>: a 70-character label value, which the
    API server refused (422) before label values were bounded like names."""
    doc = next(
        d
        for d in yaml.safe_load_all((EXAMPLES / "evalrun.yaml").read_text())
        if d["metadata"]["name"] == "tiny-llama-w4a16"
    )
    name = "tiny-llama-w4a16-" + "x" * 44
    assert len(name) == 61
    doc["metadata"]["name"] = name
    kube.create("quantizedmodels", doc)
    job = wait_for(lambda: kube.jobs().get(f"quantize-{name}"), "the quantize Job")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert max(len(v) for v in labels.values()) <= 63
    kube.complete(f"quantize-{name}", quantize_result(job))
    wait_for(lambda: kube.phase_is("quantizedmodels", name, "Ready"), "Ready")
