"""The controller: one reconcile per resource at a time, from what the watches show.

kopf's event handlers (``handlers``) call ``Controller.reconcile`` whenever a
QuantizedModel or EvalRun changes, or one of its children does (a stage Job, a model
server's Deployment, a result ConfigMap, a QuantizedModel a run waits for). A resync loop
reconciles every unfinished resource every ``resync_seconds`` as well, which catches what
no watch shows (a pod stuck pulling its image, a server that keeps exiting) and retries
a run waiting for its models with a delay, never in a busy loop. No per-object daemon and
no finalizer: deleting a resource never waits for the operator, and idle resources cost
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import ValidationError

from qeval.api.common import Resource, SecretKeyRef, now
from qeval.api.documents import explain
from qeval.api.evalrun import EvalRun
from qeval.api.evalrun_status import EvalRunStatus
from qeval.api.quantizedmodel import QuantizedModel, QuantizedModelStatus
from qeval.k8s import manifests as m
from qeval.k8s.kube import Kube
from qeval.k8s.metrics import Metrics
from qeval.k8s.observe import JobState, PodProblem, ServerState, api_problem, pod_problem
from qeval.k8s.reconcile import (
    Decision,
    ModelState,
    Observed,
    decide_evalrun,
    decide_quantized_model,
    invalid_spec,
)
from qeval.k8s.reuse import Reused, vouched
from qeval.k8s.settings import OperatorSettings
from qeval.k8s.store import (
    LIST_CHUNK,
    RESULT_MAPS,
    Index,
    Kind,
    ModelRecord,
    Store,
    selector,
    watched,
)
from qeval.plan import Layout, Stage
from qeval.reasons import DEPENDENCY_FAILED, QUANTIZED_MODEL_FAILED
from qeval.recipes import scheme_label

log = logging.getLogger(__name__)


class Controller:
    """Reconciles QuantizedModels and EvalRuns; holds no state a restart would miss."""

    def __init__(self, config: OperatorSettings, kube: Kube, metrics: Metrics):
        self.config, self.kube, self.metrics = config, kube, metrics
        self.store = Store(config)  # what the watches show, filled by ``prime`` at start
        self.objects: dict[str, kopf.Body] = {}  # uid -> the latest body seen
        self.finished: set[str] = set()  # uids nothing will change until an event comes
        # The status last written per uid: a child's event can arrive before our own status
        # write comes back through the watch; this spares a duplicate write and Event.
        self.written: dict[str, dict[str, Any]] = {}
        # What the API server answered when a stage's child could not be created, per uid
        # and stage, and when to try again (a restart tries at once; nothing is lost).
        self.refusals: dict[str, dict[str, Refusal]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._resync: asyncio.Task[None] | None = None

    # -- what the handlers call ---------------------------------------------------------

    async def prime(self) -> None:
        """Fill the store from one list of each kind it holds (``store.PRIMED``), before
        kopf's watches start: the first reconcile already sees every child there is."""

        def pages(kind: Kind) -> Iterator[list[Mapping[str, Any]]]:
            patterns = self.config.namespaces
            plain = patterns and not any(set(p) & set("*?[") for p in patterns)
            for namespace in patterns if plain else [None]:
                for page in self.kube.pages(
                    kind.resource, namespace, selector(kind.labels), LIST_CHUNK
                ):
                    yield [b for b in page if watched(b["metadata"]["namespace"], patterns)]

        t0 = time.monotonic()
        counts = await asyncio.to_thread(self.store.prime, pages)
        log.info("listed %s in %.1f s", counts, time.monotonic() - t0)

    def seen(self, body: kopf.Body) -> None:
        self.objects[body["metadata"]["uid"]] = body
        if self._resync is None:  # started from a handler: its context can post Events
            self._resync = asyncio.create_task(self._resync_loop())

    def gone(self, kind: str, namespace: str, name: str, uid: str) -> None:
        for table in (self.objects, self.written, self.refusals, self._locks):
            table.pop(uid, None)  # type: ignore[attr-defined]
        self.finished.discard(uid)
        self.metrics.forget(kind, namespace, name)

    async def reconcile(self, uid: str | None, fresh: bool = False) -> None:
        """Reconcile the resource ``uid`` (if the operator has seen it), one at a time."""
        body = self.objects.get(uid or "")
        if uid is None or body is None:
            return
        lock = self._locks.setdefault(uid, asyncio.Lock())
        async with lock:
            body = self.objects.get(uid)
            if body is None:  # deleted meanwhile
                return
            t0 = time.perf_counter()
            decide = self._evalrun if body["kind"] == "EvalRun" else self._quantized_model
            decision, refused = await decide(body, self.store, fresh)
            if refused:  # say so now, not at the next resync
                decision, _ = await decide(body, self.store, fresh)
            if decision.at_rest:
                self.finished.add(uid)
            else:
                self.finished.discard(uid)
            self.metrics.reconcile_seconds.labels(body["kind"]).observe(time.perf_counter() - t0)

    async def stop(self) -> None:
        if self._resync is not None:
            self._resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            for uid in [u for u in self.objects if u not in self.finished]:
                try:
                    await self.reconcile(uid, fresh=True)
                except Exception:  # one bad resource must not stop the others
                    log.exception("resync of %s failed", uid)

    # -- the two kinds ------------------------------------------------------------------

    def _old(self, model: type[Any], body: kopf.Body, fresh: bool) -> Any:
        uid = body["metadata"]["uid"]
        current = dict(body.get("status") or {})
        source = current if fresh or uid not in self.written else self.written[uid]
        try:
            return model.model_validate(source)
        except ValidationError:  # written by someone else: start afresh
            return model()

    async def _quantized_model(
        self, body: kopf.Body, idx: Store, fresh: bool
    ) -> tuple[Decision, bool]:
        owner = m.Owner.of(body)
        old = self._old(QuantizedModelStatus, body, fresh)
        generation = body["metadata"].get("generation")
        qm = _parse(QuantizedModel, body)
        layout = m.cluster_layout(self.config, owner.namespace, owner.name)
        if isinstance(qm, str):
            decision, scheme, token = invalid_spec(owner.kind, qm, now(), generation, old), "", None
        else:
            observed = await self._observe(owner, idx)
            decision = decide_quantized_model(qm, observed, layout, now(), generation, old)
            scheme, token = scheme_label(qm.spec), qm.spec.hf_token_secret
        refused = await self._apply(body, owner, decision, layout, token)
        new = QuantizedModelStatus.model_validate(decision.status)
        self.metrics.phase(owner.kind, owner.namespace, owner.name, new.phase)
        if new.phase == "Ready":
            self.metrics.quantized_model(owner.namespace, owner.name, scheme, new)
        if new.phase == "Failed" and old.phase != "Failed":
            self.metrics.jobs_failed.labels(owner.namespace, "quantize", _reason(new)).inc()
        return decision, refused

    async def _evalrun(self, body: kopf.Body, idx: Store, fresh: bool) -> tuple[Decision, bool]:
        owner = m.Owner.of(body)
        old = self._old(EvalRunStatus, body, fresh)
        generation = body["metadata"].get("generation")
        run = _parse(EvalRun, body)
        layout = m.cluster_layout(self.config, owner.namespace, owner.name)
        token = None
        if isinstance(run, str):
            decision = invalid_spec(owner.kind, run, now(), generation, old)
        else:
            token = run.spec.hf_token_secret
            models = _models(run, owner.namespace, idx.models)
            observed = await self._observe(owner, idx)
            # The images pin the harness and its libraries.
            salt = f"{self.config.evaluator_image} {self.config.client_image}"
            decision = decide_evalrun(run, models, observed, layout, now(), generation, old, salt)
        refused = await self._apply(body, owner, decision, layout, token)
        new = EvalRunStatus.model_validate(decision.status)
        self.metrics.phase(owner.kind, owner.namespace, owner.name, new.phase)
        if new.phase in ("Succeeded", "Failed"):
            self.metrics.evalrun_results(owner.namespace, owner.name, new)
        before = {f.stage for f in old.failures}
        for f in new.failures:  # a failed model is counted by its own reconcile
            if f.stage not in before and f.reason not in (
                DEPENDENCY_FAILED,
                QUANTIZED_MODEL_FAILED,
            ):
                kind = f.stage.split("-", 1)[0]
                self.metrics.jobs_failed.labels(owner.namespace, kind, f.reason).inc()
        return decision, refused

    # -- observing and acting -------------------------------------------------------------

    async def _observe(self, owner: m.Owner, idx: Store) -> Observed:
        by_stage = {j.stage: j for j in idx.jobs.get(owner.uid, [])}
        servers = {s.stage: s for s in idx.servers.get(owner.uid, [])}
        docs = {d.stage: d for d in idx.results.get(owner.uid, [])}
        # Jobs and result ConfigMaps come by two watches: a Job's Succeeded can arrive
        # before the result its pod published (a lagging or reconnecting watch). Read such
        # a stage's ConfigMap once before its outcome is decided as NoResult, which is final.
        unseen = [j for j in by_stage.values() if j.phase == "Succeeded" and j.stage not in docs]
        if unseen:
            found = await asyncio.gather(
                *(
                    asyncio.to_thread(
                        self.kube.configmap,
                        owner.namespace,
                        m.child_name(owner.name, j.stage),
                        selector(RESULT_MAPS.labels),
                    )
                    for j in unseen
                )
            )
            for body in found:
                if body is not None:
                    idx.update(RESULT_MAPS, body)
            docs = {d.stage: d for d in idx.results.get(owner.uid, [])}
        paths = dict(idx.result_paths.get(owner.uid, []))
        problems = {s: r.problem for s, r in self.refusals.get(owner.uid, {}).items()}
        # A pod that cannot be scheduled or pull its image never fails its Job, nor does a
        # server that keeps exiting fail its Deployment, and a failed Job does not say its pod
        # was killed for memory: look at the pods of children that have a pod but none ready
        # yet, or failed without a result (one label-selected list, only while that lasts).
        children: list[JobState | ServerState] = [*by_stage.values(), *servers.values()]
        if any(c.pods_tell_more and c.stage not in docs for c in children):
            own = selector({m.LABEL_OWNER_UID: owner.uid})
            pods = await asyncio.to_thread(self.kube.pods, owner.namespace, own)
            timeout, at = self.config.image_pull_timeout_seconds, now()
            for pod in pods:
                problem = pod_problem(pod, at, timeout)
                if problem is not None and not (
                    problem.stage in problems and problems[problem.stage].fatal
                ):
                    problems[problem.stage] = problem

        def job_keys(run: str) -> dict[str, str | None]:
            return {j.stage: j.reuse_key for j in idx.jobs.get(run, [])}

        def reuse(key: str) -> Reused | None:
            return vouched(key, idx.reusable.get((owner.namespace, key), []), job_keys)

        return Observed(
            jobs=by_stage,
            servers=servers,
            problems=problems,
            results=docs,
            result_paths=paths,
            reuse=reuse,
        )

    async def _apply(
        self,
        body: kopf.Body,
        owner: m.Owner,
        decision: Decision,
        layout: Layout,
        token: SecretKeyRef | None,
    ) -> bool:
        """Do what ``decision`` says; True if the API server refused a child anew (its
        answer is then observed as the stage's problem: a condition and a Warning Event)."""
        config, digest = self.config, decision.spec_digest
        # First the records (the run's copies of what it reused: the aggregate created
        # below reads their files), then the children, then the servers that are done.
        records = [m.build_operator_result(owner, doc) for doc in decision.publish]
        records += [m.build_operator_result(owner, r.doc, r.path) for r in decision.copies]
        await asyncio.gather(*(asyncio.to_thread(self.kube.create_configmap, r) for r in records))

        def create(stage: Stage) -> bool:
            if stage.serves:
                server = m.build_server(stage, owner, config, digest, token)
                return self.kube.create_server(*server)
            labels = decision.labels.get(stage.name)
            job = m.build_job(stage, owner, layout, config, token, digest, labels)
            return self.kube.create_job(job)

        refusals = self.refusals.setdefault(owner.uid, {})
        due = [
            s
            for s in decision.create
            if s.name not in refusals or refusals[s.name].retry_at <= time.monotonic()
        ]
        created = await asyncio.gather(
            *(asyncio.to_thread(create, s) for s in due), return_exceptions=True
        )
        refused = False
        for stage, new in zip(due, created, strict=True):
            if isinstance(new, Exception):
                refused |= self._refused(body, owner, stage, new)
                continue
            if isinstance(new, BaseException):
                raise new
            refusals.pop(stage.name, None)
            if new:
                self.metrics.jobs_created.labels(owner.namespace, stage.kind).inc()
        await asyncio.gather(
            *(
                asyncio.to_thread(
                    self.kube.delete_server, owner.namespace, m.child_name(owner.name, stage)
                )
                for stage in decision.delete
            )
        )
        current = dict(body.get("status") or {})
        if decision.status not in (current, self.written.get(owner.uid)):
            patch = {**{k: None for k in current if k not in decision.status}, **decision.status}
            await asyncio.to_thread(
                self.kube.patch_status, owner.kind, owner.namespace, owner.name, patch
            )
        self.written[owner.uid] = decision.status
        for event in decision.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        return refused

    def _refused(self, body: kopf.Body, owner: m.Owner, stage: Stage, error: Exception) -> bool:
        """Record the API server's refusal to create ``stage``'s child; retry it after a
        backoff that doubles up to the resync period's 10-fold. True if it is new."""
        what = "server" if stage.serves else "Job"
        problem = api_problem(stage.name, f"{what} {m.child_name(owner.name, stage.name)}", error)
        refusals = self.refusals.setdefault(owner.uid, {})
        before = refusals.get(stage.name)
        attempts = before.attempts + 1 if before else 1
        period = self.config.resync_seconds
        delay = min(period * 2 ** (attempts - 1), period * 10)
        refusals[stage.name] = Refusal(problem, attempts, time.monotonic() + delay)
        if before is not None and before.problem.reason == problem.reason:
            return False
        log.warning("%s %s/%s: %s", owner.kind, owner.namespace, owner.name, problem.message)
        if problem.fatal:  # the stage has failed; a waiting one is reported as Stalled
            kopf.event(body, type="Warning", reason=problem.reason, message=problem.message)
        return True


@dataclass(frozen=True)
class Refusal:
    """The API server's answer to creating a stage's child, and when to try again."""

    problem: PodProblem
    attempts: int
    retry_at: float  # time.monotonic()


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


def _reason(status: QuantizedModelStatus) -> str:
    ready = next((c for c in status.conditions if c.type == "Ready"), None)
    return ready.reason if ready else "Failed"


def _models(
    run: EvalRun, namespace: str, index: Index[tuple[str, str], ModelRecord]
) -> dict[str, ModelState]:
    """The QuantizedModels the run names that exist, as observed."""
    out = {}
    for c in run.spec.candidates:
        if not c.quantized_model or not (found := index.get((namespace, c.quantized_model))):
            continue
        spec, phase, message = next(iter(found))
        doc = {"kind": "QuantizedModel", "metadata": {"name": c.quantized_model}, "spec": spec}
        try:
            qm = QuantizedModel.model_validate(doc)
        except ValidationError:
            continue  # its own status says why; the run waits as for a missing model
        out[c.quantized_model] = ModelState(qm, phase, message)
    return out
