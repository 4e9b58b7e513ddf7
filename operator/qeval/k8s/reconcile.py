"""Reconcile, as pure functions: a resource's spec and its observed children -> its status,
the stage Jobs and model servers to create now, and the servers to record and remove.

Level-based: nothing here remembers anything between calls. The same observations give
the same decision, so a restarted operator picks up every run where it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from pydantic import ValidationError

from qeval.api.common import Condition
from qeval.api.evalrun import EvalRun
from qeval.api.evalrun_status import EvalRunStatus
from qeval.api.quantizedmodel import QuantizedModel, QuantizedModelStatus
from qeval.engine import StageState, decide, own, progress
from qeval.k8s.manifests import spec_digest
from qeval.k8s.observe import JobState, PodProblem, ServerState
from qeval.k8s.reuse import (
    LABEL_REUSE_KEY,
    Reused,
    ReuseLookup,
    reuse_keys,
    reused_entries_of,
)
from qeval.plan import Layout, PlanError, Stage, build_plan, quantize_stage
from qeval.reasons import (
    ACCEPTED,
    INVALID_SPEC,
    JOB_CREATED,
    JOB_FAILED,
    MODELS_NOT_READY,
    MODELS_READY,
    NO_RESULT,
    PODS_RUNNING,
    QUANTIZED_MODEL_FAILED,
    QUANTIZED_MODEL_NOT_FOUND,
    QUANTIZING,
    READY,
    SERVER_CREATED,
    SERVER_DONE,
    SERVER_FAILED,
    SERVER_STOPPED,
    SPEC_CHANGED,
    SPEC_VALID,
    STAGES_PENDING,
    STAGES_RUNNING,
    STALLED,
    SUCCEEDED,
    UNREADABLE_RESULT,
    WAITING_FOR_MODELS,
)
from qeval.stages.envelope import StageResult, StageStatus, failed, read_part
from qeval.status import (
    condition,
    failures,
    finish_evalrun,
    quantized_model_status,
)

StatusT = TypeVar("StatusT", QuantizedModelStatus, EvalRunStatus)


@dataclass(frozen=True)
class Observed:
    """A resource's children, by stage name."""

    jobs: Mapping[str, JobState] = field(default_factory=dict)
    servers: Mapping[str, ServerState] = field(default_factory=dict)  # serve stages' Deployments
    problems: Mapping[str, PodProblem] = field(default_factory=dict)
    results: Mapping[str, StageResult] = field(default_factory=dict)
    # Where the files of the run's copies of reused evaluations are (stage -> result path)
    result_paths: Mapping[str, str] = field(default_factory=dict)
    reuse: ReuseLookup = field(default=lambda key: None)  # another run's result by reuse key


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the resource."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    """What the operator should do now."""

    status: dict[str, object]  # the status document to write (camelCase)
    create: tuple[Stage, ...] = ()  # Jobs, or servers for serve stages
    events: tuple[Event, ...] = ()
    at_rest: bool = False  # nothing will change until the spec or a child does: no resync
    spec_digest: str | None = None  # stamped on the Jobs created, to notice spec changes
    labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # per stage
    # Servers whose outcome is decided: record it (a result ConfigMap), then remove them.
    publish: tuple[StageResult, ...] = ()
    delete: tuple[str, ...] = ()  # serve stages whose server goes now (outcome recorded)
    # Evaluations taken from another run now: the run records its own copy of each, so
    # what it reused stays its own when that run is deleted.
    copies: tuple[Reused, ...] = ()


# --- finality ---------------------------------------------------------------------------


def finished(status: QuantizedModelStatus | EvalRunStatus) -> bool:
    """Whether a resource's outcome is decided (Ready, Succeeded or Failed on a valid spec):
    from then on its status never changes, whatever happens to the children and resources
    it came from, except the Accepted condition, which reports a changed spec."""
    if status.phase not in ("Ready", "Succeeded", "Failed"):
        return False
    accepted = next((c for c in status.conditions if c.type == ACCEPTED), None)
    return accepted is None or accepted.reason != INVALID_SPEC


def frozen(old: StatusT, accepted: Condition | None = None) -> StatusT:
    """A finished resource's status as it was, with ``accepted`` if the spec changed."""
    status = old.model_copy(deep=True)
    if accepted is not None and accepted.status == "False":
        status.conditions = [accepted if c.type == ACCEPTED else c for c in status.conditions]
    elif accepted is not None:  # changed back: accepted as it was
        status.conditions = [
            accepted if c.type == ACCEPTED and c.reason == SPEC_CHANGED else c
            for c in status.conditions
        ]
    return status


# --- stages -----------------------------------------------------------------------------


def observed_outcome(stage: Stage, observed: Observed) -> StageResult | None:
    """The stage's result document: published by the stage, or derived from a failed Job/pod."""
    if (doc := observed.results.get(stage.name)) is not None:
        return doc
    server = observed.servers.get(stage.name)
    if server is not None and server.failed:
        return failed(stage.name, stage.kind, server.reason or SERVER_FAILED, server.message or "")
    problem = observed.problems.get(stage.name)
    if problem is not None and problem.fatal:  # says more than the Job (e.g. OOMKilled)
        return failed(stage.name, stage.kind, problem.reason, problem.message)
    job = observed.jobs.get(stage.name)
    if job is not None and job.phase == "Failed":
        return failed(stage.name, stage.kind, job.reason or JOB_FAILED, job.message or "")
    if job is not None and job.phase == "Succeeded":
        return failed(
            stage.name,
            stage.kind,
            NO_RESULT,
            f"Job {job.name} succeeded but published no result ConfigMap",
        )
    return None


def stalled(stages: list[Stage], observed: Observed, now: str, generation: int | None) -> Condition:
    """Stalled: True while the pod of a started stage does not run and may yet (not
    scheduled, its image not pulled yet), with the reason of each such stage."""
    waiting = [
        (stage.name, p)
        for stage in stages
        if (p := observed.problems.get(stage.name)) is not None and not p.fatal
    ]
    if not waiting:
        return condition(STALLED, False, PODS_RUNNING, "no stage pod is stuck", now, generation)
    reasons = sorted({p.reason for _, p in waiting})
    message = "; ".join(f"{name}: {p.reason}: {p.message}" for name, p in waiting)
    return condition(STALLED, True, reasons[0], message[:4000], now, generation)


def stage_states(
    stages: list[Stage],
    observed: Observed,
    external: Mapping[str, StageState],
    now: str | None = None,
) -> tuple[dict[str, StageState], dict[str, StageResult]]:
    """Every stage's state (in plan order) and the documents of those that ended: what is
    observed of the children, decided by the engine (``qeval.engine``).

    ``external`` holds the states of stages run by someone else (a QuantizedModel's Job).
    """
    ended, underway = {}, {}
    for stage in stages:
        if stage.name in external:
            continue
        if (doc := observed_outcome(stage, observed)) is not None:
            ended[stage.name] = doc
        elif (server := observed.servers.get(stage.name)) is not None:
            underway[stage.name] = StageState.SERVING if server.ready else StageState.RUNNING
        elif stage.name in observed.jobs:
            underway[stage.name] = StageState.RUNNING
    started = {n: s.created for n, s in observed.servers.items() if s.created}
    decided = decide(stages, ended, underway, external=external, now=now, started=started)
    return decided.states, decided.docs


def carry_transition_times(old: list[Condition], new: list[Condition]) -> list[Condition]:
    """Keep a condition's lastTransitionTime while its status has not changed."""
    before = {c.type: c for c in old}
    out = []
    for c in new:
        prev = before.get(c.type)
        if prev is not None and prev.status == c.status and prev.last_transition_time:
            c = c.model_copy(update={"last_transition_time": prev.last_transition_time})
        out.append(c)
    return out


def _phase_event(old_phase: str | None, new_phase: str | None, message: str) -> list[Event]:
    if new_phase is None or new_phase == old_phase:
        return []
    kind = "Warning" if new_phase == "Failed" else "Normal"
    return [Event(kind, new_phase, message)]


def _stalled_event(old: list[Condition], new: list[Condition]) -> list[Event]:
    """A Warning when a stage pod gets stuck, or stuck for another reason."""
    before = next((c for c in old if c.type == STALLED), None)
    now = next((c for c in new if c.type == STALLED), None)
    if now is None or now.status != "True":
        return []
    if before is not None and before.status == "True" and before.reason == now.reason:
        return []
    return [Event("Warning", now.reason, now.message)]


def _created_events(stages: list[Stage]) -> list[Event]:
    events = []
    if jobs := [s.name for s in stages if not s.serves]:
        events.append(
            Event("Normal", JOB_CREATED, f"created the Jobs of stage(s) {', '.join(jobs)}")
        )
    if servers := [s.name for s in stages if s.serves]:
        message = f"started the model server(s) of {', '.join(servers)}"
        events.append(Event("Normal", SERVER_CREATED, message))
    return events


def invalid_spec(
    kind: str,
    message: str,
    now: str,
    generation: int | None,
    old: QuantizedModelStatus | EvalRunStatus,
) -> Decision:
    """A spec the API server let through but qeval refuses (the CRD schema cannot say all)."""
    final = READY if kind == "QuantizedModel" else SUCCEEDED
    conditions = [
        condition(ACCEPTED, False, INVALID_SPEC, message, now, generation),
        condition(final, False, INVALID_SPEC, message, now, generation),
    ]
    new = type(old)(phase="Failed", conditions=conditions)
    new.observed_generation = generation
    new.conditions = carry_transition_times(old.conditions, new.conditions)
    events = [Event("Warning", INVALID_SPEC, message)] if old.phase != "Failed" else []
    return Decision(new.dump(), (), tuple(events), at_rest=True)


# --- QuantizedModel ---------------------------------------------------------------------


def decide_quantized_model(
    qm: QuantizedModel,
    observed: Observed,
    layout: Layout,
    now: str,
    generation: int | None = None,
    old: QuantizedModelStatus | None = None,
) -> Decision:
    """A QuantizedModel's status, and its quantize Job if it has none yet."""
    old = old or QuantizedModelStatus()
    accepted = condition(ACCEPTED, True, SPEC_VALID, "spec is valid", now, generation)
    create: list[Stage] = []
    try:
        # Its one stage, run by its own Job (which builds the demo model itself when needed).
        stage = quantize_stage(qm, layout)
    except PlanError as e:
        return invalid_spec("QuantizedModel", str(e), now, generation, old)

    job = observed.jobs.get(stage.name)
    doc = observed_outcome(stage, observed)
    fixed = spec_digest(qm.spec)
    drift = job is not None and job.spec_digest not in (None, fixed)
    if drift:
        msg = "spec changed after quantization started; delete and recreate the QuantizedModel"
        accepted = condition(ACCEPTED, False, SPEC_CHANGED, msg, now, generation)
    if finished(old):  # its Job or result may go (TTL, a person): the model stays as it was
        return _qm_decision(old, frozen(old, accepted), generation, [], at_rest=True, spec=fixed)
    if drift:
        status = old.model_copy(deep=True)
        status.conditions = [accepted, *[c for c in old.conditions if c.type != ACCEPTED]]
        return _qm_decision(old, status, generation, [], at_rest=doc is not None, spec=fixed)
    if doc is not None:
        try:
            status = quantized_model_status(doc)
        except ValidationError as e:
            doc = failed(stage.name, stage.kind, UNREADABLE_RESULT, str(e))
            status = quantized_model_status(doc)
        status.conditions = [
            accepted,
            condition(QUANTIZING, False, status.conditions[0].reason, "finished", now, generation),
            *status.conditions,
        ]
        return _qm_decision(old, status, generation, [], at_rest=True, spec=fixed)
    if job is None:
        create.append(stage)
    message = f"Job {job.name} is {job.phase.lower()}" if job else "creating the quantize Job"
    status = QuantizedModelStatus(
        phase="Quantizing",
        conditions=[
            accepted,
            condition(QUANTIZING, True, STAGES_RUNNING, message, now, generation),
            condition(READY, False, STAGES_RUNNING, message, now, generation),
            stalled([stage], observed, now, generation),
        ],
        output=str(stage.input["outputDir"]),
        started_at=job.created if job else None,
    )
    return _qm_decision(old, status, generation, create, spec=fixed)


def _qm_decision(
    old: QuantizedModelStatus,
    new: QuantizedModelStatus,
    generation: int | None,
    create: list[Stage],
    at_rest: bool = False,
    spec: str | None = None,
) -> Decision:
    new.observed_generation = generation
    new.conditions = carry_transition_times(old.conditions, new.conditions)
    ready = next((c for c in new.conditions if c.type == READY), None)
    events = _created_events(create) + _phase_event(
        old.phase, new.phase, ready.message if ready else ""
    )
    events += _stalled_event(old.conditions, new.conditions)
    return Decision(new.dump(), tuple(create), tuple(events), at_rest, spec)


# --- EvalRun ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelState:
    """A QuantizedModel an EvalRun names, as observed."""

    model: QuantizedModel
    phase: str | None
    message: str = ""


def _external(stages: list[Stage], models: Mapping[str, ModelState]) -> dict[str, StageState]:
    """States of the quantize stages: those belong to the QuantizedModels' own Jobs."""
    out = {}
    for stage in stages:
        if stage.produces is None:
            continue
        phase = models[stage.produces].phase
        out[stage.name] = (
            StageState.SUCCEEDED
            if phase == "Ready"
            else StageState.FAILED
            if phase == "Failed"
            else StageState.WAITING
        )
    return out


def decide_evalrun(
    run: EvalRun,
    models: Mapping[str, ModelState],
    observed: Observed,
    layout: Layout,
    now: str,
    generation: int | None = None,
    old: EvalRunStatus | None = None,
    salt: str = "",
) -> Decision:
    """An EvalRun's status, and the stage Jobs whose turn has come.

    ``salt`` names what else shapes a result (the evaluator image): with the spec's cache on,
    an evaluation another run did under the same reuse key is taken, not run again.
    """
    old = old or EvalRunStatus()
    final = finished(old)
    named = {c.quantized_model for c in run.spec.candidates if c.quantized_model}
    if missing := sorted(named - set(models)):
        if final:  # a model it evaluated was deleted since: the run's outcome stays
            return _final_run(old, observed, generation)
        return _waiting(run, set(missing), old, generation, now)
    try:
        stages = build_plan(run, {n: m.model for n, m in models.items()}, layout)
    except PlanError as e:
        if final:  # a model it evaluated was recreated differently since
            return _final_run(old, observed, generation)
        return invalid_spec("EvalRun", str(e), now, generation, old)

    external = _external(stages, models)
    keys = reuse_keys(stages, salt) if run.spec.cache else {}
    copied = {
        name: Reused(observed.results[name], path)
        for name, path in observed.result_paths.items()
        if name in observed.results
    }
    taken = {  # taken from another run now: the run copies them (``Decision.copies``)
        name: Reused(hit.doc.model_copy(update={"stage": name}), hit.path)
        for name, key in keys.items()
        if not final
        and name not in observed.results
        and name not in observed.jobs
        and (hit := observed.reuse(key)) is not None
    }
    reused = {**copied, **taken}
    if reused:  # the same plan, its aggregate reading what it took where that run wrote it
        observed = replace(
            observed, results={**observed.results, **{n: r.doc for n, r in taken.items()}}
        )
        layout = replace(layout, elsewhere={n: r.path for n, r in reused.items()})
        stages = build_plan(run, {n: m.model for n, m in models.items()}, layout)
    labels = {name: {LABEL_REUSE_KEY: key} for name, key in keys.items()}
    reused_entries = sorted(reused_entries_of(stages, reused))
    run_stages = own(stages)  # the rest (quantize stages) are the QuantizedModels'
    fixed = spec_digest(run.spec)
    children: list[JobState | ServerState] = [*observed.jobs.values(), *observed.servers.values()]
    drifted = sorted(c.stage for c in children if c.spec_digest not in (None, fixed))
    accepted = condition(ACCEPTED, True, SPEC_VALID, "spec is valid", now, generation)
    if drifted:  # the run goes on reporting, but starts nothing under a changed spec
        msg = (
            f"spec changed after stages started ({', '.join(drifted)}); the run keeps its "
            "original spec: revert the change, or delete and recreate the EvalRun"
        )
        accepted = condition(ACCEPTED, False, SPEC_CHANGED, msg, now, generation)

    states, docs = stage_states(stages, observed, external, now)
    for name, state in external.items():
        if state == StageState.FAILED:
            qm = next(s.produces for s in stages if s.name == name)
            docs[name] = failed(
                name,
                "quantize",
                QUANTIZED_MODEL_FAILED,
                f"QuantizedModel {qm} failed: {models[str(qm)].message}",
            )
    own_docs = [docs[s.name] for s in run_stages if s.name in docs]
    publish, delete = server_outcomes(run_stages, observed, docs)
    created = [c.created for c in children if c.created]
    started = min(created) if created else None
    aggregate = next(s for s in run_stages if s.kind == "aggregate")
    agg_doc = docs.get(aggregate.name)

    if final:  # its status stays as the aggregate made it
        return _run_decision(
            old,
            frozen(old, accepted),
            generation,
            [],
            at_rest=not observed.servers,
            spec=fixed,
            publish=publish,
            delete=delete,
        )
    if agg_doc is not None:  # the run is over: its status is the aggregate's result
        result = None
        if agg_doc.status == StageStatus.SUCCEEDED and agg_doc.result:
            try:
                result = read_part(EvalRunStatus, agg_doc.result)
            except ValidationError as e:
                agg_doc = failed(aggregate.name, "aggregate", UNREADABLE_RESULT, str(e))
                own_docs = [agg_doc if d.stage == aggregate.name else d for d in own_docs]
        all_docs = [d for n, d in docs.items() if n in external] + own_docs
        status = finish_evalrun(
            result, all_docs, stages, started or now, agg_doc.finished_at or now
        )
        if drifted:
            status.conditions = [accepted if c.type == ACCEPTED else c for c in status.conditions]
        for c in status.conditions:
            c.observed_generation = generation
        status.reused = reused_entries
        status.cached = [c for c in status.cached if c not in reused_entries]
        return _run_decision(
            old,
            status,
            generation,
            [],
            at_rest=not observed.servers,
            spec=fixed,
            publish=publish,
            delete=delete,
            copies=tuple(taken.values()),
        )

    create = [s for s in run_stages if states[s.name] == StageState.READY and not drifted]
    waiting_models = sorted(
        str(s.produces) for s in stages if external.get(s.name) == StageState.WAITING
    )
    running = [
        s.name for s in run_stages if states[s.name] in (StageState.RUNNING, StageState.SERVING)
    ]
    running += [s.name for s in create]
    if running:
        phase, reason, message = "Running", STAGES_RUNNING, f"running: {', '.join(running)}"
    elif waiting_models:
        phase, reason = "WaitingForModels", MODELS_NOT_READY
        message = f"waiting for QuantizedModel(s) {', '.join(waiting_models)} to be Ready"
    else:
        phase, reason, message = "Pending", STAGES_PENDING, "waiting for stages to start"
    status = EvalRunStatus(
        phase=phase,
        progress=progress(stages, states),
        started_at=started,
        failures=failures([d for n, d in docs.items() if n in external] + own_docs),
        reused=reused_entries,
        conditions=[
            accepted,
            _models_condition(waiting_models, now, generation),
            condition(SUCCEEDED, None, reason, message, now, generation),
            stalled(run_stages, observed, now, generation),
        ],
    )
    return _run_decision(
        old,
        status,
        generation,
        create,
        spec=fixed,
        labels=labels,
        publish=publish,
        delete=delete,
        copies=tuple(taken.values()),
    )


def server_outcomes(
    stages: list[Stage], observed: Observed, docs: Mapping[str, StageResult]
) -> tuple[tuple[StageResult, ...], tuple[str, ...]]:
    """Servers whose outcome is decided but not yet recorded (record it: once the server is
    gone nothing else would say it failed), and servers whose outcome is recorded (remove
    them). Two steps, so the record is seen before the server it describes disappears."""
    publish, delete = [], []
    for stage in stages:
        if not stage.serves or stage.name not in observed.servers:
            continue
        if stage.name in observed.results:
            delete.append(stage.name)
        elif stage.name in docs:
            publish.append(docs[stage.name])
    return tuple(publish), tuple(delete)


def _models_condition(waiting: list[str], now: str, generation: int | None) -> Condition:
    if waiting:
        message = f"QuantizedModel(s) not Ready yet: {', '.join(waiting)}"
        return condition(WAITING_FOR_MODELS, True, MODELS_NOT_READY, message, now, generation)
    message = "every model is ready"
    return condition(WAITING_FOR_MODELS, False, MODELS_READY, message, now, generation)


def _final_run(old: EvalRunStatus, observed: Observed, generation: int | None) -> Decision:
    """A finished run whose plan cannot be made any more (a QuantizedModel it evaluated was
    deleted or recreated): its status stays; its servers, if any are left, go."""
    servers = tuple(sorted(observed.servers))
    return _run_decision(old, frozen(old), generation, [], at_rest=not servers, delete=servers)


def _waiting(
    run: EvalRun, missing: set[str], old: EvalRunStatus, generation: int | None, now: str
) -> Decision:
    """Not accepted while a QuantizedModel it names does not exist, naming the field; not
    final either: it starts when the model is created (applied in any order)."""
    fields = [
        f"spec.candidates[{i}].quantizedModel: QuantizedModel {c.quantized_model} does not exist"
        for i, c in enumerate(run.spec.candidates)
        if c.quantized_model in missing
    ]
    fix = "create it (the run starts when it exists) or name an existing one"
    message = f"{'; '.join(fields)}: {fix}"
    waiting = f"waiting for QuantizedModel(s) {', '.join(sorted(missing))}, which do not exist yet"
    status = EvalRunStatus(
        phase="WaitingForModels",
        conditions=[
            condition(ACCEPTED, False, QUANTIZED_MODEL_NOT_FOUND, message, now, generation),
            condition(WAITING_FOR_MODELS, True, MODELS_NOT_READY, waiting, now, generation),
            condition(SUCCEEDED, None, MODELS_NOT_READY, waiting, now, generation),
        ],
    )
    return _run_decision(old, status, generation, [])


def _run_decision(
    old: EvalRunStatus,
    new: EvalRunStatus,
    generation: int | None,
    create: list[Stage],
    at_rest: bool = False,
    spec: str | None = None,
    labels: Mapping[str, Mapping[str, str]] | None = None,
    publish: tuple[StageResult, ...] = (),
    delete: tuple[str, ...] = (),
    copies: tuple[Reused, ...] = (),
) -> Decision:
    new.observed_generation = generation
    new.conditions = carry_transition_times(old.conditions, new.conditions)
    succeeded = next((c for c in new.conditions if c.type == SUCCEEDED), None)
    events = _created_events(create) + _phase_event(
        old.phase, new.phase, succeeded.message if succeeded else ""
    )
    events += _stalled_event(old.conditions, new.conditions)
    for doc in publish:
        if doc.status == StageStatus.SUCCEEDED:
            events.append(Event("Normal", SERVER_DONE, f"{doc.stage}: {doc.message}"))
        else:
            events.append(
                Event("Warning", doc.reason or SERVER_FAILED, f"{doc.stage}: {doc.message}")
            )
    if delete:
        events.append(
            Event("Normal", SERVER_STOPPED, f"removed the server(s) of {', '.join(delete)}")
        )
    return Decision(
        new.dump(),
        tuple(create),
        tuple(events),
        at_rest,
        spec,
        labels or {},
        publish,
        delete,
        copies,
    )
