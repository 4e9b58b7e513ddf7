"""What the operator sees of its children, reduced to facts (pure functions of API objects).

A Job says whether its stage runs, finished or failed; a model server's Deployment says
whether it is ready or missed its deadline; a pod says why it cannot start (an image that
cannot be pulled never fails the Job by itself, a server that exits at start restarts
forever); a result ConfigMap holds the stage's result document.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from qeval.k8s.manifests import (
    ANNOTATION_INPUT_DIGEST,
    ANNOTATION_SPEC_DIGEST,
    LABEL_STAGE,
    LABEL_STAGE_KIND,
    RESULT_KEY,
)
from qeval.stages.envelope import StageResult, failed

JobPhase = Literal["Pending", "Running", "Succeeded", "Failed"]

# Container waiting reasons that never resolve by themselves: the stage has failed.
FATAL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "CrashLoopBackOff",  # only servers restart (stage pods have restartPolicy Never)
    }
)


@dataclass(frozen=True)
class JobState:
    """One stage Job, as observed."""

    stage: str
    name: str
    phase: JobPhase
    reason: str | None = None
    message: str | None = None
    created: str | None = None
    input_digest: str | None = None
    spec_digest: str | None = None  # of the owner's immutable fields when it was created
    starting: bool = False  # it has a pod, none ready yet (pulling an image, or unscheduled)


@dataclass(frozen=True)
class PodProblem:
    """A stage pod that cannot start, and why."""

    stage: str
    reason: str
    message: str


def _true(conditions: list[dict[str, Any]], *types: str) -> dict[str, Any] | None:
    for c in conditions:
        if c.get("type") in types and c.get("status") == "True":
            return c
    return None


def job_state(job: Mapping[str, Any]) -> JobState:
    """A Job's phase from its conditions (Complete/SuccessCriteriaMet, Failed/FailureTarget)."""
    meta, status = job.get("metadata", {}), job.get("status") or {}
    conditions = status.get("conditions") or []
    annotations = meta.get("annotations") or {}
    base = {
        "stage": meta.get("labels", {}).get(LABEL_STAGE, ""),
        "name": meta.get("name", ""),
        "created": meta.get("creationTimestamp"),
        "input_digest": annotations.get(ANNOTATION_INPUT_DIGEST),
        "spec_digest": annotations.get(ANNOTATION_SPEC_DIGEST),
    }
    if failed := _true(conditions, "Failed", "FailureTarget"):
        return JobState(
            phase="Failed",
            reason=failed.get("reason") or "JobFailed",
            message=failed.get("message") or "the stage's Job failed",
            **base,
        )
    if _true(conditions, "Complete", "SuccessCriteriaMet"):
        return JobState(phase="Succeeded", **base)
    # A pod counts as running once it is ready (Kubernetes >= 1.24 reports `ready`); an
    # active pod that is not ready may be stuck pulling its image, which only pods show.
    ready = status["ready"] > 0 if "ready" in status else bool(status.get("active"))
    if ready:
        return JobState(phase="Running", **base)
    return JobState(phase="Pending", starting=bool(status.get("active")), **base)


@dataclass(frozen=True)
class ServerState:
    """One model server (a serve stage's Deployment), as observed."""

    stage: str
    name: str
    ready: bool
    failed: bool = False
    reason: str | None = None
    message: str | None = None
    created: str | None = None
    spec_digest: str | None = None
    starting: bool = False  # it has a pod, none ready yet


SERVER_NOT_READY = "ServerNotReady"


def server_state(deployment: Mapping[str, Any]) -> ServerState:
    """Ready once a replica is available; failed when the Deployment missed its progress
    deadline (Progressing=False, ProgressDeadlineExceeded: not ready in the ready timeout)."""
    meta, spec = deployment.get("metadata", {}), deployment.get("spec") or {}
    status = deployment.get("status") or {}
    conditions = status.get("conditions") or []
    base = {
        "stage": meta.get("labels", {}).get(LABEL_STAGE, ""),
        "name": meta.get("name", ""),
        "created": meta.get("creationTimestamp"),
        "spec_digest": (meta.get("annotations") or {}).get(ANNOTATION_SPEC_DIGEST),
    }
    if (status.get("availableReplicas") or 0) > 0:
        return ServerState(ready=True, **base)
    stalled = next(
        (
            c
            for c in conditions
            if c.get("type") == "Progressing"
            and c.get("status") == "False"
            and c.get("reason") == "ProgressDeadlineExceeded"
        ),
        None,
    )
    if stalled is not None:
        deadline = spec.get("progressDeadlineSeconds")
        within = f" within {deadline} s" if deadline else ""
        return ServerState(
            ready=False,
            failed=True,
            reason=SERVER_NOT_READY,
            message=f"server {base['name']} was not ready{within}: "
            f"{stalled.get('message') or 'no progress'}",
            **base,
        )
    return ServerState(ready=False, starting=bool(status.get("replicas")), **base)


def pod_problem(pod: Mapping[str, Any]) -> PodProblem | None:
    """Why a stage pod cannot start, if it is stuck for good (e.g. ImagePullBackOff)."""
    status = pod.get("status") or {}
    stage = pod.get("metadata", {}).get("labels", {}).get(LABEL_STAGE, "")
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FATAL_WAITING:
                message = f"container {cs.get('name')}: {waiting.get('message') or ''}".strip()
                last = (cs.get("lastState") or {}).get("terminated") or {}
                if last:  # why it exited: its code and its log tail (FallbackToLogsOnError)
                    message += f"; exited with code {last.get('exitCode')}"
                    if last.get("message"):
                        message += f": {str(last['message']).strip()[-2000:]}"
                return PodProblem(stage, waiting["reason"], message)
    return None


def result_document(configmap: Mapping[str, Any]) -> StageResult | None:
    """The stage result document a ConfigMap holds (a Failed one if it is unreadable)."""
    text = (configmap.get("data") or {}).get(RESULT_KEY)
    if text is None:
        return None
    try:
        return StageResult.model_validate(json.loads(text))
    except (ValueError, ValidationError) as e:
        labels = configmap.get("metadata", {}).get("labels", {})
        return failed(
            labels.get(LABEL_STAGE, ""),
            labels.get(LABEL_STAGE_KIND, ""),
            "UnreadableResult",
            f"ConfigMap {configmap.get('metadata', {}).get('name')}: {e}",
        )
