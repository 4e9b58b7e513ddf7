"""The kopf handlers, kept thin: they feed the ``Controller`` what the watches show.

* One startup handler holds every setting (``OperatorSettings``, from the environment).
* Indexes keep the children the operator watches (stage Jobs, model servers' Deployments,
  result ConfigMaps) and the QuantizedModels in memory, rebuilt from the API on every start,
  as slim projections: what the decisions read, not the objects (``slim``).
* The children are selected by the API server (``settings.watching.label_selectors``): the
  operator lists and watches only its own Jobs, Deployments and result ConfigMaps, in
  chunks of ``LIST_CHUNK``, never every ConfigMap of a namespace (a handler's ``labels=``
  filter is applied by kopf after the whole stream has arrived).
* Event handlers reconcile a resource when it or one of its children changes; the
  controller's resync loop covers the rest. Event handlers keep no progress annotations
  and need no finalizers.

Handlers are registered into a registry built by ``registry()``, so tests can start
several operators one after another, each with its own.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from qeval.k8s import manifests as m
from qeval.k8s.controller import Controller, Indexes, ModelRecord
from qeval.k8s.kube import Kube, RetryPolicy, api_client
from qeval.k8s.metrics import Metrics
from qeval.k8s.observe import JobState, ServerState, job_state, result_document, server_state
from qeval.k8s.reuse import LABEL_REUSE_KEY, Reused
from qeval.k8s.settings import OperatorSettings
from qeval.stages.envelope import StageResult, StageStatus

CHILDREN = {m.MANAGED_BY: m.MANAGER}
RESULTS = {m.MANAGED_BY: m.MANAGER, m.LABEL_RESULT: "true"}
REUSABLE = {**RESULTS, LABEL_REUSE_KEY: kopf.PRESENT}
# The children each watch asks the API server for (kopf's handler filters stay, as a check).
SELECTORS: dict[tuple[str, str] | tuple[str, str, str], dict[str, str]] = {
    ("batch", "v1", "jobs"): CHILDREN,
    ("apps", "v1", "deployments"): CHILDREN,
    ("v1", "configmaps"): RESULTS,
}
LIST_CHUNK = 500  # objects per page of the initial lists (one page in memory at a time)
# The stage kinds whose result the decisions read (a quantized model's size and scheme, the
# run's status from the aggregate); an evaluation's scores are read by the aggregate stage
# from the claim, never by the operator.
RESULT_READ = frozenset({"quantize", "aggregate"})


def selector(labels: dict[str, str]) -> str:
    """A label selector, as the API server takes it: ``a=b,c=d``."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def slim(doc: StageResult) -> StageResult:
    """What reconcile reads of a result document: its status, reason, message and times,
    and the result itself only where a decision reads it (``RESULT_READ``)."""
    keep = doc.kind in RESULT_READ
    return doc.model_copy(update={"versions": {}, "result": doc.result if keep else None})


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
    settings.watching.chunk_size = LIST_CHUNK
    for resource, labels in SELECTORS.items():
        settings.watching.label_selectors[resource] = selector(labels)
    # kopf's own requests and watches retry as Kube's do: the same number of retries and
    # backoff bounds (kopf's list has no jitter), Retry-After honoured, and a broken or
    # ended watch stream reconnects after the first backoff.
    retry = RetryPolicy(config.api_retries, config.api_retry_backoff_seconds)
    settings.networking.error_backoffs = retry.backoffs()
    settings.networking.enforce_retry_after = True
    settings.watching.reconnect_backoff = config.api_retry_backoff_seconds
    settings.peering.standalone = config.peering is None
    if config.peering:
        settings.peering.name = config.peering
        settings.peering.clusterwide = config.clusterwide
    metrics = Metrics()
    memo.metrics_server = metrics.serve(config.metrics_port) if config.metrics_port else None
    kube = Kube(api_client(), config.api_timeout_seconds, retry, on_retry=metrics.api_retry)
    memo.controller = Controller(config, kube, metrics)


async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.controller.stop()
    if memo.metrics_server:
        server, _thread = memo.metrics_server
        server.shutdown()
        server.server_close()


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: its service account; elsewhere: $KUBECONFIG (read now, not at import)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def probe(memo: kopf.Memo, **_: Any) -> dict[str, int]:
    """Liveness details: how many resources the operator knows, and how many are unfinished."""
    controller: Controller = memo.controller
    return {
        "resources": len(controller.objects),
        "unfinished": len(set(controller.objects) - controller.finished),
    }


# --- indexes: what the operator sees of its children ------------------------------------


def index_jobs(body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[str, JobState] | None:
    uid = labels.get(m.LABEL_OWNER_UID)
    return {uid: job_state(body)} if uid else None


def index_servers(body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[str, ServerState] | None:
    uid = labels.get(m.LABEL_OWNER_UID)
    return {uid: server_state(body)} if uid else None


def index_results(body: kopf.Body, labels: kopf.Labels, **_: Any) -> dict[str, StageResult] | None:
    uid = labels.get(m.LABEL_OWNER_UID)
    doc = result_document(body) if uid else None
    return {uid: slim(doc)} if uid and doc else None


def index_result_paths(
    body: kopf.Body, labels: kopf.Labels, **_: Any
) -> dict[str, tuple[str, str]] | None:
    """Where the files of a run's copies of reused evaluations are: (stage, path)."""
    uid = labels.get(m.LABEL_OWNER_UID)
    path = (body.get("metadata", {}).get("annotations") or {}).get(m.ANNOTATION_RESULT_PATH)
    doc = result_document(body) if uid and path else None
    return {uid: (doc.stage, str(path))} if uid and doc else None


def index_models(
    spec: kopf.Spec, status: kopf.Status, name: str, namespace: str, **_: Any
) -> dict[tuple[str, str], ModelRecord]:
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


def index_reusable(
    body: kopf.Body, labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any
) -> dict[tuple[str, str], Reused] | None:
    """Succeeded evaluations by reuse key, with where their result documents are."""
    key = labels.get(LABEL_REUSE_KEY)
    owners = body.get("metadata", {}).get("ownerReferences") or [{}]
    run = owners[0].get("name") if owners[0].get("kind") == "EvalRun" else None
    doc = result_document(body) if key and run else None
    if doc is None or doc.status != StageStatus.SUCCEEDED:
        return None
    layout = m.cluster_layout(memo.controller.config, namespace, str(run))
    path = str(layout.result_path(doc.stage))
    return {(namespace, str(key)): Reused(doc, path, labels.get(m.LABEL_OWNER_UID))}


# --- events: reconcile what changed ------------------------------------------------------


def _indexes(kwargs: dict[str, Any]) -> Indexes:
    return Indexes(
        jobs=kwargs["index_jobs"],
        servers=kwargs["index_servers"],
        results=kwargs["index_results"],
        result_paths=kwargs["index_result_paths"],
        models=kwargs["index_models"],
        runs_by_model=kwargs["index_runs_by_model"],
        reusable=kwargs["index_reusable"],
    )


async def resource_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    name: str,
    namespace: str,
    uid: str,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """A QuantizedModel or EvalRun was created, changed, deleted or listed at startup."""
    controller: Controller = memo.controller
    if event["type"] == "DELETED":
        controller.gone(body["kind"], namespace, name, uid)
        return
    indexes = _indexes(kwargs)
    controller.seen(body, indexes)
    await controller.reconcile(uid)
    if body["kind"] == "QuantizedModel":  # the runs that wait for it
        for run in list(indexes.runs_by_model.get((namespace, name), [])):
            await controller.reconcile(run)


async def child_event(labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any) -> None:
    """A stage Job, a model server or a result ConfigMap changed: reconcile its owner."""
    controller: Controller = memo.controller
    controller.indexes = _indexes(kwargs)
    await controller.reconcile(labels.get(m.LABEL_OWNER_UID))


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
    kopf.index("apps", "v1", "deployments", labels=CHILDREN, registry=reg)(index_servers)
    kopf.index("v1", "configmaps", labels=RESULTS, registry=reg)(index_results)
    kopf.index("v1", "configmaps", labels=RESULTS, registry=reg)(index_result_paths)
    kopf.index("v1", "configmaps", labels=REUSABLE, registry=reg)(index_reusable)  # type: ignore[arg-type]
    kopf.index(*qm, registry=reg)(index_models)  # type: ignore[arg-type]
    kopf.index(*er, registry=reg)(index_runs_by_model)  # type: ignore[arg-type]
    kopf.on.event(*qm, registry=reg, id="quantizedmodel")(resource_event)  # type: ignore[arg-type]
    kopf.on.event(*er, registry=reg, id="evalrun")(resource_event)  # type: ignore[arg-type]
    kopf.on.event("batch", "v1", "jobs", labels=CHILDREN, registry=reg, id="job")(child_event)
    kopf.on.event("apps", "v1", "deployments", labels=CHILDREN, registry=reg, id="server")(
        child_event
    )
    kopf.on.event("v1", "configmaps", labels=RESULTS, registry=reg, id="result")(child_event)
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
