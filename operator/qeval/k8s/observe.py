"""What the operator sees of its children, reduced to facts (pure functions of API objects).

A Job says whether its stage runs, finished or failed; a model server's Deployment says
whether it is ready; a pod says why it does not run: not scheduled (the scheduler's reason:
reported, the stage waits), an image that cannot be pulled (reported; fatal once it lasts
past the pull timeout: a registry's rate limit is transient, and a pod that cannot pull never
fails its Job by itself), a server that exits or is not ready in time (it would restart
forever), a container killed for memory; a result ConfigMap holds the stage's result document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from qeval.k8s.manifests import (
    ANNOTATION_SPEC_DIGEST,
    LABEL_OWNER_UID,
    LABEL_STAGE_KIND,
    RESULT_KEY,
    child_name,
    stage_name,
)
from qeval.k8s.reuse import LABEL_REUSE_KEY
from qeval.reasons import JOB_FAILED, OOM_KILLED, SERVER_NOT_READY, UNREADABLE_RESULT
from qeval.stages.envelope import StageResult, failed

JobPhase = Literal["Pending", "Running", "Succeeded", "Failed"]

# Container waiting reasons that never resolve by themselves: the stage has failed.
FATAL_WAITING = frozenset(
    {
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "CrashLoopBackOff",  # only servers restart (stage pods have restartPolicy Never)
    }
)
# Waiting reasons that may resolve (a registry's rate limit, a blip): fatal only once they
# have lasted the operator's image pull timeout since the pod was scheduled.
PULL_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff"})


@dataclass(frozen=True)
class JobState:
    """One stage Job, as observed."""

    stage: str
    name: str
    phase: JobPhase
    reason: str | None = None
    message: str | None = None
    created: str | None = None
    spec_digest: str | None = None  # of the owner's immutable fields when it was created
    reuse_key: str | None = None  # the key its result may be reused under (the operator's)
    starting: bool = False  # it has a pod, none ready yet (pulling an image, or unscheduled)

    @property
    def pods_tell_more(self) -> bool:
        """Its pods say more than it does: why it does not start, or why it failed (the Job
        only says which rule or limit ended it; the pod says OOMKilled)."""
        return self.starting or self.phase == "Failed"


@dataclass(frozen=True)
class PodProblem:
    """A stage that does not run, and why (its pod, or the API server's answer when its Job
    or server was created): ``fatal`` ends the stage; otherwise the stage waits
    (unscheduled, still retrying an image pull, over a quota) and the status says why."""

    stage: str
    reason: str
    message: str
    fatal: bool = True


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
        "stage": stage_name(meta),
        "name": meta.get("name", ""),
        "created": meta.get("creationTimestamp"),
        "spec_digest": annotations.get(ANNOTATION_SPEC_DIGEST),
        "reuse_key": (meta.get("labels") or {}).get(LABEL_REUSE_KEY),
    }
    if failed := _true(conditions, "Failed", "FailureTarget"):
        return JobState(
            phase="Failed",
            reason=failed.get("reason") or JOB_FAILED,
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

    @property
    def pods_tell_more(self) -> bool:
        """Its pod says more than it does: why it does not start, or why it stopped."""
        return self.starting


def server_state(deployment: Mapping[str, Any]) -> ServerState:
    """Ready once a replica is available. Whether it failed, its pod says (``pod_problem``):
    the Deployment's progress deadline would count the queue, a node scale-up and the image
    pull, which are not the server's fault."""
    meta, status = deployment.get("metadata", {}), deployment.get("status") or {}
    base = {
        "stage": stage_name(meta),
        "name": meta.get("name", ""),
        "created": meta.get("creationTimestamp"),
        "spec_digest": (meta.get("annotations") or {}).get(ANNOTATION_SPEC_DIGEST),
    }
    if (status.get("availableReplicas") or 0) > 0:
        return ServerState(ready=True, **base)
    return ServerState(ready=False, starting=bool(status.get("replicas")), **base)


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None


def _containers(pod: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    spec = pod.get("spec") or {}
    every = [*spec.get("initContainers", []), *spec.get("containers", [])]
    return {c.get("name", ""): c for c in every}


def _startup_allowance(container: Mapping[str, Any]) -> int | None:
    """Seconds a container's startup probe allows it to become ready, if it has one."""
    probe = container.get("startupProbe")
    if not probe:
        return None
    return int(probe.get("failureThreshold", 3)) * int(probe.get("periodSeconds", 10))


def _oom(cs: Mapping[str, Any], container: Mapping[str, Any]) -> str | None:
    for state in (cs.get("state"), cs.get("lastState")):
        terminated = (state or {}).get("terminated") or {}
        if terminated.get("reason") == OOM_KILLED:
            limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
            within = f" of {limit}" if limit else ""
            return (
                f"container {cs.get('name')} was killed by the kernel for exceeding its memory "
                f"limit{within} (OOMKilled, exit code {terminated.get('exitCode', 137)}): raise "
                "spec.scheduling.resources.limits.memory (and requests.memory)"
            )
    return None


def _exited(cs: Mapping[str, Any], container: Mapping[str, Any]) -> tuple[str, str]:
    """The reason and message of a container that keeps exiting (CrashLoopBackOff)."""
    waiting = (cs.get("state") or {}).get("waiting") or {}
    message = f"container {cs.get('name')}: {waiting.get('message') or ''}".strip()
    last = (cs.get("lastState") or {}).get("terminated") or {}
    if not last:
        return waiting.get("reason", ""), message
    ran = _seconds_between(last.get("startedAt"), last.get("finishedAt"))
    allowance = _startup_allowance(container)
    if allowance is not None and ran is not None and ran >= allowance and not cs.get("started"):
        return SERVER_NOT_READY, (
            f"container {cs.get('name')} was not ready within {allowance} s of starting "
            f"(its startup probe; serving.readyTimeoutSeconds) and was killed after {ran:.0f} s"
            + (f": {str(last['message']).strip()[-2000:]}" if last.get("message") else "")
        )
    # why it exited: its code and its log tail (FallbackToLogsOnError)
    message += f"; exited with code {last.get('exitCode')}"
    if last.get("message"):
        message += f": {str(last['message']).strip()[-2000:]}"
    return waiting.get("reason", ""), message


def _scheduled_at(status: Mapping[str, Any]) -> str | None:
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "True":
            return c.get("lastTransitionTime")
    return status.get("startTime")


def pod_problem(
    pod: Mapping[str, Any], now: str | None = None, pull_timeout: float = 600.0
) -> PodProblem | None:
    """Why a stage pod does not run, if it does not: killed for memory, a container that
    cannot be created or keeps exiting (fatal), an image it cannot pull (fatal after
    ``pull_timeout`` seconds from its scheduling, to ``now``), or not scheduled (the
    scheduler's reason; not fatal: a node may free up or be added)."""
    status = pod.get("status") or {}
    name = pod.get("metadata", {}).get("name", "")
    stage = stage_name(pod.get("metadata", {}))
    specs = _containers(pod)
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            container = specs.get(cs.get("name", ""), {})
            if (oom := _oom(cs, container)) is not None:
                return PodProblem(stage, OOM_KILLED, oom)
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in FATAL_WAITING:
                reason, message = _exited(cs, container)
                return PodProblem(stage, reason, message)
            if reason in PULL_WAITING:
                waited = _seconds_between(_scheduled_at(status), now)
                fatal = waited is not None and waited >= pull_timeout
                message = f"container {cs.get('name')}: {waiting.get('message') or ''}".strip()
                if not fatal:
                    message += f" (retrying; the stage fails if it lasts {pull_timeout:.0f} s)"
                return PodProblem(stage, reason, message, fatal=fatal)
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            why = c.get("message") or "no node fits it"
            reason = c.get("reason") or "Unschedulable"
            return PodProblem(stage, reason, f"pod {name}: {why}", fatal=False)
    return None


# The API server refuses such a child every time it is sent (an invalid object).
REFUSED_FOR_GOOD = frozenset({400, 422})


def api_problem(stage: str, child: str, error: Exception) -> PodProblem:
    """Why the API server did not create ``child`` (e.g. "Job x") for ``stage``: fatal if it
    would refuse it again, else the stage waits and the create is retried (a quota, a
    missing permission, a server that did not answer)."""
    status = getattr(error, "status", None)
    if not status:  # no answer at all: the request did not reach the server, or timed out
        return PodProblem(stage, "CreateFailed", f"creating {child}: {error}", fatal=False)
    try:
        body = json.loads(getattr(error, "body", None) or "{}")
    except ValueError:
        body = {}
    why = str(body.get("reason") or getattr(error, "reason", "") or "")
    reason = "Create" + (re.sub(r"[^A-Za-z0-9]", "", why) or str(status))
    message = f"creating {child}: {status} {body.get('message') or why}"
    return PodProblem(stage, reason, message[:2000], fatal=status in REFUSED_FOR_GOOD)


def result_document(configmap: Mapping[str, Any]) -> StageResult | None:
    """The stage result document a ConfigMap holds (a Failed one if it is unreadable), if
    the ConfigMap is ``genuine``."""
    text = (configmap.get("data") or {}).get(RESULT_KEY)
    if text is None:
        return None
    try:
        doc = StageResult.read(text)
    except (ValueError, ValidationError) as e:
        meta = configmap.get("metadata", {})
        doc = failed(
            stage_name(meta),
            (meta.get("labels") or {}).get(LABEL_STAGE_KIND, ""),
            UNREADABLE_RESULT,
            f"ConfigMap {meta.get('name')}: {e}",
        )
    return doc if genuine(configmap, doc.stage) else None


def genuine(configmap: Mapping[str, Any], stage: str) -> bool:
    """Whether a result ConfigMap is the one its owner's ``stage`` publishes: named after
    that owner and stage, and owned by the resource its owner-uid label names. The stage
    account's admission policy lets a pod write only the ConfigMap named after its own Job
    (``child_name``), but what that ConfigMap's labels, owner and document say is the
    writer's choice: a pod must not pass its result off as another stage's or run's."""
    meta = configmap.get("metadata") or {}
    owners = [o for o in meta.get("ownerReferences") or [] if o.get("controller")]
    uid = (meta.get("labels") or {}).get(LABEL_OWNER_UID)
    if len(owners) != 1 or not uid or owners[0].get("uid") != uid:
        return False
    return bool(meta.get("name") == child_name(str(owners[0].get("name", "")), stage))
