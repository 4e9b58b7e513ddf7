"""The test plays what an emulated cluster lacks: the Job controller and the stage pods.

Shared by the operator tests and the operator benchmark. A stage's result is published
with ``qeval.k8s.publish`` from the Job's own environment, as ``qeval <stage>`` does in a
pod; results are made up (scores given by the caller) except the aggregate, which is the
real ``summarize`` over the evaluate results.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from qeval.api.evalrun import Score
from qeval.k8s import manifests as m
from qeval.k8s.publish import publish
from qeval.results.cache import key_of
from qeval.results.summary import ModelOutcome, summarize
from qeval.stages.envelope import StageResult, StageStatus

T = TypeVar("T")
NOW = "2026-11-23T10:05:00Z"


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)  # the poll interval, not the oracle
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def finish_job(api: Any, job: Mapping[str, Any], ok: bool = True) -> None:
    """Play the Job controller: mark the Job complete, or failed with backoff exhausted."""
    from kubernetes import client

    now = NOW
    if ok:
        conditions = [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
            {"type": "Complete", "status": "True", "lastTransitionTime": now},
        ]
        body = {"status": {"succeeded": 1, "active": 0, "conditions": conditions}}
    else:
        conditions = [
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
                "lastTransitionTime": now,
            }
        ]
        body = {"status": {"failed": 2, "active": 0, "conditions": conditions}}
    meta = job["metadata"]
    client.BatchV1Api(api).patch_namespaced_job_status(meta["name"], meta["namespace"], body)


def stage_env(job: Mapping[str, Any]) -> dict[str, str]:
    """The stage container's environment, as its pod would see it."""
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    out = {e["name"]: e["value"] for e in env if "value" in e}
    out["QEVAL_RESULT_NAMESPACE"] = job["metadata"]["namespace"]  # from the downward API
    return out


def stage_input(job: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's input document (``qeval <stage> --input env:QEVAL_STAGE_INPUT``)."""
    return dict(json.loads(stage_env(job)[m.INPUT_ENV]))


def publish_result(job: Mapping[str, Any], result: dict[str, Any] | None, ok: bool = True) -> None:
    """Play the stage pod: publish its result document the way ``qeval <stage>`` does."""
    labels = job["metadata"]["labels"]
    doc = StageResult(
        stage=labels[m.LABEL_STAGE],
        kind=labels[m.LABEL_STAGE_KIND],
        status=StageStatus.SUCCEEDED if ok else StageStatus.FAILED,
        reason=None if ok else "Crashed",
        message=None if ok else "RuntimeError: CUDA out of memory",
        started_at="2026-11-23T10:00:00Z",
        finished_at=NOW,
        wall_seconds=300.0,
        result=result,
    )
    publish(doc, stage_env(job))  # with $KUBECONFIG, where a pod uses its service account


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
