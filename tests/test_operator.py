"""The operator for real (kopf, the kubernetes client) against the emulated API server.

There is no Job controller and there are no nodes: the test plays them. It sets a Job's
status to succeeded or failed, creates a pod stuck on an image pull, and publishes the
result ConfigMaps a stage pod would (with ``qeval.k8s.publish``, from the Job's own
environment). Waits are bounded and wait on conditions only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from qeval.k8s import manifests as m
from tests.conftest import EXAMPLES
from tests.kube.emulator import Cluster
from tests.kube.play import (
    aggregate_result,
    evaluate_result,
    finish_job,
    free_port,
    publish_result,
    quantize_result,
    stage_input,
    wait_for,
)
from tests.kube.running import Operator

NS = "default"


@pytest.fixture
def operator_env(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "KUBECONFIG": str(cluster.kubeconfig),
        "QEVAL_NAMESPACES": NS,
        "QEVAL_RESYNC_SECONDS": "2",
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
def api(cluster: Cluster) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


# --- the test plays users, the Job controller and stage pods -------------------------------


def apply(api: Any, path: Path, names: set[str] | None = None) -> None:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    for doc in yaml.safe_load_all(path.read_text()):
        if names is not None and doc["metadata"]["name"] not in names:
            continue
        plural = {"EvalRun": "evalruns", "QuantizedModel": "quantizedmodels"}[doc["kind"]]
        custom.create_namespaced_custom_object(m.GROUP, m.VERSION, NS, plural, doc)


def get(api: Any, plural: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    obj = client.CustomObjectsApi(api).get_namespaced_custom_object(
        m.GROUP, m.VERSION, NS, plural, name
    )
    return dict(obj)


def status(api: Any, plural: str, name: str) -> dict[str, Any]:
    return get(api, plural, name).get("status") or {}


def jobs(cluster: Cluster, **labels: str) -> dict[str, dict[str, Any]]:
    """Jobs by stage name."""
    found = cluster.list("batch/v1/jobs", namespace=NS, labels=labels or None)
    return {j["metadata"]["labels"][m.LABEL_STAGE]: j for j in found}


def events_for(cluster: Cluster, name: str) -> list[tuple[str, str]]:
    found = cluster.list("v1/events", namespace=NS)
    return [
        (e.get("type", ""), e.get("reason", ""))
        for e in found
        if e.get("involvedObject", {}).get("name") == name
    ]


# --- QuantizedModel ---------------------------------------------------------------------------


def test_a_quantized_model_runs_as_one_gpu_job_and_becomes_ready(
    cluster: Cluster, api: Any, operator: Operator
) -> None:
    apply(api, EXAMPLES / "llama-3.1-8b" / "quantizedmodels.yaml", {"llama-3.1-8b-w4a16"})
    qm = get(api, "quantizedmodels", "llama-3.1-8b-w4a16")
    job = wait_for(lambda: jobs(cluster).get("quantize-llama-3.1-8b-w4a16"), "the quantize Job")

    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:4] == ["qeval", "quantize", "--input", "env:QEVAL_STAGE_INPUT"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert job["metadata"]["ownerReferences"][0]["uid"] == qm["metadata"]["uid"]
    assert len(job["metadata"]["name"]) <= 63

    st = wait_for(
        lambda: (
            (s := status(api, "quantizedmodels", qm["metadata"]["name"])).get("phase")
            == "Quantizing"
            and s
        ),
        "phase Quantizing",
    )
    assert {c["type"] for c in st["conditions"]} == {"Accepted", "Quantizing", "Ready"}
    assert st["observedGeneration"] == 1

    publish_result(job, quantize_result(job))
    finish_job(api, job)
    st = wait_for(
        lambda: (
            (s := status(api, "quantizedmodels", "llama-3.1-8b-w4a16")).get("phase") == "Ready"
            and s
        ),
        "phase Ready",
    )
    assert st["compressionRatio"] == 4.0
    assert st["output"] == "/mnt/volumes/qeval-models/llama-3.1-8b-w4a16"
    assert st["wallSeconds"] == 300.0
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Quantized")

    reasons = wait_for(
        lambda: (r := {x[1] for x in events_for(cluster, "llama-3.1-8b-w4a16")}) >= {"Ready"} and r,
        "events",
    )
    assert {"JobCreated", "Quantizing", "Ready"} <= reasons
    text = wait_for(
        lambda: operator.metrics_with("qeval_compression_ratio{"),
        "the compression ratio metric",
    )
    assert (
        'qeval_compression_ratio{namespace="default",quantizedmodel="llama-3.1-8b-w4a16",'
        'scheme="W4A16"} 4.0' in text
    )
    assert 'qeval_jobs_created_total{namespace="default",stage_kind="quantize"} 1.0' in text
    assert 'qeval_resources{kind="QuantizedModel",namespace="default",phase="Ready"} 1.0' in text
    assert len(jobs(cluster)) == 1  # never a second Job


def test_an_image_that_cannot_be_pulled_fails_the_model(
    cluster: Cluster, api: Any, operator: Operator
) -> None:
    from kubernetes import client

    apply(api, EXAMPLES / "llama-3.1-8b" / "quantizedmodels.yaml", {"llama-3.1-8b-fp8"})
    job = wait_for(lambda: jobs(cluster).get("quantize-llama-3.1-8b-fp8"), "the quantize Job")
    # Play the Job controller and the kubelet: an active Job whose pod cannot pull its image.
    client.BatchV1Api(api).patch_namespaced_job_status(
        job["metadata"]["name"], NS, {"status": {"active": 1, "ready": 0}}
    )
    template = job["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job['metadata']['name']}-x7k2p",
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    }
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(NS, pod)
    waiting = {
        "reason": "ImagePullBackOff",
        "message": 'Back-off pulling image "ghcr.io/qeval/quantizer:0.1.0"',
    }
    core.patch_namespaced_pod_status(
        pod["metadata"]["name"],
        NS,
        {
            "status": {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "quantize",
                        "state": {"waiting": waiting},
                        "ready": False,
                        "restartCount": 0,
                        "image": "x",
                        "imageID": "",
                    }
                ],
            }
        },
    )
    st = wait_for(
        lambda: (
            (s := status(api, "quantizedmodels", "llama-3.1-8b-fp8")).get("phase") == "Failed" and s
        ),
        "phase Failed",
    )
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ImagePullBackOff"
    assert "Back-off pulling image" in ready["message"]
    wait_for(lambda: ("Warning", "Failed") in events_for(cluster, "llama-3.1-8b-fp8"), "a Warning")


# --- EvalRun ---------------------------------------------------------------------------------


SCORES = {"fp32": 0.976, "fp8": 0.975, "int8": 0.972, "w4a16": 0.970, "w2a16-rtn": 0.90}


def complete(
    api: Any,
    cluster: Cluster,
    stage: str,
    result: dict[str, Any],
    ok: bool = True,
    run: str | None = None,
) -> None:
    job = jobs(cluster, **({m.LABEL_RUN: run} if run else {}))[stage]
    publish_result(job, result, ok)
    finish_job(api, job, ok)


def test_the_demo_study_runs_to_the_end_across_an_operator_restart(
    cluster: Cluster, api: Any, operator_env: dict[str, str]
) -> None:
    first = Operator(int(operator_env["QEVAL_METRICS_PORT"])).start()
    apply(api, EXAMPLES / "evalrun.yaml")

    # Every QuantizedModel gets its Job; the run starts the demo model and waits for them.
    wait_for(lambda: len(jobs(cluster, **{m.LABEL_STAGE_KIND: "quantize"})) == 4, "4 quantize Jobs")
    wait_for(lambda: "demo-model" in jobs(cluster), "the demo-model Job")
    st = wait_for(
        lambda: (s := status(api, "evalruns", "demo")).get("phase") == "Running" and s, "Running"
    )
    waiting = next(c for c in st["conditions"] if c["type"] == "WaitingForModels")
    assert waiting["status"] == "True"

    complete(api, cluster, "demo-model", {"path": "/mnt/volumes/qeval-data/cache/demo-model"})
    for stage, job in jobs(cluster, **{m.LABEL_STAGE_KIND: "quantize"}).items():
        complete(api, cluster, stage, quantize_result(job))
    wait_for(lambda: len(jobs(cluster, **{m.LABEL_STAGE_KIND: "evaluate"})) == 5, "5 evaluate Jobs")

    # The operator goes away in the middle of the run; a new one picks up from the objects.
    first.stop_now()
    evaluations = {}
    for stage, job in list(jobs(cluster, **{m.LABEL_STAGE_KIND: "evaluate"}).items())[:2]:
        evaluations[stage.removeprefix("evaluate-")] = evaluate_result(job, SCORES)
        complete(api, cluster, stage, evaluations[stage.removeprefix("evaluate-")])
    second = Operator(free_port()).start()
    try:
        for stage, job in jobs(cluster, **{m.LABEL_STAGE_KIND: "evaluate"}).items():
            name = stage.removeprefix("evaluate-")
            if name not in evaluations:
                evaluations[name] = evaluate_result(job, SCORES)
                complete(api, cluster, stage, evaluations[name])
        job = wait_for(lambda: jobs(cluster).get("aggregate"), "the aggregate Job")
        complete(api, cluster, "aggregate", aggregate_result(job, evaluations))
        st = wait_for(
            lambda: (s := status(api, "evalruns", "demo")).get("phase") == "Succeeded" and s,
            "Succeeded",
        )
        # Results are labelled for lookup by content (the cache key over their tasks).
        results = cluster.list("v1/configmaps", namespace=NS, labels={m.LABEL_RUN: "demo"})
        evaluated = [
            r for r in results if r["metadata"]["labels"][m.LABEL_STAGE_KIND] == "evaluate"
        ]
        assert len(evaluated) == 5
        assert all(m.LABEL_CACHE_KEY in r["metadata"]["labels"] for r in evaluated)
        # One Job per stage, whoever ran the operator: 4 quantize + demo + 5 evaluate + aggregate.
        assert len(cluster.list("batch/v1/jobs", namespace=NS)) == 11
        assert st["progress"] == "7/7"
        assert st["completedAt"] and st["startedAt"]
        recovery = {c["name"]: c["meanRecovery"] for c in st["candidates"]}
        assert recovery["w2a16-rtn"] == pytest.approx(0.90 / 0.976, abs=1e-3)
        assert st["meanRecovery"] == pytest.approx(0.90 / 0.976, abs=1e-3)
        succeeded = next(c for c in st["conditions"] if c["type"] == "Succeeded")
        assert (succeeded["status"], succeeded["reason"]) == ("True", "AllStagesSucceeded")

        text = wait_for(
            lambda: second.metrics_with("qeval_mean_recovery_ratio{"),
            "the recovery metrics",
        )
        assert (
            'qeval_recovery_ratio{metric="acc",model="w4a16",namespace="default",run="demo",'
            'scheme="W4A16",task="qeval_demo_facts"}' in text
        )
        assert 'qeval_score{metric="acc",model="fp32",namespace="default",run="demo",' in text
        assert 'qeval_resources{kind="EvalRun",namespace="default",phase="Succeeded"} 1.0' in text

        # Deleting the run removes its children (owner references) and its metrics.
        from kubernetes import client

        client.CustomObjectsApi(api).delete_namespaced_custom_object(
            m.GROUP, m.VERSION, NS, "evalruns", "demo"
        )
        wait_for(lambda: not jobs(cluster, **{m.LABEL_RUN: "demo"}), "the run's Jobs to go")
        wait_for(
            lambda: not cluster.list("v1/configmaps", namespace=NS, labels={m.LABEL_RUN: "demo"}),
            "the run's results to go",
        )
        wait_for(lambda: 'run="demo"' not in second.metrics(), "the run's metrics to go")
    finally:
        second.stop_now()


def test_a_failed_stage_fails_the_run_with_its_reason(
    cluster: Cluster, api: Any, operator: Operator
) -> None:
    apply(api, EXAMPLES / "llama-3.1-8b" / "quantizedmodels.yaml", {"llama-3.1-8b-fp8"})
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
    from kubernetes import client

    client.CustomObjectsApi(api).create_namespaced_custom_object(
        m.GROUP, m.VERSION, NS, "evalruns", run
    )
    job = wait_for(lambda: jobs(cluster).get("evaluate-bf16"), "the baseline's evaluate Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.local/qeval/evaluator:test"
    )
    finish_job(api, job, ok=False)  # backoff exhausted, no result published
    qjob = jobs(cluster)["quantize-llama-3.1-8b-fp8"]
    complete(api, cluster, "quantize-llama-3.1-8b-fp8", quantize_result(qjob), ok=False)
    st = wait_for(
        lambda: (
            (s := status(api, "quantizedmodels", "llama-3.1-8b-fp8")).get("phase") == "Failed" and s
        ),
        "the model to fail",
    )
    assert next(c for c in st["conditions"] if c["type"] == "Ready")["reason"] == "Crashed"

    # The aggregate still runs, to report what happened.
    agg = wait_for(lambda: jobs(cluster).get("aggregate"), "the aggregate Job")
    complete(api, cluster, "aggregate", {"failures": []})
    st = wait_for(
        lambda: (s := status(api, "evalruns", "fp8-vs-bf16")).get("phase") == "Failed" and s,
        "the run to fail",
    )
    assert agg
    failures = {f["stage"]: f["reason"] for f in st["failures"]}
    assert failures["evaluate-bf16"] == "BackoffLimitExceeded"
    assert failures["quantize-llama-3.1-8b-fp8"] == "QuantizedModelFailed"
    assert failures["evaluate-fp8"] == "DependencyFailed"
    wait_for(lambda: ("Warning", "Failed") in events_for(cluster, "fp8-vs-bf16"), "a Warning")
    text = operator.metrics()
    assert (
        'qeval_jobs_failed_total{namespace="default",reason="BackoffLimitExceeded",'
        'stage_kind="evaluate"} 1.0' in text
    )


def test_an_invalid_spec_is_refused_with_the_field_and_the_fix(
    cluster: Cluster, api: Any, operator: Operator
) -> None:
    from kubernetes import client

    # The emulator validates nothing (a real API server's schema would refuse this one).
    run = {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "typo"},
        "spec": {
            "baseline": {"name": "base", "model": {"uri": "demo://tiny-llama"}},
            "candidates": [{"quantizedModel": "q", "name": "q"}],
            "tasks": [{"name": "qeval_demo_facts", "numFewShot": 5}],
        },
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        m.GROUP, m.VERSION, NS, "evalruns", run
    )
    st = wait_for(
        lambda: (s := status(api, "evalruns", "typo")).get("phase") == "Failed" and s,
        "the run to be refused",
    )
    accepted = next(c for c in st["conditions"] if c["type"] == "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "InvalidSpec")
    assert "spec.tasks[0].numFewShot" in accepted["message"]
    assert "numFewshot" in accepted["message"]  # the did-you-mean fix
    assert not jobs(cluster)
    wait_for(lambda: ("Warning", "InvalidSpec") in events_for(cluster, "typo"), "a Warning")


def test_changing_an_immutable_field_of_a_started_run_is_refused(
    cluster: Cluster, api: Any, operator: Operator
) -> None:
    from kubernetes import client

    apply(api, EXAMPLES / "evalrun.yaml")
    wait_for(lambda: "demo-model" in jobs(cluster), "the demo-model Job")
    wait_for(lambda: status(api, "evalruns", "demo").get("phase") == "Running", "Running")
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        m.GROUP, m.VERSION, NS, "evalruns", "demo", {"spec": {"seed": 7}}
    )
    st = wait_for(
        lambda: next(
            (
                c
                for c in status(api, "evalruns", "demo").get("conditions", [])
                if c["type"] == "Accepted" and c["status"] == "False"
            ),
            None,
        ),
        "the change to be refused",
    )
    assert st["reason"] == "SpecChanged"
    assert st["observedGeneration"] == 2
    before = set(jobs(cluster))
    complete(api, cluster, "demo-model", {})
    # The run still reports progress, but starts nothing under the changed spec.
    wait_for(lambda: status(api, "evalruns", "demo").get("progress") == "1/7", "progress 1/7")
    assert set(jobs(cluster)) == before


def test_kubectl_apply_get_and_wait_with_the_operator_running(
    cluster: Cluster, operator: Operator
) -> None:
    applied = cluster.kubectl("apply", "-f", str(EXAMPLES)).stdout
    assert "evalrun.qeval.dev/demo created" in applied
    assert "quantizedmodel.qeval.dev/tiny-llama-w4a16 created" in applied

    cluster.kubectl(
        "wait", "--for=jsonpath={.status.phase}=Running", "evalrun/demo", "--timeout=20s"
    )
    cluster.kubectl("wait", "--for=condition=WaitingForModels", "er/demo", "--timeout=20s")
    cluster.kubectl(
        "wait", "--for=jsonpath={.status.phase}=Quantizing", "qm", "--all", "--timeout=20s"
    )
    table = cluster.kubectl("get", "evalruns").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "PHASE", "PROGRESS"]
    assert table[1].split()[:3] == ["demo", "Running", "0/7"]
    names = cluster.kubectl("get", "jobs", "-l", f"{m.LABEL_RUN}=demo", "-o", "name").stdout
    assert names.split() == [f"job.batch/{m.child_name('demo', 'demo-model')}"]


def test_a_second_run_takes_the_evaluations_a_first_run_did(
    cluster: Cluster, api: Any, operator: Operator
) -> None:
    from kubernetes import client

    def study(name: str) -> dict[str, Any]:
        return {
            "apiVersion": "qeval.dev/v1alpha1",
            "kind": "EvalRun",
            "metadata": {"name": name},
            "spec": {
                "baseline": {"name": "bf16", "model": {"uri": "demo://tiny-llama"}},
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

    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(m.GROUP, m.VERSION, NS, "evalruns", study("first"))
    scores = {"bf16": 0.976, "w4a16": 0.970}
    evaluations = {}
    for stage in ("demo-model", "evaluate-bf16", "evaluate-w4a16"):
        job = wait_for(lambda s=stage: jobs(cluster, **{m.LABEL_RUN: "first"}).get(s), stage)
        result = evaluate_result(job, scores) if stage != "demo-model" else {}
        evaluations[stage.removeprefix("evaluate-")] = result
        complete(api, cluster, stage, result, run="first")
    job = wait_for(lambda: jobs(cluster, **{m.LABEL_RUN: "first"}).get("aggregate"), "aggregate")
    complete(api, cluster, "aggregate", aggregate_result(job, evaluations), run="first")
    wait_for(lambda: status(api, "evalruns", "first").get("phase") == "Succeeded", "first done")

    # The same study again: its evaluations are taken from the first run, not run again.
    custom.create_namespaced_custom_object(m.GROUP, m.VERSION, NS, "evalruns", study("second"))
    job = wait_for(lambda: jobs(cluster, **{m.LABEL_RUN: "second"}).get("aggregate"), "aggregate")
    assert set(jobs(cluster, **{m.LABEL_RUN: "second"})) == {"aggregate"}
    source = "/runs/default/first/stages/evaluate-bf16/result.json"
    assert stage_input(job)["baseline"]["evaluate"].endswith(source)
    cached = ["bf16/qeval_demo_facts", "w4a16/qeval_demo_facts"]
    wait_for(lambda: status(api, "evalruns", "second").get("cached") == cached, "cached listed")


# --- model servers (backend vllm-server) ------------------------------------------------------


def served_run(name: str) -> dict[str, Any]:
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
            "serving": {"maxModelLen": 4096, "numConcurrent": 16, "readyTimeoutSeconds": 900},
            "performance": {
                "scenarios": [{"name": "synchronous", "kind": "synchronous", "requests": 8}]
            },
        },
    }


def servers(cluster: Cluster, kind: str, run: str) -> dict[str, dict[str, Any]]:
    """A run's Deployments (kind apps/v1/deployments) or Services (v1/services) by stage."""
    found = cluster.list(kind, namespace=NS, labels={m.LABEL_RUN: run})
    return {o["metadata"]["labels"][m.LABEL_STAGE]: o for o in found}


def play_server(api: Any, deployment: dict[str, Any], status: dict[str, Any]) -> None:
    """Play the Deployment controller: set the Deployment's status."""
    from kubernetes import client

    meta = deployment["metadata"]
    client.AppsV1Api(api).patch_namespaced_deployment_status(meta["name"], NS, {"status": status})


AVAILABLE = {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}


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
    cluster: Cluster, api: Any, operator: Operator
) -> None:
    from kubernetes import client

    client.CustomObjectsApi(api).create_namespaced_custom_object(
        m.GROUP, m.VERSION, NS, "evalruns", served_run("served")
    )
    # One server (a Deployment and its Service) per model, before any client Job.
    deployments = wait_for(
        lambda: len(d := servers(cluster, "apps/v1/deployments", "served")) == 2 and d,
        "two server Deployments",
    )
    services = wait_for(
        lambda: len(s := servers(cluster, "v1/services", "served")) == 2 and s, "two Services"
    )
    assert set(deployments) == set(services) == {"serve-bf16", "serve-w4a16"}
    assert not jobs(cluster, **{m.LABEL_RUN: "served"})
    pod = deployments["serve-bf16"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.local/qeval/evaluator:test"
    wait_for(lambda: ("Normal", "ServerCreated") in events_for(cluster, "served"), "an Event")

    # A ready server lets its own model's evaluation start, pointed at its Service.
    play_server(api, deployments["serve-bf16"], AVAILABLE)
    job = wait_for(lambda: jobs(cluster).get("evaluate-bf16"), "the baseline's evaluate Job")
    host = services["serve-bf16"]["metadata"]["name"]
    assert stage_input(job)["baseUrl"] == f"http://{host}.{NS}.svc:8000"
    assert stage_input(job)["serving"]["numConcurrent"] == 16
    assert "evaluate-w4a16" not in jobs(cluster)
    play_server(api, deployments["serve-w4a16"], AVAILABLE)
    wait_for(lambda: jobs(cluster).get("evaluate-w4a16"), "the candidate's evaluate Job")

    # The benchmark has its server to itself: it starts after that model's evaluation.
    evaluations = {}
    for name in ("bf16", "w4a16"):
        job = jobs(cluster)[f"evaluate-{name}"]
        evaluations[name] = evaluate_result(job, {"bf16": 0.80, "w4a16": 0.79})
    complete(api, cluster, "evaluate-bf16", evaluations["bf16"])
    bench = wait_for(lambda: jobs(cluster).get("benchmark-bf16"), "the baseline's benchmark")
    complete(api, cluster, "benchmark-bf16", benchmark_result(bench))

    # Its consumers done, the baseline's server is recorded, then removed; the other stays.
    wait_for(lambda: "serve-bf16" not in servers(cluster, "apps/v1/deployments", "served"), "gone")
    wait_for(lambda: "serve-bf16" not in servers(cluster, "v1/services", "served"), "its Service")
    assert "serve-w4a16" in servers(cluster, "apps/v1/deployments", "served")
    records = cluster.list("v1/configmaps", namespace=NS, labels={m.LABEL_STAGE: "serve-bf16"})
    (record,) = records
    assert '"status": "Succeeded"' in record["data"]["result.json"]
    assert "served evaluate-bf16, benchmark-bf16" in record["data"]["result.json"]

    complete(api, cluster, "evaluate-w4a16", evaluations["w4a16"])
    bench = wait_for(lambda: jobs(cluster).get("benchmark-w4a16"), "the candidate's benchmark")
    complete(api, cluster, "benchmark-w4a16", benchmark_result(bench))
    job = wait_for(lambda: jobs(cluster).get("aggregate"), "the aggregate Job")
    complete(api, cluster, "aggregate", aggregate_result(job, evaluations))
    st = wait_for(
        lambda: (s := status(api, "evalruns", "served")).get("phase") == "Succeeded" and s,
        "Succeeded",
    )
    assert st["progress"] == "7/7"  # 2 servers, 2 evaluations, 2 benchmarks, the aggregate
    wait_for(lambda: not servers(cluster, "apps/v1/deployments", "served"), "no server left")
    wait_for(lambda: not servers(cluster, "v1/services", "served"), "no Service left")
    wait_for(lambda: ("Normal", "ServerStopped") in events_for(cluster, "served"), "an Event")


def test_a_server_that_never_becomes_ready_fails_the_run_with_the_reason(
    cluster: Cluster, api: Any, operator: Operator
) -> None:
    from kubernetes import client

    client.CustomObjectsApi(api).create_namespaced_custom_object(
        m.GROUP, m.VERSION, NS, "evalruns", served_run("stuck")
    )
    deployments = wait_for(
        lambda: len(d := servers(cluster, "apps/v1/deployments", "stuck")) == 2 and d,
        "two server Deployments",
    )
    # The baseline's server misses its deadline (the Deployment controller says so) ...
    play_server(
        api,
        deployments["serve-bf16"],
        {
            "replicas": 1,
            "unavailableReplicas": 1,
            "conditions": [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": 'ReplicaSet "stuck-serve-bf16" has timed out progressing.',
                }
            ],
        },
    )
    # ... and the candidate's keeps exiting: only its pod shows why (the kubelet's part).
    play_server(api, deployments["serve-w4a16"], {"replicas": 1, "unavailableReplicas": 1})
    template = deployments["serve-w4a16"]["spec"]["template"]
    core = client.CoreV1Api(api)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "stuck-serve-w4a16-5d9f-x2x",
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    }
    core.create_namespaced_pod(NS, pod)
    core.patch_namespaced_pod_status(
        pod["metadata"]["name"],
        NS,
        {
            "status": {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "serve",
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                        "lastState": {
                            "terminated": {
                                "exitCode": 1,
                                "reason": "Error",
                                "message": "torch.OutOfMemoryError: CUDA out of memory.",
                            }
                        },
                        "ready": False,
                        "restartCount": 3,
                        "image": "x",
                        "imageID": "",
                    }
                ],
            }
        },
    )
    # Nothing can be evaluated; the aggregate still runs to report it.
    job = wait_for(lambda: jobs(cluster).get("aggregate"), "the aggregate Job")
    assert set(jobs(cluster, **{m.LABEL_RUN: "stuck"})) == {"aggregate"}
    complete(api, cluster, "aggregate", {"failures": []})
    st = wait_for(
        lambda: (s := status(api, "evalruns", "stuck")).get("phase") == "Failed" and s,
        "the run to fail",
    )
    assert job
    failures = {f["stage"]: f for f in st["failures"]}
    assert failures["serve-bf16"]["reason"] == "ServerNotReady"
    assert "not ready within 900 s" in failures["serve-bf16"]["message"]
    assert failures["serve-w4a16"]["reason"] == "CrashLoopBackOff"
    assert "CUDA out of memory" in failures["serve-w4a16"]["message"]
    assert failures["evaluate-bf16"]["reason"] == "DependencyFailed"
    # The failed servers are removed (their record stays), so they hold no GPU.
    wait_for(lambda: not servers(cluster, "apps/v1/deployments", "stuck"), "no server left")
    wait_for(lambda: ("Warning", "ServerNotReady") in events_for(cluster, "stuck"), "a Warning")
    text = operator.metrics()
    assert 'reason="CrashLoopBackOff",stage_kind="serve"' in text
