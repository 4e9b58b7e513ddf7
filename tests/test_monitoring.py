"""Dashboards and alerts against the real Prometheus, scraping the real qeval operator.

The stack (module-scoped): the session's real control plane (kube-apiserver, scheduler and
the Job, Deployment and ReplicaSet controllers; ``tests/cluster``) with a namespace of its
own, where the chart's ServiceAccounts, Roles and storage claim are applied; the real
operator (``qeval.k8s.handlers.run``) serving that namespace under the chart's RBAC (its
ServiceAccount's token); Prometheus (Debian's 2.42) scraping it every second the way the
chart's ServiceMonitor does, and evaluating the chart's PrometheusRule as rendered for this
release. The demo study of examples/evalrun.yaml, applied by the cluster's admin, runs
through the operator with the test playing the kubelet: each pod the real Job controller
makes and the real scheduler binds exits 0 or 1, after publishing its stage's result
ConfigMap through ``qeval.k8s.publish`` with the stage ServiceAccount's token, carrying the
scores measured by ``make demo`` (README); the aggregate stage is the real one
(``qeval.stages.aggregate.run``, over the result documents on the claim's volume). A second
study fails (its quantization crashes, every retry), so the failure alerts have something to
show, and one quantization is still running (its pod not ready yet), so the operator keeps
working. A third study (``backend: vllm-server``) has the operator start a model server per
model, a Deployment and a Service; the test plays the kubelet for their pods (running and
ready) and the real controllers make them available; its evaluations, benchmark and
similarity run against them, the operator records each server's outcome and removes it,
and the aggregate's benchmark figures are the ``qeval_benchmark_*`` series the serving
dashboard shows.

vLLM cannot run here: stand-in exporters, one per model server, serve vLLM's own ``vllm:``
histograms and counters, so that every panel query of the serving dashboard runs. They are
scraped with the labels of the operator's Services and the chart's server ServiceMonitor's
relabelings; a second run in the namespace serves models under the same names, which the
dashboard must keep apart.

Every request the operator and the stage pods make is checked against the chart's RBAC by
the API server's audit log: no call refused, and no verb granted that the stack never used.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from qeval.api.evalrun_status import JudgedResult, JudgedScore, Score
from qeval.k8s import manifests as m
from qeval.k8s.publish import publish
from qeval.plan import SERVE_KIND, Stage
from qeval.stages.aggregate import AggregateInput
from qeval.stages.aggregate import run as aggregate
from qeval.stages.envelope import StageResult, StageStatus
from tests.cluster.chart import RBAC_TEMPLATES, Identities, install_identities
from tests.cluster.chart import render as render_objects
from tests.cluster.controlplane import ControlPlane
from tests.conftest import EXAMPLES, ROOT
from tests.kube.play import job_condition, play_pod, stage_env
from tests.kube.running import Operator
from tests.prometheus import (
    Exporter,
    Prometheus,
    Target,
    binary,
    finite,
    free_port,
    legend,
    panel_queries,
    variable_queries,
    wait_for,
)
from tests.test_chart import CHART, NAMESPACE, grants, run_helm, template, value_args

pytestmark = pytest.mark.skipif(
    not (binary("prometheus") and binary("promtool")),
    reason="Prometheus is not installed (apt-get install prometheus; .ci/run does)",
)

NS = "monitoring"  # the stack's namespace: the studies run there, the operator serves it
RELEASE = f"qeval-{NS}"  # the release install_identities names for it
DEFAULT_JOB = "qeval-operator-metrics"  # the metrics Service of the default release (promtool)
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
# The chart as installed for this stack: namespaced to NS, monitoring switched on.
VALUES = (
    f"watchNamespaces={{{NS}}}",
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "json:metrics.prometheusRule.taskRecoveryThreshold=0.95",  # a non-default threshold
    "dashboards.enabled=true",
)
MiB = 2**20

# Measured by `make demo` (README): (scheme, size in MiB, {task: (score, stderr)}), 1,000
# items per task. The quantization wall times are illustrative (the README does not list them).
F, R, P = "qeval_demo_facts", "qeval_demo_recall", "qeval_demo_perplexity"
DEMO = {
    "fp32": (None, 5.5, {F: (1.0, 0.0), R: (1.0, 0.0), P: (2.150, 0.013)}),
    "fp8": ("W8A8-FP8", 2.1, {F: (1.0, 0.0), R: (1.0, 0.0), P: (2.133, 0.013)}),
    "int8": ("W8A8-INT8", 2.1, {F: (1.0, 0.0), R: (1.0, 0.0), P: (2.150, 0.013)}),
    "w4a16": ("W4A16", 1.6, {F: (1.0, 0.0), R: (1.0, 0.0), P: (2.183, 0.013)}),
    "w2a16-rtn": ("W2A16-RTN", 1.3, {F: (0.903, 0.009), R: (0.760, 0.014), P: (2.504, 0.013)}),
}
METRICS = {F: "acc", R: "exact_match", P: "bits_per_byte"}
LOWER_IS_BETTER = {P}
QUANTIZE_SECONDS = {"fp8": 1.4, "int8": 11.2, "w4a16": 8.9, "w2a16-rtn": 0.9, "w3a16": 0.0}
FAILING = {"tiny-llama-w3a16"}  # its quantization crashes: the second study fails
RUNNING = {"tiny-llama-w4a16-g64"}  # its quantization never ends: the operator keeps watching
# The served study's benchmark (illustrative): relative speed per model, and per scenario
# kind a load factor (more requests in flight: more throughput, longer latencies).
SPEED = {"fp32": 1.0, "w4a16": 1.9}
LOAD = {"synchronous": 1.0, "concurrent": 2.2, "throughput": 4.5}
SIMILARITY = {"w4a16": (0.91, 0.89, 0.95, 0.93, 0.42)}  # rouge1, rougeL, BERTScore, STS, same

# A failing study, and a quantization still running when the dashboards are looked at.
MORE = """
apiVersion: qeval.dev/v1alpha1
kind: QuantizedModel
metadata: {name: tiny-llama-w4a16-g64}
spec:
  model: {uri: demo://tiny-llama}
  scheme: W4A16
  algorithm: GPTQ
  groupSize: 64
  calibration: {dataset: demo, numSamples: 256, maxSeqLength: 128}
  scheduling: {gpus: 0}
---
apiVersion: qeval.dev/v1alpha1
kind: QuantizedModel
metadata: {name: tiny-llama-w3a16}
spec:
  model: {uri: demo://tiny-llama}
  scheme: W3A16
  algorithm: RTN
  scheduling: {gpus: 0}
---
apiVersion: qeval.dev/v1alpha1
kind: EvalRun
metadata: {name: w3-study}
spec:
  baseline: {name: fp32, model: {uri: demo://tiny-llama}}
  candidates: [{quantizedModel: tiny-llama-w3a16, name: w3a16}]
  tasks: [{name: qeval_demo_facts}]
  backend: hf
  scheduling: {gpus: 0}
"""

# The demo study's baseline and 4-bit candidate again, as hub checkpoints served by vLLM: a
# server per model (the operator's Deployments and Services), its stages its clients.
SERVED = """
apiVersion: qeval.dev/v1alpha1
kind: EvalRun
metadata: {name: served}
spec:
  baseline: {name: fp32, model: {uri: TinyLlama/TinyLlama-1.1B-Chat-v1.0}}
  candidates:
  - name: w4a16
    scheme: W4A16
    model: {uri: RedHatAI/TinyLlama-1.1B-Chat-v1.0-quantized.w4a16}
  tasks: [{name: qeval_demo_facts}]
  backend: vllm-server
  serving: {maxModelLen: 2048, numConcurrent: 8, readyTimeoutSeconds: 600}
  performance:
    scenarios:
    - {name: synchronous, kind: synchronous, requests: 16}
    - {name: concurrent-8, kind: concurrent, concurrency: 8, requests: 64}
  similarity: {prompts: 16}
  judged:
  - name: arena
    limit: 80
    judge: {endpoint: {baseUrl: "http://judge.models.svc:8000/v1", model: judge}}
"""
SERVED_RUN = "served"


# --- the chart as installed for the stack -----------------------------------------------------


def stack_chart(*templates: str) -> list[dict[str, Any]]:
    """``helm template`` of the stack's release with VALUES (``templates``: only these)."""
    argv = ["template", RELEASE, str(CHART), "--namespace", NS, *value_args(VALUES)]
    for name in templates:
        argv += ["--show-only", f"templates/{name}"]
    done = run_helm(*argv)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def operator_job() -> str:
    """The ``job`` label Prometheus gives the operator: its ServiceMonitor's Service's name."""
    (service,) = stack_chart("service.yaml")
    return str(service["metadata"]["name"])


def client_for(kubeconfig: Path) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


# --- the test plays the kubelet and the stage processes ----------------------------------------


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def bound_and_pending(pod: dict[str, Any]) -> bool:
    """Scheduled by the real scheduler, not started by any kubelet yet, not going."""
    return (
        bool(pod["spec"].get("nodeName"))
        and pod.get("status", {}).get("phase", "Pending") == "Pending"
        and not pod["metadata"].get("deletionTimestamp")
    )


@dataclass
class Study:
    """Plays the kubelet for every pod the real controllers make in the stack's namespace:
    a stage pod runs its stage (publishes its result with the stage ServiceAccount) and exits
    0, or 1 for a failing stage, each retry; a model server's pod runs and is ready."""

    cluster: ControlPlane
    stage_api: Any  # the qeval-stage ServiceAccount: what stage pods publish with
    workdir: Path  # the claims' volumes, /mnt/volumes/<claim> in a pod
    played: set[str] = field(default_factory=set)  # pod uids
    services: dict[str, dict[str, str]] = field(default_factory=dict)  # model servers' labels

    def local(self, path: str) -> Path:
        return self.workdir / Path(path).relative_to("/mnt/volumes")

    def step(self) -> int:
        # Jobs before pods: a pod listed has its Job in the list.
        jobs = {j["metadata"]["name"]: j for j in self.cluster.list("batch/v1/jobs", NS)}
        pods = [
            p
            for p in self.cluster.list("v1/pods", NS)
            if p["metadata"]["uid"] not in self.played and bound_and_pending(p)
        ]
        for pod in pods:
            job_name = pod["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name")
            if job_name is None:  # a model server's pod (its ReplicaSet's): vLLM answers /health
                for service in self.cluster.list("v1/services", NS, {m.LABEL_STAGE_KIND: "serve"}):
                    self.services[service["metadata"]["name"]] = service["metadata"]["labels"]
                play_pod(self.cluster, pod, exit_code=None, ready=True)
            elif jobs[job_name]["metadata"]["labels"].get(m.LABEL_QUANTIZED_MODEL) in RUNNING:
                play_pod(self.cluster, pod, exit_code=None, ready=False)  # pulling its image
            else:
                ok = self.run_stage(jobs[job_name])
                play_pod(self.cluster, pod, exit_code=0 if ok else 1)
            self.played.add(pod["metadata"]["uid"])
        return len(pods)

    def run_stage(self, job: dict[str, Any]) -> bool:
        """What the stage's container does: its result document, on the claim and published;
        whether it succeeded."""
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = stage_env(job)
        stage_input = json.loads(env[m.INPUT_ENV])
        output = container["command"][container["command"].index("--output") + 1]
        labels = job["metadata"]["labels"]
        kind = labels[m.LABEL_STAGE_KIND]
        ok, reason, message, seconds = True, None, None, 1.0
        result: dict[str, Any] | None = None
        if kind == "demo-model":
            result = {"path": "/mnt/volumes/qeval-data/cache/demo-model", "recipeHash": "demo"}
        elif kind == "quantize":
            name = stage_input["name"]
            candidate = name.removeprefix("tiny-llama-")
            seconds = QUANTIZE_SECONDS[candidate]
            if name in FAILING:
                ok, reason, message = False, "Crashed", "RuntimeError: CUDA out of memory"
            else:
                size, base = int(DEMO[candidate][1] * MiB), int(DEMO["fp32"][1] * MiB)
                result = {
                    "name": name,
                    "scheme": stage_input["scheme"],
                    "recipe": stage_input["recipe"],
                    "outputDir": stage_input["outputDir"],
                    "sizeBytes": size,
                    "baseSizeBytes": base,
                    "compressionRatio": round(base / size, 4),
                    "quantizeSeconds": seconds,
                }
        elif kind == "evaluate":
            name = stage_input["modelName"]
            _, size, tasks = DEMO[name]
            scores = [
                Score(
                    model=name,
                    task=task,
                    metric=METRICS[task],
                    value=value,
                    stderr=stderr,
                    samples=400 if task in LOWER_IS_BETTER else 1000,
                    higher_is_better=task not in LOWER_IS_BETTER,
                    primary=True,
                ).dump()
                for task, (value, stderr) in tasks.items()
                if task in {t["name"] for t in stage_input["tasks"]}
            ]
            result = {
                "modelName": name,
                "backend": "vllm-server" if stage_input.get("baseUrl") else "hf",
                "harnessVersion": "0.4.13",
                "scores": scores,
                "modelSizeBytes": int(size * MiB),
                "resultsPath": f"{stage_input['outputDir']}/results.json",
                "samplesDir": f"{stage_input['outputDir']}/samples",
            }
        elif kind == "benchmark":
            result = benchmark(stage_input)
        elif kind == "similarity":
            result = similarity(stage_input)
        elif kind == "judge":
            result = judged(stage_input)
        elif kind == "aggregate":
            # The real aggregate stage, over the result documents on the claim.
            doc = json.loads(json.dumps(stage_input))
            for ref in [doc["baseline"], *doc["candidates"]]:
                ref["evaluate"] = str(self.local(ref["evaluate"]))
                if ref.get("benchmark"):
                    ref["benchmark"] = str(self.local(ref["benchmark"]))
            if doc.get("similarity"):
                doc["similarity"] = str(self.local(doc["similarity"]))
            doc["judged"] = [str(self.local(path)) for path in doc.get("judged", [])]
            doc["resultsLocation"] = str(self.local(doc["resultsLocation"]))
            status = aggregate(AggregateInput.model_validate(doc))
            status.results_location = stage_input["resultsLocation"]
            result = status.dump()
        doc = StageResult(
            stage=labels[m.LABEL_STAGE],
            kind=kind,
            status=StageStatus.SUCCEEDED if ok else StageStatus.FAILED,
            reason=reason,
            message=message,
            started_at=now(),
            finished_at=now(),
            wall_seconds=seconds,
            result=result,
        )
        path = self.local(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc.dump()))
        # As the stage pod: with the stage's identity. A retried pod publishes again (the
        # ConfigMap exists: it is replaced).
        publish(doc, env, api=self.stage_api)
        return ok

    def retried_to_the_end(self) -> bool:
        """Whether the Job controller has given up on the failing stages (every pod exited 1:
        the retried pod published its result again)."""
        failing = [
            j
            for j in self.cluster.list("batch/v1/jobs", NS)
            if j["metadata"]["labels"].get(m.LABEL_QUANTIZED_MODEL) in FAILING
        ]
        return bool(failing) and all(job_condition(self.cluster, j, "Failed") for j in failing)

    def phase(self, plural: str, name: str) -> str | None:
        obj = self.cluster.get(f"qeval.dev/v1alpha1/{plural}", NS, name)
        return ((obj or {}).get("status") or {}).get("phase")

    def servers(self, run: str) -> list[str]:
        """The names of ``run``'s Deployments and Services still there."""
        labels = {m.LABEL_RUN: run}
        return [
            o["metadata"]["name"]
            for kind in ("apps/v1/deployments", "v1/services")
            for o in self.cluster.list(kind, NS, labels)
        ]


def benchmark(stage_input: dict[str, Any]) -> dict[str, Any]:
    """A benchmark stage's result against its model's server (figures illustrative)."""
    name, points = stage_input["modelName"], []
    for scenario in stage_input["performance"]["scenarios"]:
        fast, busy = SPEED[name], LOAD[scenario["kind"]]

        def spread(seconds: float, fast: float = fast, busy: float = busy) -> dict[str, float]:
            base = seconds * busy / fast
            return {"p50": base, "p90": base * 1.5, "p99": base * 2.4}

        points.append(
            {
                "model": name,
                "scenario": scenario["name"],
                "backend": "vllm",
                "requests": scenario["requests"],
                "latencySeconds": 1.6 * busy / fast,
                "outputTokensPerSecond": 80 * fast * busy,
                "requestsPerSecond": 0.6 * fast * busy,
                "ttftSeconds": spread(0.040),
                "itlSeconds": spread(0.012),
                "e2eSeconds": spread(1.6),
                # three repetitions, 2 % apart: the speedups get their intervals
                "repetitions": [
                    {
                        "requestsPerSecond": 0.6 * fast * busy * k,
                        "outputTokensPerSecond": 80 * fast * busy * k,
                        "latencySeconds": 1.6 * busy / fast / k,
                    }
                    for k in (0.98, 1.0, 1.02)
                ],
            }
        )
    return {
        "modelName": name,
        "backend": "vllm",
        "points": points,
        "requestsPath": f"{stage_input['outputDir']}/requests.jsonl",
    }


def similarity(stage_input: dict[str, Any]) -> dict[str, Any]:
    """A similarity stage's result: each candidate's text against the baseline's."""
    scores = []
    for candidate in stage_input["candidates"]:
        rouge1, rouge_l, bertscore, sts, identical = SIMILARITY[candidate["name"]]
        scores.append(
            {
                "model": candidate["name"],
                "prompts": stage_input["similarity"]["prompts"],
                "rouge1": rouge1,
                "rougeL": rouge_l,
                "bertscoreF1": bertscore,
                "sts": sts,
                "identical": identical,
            }
        )
    return {
        "backend": "vllm",
        "scores": scores,
        "generationsPath": f"{stage_input['outputDir']}/generations.jsonl",
    }


def judged(stage_input: dict[str, Any]) -> dict[str, Any]:
    """A judge stage's result: the candidate against the baseline on 80 prompts, both orders."""
    j = stage_input["judged"]
    scores = [
        JudgedScore(
            model=c["name"],
            prompts=80,
            judgements=160,
            wins=62,
            ties=30,
            losses=68,
            win_rate=0.4625,
            win_rate_ci_low=0.42,
            win_rate_ci_high=0.505,
            recovery=0.925,
            recovery_ci_low=0.84,
            recovery_ci_high=1.01,
            position_bias=0.1,
        )
        for c in stage_input["candidates"]
    ]
    result = JudgedResult(
        name=j["name"],
        kind="pairwise",
        judge="judge at http://judge.models.svc:8000/v1",
        prompts=80,
        prompt_set="demo",
        template="0123456789ab",
        swapped=True,
        judge_requests=160,
        judge_prompt_tokens=96_000,
        judge_completion_tokens=48_000,
        judge_seconds=420.0,
        scores=scores,
    )
    return {"judged": result.dump()}


# --- serving stand-in ----------------------------------------------------------------------------


# Two runs' servers that serve models under the same names (vLLM's model_name): the served
# study's, and another run's in the same namespace on slower GPUs (relative speed per model).
# The dashboard must keep them apart (per run and stage), never sum them.
OTHER_RUN = "served-again"
SERVERS = {SERVED_RUN: SPEED, OTHER_RUN: {"fp32": 0.25, "w4a16": 0.5}}
TTFT_MEDIAN = 0.0408  # exp(-3.2) s at speed 1: the stand-in's lognormal time to first token


def server_labels(run: str, model: str) -> dict[str, str]:
    """The labels of a model server's Service as the operator builds them (for the served
    study, the test checks them against the Services the operator made)."""
    owner = m.Owner("EvalRun", run, NS, f"uid-{run}")
    return m.labels(owner, Stage(f"serve-{model}", SERVE_KIND, {}))


def discovered(labels: dict[str, str]) -> dict[str, str]:
    """A Service's labels as Prometheus' Kubernetes discovery gives them to relabeling."""
    return {
        "__meta_kubernetes_service_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v
        for k, v in labels.items()
    }


class VllmServer:
    """One model server's /metrics: vLLM's metric names and labels (model_name: the name
    qeval serves the model under), with requests simulated while it runs."""

    def __init__(self, run: str, model: str, speed: float) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.run, self.model, self.speed = run, model, speed
        self.exporter = Exporter()
        r, labels = self.exporter.registry, ["model_name"]
        buckets = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "TTFT", labels, registry=r, buckets=buckets
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "ITL", labels, registry=r, buckets=buckets
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "E2E", labels, registry=r, buckets=buckets
        )
        self.queue = Histogram(
            "vllm:request_queue_time_seconds", "queue", labels, registry=r, buckets=buckets
        )
        self.prompt = Counter("vllm:prompt_tokens", "prompt tokens", labels, registry=r)
        self.generation = Counter("vllm:generation_tokens", "generated tokens", labels, registry=r)
        self.running = Gauge("vllm:num_requests_running", "running", labels, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "waiting", labels, registry=r)
        self.kv = Gauge("vllm:kv_cache_usage_perc", "KV cache usage (0-1)", labels, registry=r)

    def serve_one(self, rng: random.Random) -> None:
        model, fast = self.model, self.speed
        self.ttft.labels(model).observe(rng.lognormvariate(-3.2, 0.4) / fast)
        for _ in range(8):
            self.itl.labels(model).observe(rng.lognormvariate(-4.4, 0.3) / fast)
        self.e2e.labels(model).observe(rng.lognormvariate(0.4, 0.3) / fast)
        self.queue.labels(model).observe(rng.expovariate(50))
        self.prompt.labels(model).inc(rng.randint(50, 400))
        self.generation.labels(model).inc(rng.randint(20, 200))
        self.running.labels(model).set(rng.randint(1, 8))
        self.waiting.labels(model).set(rng.randint(0, 3))
        self.kv.labels(model).set(rng.uniform(0.2, 0.6))

    def target(self) -> Target:
        """Its scrape target as the chart's server ServiceMonitor finds it: the namespace, and
        its Service's labels for the monitor's relabelings."""
        labels = {"namespace": NS, **discovered(server_labels(self.run, self.model))}
        return Target(VLLM_JOB, self.exporter.address, labels, honor_labels=True)


class VllmStandIn:
    """The model servers of SERVERS, each on an exporter of its own."""

    def __init__(self) -> None:
        self.servers = [
            VllmServer(run, model, speed)
            for run, speeds in SERVERS.items()
            for model, speed in speeds.items()
        ]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve_requests, daemon=True)
        self.rng = random.Random(0)

    def _serve_requests(self) -> None:
        while not self.stopped.wait(0.05):
            for server in self.servers:
                server.serve_one(self.rng)

    def targets(self) -> list[Target]:
        return [s.target() for s in self.servers]

    def start(self) -> VllmStandIn:
        for server in self.servers:
            server.exporter.start()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        for server in self.servers:
            server.exporter.stop()


VLLM_JOB = "vllm"


def server_relabelings() -> list[dict[str, Any]]:
    """The chart's server ServiceMonitor's relabelings, as Prometheus relabel_configs (what
    the Prometheus Operator writes for them)."""
    (monitor,) = stack_chart("servicemonitor-servers.yaml")
    (endpoint,) = monitor["spec"]["endpoints"]
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return [{keys.get(k, k): v for k, v in r.items()} for r in endpoint["relabelings"]]


class ScrapedPrometheus(Prometheus):
    """Prometheus with relabel_configs on some jobs (the chart's ServiceMonitor's)."""

    def __init__(self, *args: Any, relabel: dict[str, list[dict[str, Any]]], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.relabel = relabel

    def config(self) -> dict[str, Any]:
        config = super().config()
        for job in config["scrape_configs"]:
            if job["job_name"] in self.relabel:
                job["relabel_configs"] = self.relabel[job["job_name"]]
        return config


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class Stack:
    cluster: ControlPlane
    identities: Identities
    operator: Operator
    prometheus: Prometheus
    study: Study
    job: str  # the operator's scrape job (its metrics Service, as the ServiceMonitor names it)
    seconds: dict[str, float]


def rule_file(tmp: Path) -> Path:
    """The chart's PrometheusRule (as installed for the stack) as a Prometheus rules file."""
    (rule,) = stack_chart("prometheusrule.yaml")
    path = tmp / "qeval-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def storage_claim(cluster: ControlPlane, name: str) -> None:
    """A PersistentVolumeClaim the examples name, bound to a volume of its own."""
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "200Gi"}}},
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pvc))
    cluster.provide_volume(NS, name)


@contextmanager
def monitored_study(cluster: ControlPlane, tmp: Path) -> Iterator[Stack]:
    """The whole stack, with the studies finished and their results scraped."""
    t0 = time.monotonic()
    seconds: dict[str, float] = {}
    cluster.create_namespace(NS)
    identities = install_identities(cluster, NS)  # the chart's RBAC and claim (qeval-data)
    assert identities.release == RELEASE
    studies = (EXAMPLES / "evalrun.yaml").read_text() + "\n---\n" + MORE + "---" + SERVED
    for claim in sorted(m.claims(list(yaml.safe_load_all(studies))) - {"qeval-data"}):
        storage_claim(cluster, claim)  # any other claim the studies name (pvc://...)
    job = operator_job()
    metrics_port = free_port()
    vllm = VllmStandIn().start()
    targets = [
        # As the chart's ServiceMonitor: job = the Service, namespace = the operator's.
        Target(job, f"127.0.0.1:{metrics_port}", {"namespace": NS}, True),
        *vllm.targets(),
    ]
    relabel = {VLLM_JOB: server_relabelings()}
    prometheus = ScrapedPrometheus(targets, [rule_file(tmp)], relabel=relabel).start()
    seconds["prometheus ready"] = time.monotonic() - t0
    operator: Operator | None = None
    try:
        with pytest.MonkeyPatch.context() as env:
            settings = {
                "KUBECONFIG": str(identities.operator),  # the chart's RBAC is all it has
                "QEVAL_NAMESPACES": NS,
                "QEVAL_RESYNC_SECONDS": "1",  # reconcile often: the latency histogram moves
                "QEVAL_METRICS_PORT": str(metrics_port),
                "QEVAL_LIVENESS_ENDPOINT": "",  # set by Operator.start (restored here)
            }
            for key, value in settings.items():
                env.setenv(key, value)
            operator = Operator(metrics_port).start()
            seconds["operator ready"] = time.monotonic() - t0
            study = Study(cluster, client_for(identities.stage), cluster.dir / "volumes" / NS)
            # The person applying the studies: the cluster's admin, as kubectl does it.
            cluster.kubectl("apply", "-n", NS, "-f", "-", input=studies)
            wait_for(
                lambda: (
                    study.step() >= 0
                    and study.phase("evalruns", "demo") == "Succeeded"
                    and study.phase("evalruns", "w3-study") == "Failed"
                    and study.phase("evalruns", SERVED_RUN) == "Succeeded"
                    and study.retried_to_the_end()
                ),
                "the demo and served studies to succeed and the w3 study to fail, its Job too",
                timeout=150,  # the real Job controller waits 10 s before retrying a failed pod
            )
            # Their stages done and their outcome recorded, the model servers are removed.
            wait_for(lambda: not study.servers(SERVED_RUN), "the served study's servers removed")
            seconds["studies done"] = time.monotonic() - t0
            stack = Stack(cluster, identities, operator, prometheus, study, job, seconds)
            wait_for(lambda: prometheus.scraped(job), "a scrape of the operator")
            wait_for(
                lambda: (
                    len(prometheus.query('qeval_mean_recovery_ratio{run="demo"}')) == 4
                    and prometheus.query(f'qeval_mean_recovery_ratio{{run="{SERVED_RUN}"}}')
                    and prometheus.query(f'qeval_benchmark_ttft_seconds{{run="{SERVED_RUN}"}}')
                    and prometheus.query('qeval_resources{phase="Failed"} > 0')
                ),
                "the studies' results in Prometheus",
            )
            seconds["results scraped"] = time.monotonic() - t0
            yield stack
            operator.stop_now()
            operator = None
    finally:
        if operator is not None:
            operator.stop.set()
            operator.thread.join(timeout=20)
        prometheus.stop()
        vllm.stop()
        cluster.request("DELETE", f"/api/v1/namespaces/{NS}")


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with monitored_study(control_plane, tmp_path_factory.mktemp("monitoring")) as s:
        yield s


# --- the operator's results in Prometheus --------------------------------------------------------


def by(samples: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(s["metric"][k] for k in labels): float(s["value"][1]) for s in samples}


def series(p: Prometheus, expr: str, *labels: str, count: int) -> dict[tuple[str, ...], float]:
    """The query's values by ``labels`` once it has ``count`` series (a scrape taken while the
    operator replaces a resource's series can miss them for one scrape interval)."""
    return wait_for(
        lambda: (found := by(p.query(expr), *labels)) and len(found) == count and found, expr
    )


def test_prometheus_has_the_studys_real_results_from_the_operator(stack: Stack) -> None:
    p = stack.prometheus
    mean = series(
        p, 'qeval_mean_recovery_ratio{run="demo"}', "namespace", "model", "scheme", count=4
    )
    # The README's table: 100.3, 100.0, 99.5 and 84.1 % mean recovery (bits per byte: lower
    # is better, its recovery baseline / candidate).
    assert mean[(NS, "w2a16-rtn", "W2A16-RTN")] == pytest.approx(0.841, abs=0.001)
    assert mean[(NS, "w4a16", "W4A16")] == pytest.approx(0.995, abs=0.001)
    assert mean[(NS, "fp8", "W8A8-FP8")] == pytest.approx(1.003, abs=0.001)
    scores = series(p, 'qeval_score{run="demo", model="fp32"}', "task", "scheme", "better", count=3)
    assert scores == {
        ("qeval_demo_facts", "baseline", "higher"): 1.0,
        ("qeval_demo_recall", "baseline", "higher"): 1.0,
        ("qeval_demo_perplexity", "baseline", "lower"): 2.150,
    }
    # Each result names its filter and whether it is the baseline's primary metric (what the
    # status holds: detail primary); the 2-bit control's intervals lie below 95 %.
    results = p.query('{__name__=~"qeval_score.*|qeval_recovery_ratio.*", run="demo"}')
    assert {(s["metric"]["filter"], s["metric"]["primary"]) for s in results} == {("none", "true")}
    high = series(p, 'qeval_recovery_ratio_ci_high{run="demo", model="w2a16-rtn"}', "task", count=3)
    low = series(p, 'qeval_recovery_ratio_ci_low{run="demo", model="w2a16-rtn"}', "task", count=3)
    recovery = series(p, 'qeval_recovery_ratio{run="demo", model="w2a16-rtn"}', "task", count=3)
    for task, value in recovery.items():
        assert low[task] < value < high[task]
    assert all(h < 0.95 for h in high.values()), high
    assert recovery[("qeval_demo_perplexity",)] == pytest.approx(2.150 / 2.504, abs=1e-3)
    ratio = series(p, "qeval_compression_ratio", "quantizedmodel", count=4)
    assert ratio[("tiny-llama-w2a16-rtn",)] == pytest.approx(5.5 / 1.3, abs=0.01)
    phases = series(p, "qeval_resources > 0", "kind", "phase", count=5)
    assert phases == {
        ("EvalRun", "Succeeded"): 2,  # the demo and the served study
        ("EvalRun", "Failed"): 1,
        ("QuantizedModel", "Ready"): 4,
        ("QuantizedModel", "Failed"): 1,
        ("QuantizedModel", "Quantizing"): 1,
    }
    # honor_labels (the ServiceMonitor's honorLabels): the resources' own namespace label is
    # kept, never renamed exported_namespace (the operator serves the namespace it runs in).
    assert {s["metric"]["namespace"] for s in p.query("qeval_score")} == {NS}
    assert not p.query('{exported_namespace!=""}')
    assert p.query(f'up{{job="{stack.job}", namespace="{NS}"}} == 1')


def test_the_served_study_ran_against_model_servers_the_operator_removed(stack: Stack) -> None:
    p, run = stack.prometheus, SERVED_RUN
    # Each server's outcome is recorded (the operator's own result ConfigMap), then it goes.
    labels = {m.LABEL_RUN: run, m.LABEL_STAGE_KIND: "serve"}
    records = stack.cluster.list("v1/configmaps", NS, labels)
    assert sorted(r["metadata"]["labels"][m.LABEL_STAGE] for r in records) == [
        "serve-fp32",
        "serve-w4a16",
    ]
    for record in records:
        doc = json.loads(record["data"]["result.json"])
        assert doc["status"] == "Succeeded", doc
        assert doc["message"].startswith("served evaluate-"), doc
    assert not stack.study.servers(run)
    # Its results, and the benchmark's figures, are the operator's series (no stand-in).
    mean = series(p, f'qeval_mean_recovery_ratio{{run="{run}"}}', "model", "scheme", count=1)
    assert mean[("w4a16", "W4A16")] == pytest.approx(1.0, abs=0.001)
    tps = series(
        p, f'qeval_benchmark_output_tokens_per_second{{run="{run}"}}', "model", "scenario", count=4
    )
    assert tps[("w4a16", "concurrent-8")] == pytest.approx(80 * 1.9 * 2.2)
    ttft = series(
        p,
        f'qeval_benchmark_ttft_seconds{{run="{run}", quantile="0.99"}}',
        "model",
        "scenario",
        count=4,
    )
    assert ttft[("fp32", "synchronous")] == pytest.approx(0.040 * 2.4)
    speedup = series(p, f'qeval_benchmark_speedup_ratio{{run="{run}"}}', "scenario", count=2)
    assert speedup == {("synchronous",): pytest.approx(1.9), ("concurrent-8",): pytest.approx(1.9)}
    sim = series(p, f'qeval_similarity_ratio{{run="{run}"}}', "model", "metric", count=4)
    assert sim[("w4a16", "rougeL")] == pytest.approx(0.89)
    jobs = {s["metric"]["job"] for s in p.query('{__name__=~"qeval_benchmark_.+"}')}
    assert jobs == {stack.job}


# --- dashboards ----------------------------------------------------------------------------


def test_the_stand_in_servers_carry_the_labels_of_the_operators_services(stack: Stack) -> None:
    """What the vLLM stand-ins are scraped with is what the operator put on the served
    study's Services (run and stage), which the ServiceMonitor's relabelings read."""
    made = {
        (labels[m.LABEL_RUN], labels[m.LABEL_STAGE]) for labels in stack.study.services.values()
    }
    assert made == {(SERVED_RUN, "serve-fp32"), (SERVED_RUN, "serve-w4a16")}
    keys = (m.LABEL_RUN, m.LABEL_STAGE, m.LABEL_STAGE_KIND, m.MANAGED_BY)
    for labels in stack.study.services.values():
        model = labels[m.LABEL_STAGE].removeprefix("serve-")
        ours = server_labels(SERVED_RUN, model)
        assert {k: ours[k] for k in keys} == {k: labels[k] for k in keys}
    # The chart's relabelings made them the series' labels.
    expected = {
        (run, f"serve-{model}", model) for run, speeds in SERVERS.items() for model in speeds
    }
    selector = f'{{__name__=~"vllm[:_]num_requests_running", namespace="{NS}"}}'
    wait_for(
        lambda: set(by(stack.prometheus.query(selector), "run", "stage", "model_name")) == expected,
        f"{selector} by run, stage and model_name: {sorted(expected)}",
    )


def test_the_vllm_panels_keep_two_runs_serving_one_model_name_apart(stack: Stack) -> None:
    """Two runs in one namespace both serve models named fp32 and w4a16: each panel shows
    each run's server on its own, and selecting a run shows that run's figures alone."""
    serving = next(p for p in DASHBOARDS if p.stem == "qeval-serving")
    vllm = [q for q in panel_queries(serving) if "vllm" in q.expr]
    assert len(vllm) == 15
    expected = {(run, model) for run, speeds in SERVERS.items() for model in speeds}
    for query in vllm:
        samples = wait_for(
            lambda q=query: (
                (f := finite(stack.prometheus.query(q.expr))) and len(f) == len(expected) and f
            ),
            f"one series per run and model for {query.panel!r} {query.ref}: {query.expr}",
            timeout=15,
        )
        assert {(s["metric"]["run"], s["metric"]["model_name"]) for s in samples} == expected
        legends = {legend(query.legend, s["metric"]) for s in samples}
        assert len(legends) == len(samples), f"{query.panel}: legends {legends} repeat"
    # The served study selected: its own time to first token, not a mix with the other run's.
    (p50,) = [
        q
        for q in panel_queries(serving, run=SERVED_RUN)
        if q.panel == "vLLM time to first token" and q.ref == "A"
    ]
    samples = wait_for(lambda: finite(stack.prometheus.query(p50.expr)), p50.expr, timeout=15)
    medians = {s["metric"]["model_name"]: float(s["value"][1]) for s in samples}
    assert {s["metric"]["run"] for s in samples} == {SERVED_RUN}
    for model, speed in SPEED.items():
        # histogram_quantile interpolates within a bucket (0.02-0.04 or 0.04-0.08 s here): the
        # other run's servers (4 and 3.8 times slower) would pull a sum far out of it.
        assert medians[model] == pytest.approx(TTFT_MEDIAN / speed, rel=0.5), medians


QUERIES = [q for path in DASHBOARDS for q in panel_queries(path)]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q.dashboard}:{q.panel}:{q.ref}")
def test_every_dashboard_panel_query_returns_data(stack: Stack, query: Any) -> None:
    def found() -> list[dict[str, Any]]:
        return finite(stack.prometheus.query(query.expr))

    # Rates need a few scrapes in their window: wait for them, briefly.
    samples = wait_for(found, f"data for {query.panel!r}: {query.expr}", timeout=15)
    for s in samples:
        name = legend(query.legend, s["metric"])
        assert name.strip(" ·()"), f"{query.panel}: legend {query.legend!r} is empty for {s}"


def test_the_recovery_dashboard_as_it_opens_shows_primary_metrics(stack: Stack) -> None:
    """Its default view ($primary = true): data in every panel; the other metrics apart."""
    recovery = next(p for p in DASHBOARDS if p.stem == "qeval-recovery")
    for query in panel_queries(recovery, primary="true"):
        wait_for(
            lambda q=query: finite(stack.prometheus.query(q.expr)),
            f"data for {query.panel!r}: {query.expr}",
            timeout=15,
        )
    # The demo's tasks have one metric each: nothing else to show.
    for query in panel_queries(recovery, primary="false"):
        if "primary=" in query.expr:
            assert not stack.prometheus.query(query.expr), query.expr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_dashboard_variable_has_values(stack: Stack, path: Path) -> None:
    for name, label, selector in variable_queries(path):
        values = stack.prometheus.label_values(label, selector)
        assert values, f"{path.name}: ${name} (label_values({selector}, {label})) is empty"


# --- alerts -------------------------------------------------------------------------------------


def test_every_alert_rule_loads_and_fires_on_the_failed_study(stack: Stack) -> None:
    p = stack.prometheus
    rules = wait_for(
        lambda: (
            (r := p.rules()) and all(x.get("lastEvaluation", "0001")[:4] != "0001" for x in r) and r
        ),
        "every rule evaluated",
    )
    assert {r["name"] for r in rules} == {
        "QevalEvalRunFailed",
        "QevalQuantizedModelFailed",
        "QevalRecoveryBelowThreshold",
        "QevalTaskRecoveryBelowThreshold",
        "QevalOperatorDown",
    }
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    expected = {
        "QevalEvalRunFailed": {(NS,)},
        "QevalQuantizedModelFailed": {(NS,)},
        # The 2-bit negative control, and its tasks below the configured 95 %.
        "QevalRecoveryBelowThreshold": {(NS, "demo", "w2a16-rtn")},
        "QevalTaskRecoveryBelowThreshold": {
            (NS, "demo", "w2a16-rtn", "qeval_demo_facts"),
            (NS, "demo", "w2a16-rtn", "qeval_demo_recall"),
            (NS, "demo", "w2a16-rtn", "qeval_demo_perplexity"),
        },
    }
    keys = ("namespace", "run", "model", "task")
    for rule in rules:
        if rule["name"] not in expected:
            continue

        def alerting(query: str = rule["query"]) -> set[tuple[str, ...]]:
            samples = finite(p.query(query))
            return {tuple(s["metric"][k] for k in keys if k in s["metric"]) for s in samples}

        # (Waits out a scrape that caught the operator replacing a resource's series.)
        wait_for(
            lambda r=rule["name"]: alerting() == expected[r],
            f"{rule['name']} ({rule['query']}) to return {expected[rule['name']]}",
        )
        firing = wait_for(
            lambda r=rule["name"]: [
                a for a in p.api("alerts")["alerts"] if a["labels"]["alertname"] == r
            ],
            f"{rule['name']} to fire",
        )
        assert firing[0]["state"] == "firing"
        assert "{{" not in firing[0]["annotations"]["summary"]
    # The operator is up: QevalOperatorDown has nothing to say.
    (down,) = [r for r in rules if r["name"] == "QevalOperatorDown"]
    assert not p.query(down["query"])


# --- RBAC: the audit log says every call was allowed, and every grant was used -----------------

# Non-resource URLs every authenticated user may read (system:discovery, system:public-info-viewer).
DISCOVERY = ("/api", "/apis", "/version", "/openapi")


@dataclass(frozen=True)
class Call:
    """One request in the audit log: ``resource`` is ``"jobs"`` or ``"evalruns/status"``;
    a non-resource request has the path as its resource and the group None."""

    verb: str
    group: str | None
    resource: str
    namespace: str | None
    code: int


def calls_by(cluster: ControlPlane, user: str) -> list[Call]:
    """Every request ``user`` made, from the API server's audit log."""
    out = []
    for event in cluster.audit_events():
        if event.get("user", {}).get("username") != user:
            continue
        code = int(event.get("responseStatus", {}).get("code", 0))
        ref = event.get("objectRef")
        if ref is None:
            path = event["requestURI"].split("?")[0]
            out.append(Call(event["verb"], None, path, None, code))
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.append(
            Call(event["verb"], ref.get("apiGroup", ""), resource, ref.get("namespace"), code)
        )
    return out


def bound_roles(
    objects: list[dict[str, Any]], user: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The chart's Roles (in NS) and ClusterRoles bound to the ServiceAccount ``user``."""
    _, _, sa_namespace, sa_name = user.split(":")
    subject = {"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}
    roles: list[dict[str, Any]] = []
    cluster_roles: list[dict[str, Any]] = []
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if subject not in binding["subjects"]:
            continue
        ref = binding["roleRef"]
        (role,) = [
            o
            for o in objects
            if o["kind"] == ref["kind"]
            and o["metadata"]["name"] == ref["name"]
            and o["metadata"].get("namespace") == binding["metadata"].get("namespace")
        ]
        (cluster_roles if role["kind"] == "ClusterRole" else roles).append(role)
    assert all(r["metadata"]["namespace"] == NS for r in roles)
    return roles, cluster_roles


def granted(roles: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (verb, group, resource)
        for role in roles
        for (group, resource), verbs in grants(role).items()
        for verb in verbs
    }


# Granted and needed, but never a request of its own, so the audit log cannot show it: the
# OwnerReferencesPermissionEnforcement admission plugin checks that whoever sets
# blockOwnerDeletion on a child may update its owner's finalizers (an authorization check
# inside the child's create). The test checks the children do set it.
AUTHORIZATION_ONLY = {
    ("update", "qeval.dev", "quantizedmodels/finalizers"),
    ("update", "qeval.dev", "evalruns/finalizers"),
}


def check_identity(
    calls: list[Call], roles: list[dict[str, Any]], cluster_roles: list[dict[str, Any]], who: str
) -> set[tuple[str, str, str]]:
    """Fail on a refused call or one the chart does not allow; the grants used."""
    refused = sorted({(c.verb, c.group, c.resource, c.code) for c in calls if c.code in (403, 422)})
    assert not refused, f"the API server refused {who}: {refused}"
    in_namespace, cluster_wide = granted(roles), granted(cluster_roles)
    used = set()
    for c in calls:
        if c.group is None:  # a non-resource URL
            assert c.resource.startswith(DISCOVERY), f"{who} read {c.resource}"
            continue
        key = (c.verb, c.group, c.resource)
        assert c.namespace in (NS, None), f"{who} called {key} in {c.namespace}"
        allowed = cluster_wide | (in_namespace if c.namespace == NS else set())
        assert key in allowed, f"the chart does not allow {who} {key} in {c.namespace}"
        used.add(key)
    return used


def test_the_charts_rbac_allows_every_call_the_operator_and_the_stages_made(stack: Stack) -> None:
    ids = stack.identities
    objects = render_objects(
        ids.release, NS, f"watchNamespaces={{{NS}}}", "storage.create=true", only=RBAC_TEMPLATES
    )  # what install_identities applied

    # The operator: every call allowed; every verb the chart grants it used by this stack.
    roles, cluster_roles = bound_roles(objects, ids.operator_user)
    assert roles and cluster_roles
    calls = calls_by(stack.cluster, ids.operator_user)
    assert len(calls) > 20
    used = check_identity(calls, roles, cluster_roles, "the operator")
    unused = granted(roles + cluster_roles) - used - AUTHORIZATION_ONLY
    assert not unused, f"granted to the operator but never used: {sorted(unused)}"
    # What the operator creates (Jobs, its record of each server) blocks its owner's deletion,
    # for which those finalizers grants are there; the stage pods' results do not.
    children = [
        *stack.cluster.list("batch/v1/jobs", NS),
        *stack.cluster.list("v1/configmaps", NS, {m.LABEL_STAGE_KIND: "serve"}),
    ]
    blocking = {
        ("update", "qeval.dev", f"{ref['kind'].lower()}s/finalizers")
        for child in children
        for ref in child["metadata"]["ownerReferences"]
        if ref.get("blockOwnerDeletion")
    }
    assert blocking == AUTHORIZATION_ONLY, f"children blocking their owners: {sorted(blocking)}"

    # The stage pods: create their result ConfigMap, only (immutable: when a retried pod
    # publishes again, the failing quantization's second pod, its create is AlreadyExists).
    stage_roles, stage_cluster_roles = bound_roles(objects, ids.stage_user)
    assert stage_roles and not stage_cluster_roles
    stage_calls = calls_by(stack.cluster, ids.stage_user)
    stage_used = check_identity(stage_calls, stage_roles, [], "the stage pods")
    stage_unused = granted(stage_roles) - stage_used
    assert not stage_unused, f"granted to the stage pods but never used: {sorted(stage_unused)}"
    assert stage_used == {("create", "", "configmaps")}
    assert any(c.code == 409 for c in stage_calls)  # the retried pod's publish: the first kept
    # Secrets are only ever referenced (secretKeyRef, resolved by the kubelet): no account
    # asked for one, not even refused.
    secrets = [c for c in calls + stage_calls if c.resource.split("/")[0] == "secrets"]
    assert not secrets, secrets
    print(f"RBAC from the audit log: operator {sorted(used)}; stage pods {sorted(stage_used)}")


# --- promtool ---------------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = binary("promtool")
    assert exe
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_charts_rules(tmp_path: Path) -> None:
    done = promtool("check", "rules", str(rule_file(tmp_path)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 5 rules found" in done.stdout


def test_promtool_unit_tests_of_the_alerts(tmp_path: Path) -> None:
    """Each alert fires on what it is about, and only then (promtool's rule unit tests)."""
    (rule,) = template("prometheusrule.yaml", "metrics.prometheusRule.enabled=true")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    (down,) = [
        r for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "QevalOperatorDown"
    ]
    fired = {"exp_labels": {"severity": "critical"}, "exp_annotations": down["annotations"]}
    up = f'up{{job="{DEFAULT_JOB}", namespace="{NAMESPACE}"}}'
    w2 = 'run="r1", scheme="W2A16", model="w2"'
    w4 = 'run="r1", scheme="W4A16", model="w4"'
    high = "qeval_recovery_ratio_ci_high"
    primary, other = 'primary="true"', 'primary="false"'
    gsm8k = 'task="gsm8k", metric="exact_match"'
    mmlu = 'task="mmlu_abstract_algebra", metric="acc"'
    arc = 'task="arc_challenge", metric="acc_norm", filter="none"'

    def series(name: str, labels: str, values: str) -> dict[str, str]:
        return {"series": f'{name}{{namespace="ml", {labels}}}', "values": values}

    tests = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series("qeval_resources", 'kind="EvalRun", phase="Failed"', "0 0 1x10"),
                    series("qeval_resources", 'kind="EvalRun", phase="Succeeded"', "3x12"),
                    series("qeval_resources", 'kind="QuantizedModel", phase="Failed"', "0x12"),
                    series("qeval_mean_recovery_ratio", w2, "0.93x12"),
                    series("qeval_mean_recovery_ratio", w4, "0.99x12"),
                    # gsm8k's primary filter: its whole interval below 90 %.
                    series(high, f'{w2}, {gsm8k}, filter="strict-match", {primary}', "0.85x12"),
                    # Below too, but none of these fires: a secondary filter, a subtask of
                    # a group judged as a whole, another candidate's secondary metric.
                    series(high, f'{w2}, {gsm8k}, filter="flexible-extract", {other}', "0.5x12"),
                    series(high, f'{w2}, {mmlu}, filter="none", {other}', "0.6x12"),
                    series(high, f'{w4}, {gsm8k}, filter="flexible-extract", {other}', "0.7x12"),
                    # A point estimate below 90 % whose interval is not: noise, no alert.
                    series("qeval_recovery_ratio", f"{w4}, {arc}, {primary}", "0.88x12"),
                    series(high, f"{w4}, {arc}, {primary}", "0.97x12"),
                    {"series": up, "values": "1 1 1 0x20"},
                ],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "QevalEvalRunFailed", "exp_alerts": []},
                    {
                        "eval_time": "3m",
                        "alertname": "QevalEvalRunFailed",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "namespace": "ml"},
                                "exp_annotations": {
                                    "summary": "1 EvalRun(s) failed in namespace ml",
                                    "description": "kubectl get evalruns -n ml shows which; the "
                                    "Succeeded condition and status.failures say why.",
                                },
                            }
                        ],
                    },
                    {"eval_time": "5m", "alertname": "QevalQuantizedModelFailed", "exp_alerts": []},
                    {
                        "eval_time": "1m",
                        "alertname": "QevalRecoveryBelowThreshold",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "ml",
                                    "run": "r1",
                                    "model": "w2",
                                    "scheme": "W2A16",
                                },
                                "exp_annotations": {
                                    "summary": "Mean recovery 93% of w2 (W2A16) in EvalRun ml/r1 "
                                    "is below 95%",
                                    "description": "The candidate keeps less of the baseline's "
                                    "accuracy than the threshold allows; "
                                    'qeval_recovery_ratio{primary="true"} shows which tasks '
                                    "lost most.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "1m",
                        "alertname": "QevalTaskRecoveryBelowThreshold",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "namespace": "ml",
                                    "run": "r1",
                                    "model": "w2",
                                    "scheme": "W2A16",
                                    "task": "gsm8k",
                                    "metric": "exact_match",
                                    "filter": "strict-match",
                                    "primary": "true",
                                },
                                "exp_annotations": {
                                    "summary": "Recovery of w2 (W2A16) on gsm8k (exact_match, "
                                    "strict-match) in EvalRun ml/r1 is below 90%: at most 85% "
                                    "(95% interval)",
                                    "description": "One task lost more accuracy under "
                                    "quantization than the threshold allows, beyond what its "
                                    "number of items can explain.",
                                },
                            }
                        ],
                    },
                    # Down from 3m: pending until it has been down for 5m.
                    {"eval_time": "2m", "alertname": "QevalOperatorDown", "exp_alerts": []},
                    {"eval_time": "6m", "alertname": "QevalOperatorDown", "exp_alerts": []},
                    {
                        "eval_time": "9m",
                        "alertname": "QevalOperatorDown",
                        "exp_alerts": [fired],
                    },
                ],
            },
            {
                # Never scraped at all (no `up` series): down too.
                "interval": "1m",
                "input_series": [],
                "alert_rule_test": [
                    {"eval_time": "4m", "alertname": "QevalOperatorDown", "exp_alerts": []},
                    {
                        "eval_time": "6m",
                        "alertname": "QevalOperatorDown",
                        "exp_alerts": [fired],
                    },
                ],
            },
        ],
    }
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    done = promtool("test", "rules", str(test_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


# --- the picture, and the operator going away (last: it stops the operator) ----------------


def test_the_recovery_dashboard_picture_is_drawn_from_the_panels_promql(
    stack: Stack, tmp_path: Path
) -> None:
    from docs.render_dashboard import PANELS, draw

    path = (
        ROOT / "docs" / "recovery-dashboard.png"
        if os.environ.get("QEVAL_WRITE_DOCS")
        else tmp_path / "recovery.png"
    )
    recovery = next(p for p in DASHBOARDS if p.stem == "qeval-recovery")
    results = {}
    # As Grafana opens it with the demo run selected: primary metrics (the default).
    for query in panel_queries(recovery, run="demo", primary="true"):
        if query.panel in PANELS:
            samples = finite(stack.prometheus.query(query.expr))
            results.setdefault(query.panel, []).extend(
                (legend(query.legend, s["metric"]), float(s["value"][1])) for s in samples
            )
    assert set(results) == set(PANELS)
    draw(results, path)
    assert path.stat().st_size > 20_000


def close_metrics_server(port: int) -> None:
    """Close an HTTP server still listening on ``port``, as the operator pod's exit would
    (a stopped operator whose cleanup did not close its metrics server, in a process that
    goes on, as this test's does)."""
    import gc
    from wsgiref.simple_server import WSGIServer

    for obj in gc.get_objects():
        if isinstance(obj, WSGIServer) and obj.server_address[1] == port:
            obj.shutdown()
            obj.server_close()


def metrics_answer(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
            return True
    except OSError:
        return False


def test_operator_down_fires_once_the_operator_stops(stack: Stack) -> None:
    p = stack.prometheus
    (down,) = [r for r in p.rules() if r["name"] == "QevalOperatorDown"]
    assert not p.query(down["query"])
    stack.operator.stop_now()  # its cleanup closes the metrics server
    if metrics_answer(stack.operator.metrics_port):
        close_metrics_server(stack.operator.metrics_port)
        pytest.fail("the operator stopped but its metrics server still answers")
    samples = wait_for(lambda: finite(p.query(down["query"])), "QevalOperatorDown's expression")
    assert float(samples[0]["value"][1]) == 1
    # `for: 5m` holds it pending: a restart does not page anyone.
    alert = wait_for(
        lambda: [
            a for a in p.api("alerts")["alerts"] if a["labels"]["alertname"] == "QevalOperatorDown"
        ],
        "QevalOperatorDown pending",
    )
    assert alert[0]["state"] == "pending"
