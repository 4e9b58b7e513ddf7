"""The stage Jobs the operator creates, tested as data (and against Kubernetes' own schemas)."""

from __future__ import annotations

import json
import re

import kubernetes_validate
import pytest

from qeval.api.documents import load_documents
from qeval.api.quantizedmodel import QuantizedModel
from qeval.k8s import manifests as m
from qeval.k8s.publish import target
from qeval.k8s.settings import OperatorSettings
from qeval.plan import Stage, quantize_stage
from qeval.stages.envelope import StageResult, StageStatus
from tests.conftest import EXAMPLES

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
OWNER = m.Owner("QuantizedModel", "llama-3.1-8b-w4a16", "team-a", "1234-uid")


def llama_w4a16() -> QuantizedModel:
    docs = load_documents(EXAMPLES / "llama-3.1-8b" / "quantizedmodels.yaml")
    return next(d for d in docs if d.name == "llama-3.1-8b-w4a16")  # type: ignore[return-value]


def quantize_job(settings: OperatorSettings | None = None) -> dict:
    settings = settings or OperatorSettings()
    qm = llama_w4a16()
    layout = m.cluster_layout(settings, "team-a", qm.name)
    stage = quantize_stage(qm, layout)
    return m.build_job(stage, OWNER, layout, settings, qm.spec.hf_token_secret)


@pytest.mark.parametrize(
    ("owner", "stage"),
    [
        ("demo", "evaluate-fp32"),
        ("a" * 253, "evaluate-" + "b" * 60),
        ("llama-3.1-70b-instruct-w4a16-gptq-mse", "quantize-llama-3.1-70b-instruct-w4a16"),
    ],
)
def test_child_names_are_valid_labels_and_deterministic(owner: str, stage: str) -> None:
    name = m.child_name(owner, stage)
    assert len(name) <= 57  # a Job's pods are <job>-<5>, cut to 58: the whole name binds
    assert DNS_LABEL.match(name), name
    assert name == m.child_name(owner, stage)


def test_truncated_child_names_stay_distinct() -> None:
    long = "x" * 70
    assert m.child_name(long, "evaluate-a") != m.child_name(long, "evaluate-b")


def test_quantize_job_schedules_on_gpus_as_the_spec_says() -> None:
    job = quantize_job()
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "96Gi", "nvidia.com/gpu": "1"},
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["serviceAccountName"] == "qeval-stage"
    assert pod["restartPolicy"] == "Never"
    assert container["image"] == OperatorSettings().quantizer_image


def test_quantize_job_command_is_an_argv_list_with_the_input_in_the_environment() -> None:
    job = quantize_job()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == [
        "qeval",
        "quantize",
        "--input",
        "env:QEVAL_STAGE_INPUT",
        "--output",
        "/mnt/volumes/qeval-data/runs/team-a/llama-3.1-8b-w4a16/stages/"
        "quantize-llama-3.1-8b-w4a16/result.json",
    ]
    env = {e["name"]: e for e in container["env"]}
    stage_input = json.loads(env[m.INPUT_ENV]["value"])
    assert stage_input["model"]["uri"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert stage_input["outputDir"] == "/mnt/volumes/qeval-models/llama-3.1-8b-w4a16"
    # Results (and quantizations) are cached on the namespace's claim, shared by its runs.
    assert stage_input["cacheDir"] == "/mnt/volumes/qeval-data/cache/results"
    # The token by reference only: its value never appears in the manifest.
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}},
    }
    assert env["QEVAL_RESULT_CONFIGMAP"]["value"] == job["metadata"]["name"]


def test_quantize_job_mounts_the_output_claim_and_the_storage_claim() -> None:
    job = quantize_job()
    pod = job["spec"]["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"qeval-models", "qeval-data"}
    mounts = {v["mountPath"] for v in pod["containers"][0]["volumeMounts"]}
    assert mounts == {"/mnt/volumes/qeval-models", "/mnt/volumes/qeval-data", "/dev/shm"}
    # PyTorch's and vLLM's workers share tensors through /dev/shm: a RAM-backed emptyDir,
    # not the container runtime's 64 MiB.
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]


def test_jobs_are_owned_by_their_resource_and_labelled() -> None:
    job = quantize_job()
    assert job["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "qeval.dev/v1alpha1",
            "kind": "QuantizedModel",
            "name": "llama-3.1-8b-w4a16",
            "uid": "1234-uid",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels[m.LABEL_QUANTIZED_MODEL] == "llama-3.1-8b-w4a16"
    assert labels[m.LABEL_STAGE] == "quantize-llama-3.1-8b-w4a16"
    assert labels[m.LABEL_OWNER_UID] == "1234-uid"
    assert labels[m.MANAGED_BY] == "qeval"


def test_a_kueue_queue_submits_the_job_suspended_with_the_queue_label() -> None:
    qm = llama_w4a16()
    qm.spec.scheduling.queue_name = "gpu-queue"
    settings = OperatorSettings()
    layout = m.cluster_layout(settings, "team-a", qm.name)
    job = m.build_job(quantize_stage(qm, layout), OWNER, layout, settings)
    assert job["metadata"]["labels"][m.KUEUE_QUEUE] == "gpu-queue"
    assert job["spec"]["suspend"] is True
    assert "suspend" not in quantize_job()["spec"]


@pytest.mark.parametrize("version", ["1.29.0", "1.35.0"])
def test_jobs_and_result_configmaps_pass_kubernetes_strict_schemas(version: str) -> None:
    kubernetes_validate.validate(quantize_job(), version, strict=True)
    cm = m.build_result_configmap("n", "team-a", {"stage": "s"}, {"a": "b"}, OWNER.reference())
    kubernetes_validate.validate(cm, version, strict=True)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEVAL_NAMESPACES", "team-a, team-b")
    monkeypatch.setenv("QEVAL_EVALUATOR_IMAGE", "registry.local/evaluator:1")
    monkeypatch.setenv("QEVAL_IMAGE_PULL_SECRETS", "regcred")
    settings = OperatorSettings()
    assert settings.namespaces == ["team-a", "team-b"] and not settings.clusterwide
    assert settings.evaluator_image == "registry.local/evaluator:1"
    pod = quantize_job(settings)["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_claims_are_found_in_paths_and_uris() -> None:
    doc = {"a": "pvc://models/x", "b": ["/mnt/volumes/data/runs/r"], "c": "/tmp/x"}
    assert m.claims(doc) == {"models", "data"}


def test_a_stage_pod_environment_names_its_result_configmap() -> None:
    job = quantize_job()
    env = {
        e["name"]: e.get("value", "")
        for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    env["QEVAL_RESULT_NAMESPACE"] = "team-a"  # the downward API fills it in a pod
    where = target(env)
    assert where is not None
    assert where["name"] == job["metadata"]["name"]
    assert where["owner"]["uid"] == "1234-uid"
    assert where["labels"][m.LABEL_STAGE] == "quantize-llama-3.1-8b-w4a16"
    assert target({}) is None


def test_the_spec_digest_covers_the_immutable_fields_only() -> None:
    qm = llama_w4a16()
    before = m.spec_digest(qm.spec)
    qm.spec.scheduling.gpus = 8  # mutable: a new Job would get it, nothing was invalidated
    assert m.spec_digest(qm.spec) == before
    qm.spec.group_size = 64
    assert m.spec_digest(qm.spec) != before


# --- model servers (backend vllm-server) -------------------------------------------------

RUN_OWNER = m.Owner("EvalRun", "llama-3.1-8b-serving", "team-a", "run-uid")


def serving_plan(settings: OperatorSettings | None = None) -> list:
    from qeval.plan import build_plan

    settings = settings or OperatorSettings()
    docs = load_documents(EXAMPLES / "llama-3.1-8b")
    run = next(d for d in docs if d.name == "llama-3.1-8b-serving")
    models = {d.name: d for d in docs if isinstance(d, QuantizedModel)}
    layout = m.cluster_layout(settings, "team-a", run.name)
    return build_plan(run, models, layout)  # type: ignore[arg-type]


def server(name: str = "serve-bf16") -> tuple[dict, dict]:
    stage = next(s for s in serving_plan() if s.name == name)
    return m.build_server(stage, RUN_OWNER, OperatorSettings(), "digest")


def test_a_server_is_a_deployment_running_qeval_serve_on_the_spec_gpus() -> None:
    deployment, _ = server()
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    # No progress deadline of qeval's: it would count the queue, a node scale-up and the
    # image pull; the startup probe counts from the container's start instead.
    assert "progressDeadlineSeconds" not in spec
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["qeval", "serve", "--input", "env:QEVAL_STAGE_INPUT"]
    assert container["image"] == OperatorSettings().evaluator_image  # the image with vLLM
    assert container["resources"] == {  # examples/llama-3.1-8b/serving.yaml's scheduling
        "requests": {"cpu": "8", "memory": "24Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
    }
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert "restartPolicy" not in pod  # a server restarts (Always)
    assert pod["automountServiceAccountToken"] is False  # it never calls the API
    env = {e["name"]: e.get("value") for e in container["env"]}
    inp = json.loads(env["QEVAL_STAGE_INPUT"])
    assert inp["modelName"] == "bf16" and inp["host"] == "0.0.0.0" and inp["port"] == 8000
    assert inp["serving"]["maxModelLen"] == 8192
    assert inp["serving"]["extraArgs"] == ["--dtype", "auto", "--max-num-seqs", "256"]
    assert "QEVAL_RESULT_CONFIGMAP" not in env  # a server publishes nothing itself


def test_the_server_command_carries_the_serving_fields_to_vllm() -> None:
    from qeval.serving.launch import vllm_arguments
    from qeval.stages.serve import ServeInput

    deployment, _ = server()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    inp = ServeInput.model_validate_json(env["QEVAL_STAGE_INPUT"])
    args = vllm_arguments("/models/bf16", inp.model_name, inp.host, inp.port, inp.serving)
    assert args[:2] == ["serve", "/models/bf16"]
    pairs = dict(zip(args[2::2], args[3::2], strict=False))
    assert pairs["--served-model-name"] == "bf16"
    assert pairs["--port"] == "8000" and pairs["--host"] == "0.0.0.0"
    assert pairs["--tensor-parallel-size"] == "1"
    assert pairs["--gpu-memory-utilization"] == "0.9"
    assert pairs["--max-model-len"] == "8192"
    assert args[-4:] == ["--dtype", "auto", "--max-num-seqs", "256"]


def test_a_server_is_ready_when_health_answers_and_has_the_whole_timeout_to_start() -> None:
    deployment, _ = server()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    health = {"path": "/health", "port": "http"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == health
        assert container[probe]["timeoutSeconds"] >= 5  # not the 1 s default under load
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    shm = {"name": "dshm", "mountPath": "/dev/shm"}
    assert shm in container["volumeMounts"]


def test_the_service_selects_exactly_its_server_and_the_clients_use_its_name() -> None:
    stages = {s.name: s for s in serving_plan()}
    deployment, service = server("serve-w4a16")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector
    assert selector == {m.LABEL_OWNER_UID: "run-uid", m.LABEL_STAGE: "serve-w4a16"}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert service["metadata"]["name"] == deployment["metadata"]["name"]
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    url = f"http://{service['metadata']['name']}.team-a.svc:8000"
    assert stages["evaluate-w4a16"].input["baseUrl"] == url
    assert stages["benchmark-w4a16"].input["baseUrl"] == url
    sim = stages["similarity"].input
    assert [c["baseUrl"] for c in sim["candidates"]][0] == url
    for obj in (deployment, service):
        assert obj["metadata"]["ownerReferences"] == [RUN_OWNER.reference()]
        assert obj["metadata"]["labels"][m.LABEL_STAGE_KIND] == "serve"


def test_with_servers_the_clients_run_small_and_wait_for_their_server() -> None:
    stages = {s.name: s for s in serving_plan()}
    assert stages["serve-w4a16"].needs == ("quantize-llama-3.1-8b-w4a16",)
    assert stages["evaluate-w4a16"].needs == ("serve-w4a16",)
    # a benchmark has its server to itself: after the evaluation and the similarity
    assert stages["benchmark-w4a16"].needs == ("serve-w4a16", "evaluate-w4a16", "similarity")
    for name in ("evaluate-w4a16", "benchmark-w4a16", "similarity"):
        job = m.build_job(
            stages[name],
            RUN_OWNER,
            m.cluster_layout(OperatorSettings(), "team-a", "r"),
            OperatorSettings(),
        )
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["resources"] == m.LIGHT_RESOURCES, name
    assert stages["evaluate-w4a16"].input["serving"]["numConcurrent"] == 32


def test_a_kueue_queue_labels_the_server_deployment() -> None:
    from dataclasses import replace

    stage = next(s for s in serving_plan() if s.name == "serve-bf16")
    assert stage.scheduling is not None
    queued = replace(stage, scheduling=stage.scheduling.model_copy(update={"queue_name": "gpu"}))
    deployment, _ = m.build_server(queued, RUN_OWNER, OperatorSettings())
    assert deployment["metadata"]["labels"][m.KUEUE_QUEUE] == "gpu"


@pytest.mark.parametrize("version", ["1.29.0", "1.35.0"])
def test_server_deployments_and_services_pass_kubernetes_strict_schemas(version: str) -> None:
    for obj in server():
        kubernetes_validate.validate(obj, version, strict=True)
    doc = StageResult(stage="serve-bf16", kind="serve", status=StageStatus.FAILED, reason="R")
    kubernetes_validate.validate(m.build_operator_result(RUN_OWNER, doc), version, strict=True)


# --- what a first run on a GPU cluster needs -------------------------------------------


def test_a_stage_job_fails_at_once_on_a_recorded_failure_or_an_oom_kill() -> None:
    from qeval.stages.envelope import EXIT_RECORDED_FAILURE

    spec = quantize_job()["spec"]
    rules = spec["podFailurePolicy"]["rules"]
    # Disruptions (preemption, eviction, drain) are not the stage's fault: not counted.
    assert rules[0] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    fail = {tuple(r["onExitCodes"]["values"]) for r in rules if r["action"] == "FailJob"}
    assert fail == {(EXIT_RECORDED_FAILURE,), (137,)}
    assert all(r["onExitCodes"]["containerName"] == "quantize" for r in rules[1:])
    assert spec["backoffLimit"] == 1  # a crash (exit 1) is still retried once
    # A hung GPU Job gives its GPUs back: the operator's default deadline, or the spec's.
    assert spec["activeDeadlineSeconds"] == OperatorSettings().job_active_deadline_seconds
    qm = llama_w4a16()
    qm.spec.scheduling.active_deadline_seconds = 7200
    qm.spec.scheduling.runtime_class_name = "nvidia"
    settings = OperatorSettings()
    layout = m.cluster_layout(settings, "team-a", qm.name)
    job = m.build_job(quantize_stage(qm, layout), OWNER, layout, settings)
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert job["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia"


def test_gpu_stages_know_their_gpus_and_cpu_stages_see_none() -> None:
    from qeval.stages.accelerators import GPUS_ENV

    settings = OperatorSettings()
    stages = {s.name: s for s in serving_plan(settings)}

    def container(name: str) -> dict:
        stage = stages[name]
        if stage.serves:
            return m.build_server(stage, RUN_OWNER, settings)[0]["spec"]["template"]["spec"][
                "containers"
            ][0]
        layout = m.cluster_layout(settings, "team-a", "llama-3.1-8b-serving")
        return m.build_job(stage, RUN_OWNER, layout, settings)["spec"]["template"]["spec"][
            "containers"
        ][0]

    server = container("serve-bf16")
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env[GPUS_ENV] == "1" and "NVIDIA_VISIBLE_DEVICES" not in env
    assert server["image"] == settings.evaluator_image  # vLLM
    for name in ("evaluate-bf16", "benchmark-bf16", "similarity", "aggregate"):
        c = container(name)
        env = {e["name"]: e.get("value") for e in c["env"]}
        # vLLM's image says NVIDIA_VISIBLE_DEVICES=all; a CPU pod must not get every GPU
        # of the node it lands on.
        assert env["NVIDIA_VISIBLE_DEVICES"] == "void" and GPUS_ENV not in env, name
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {}), name
        assert c["image"] == settings.client_image, name  # not the >10 GB vLLM image
    env = {
        e["name"]: e.get("value")
        for e in quantize_job()["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env[GPUS_ENV] == "1"


def test_every_pod_of_a_run_that_downloads_gets_its_hub_token() -> None:
    from qeval.api.common import SecretKeyRef

    settings = OperatorSettings()
    token = SecretKeyRef(name="hf", key="token")
    layout = m.cluster_layout(settings, "team-a", "llama-3.1-8b-serving")
    ref = {"secretKeyRef": {"name": "hf", "key": "token"}}
    got = {}
    for stage in serving_plan(settings):
        if stage.produces:  # a QuantizedModel's Job: its own spec's token
            continue
        if stage.serves:
            pod = m.build_server(stage, RUN_OWNER, settings, None, token)[0]["spec"]["template"]
        else:
            pod = m.build_job(stage, RUN_OWNER, layout, settings, token)["spec"]["template"]
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        got[stage.kind] = env.get("HF_TOKEN", {}).get("valueFrom")
    assert got == {
        "serve": ref,  # vllm serve downloads the model
        "evaluate": ref,  # the tokenizer, and the datasets (leaderboard_gpqa is gated)
        "benchmark": ref,
        "similarity": ref,
        "aggregate": None,  # reads only result documents
    }


def test_label_values_from_long_names_are_bounded_and_the_stage_is_read_back() -> None:
    """A 61-character QuantizedModel name makes a 70-character stage name: the API server
    refuses such a label value (422), so labels are shortened with a hash, like names, and
    the full stage name travels in an annotation."""
    name = "q" * 61
    owner = m.Owner("QuantizedModel", name, "team-a", "1234-uid")
    qm = llama_w4a16()
    settings = OperatorSettings()
    layout = m.cluster_layout(settings, "team-a", name)
    stage = quantize_stage(qm, layout)
    stage = Stage(f"quantize-{name}", stage.kind, stage.input, (), stage.scheduling)
    job = m.build_job(stage, owner, layout, settings)
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        assert all(len(v) <= 63 and m.LABEL_VALUE.fullmatch(v) for v in meta["labels"].values())
        assert m.stage_name(meta) == f"quantize-{name}"
    assert job["metadata"]["labels"][m.LABEL_STAGE].startswith("quantize-qqq")
    # Two long names that share their first 54 characters stay apart.
    assert m.label_value("a" * 70) != m.label_value("a" * 71)
    assert m.label_value("short-name") == "short-name"
    kubernetes_validate.validate(job, "1.35.0", strict=True)


def test_an_evaluate_job_runs_where_and_with_what_the_spec_schedules() -> None:
    """The backend vllm evaluates in the pod: its Job gets the spec's GPUs, node selector,
    tolerations, affinity and priority class, as a quantize Job does."""
    from qeval.api.evalrun import EvalRun
    from qeval.plan import build_plan

    docs = load_documents(EXAMPLES / "llama-3.1-8b")
    run = next(d for d in docs if isinstance(d, EvalRun) and d.spec.backend == "vllm")
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    }
    scheduling = run.spec.scheduling.model_copy(
        update={
            "gpus": 2,
            "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "affinity": affinity,
            "priority_class_name": "batch-high",
        }
    )
    run = run.model_copy(update={"spec": run.spec.model_copy(update={"scheduling": scheduling})})
    models = {d.name: d for d in docs if isinstance(d, QuantizedModel)}
    settings = OperatorSettings()
    layout = m.cluster_layout(settings, "team-a", run.name)
    stage = next(s for s in build_plan(run, models, layout) if s.name == "evaluate-bf16")
    pod = m.build_job(stage, RUN_OWNER, layout, settings)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["affinity"] == affinity and pod["priorityClassName"] == "batch-high"


def test_an_evaluate_job_gets_spec_env_by_reference_and_the_others_do_not() -> None:
    """spec.env and spec.envFrom reach the evaluate containers as Kubernetes EnvVar and
    EnvFromSource (a Secret's key by reference, a literal as written: the kubelet expands no
    $(VAR)), after qeval's own variables; no other stage gets them, nor any document."""
    from qeval.api.documents import parse
    from qeval.api.evalrun import EvalRun
    from qeval.plan import build_plan

    env = [
        {"name": "HTTPS_PROXY", "value": "http://proxy:3128/$(HOME)"},
        {"name": "DATASETS_API_KEY", "valueFrom": {"secretKeyRef": {"name": "ds", "key": "api"}}},
        {
            "name": "REGION",
            "valueFrom": {"configMapKeyRef": {"name": "c", "key": "r", "optional": True}},
        },
    ]
    env_from = [{"secretRef": {"name": "extra"}}, {"prefix": "X_", "configMapRef": {"name": "m"}}]
    doc = {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r"},
        "spec": {
            "baseline": {"model": {"uri": "org/m"}},
            "tasks": [{"name": "arc_easy"}],
            "env": env,
            "envFrom": env_from,
        },
    }
    run = parse(doc, "f.yaml")
    assert isinstance(run, EvalRun)
    settings = OperatorSettings()
    layout = m.cluster_layout(settings, "team-a", run.name)
    jobs = {
        s.kind: m.build_job(s, RUN_OWNER, layout, settings) for s in build_plan(run, {}, layout)
    }
    (container,) = jobs["evaluate"]["spec"]["template"]["spec"]["containers"]
    assert container["env"][-3:] == [
        {"name": "HTTPS_PROXY", "value": "http://proxy:3128/$$(HOME)"},
        {"name": "DATASETS_API_KEY", "valueFrom": {"secretKeyRef": {"name": "ds", "key": "api"}}},
        {
            "name": "REGION",
            "valueFrom": {"configMapKeyRef": {"name": "c", "key": "r", "optional": True}},
        },
    ]
    assert [e["name"] for e in container["env"][:-3]][0] == m.INPUT_ENV  # qeval's come first
    assert container["envFrom"] == env_from
    stage_input = next(e["value"] for e in container["env"] if e["name"] == m.INPUT_ENV)
    assert "HTTPS_PROXY" not in stage_input and "DATASETS_API_KEY" not in stage_input
    (other,) = jobs["aggregate"]["spec"]["template"]["spec"]["containers"]
    assert "envFrom" not in other and not {"HTTPS_PROXY", "REGION"} & {
        e["name"] for e in other["env"]
    }
    for job in jobs.values():
        kubernetes_validate.validate(job, "1.35.0", strict=True)
