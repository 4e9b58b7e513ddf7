"""The kopf handlers, kept thin: observe, call ``reconcile``, apply what it decides.

* One startup handler holds every setting (``OperatorSettings``, from the environment).
* Indexes keep the children the operator watches (stage Jobs, result ConfigMaps) and the
  QuantizedModels, in memory, rebuilt from the API on every start.
* One daemon per QuantizedModel and per EvalRun reconciles it whenever one of its
  children changes (a wake-up from an event handler), and at least every
  ``resync_seconds``: no busy loop, no polling of the API.

Handlers are registered into a registry built by ``registry()``, so tests can start
several operators one after another, each with its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from qeval.api.common import Resource, SecretKeyRef
from qeval.api.documents import explain
from qeval.api.evalrun import EvalRun, EvalRunStatus
from qeval.api.quantizedmodel import QuantizedModel, QuantizedModelStatus
from qeval.k8s import manifests as m
from qeval.k8s.kube import Kube, api_client
from qeval.k8s.metrics import Metrics
from qeval.k8s.observe import JobState, job_state, pod_problem, result_document
from qeval.k8s.reconcile import (
    Decision,
    ModelState,
    Observed,
    decide_evalrun,
    decide_quantized_model,
    invalid_spec,
)
from qeval.k8s.settings import OperatorSettings
from qeval.plan import Layout
from qeval.recipes import scheme_label
from qeval.stages.envelope import StageResult

CHILDREN = {m.MANAGED_BY: m.MANAGER}
RESULTS = {m.MANAGED_BY: m.MANAGER, m.LABEL_RESULT: "true"}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Wakeups:
    """One asyncio.Event per resource uid, set when something it depends on changed."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, uid: str) -> asyncio.Event:
        return self._events.setdefault(uid, asyncio.Event())

    def wake(self, uid: str | None) -> None:
        if uid and (event := self._events.get(uid)) is not None:
            event.set()

    def forget(self, uid: str) -> None:
        self._events.pop(uid, None)


# --- startup, login, probe ------------------------------------------------------------


async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Every setting, in one place: kopf's own, and ours from QEVAL_* variables."""
    config = OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=config.annotation_prefix
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=config.annotation_prefix, key="last-handled-configuration"
    )
    settings.posting.level = logging.getLevelName(config.posting_level)
    settings.networking.request_timeout = config.api_timeout_seconds
    settings.watching.server_timeout = config.watch_timeout_seconds
    settings.watching.client_timeout = config.watch_timeout_seconds + 10
    settings.peering.standalone = config.peering is None
    if config.peering:
        settings.peering.name = config.peering
        settings.peering.clusterwide = config.clusterwide
    memo.config = config
    memo.kube = Kube(api_client(), config.api_timeout_seconds)
    memo.metrics = Metrics()
    memo.wakeups = Wakeups()
    memo.metrics_server = memo.metrics.serve(config.metrics_port) if config.metrics_port else None


async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "metrics_server", None):
        server, _thread = memo.metrics_server
        server.shutdown()
        server.server_close()


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: its service account; elsewhere: $KUBECONFIG (read now, not at import)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def probe(memo: kopf.Memo, **_: Any) -> dict[str, int]:
    """Liveness details: how many resources the operator reconciles now."""
    return {"reconciling": len(memo.wakeups._events)}


# --- indexes: what the operator sees of its children ------------------------------------


def index_jobs(body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[str, JobState] | None:
    uid = labels.get(m.LABEL_OWNER_UID)
    return {uid: job_state(body)} if uid else None


def index_results(body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[str, StageResult] | None:
    uid = labels.get(m.LABEL_OWNER_UID)
    doc = result_document(body) if uid else None
    return {uid: doc} if uid and doc else None


def index_models(
    spec: kopf.Spec, status: kopf.Status, name: str, namespace: str, **_: Any
) -> dict[tuple[str, str], tuple[dict[str, Any], str | None, str]]:
    conditions: list[dict[str, Any]] = status.get("conditions", [])
    ready = next((c for c in conditions if c.get("type") == "Ready"), {})
    return {(namespace, name): (dict(spec), status.get("phase"), ready.get("message", ""))}


def index_runs_by_model(
    spec: kopf.Spec, namespace: str, uid: str, **_: Any
) -> dict[tuple[str, str], str]:
    return {
        (namespace, c["quantizedModel"]): uid
        for c in spec.get("candidates", [])
        if c.get("quantizedModel")
    }


# --- wake-ups ----------------------------------------------------------------------------


def child_changed(labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.wakeups.wake(labels.get(m.LABEL_OWNER_UID))


def model_changed(
    event: kopf.RawEvent,
    name: str,
    namespace: str,
    uid: str,
    memo: kopf.Memo,
    index_runs_by_model: kopf.Index[tuple[str, str], str],
    **_: Any,
) -> None:
    memo.wakeups.wake(uid)
    for run in index_runs_by_model.get((namespace, name), []):
        memo.wakeups.wake(run)
    if event["type"] == "DELETED":
        memo.metrics.forget("QuantizedModel", namespace, name)


def run_changed(
    event: kopf.RawEvent, name: str, namespace: str, uid: str, memo: kopf.Memo, **_: Any
) -> None:
    memo.wakeups.wake(uid)
    if event["type"] == "DELETED":
        memo.metrics.forget("EvalRun", namespace, name)


# --- daemons: one per resource -------------------------------------------------------------


async def _wait(wake: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> None:
    waits = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())}
    _, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


async def _loop(
    uid: str,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    reconcile: Callable[[], Any],
) -> None:
    wake = memo.wakeups.event(uid)
    try:
        while not stopped:
            wake.clear()  # a change during this reconcile wakes the next one
            await reconcile()
            await _wait(wake, stopped, memo.config.resync_seconds)
    finally:
        memo.wakeups.forget(uid)


async def quantized_model_daemon(
    body: kopf.Body,
    uid: str,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    index_jobs: kopf.Index[str, JobState],
    index_results: kopf.Index[str, StageResult],
    **_: Any,
) -> None:
    async def reconcile() -> None:
        t0 = time.perf_counter()
        owner = m.Owner.of(body)
        old = _status(QuantizedModelStatus, body)
        generation = body["metadata"].get("generation")
        qm = _parse(QuantizedModel, body)
        layout = m.cluster_layout(memo.config, owner.namespace, owner.name)
        if isinstance(qm, str):
            decision, scheme, token = invalid_spec(owner.kind, qm, now(), generation, old), "", None
        else:
            observed = await _observe(memo, owner, index_jobs, index_results)
            decision = decide_quantized_model(qm, observed, layout, now(), generation, old)
            scheme, token = scheme_label(qm.spec), qm.spec.hf_token_secret
        await _apply(memo, body, owner, decision, layout, token)
        new = QuantizedModelStatus.model_validate(decision.status)
        memo.metrics.phase(owner.kind, owner.namespace, owner.name, new.phase)
        if new.phase == "Ready":
            memo.metrics.quantized_model(owner.namespace, owner.name, scheme, new)
        if new.phase == "Failed" and old.phase != "Failed":
            memo.metrics.jobs_failed.labels(owner.namespace, "quantize", _reason(new)).inc()
        memo.metrics.reconcile_seconds.labels(owner.kind).observe(time.perf_counter() - t0)

    await _loop(uid, memo, stopped, reconcile)


async def evalrun_daemon(
    body: kopf.Body,
    uid: str,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    index_jobs: kopf.Index[str, JobState],
    index_results: kopf.Index[str, StageResult],
    index_models: kopf.Index[tuple[str, str], tuple[dict[str, Any], str | None, str]],
    **_: Any,
) -> None:
    async def reconcile() -> None:
        t0 = time.perf_counter()
        owner = m.Owner.of(body)
        old = _status(EvalRunStatus, body)
        generation = body["metadata"].get("generation")
        run = _parse(EvalRun, body)
        layout = m.cluster_layout(memo.config, owner.namespace, owner.name)
        if isinstance(run, str):
            decision = invalid_spec(owner.kind, run, now(), generation, old)
        else:
            models = _models(run, owner.namespace, index_models)
            observed = await _observe(memo, owner, index_jobs, index_results)
            decision = decide_evalrun(run, models, observed, layout, now(), generation, old)
        await _apply(memo, body, owner, decision, layout, None)
        new = EvalRunStatus.model_validate(decision.status)
        memo.metrics.phase(owner.kind, owner.namespace, owner.name, new.phase)
        if new.phase in ("Succeeded", "Failed"):
            memo.metrics.evalrun_results(owner.namespace, owner.name, new)
        before = {f.stage for f in old.failures}
        for f in new.failures:
            if f.stage not in before and f.reason != "DependencyFailed":
                kind = f.stage.split("-", 1)[0]
                memo.metrics.jobs_failed.labels(owner.namespace, kind, f.reason).inc()
        memo.metrics.reconcile_seconds.labels(owner.kind).observe(time.perf_counter() - t0)

    await _loop(uid, memo, stopped, reconcile)


# --- the thin glue between kopf and the pure functions ---------------------------------


def _parse(model: type[Resource], body: kopf.Body) -> Any:
    """The resource as its pydantic model, or the explanation of why it is invalid."""
    meta = body["metadata"]
    doc = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {"name": meta["name"], "namespace": meta.get("namespace")},
        "spec": dict(body.get("spec") or {}),
    }
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        return explain(e, f"{body.get('kind')} {meta['name']}", str(body.get("kind")))


def _status(model: type[Any], body: kopf.Body) -> Any:
    try:
        return model.model_validate(dict(body.get("status") or {}))
    except ValidationError:  # written by someone else: start afresh
        return model()


def _reason(status: QuantizedModelStatus) -> str:
    ready = next((c for c in status.conditions if c.type == "Ready"), None)
    return ready.reason if ready else "Failed"


def _models(
    run: EvalRun,
    namespace: str,
    index: Mapping[tuple[str, str], Collection[tuple[dict[str, Any], str | None, str]]],
) -> dict[str, ModelState]:
    """The QuantizedModels the run names that exist (and parse)."""
    out = {}
    for c in run.spec.candidates:
        if not c.quantized_model or not (found := index.get((namespace, c.quantized_model))):
            continue
        spec, phase, message = next(iter(found))
        doc = {"kind": "QuantizedModel", "metadata": {"name": c.quantized_model}, "spec": spec}
        try:
            qm = QuantizedModel.model_validate(doc)
        except ValidationError:
            phase, message = "Failed", f"QuantizedModel {c.quantized_model} has an invalid spec"
            qm = None
        if qm is not None:
            out[c.quantized_model] = ModelState(qm, phase, message)
    return out


async def _observe(
    memo: kopf.Memo,
    owner: m.Owner,
    jobs: kopf.Index[str, JobState],
    results: kopf.Index[str, StageResult],
) -> Observed:
    by_stage = {j.stage: j for j in jobs.get(owner.uid, [])}
    docs = {d.stage: d for d in results.get(owner.uid, [])}
    problems = {}
    # A pod that cannot pull its image never fails its Job: look at the pods of Jobs
    # that have no running pod yet (one label-selected list, only while that lasts).
    if any(j.phase == "Pending" and j.stage not in docs for j in by_stage.values()):
        selector = f"{m.LABEL_OWNER_UID}={owner.uid}"
        pods = await asyncio.to_thread(memo.kube.pods, owner.namespace, selector)
        for pod in pods:
            if (problem := pod_problem(pod)) is not None:
                problems[problem.stage] = problem
    return Observed(jobs=by_stage, problems=problems, results=docs)


async def _apply(
    memo: kopf.Memo,
    body: kopf.Body,
    owner: m.Owner,
    decision: Decision,
    layout: Layout,
    token: SecretKeyRef | None,
) -> None:
    for stage in decision.create:
        manifest = m.build_job(stage, owner, layout, memo.config, token)
        if await asyncio.to_thread(memo.kube.create_job, manifest):
            memo.metrics.jobs_created.labels(owner.namespace, stage.kind).inc()
    old = dict(body.get("status") or {})
    if decision.status != old:
        patch = {**{k: None for k in old if k not in decision.status}, **decision.status}
        await asyncio.to_thread(
            memo.kube.patch_status, owner.kind, owner.namespace, owner.name, patch
        )
    for event in decision.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


# --- registration and running ----------------------------------------------------------


def registry() -> kopf.OperatorRegistry:
    """A fresh registry holding every qeval handler.

    (The ``type: ignore`` comments: kopf's handler protocols do not list index keywords.)
    """
    reg = kopf.OperatorRegistry()
    qm = (m.GROUP, m.VERSION, "quantizedmodels")
    er = (m.GROUP, m.VERSION, "evalruns")
    kopf.on.startup(registry=reg)(startup)
    kopf.on.cleanup(registry=reg)(cleanup)
    kopf.on.login(registry=reg)(login)
    kopf.on.probe(registry=reg, id="resources")(probe)
    kopf.index("batch", "v1", "jobs", labels=CHILDREN, registry=reg)(index_jobs)
    kopf.index("v1", "configmaps", labels=RESULTS, registry=reg)(index_results)
    kopf.index(*qm, registry=reg)(index_models)  # type: ignore[arg-type]
    kopf.index(*er, registry=reg)(index_runs_by_model)  # type: ignore[arg-type]
    kopf.on.event("batch", "v1", "jobs", labels=CHILDREN, registry=reg)(child_changed)
    kopf.on.event("v1", "configmaps", labels=RESULTS, registry=reg, id="result_changed")(
        child_changed
    )
    kopf.on.event(*qm, registry=reg)(model_changed)  # type: ignore[arg-type]
    kopf.on.event(*er, registry=reg)(run_changed)  # type: ignore[arg-type]
    kopf.daemon(*qm, registry=reg, cancellation_timeout=5)(quantized_model_daemon)  # type: ignore[arg-type]
    kopf.daemon(*er, registry=reg, cancellation_timeout=5)(evalrun_daemon)  # type: ignore[arg-type]
    return reg


def run(
    config: OperatorSettings | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
) -> None:
    """Run the operator until ``stop_flag`` is set (or forever)."""
    config = config or OperatorSettings()
    kopf.run(
        registry=registry(),
        standalone=config.peering is None,
        peering_name=config.peering,
        clusterwide=config.clusterwide,
        namespaces=config.namespaces,
        liveness_endpoint=config.liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
