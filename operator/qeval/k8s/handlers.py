"""The kopf handlers, kept thin: they feed the ``Controller`` what the watches show.

* One startup handler holds every setting (``OperatorSettings``, from the environment);
  a second (``prime``) fills the controller's store (``store.Store``: the children the
  operator watches, stage Jobs, model servers' Deployments and result ConfigMaps, and the
  QuantizedModels, as slim projections) from one list of each, before any watch starts.
* The watches keep the store current; kopf's indexes are not used (see ``store``: they
  make a start among n objects cost O(n²)). The children are selected by the API server
  (``settings.watching.label_selectors``): the operator lists and watches only its own
  Jobs, Deployments and result ConfigMaps, in chunks of ``LIST_CHUNK``, never every
  ConfigMap of a namespace (a handler's ``labels=`` filter is applied by kopf after the
  whole stream has arrived).
* Event handlers reconcile a resource when it changes or what the store holds of one of
  its children does; the controller's resync loop covers the rest. Event handlers keep no
  progress annotations and need no finalizers.

Handlers are registered into a registry built by ``registry()``, so tests can start
several operators one after another, each with its own.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from qeval.api.common import GROUP, VERSION
from qeval.k8s import manifests as m
from qeval.k8s import store
from qeval.k8s.controller import Controller
from qeval.k8s.kube import Kube, RetryPolicy, api_client
from qeval.k8s.metrics import Metrics
from qeval.k8s.settings import OperatorSettings

# The children each watch asks the API server for (kopf's handler filters stay, as a check).
SELECTORS = {kind.resource: kind.labels for kind in (store.JOBS, store.SERVERS, store.RESULT_MAPS)}


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
    settings.watching.chunk_size = store.LIST_CHUNK
    for resource, labels in SELECTORS.items():
        settings.watching.label_selectors[resource] = store.selector(labels)
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


async def prime(memo: kopf.Memo, **_: Any) -> None:
    """List what the store holds once, before any watch starts (retried until it can)."""
    await memo.controller.prime()


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


# --- events: keep the store current, reconcile what changed ------------------------------


async def resource_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    name: str,
    namespace: str,
    uid: str,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """A QuantizedModel or EvalRun was created, changed, deleted or listed at startup."""
    controller: Controller = memo.controller
    kind = store.MODELS if body["kind"] == "QuantizedModel" else store.RUNS
    deleted = event["type"] == "DELETED"
    controller.store.update(kind, body, deleted)
    if deleted:
        controller.gone(body["kind"], namespace, name, uid)
        return
    controller.seen(body)
    await controller.reconcile(uid)
    if kind is store.MODELS:  # the runs that wait for it
        for run in list(controller.store.runs_by_model.get((namespace, name))):
            await controller.reconcile(run)


def child_events(kind: store.Kind) -> Any:
    """The handler of ``kind``'s events: a stage Job, a model server or a result ConfigMap
    was listed, created, changed or deleted; reconcile its owner if the store changed."""

    async def child_event(
        event: kopf.RawEvent, body: kopf.Body, labels: kopf.Labels, memo: kopf.Memo, **_: Any
    ) -> None:
        controller: Controller = memo.controller
        if controller.store.update(kind, body, deleted=event["type"] == "DELETED"):
            await controller.reconcile(labels.get(m.LABEL_OWNER_UID))

    return child_event


# --- registration and running ----------------------------------------------------------


def registry() -> kopf.OperatorRegistry:
    """A fresh registry holding every qeval handler.

    (The ``type: ignore`` comments: kopf's handler protocols do not list index keywords.)
    """
    reg = kopf.OperatorRegistry()
    qm = (GROUP, VERSION, "quantizedmodels")
    er = (GROUP, VERSION, "evalruns")
    kopf.on.startup(registry=reg)(startup)
    kopf.on.cleanup(registry=reg)(cleanup)
    kopf.on.login(registry=reg)(login)
    kopf.on.startup(registry=reg, id="prime", backoff=5)(prime)
    kopf.on.probe(registry=reg, id="resources")(probe)
    kopf.on.event(*qm, registry=reg, id="quantizedmodel")(resource_event)  # type: ignore[arg-type]
    kopf.on.event(*er, registry=reg, id="evalrun")(resource_event)  # type: ignore[arg-type]
    for kind, id in ((store.JOBS, "job"), (store.SERVERS, "server"), (store.RESULT_MAPS, "result")):
        labels = dict(kind.labels)
        kopf.on.event(*kind.resource, labels=labels, registry=reg, id=id)(child_events(kind))
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
