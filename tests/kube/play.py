"""The test plays what a control plane without kubelets lacks: the kubelet and the stage
processes of the pods (the Job, Deployment and ReplicaSet controllers and the scheduler
are the real ones).

Shared by the operator tests and the operator benchmark. A stage's result is published
with ``qeval.k8s.publish`` from the Job's own environment, as ``qeval <stage>`` does in a
pod; results are made up (scores given by the caller) except the aggregate, which is the
real ``summarize`` over the evaluate results. Tests that run the stages for real use the
kubelet stand-in (``tests/cluster/kubelet.py``) instead.
"""

from __future__ import annotations

import datetime
import json
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from qeval.api.evalrun_status import Score
from qeval.k8s import manifests as m
from qeval.k8s.publish import publish
from qeval.results.cache import key_of
from qeval.results.summary import ModelOutcome, summarize
from qeval.stages.envelope import StageResult, StageStatus

if TYPE_CHECKING:
    from tests.cluster.controlplane import ControlPlane

T = TypeVar("T")
NOW = "2026-11-23T10:05:00Z"
MERGE_PATCH = "application/merge-patch+json"


def wait_for(
    check: Callable[[], T | None], what: str, timeout: float = 20.0, interval: float = 0.05
) -> T:
    """Poll ``check`` every ``interval`` seconds until it returns something truthy; fail
    naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)  # the poll interval, not the oracle
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_pods(cluster: ControlPlane, job: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The pods the real Job controller made for ``job``."""
    meta = job["metadata"]
    return cluster.list(
        "v1/pods", meta["namespace"], {"batch.kubernetes.io/job-name": meta["name"]}
    )


def play_pod(
    cluster: ControlPlane,
    pod: Mapping[str, Any],
    *,
    exit_code: int | None = 0,
    waiting: Mapping[str, str] | None = None,
    ready: bool = False,
    reason: str | None = None,
) -> None:
    """Play the kubelet for one pod: its container exited (``exit_code``, with ``reason``
    such as OOMKilled), is waiting (``waiting``: a reason and message, e.g.
    ImagePullBackOff) or runs (``exit_code=None``, ``ready``). The real controllers take it
    from there (Job Complete/Failed, Deployment available)."""
    meta, spec = pod["metadata"], pod["spec"]
    t = now()
    if waiting is not None:
        phase, state = "Pending", {"waiting": dict(waiting)}
    elif exit_code is None:
        phase, state = "Running", {"running": {"startedAt": t}}
    else:
        phase = "Succeeded" if exit_code == 0 else "Failed"
        reason = reason or ("Completed" if exit_code == 0 else "Error")
        state = {
            "terminated": {"exitCode": exit_code, "reason": reason, "startedAt": t, "finishedAt": t}
        }
    running = phase == "Running"
    conditions = [
        {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": t}
        for kind, ok in (
            ("PodScheduled", True),
            ("Initialized", True),
            ("ContainersReady", running and ready),
            ("Ready", running and ready),
        )
    ]
    containers = [
        {
            "name": c["name"],
            "image": c["image"],
            "imageID": "",
            "ready": running and ready,
            "started": running,
            "restartCount": 0,
            "state": state,
        }
        for c in spec["containers"]
    ]
    status = {
        "phase": phase,
        "startTime": t,
        "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1",
        "conditions": conditions,
        "containerStatuses": containers,
    }
    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
    code, text = cluster.request("PATCH", path, {"status": status}, MERGE_PATCH)
    assert code == 200, f"the kubelet's status for {meta['name']} was refused: {code} {text}"


def play_crash_loop(
    cluster: ControlPlane, pod: Mapping[str, Any], terminated: Mapping[str, Any], restarts: int
) -> None:
    """Play the kubelet for a pod whose container keeps exiting (restartPolicy Always): it
    last ended as ``terminated`` (its exit code, reason, times and termination message) and
    now waits out the back-off, as CrashLoopBackOff."""
    meta = pod["metadata"]
    containers = [
        {
            "name": c["name"],
            "image": c["image"],
            "imageID": "",
            "ready": False,
            "started": False,
            "restartCount": restarts,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
            "lastState": {"terminated": dict(terminated)},
        }
        for c in pod["spec"]["containers"]
    ]
    status = {"phase": "Running", "containerStatuses": containers}
    path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
    code, text = cluster.request("PATCH", path, {"status": status}, MERGE_PATCH)
    assert code == 200, f"the kubelet's status for {meta['name']} was refused: {code} {text}"


def scheduled_pod(cluster: ControlPlane, job: Mapping[str, Any]) -> dict[str, Any]:
    """The Job's active pod once the real scheduler has bound it to a node."""
    meta = job["metadata"]

    def bound() -> dict[str, Any] | None:
        active = [
            p
            for p in job_pods(cluster, job)
            if p.get("status", {}).get("phase", "Pending") == "Pending"
            and not p["metadata"].get("deletionTimestamp")
        ]
        return next((p for p in active if p["spec"].get("nodeName")), None)

    try:
        return wait_for(bound, f"a scheduled pod of Job {meta['name']}", timeout=30)
    except AssertionError as e:  # say why: the scheduler's conditions, the Job's events
        pods = [p.get("status", {}).get("conditions") for p in job_pods(cluster, job)]
        events = [
            (ev.get("reason"), ev.get("message"))
            for ev in cluster.list("v1/events", meta["namespace"])
            if ev.get("involvedObject", {}).get("name", "").startswith(meta["name"])
        ]
        raise AssertionError(f"{e}\npods: {pods}\nevents: {events}") from None


def job_condition(cluster: ControlPlane, job: Mapping[str, Any], kind: str) -> bool:
    meta = job["metadata"]
    current = cluster.get("batch/v1/jobs", meta["namespace"], meta["name"]) or {}
    conditions = current.get("status", {}).get("conditions") or []
    return any(c["type"] == kind and c["status"] == "True" for c in conditions)


def finish_job(
    cluster: ControlPlane, job: Mapping[str, Any], ok: bool = True, exit_code: int = 1
) -> None:
    """Play the kubelet until the real Job controller finishes ``job``: its pod exits 0;
    or every pod it makes exits ``exit_code`` until the Job fails (a crash, 1, is retried
    up to the backoff limit; a recorded failure, 3, fails it at once)."""
    if ok:
        play_pod(cluster, scheduled_pod(cluster, job), exit_code=0)
        wait_for(lambda: job_condition(cluster, job, "Complete"), "the Job to complete")
        return
    deadline = time.monotonic() + 90  # the Job controller waits 10 s, 20 s, ... between pods
    while not job_condition(cluster, job, "Failed"):
        assert time.monotonic() < deadline, f"Job {job['metadata']['name']} did not fail"
        pending = [
            p
            for p in job_pods(cluster, job)
            if p.get("status", {}).get("phase", "Pending") == "Pending"
            and p["spec"].get("nodeName")
        ]
        for pod in pending:
            play_pod(cluster, pod, exit_code=exit_code)
        time.sleep(0.2)  # the poll interval, not the oracle


def stage_env(job: Mapping[str, Any]) -> dict[str, str]:
    """The stage container's environment, as its pod would see it."""
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    out = {e["name"]: e["value"] for e in env if "value" in e}
    out["QEVAL_RESULT_NAMESPACE"] = job["metadata"]["namespace"]  # from the downward API
    return out


def stage_input(job: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's input document (``qeval <stage> --input env:QEVAL_STAGE_INPUT``)."""
    return dict(json.loads(stage_env(job)[m.INPUT_ENV]))


def publish_result(
    job: Mapping[str, Any],
    result: dict[str, Any] | None,
    ok: bool = True,
    kubeconfig: Path | None = None,
) -> None:
    """Play the stage pod: publish its result document the way ``qeval <stage>`` does, as
    the stage ServiceAccount (``kubeconfig``; default $KUBECONFIG)."""
    labels = job["metadata"]["labels"]
    doc = StageResult(
        stage=m.stage_name(job["metadata"]),
        kind=labels[m.LABEL_STAGE_KIND],
        status=StageStatus.SUCCEEDED if ok else StageStatus.FAILED,
        reason=None if ok else "Crashed",
        message=None if ok else "RuntimeError: CUDA out of memory",
        started_at="2026-11-23T10:00:00Z",
        finished_at=NOW,
        wall_seconds=300.0,
        result=result,
    )
    api = None
    if kubeconfig is not None:
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        api = client.ApiClient(configuration)
    publish(doc, stage_env(job), api=api)


def quantize_result(job: Mapping[str, Any]) -> dict[str, Any]:
    """What a quantize stage reports: a 4x smaller model, where its input said."""
    inp = stage_input(job)
    return {
        "name": inp["name"],
        "scheme": inp["scheme"],
        "recipe": inp["recipe"],
        "outputDir": inp["outputDir"],
        "sizeBytes": 1_500_000,
        "baseSizeBytes": 6_000_000,
        "compressionRatio": 4.0,
        "quantizeSeconds": 12.5,
    }


def evaluate_result(job: Mapping[str, Any], scores: Mapping[str, float]) -> dict[str, Any]:
    """What an evaluate stage reports: ``scores[model]`` on one task, with a stderr."""
    inp = stage_input(job)
    name = inp["modelName"]
    score = Score(
        model=name,
        task="qeval_demo_facts",
        metric="acc",
        value=scores[name],
        stderr=0.005,
        samples=1000,
        primary=True,
    )
    return {
        "modelName": name,
        "backend": "hf",
        "harnessVersion": "0.4.13",
        "scores": [score.dump()],
        "modelSizeBytes": 6_000_000 if name == "fp32" else 1_500_000,
        "cacheKeys": {"qeval_demo_facts": key_of([inp["model"], "qeval_demo_facts"])},
        "resultsPath": f"{inp['outputDir']}/results.json",
        "samplesDir": f"{inp['outputDir']}/samples",
    }


def aggregate_result(
    job: Mapping[str, Any], evaluations: Mapping[str, dict[str, Any]]
) -> dict[str, Any]:
    """Play the aggregate stage: the real ``summarize`` over the evaluate results."""
    inp = stage_input(job)

    def outcome(ref: dict[str, Any]) -> ModelOutcome:
        result = evaluations[ref["name"]]
        scores = tuple(Score.model_validate(s) for s in result["scores"])
        return ModelOutcome(ref["name"], ref.get("scheme"), scores, result["modelSizeBytes"])

    summary = summarize(outcome(inp["baseline"]), [outcome(c) for c in inp["candidates"]])
    summary.results_location = inp["resultsLocation"]
    return summary.dump()
