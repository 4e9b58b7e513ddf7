"""Reconcile decisions as pure functions: spec + observed children -> status and Jobs."""

from __future__ import annotations

import json
from typing import Any

from qeval.api.documents import load_documents
from qeval.api.evalrun import EvalRun
from qeval.api.evalrun_status import EvalRunStatus
from qeval.api.quantizedmodel import QuantizedModel, QuantizedModelStatus
from qeval.k8s import manifests as m
from qeval.k8s.observe import (
    JobState,
    PodProblem,
    ServerState,
    job_state,
    pod_problem,
    result_document,
    server_state,
)
from qeval.k8s.reconcile import (
    Decision,
    ModelState,
    Observed,
    decide_evalrun,
    decide_quantized_model,
    invalid_spec,
)
from qeval.k8s.reuse import LABEL_REUSE_KEY, Reused, named_identity, reuse_keys, vouched
from qeval.k8s.settings import OperatorSettings
from qeval.plan import Stage, build_plan, quantize_stage
from qeval.stages.envelope import StageResult, StageStatus
from tests.conftest import EXAMPLES

T0, T1 = "2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z"
SETTINGS = OperatorSettings()


def demo() -> tuple[EvalRun, dict[str, QuantizedModel]]:
    docs = load_documents(EXAMPLES / "evalrun.yaml")
    run = next(d for d in docs if isinstance(d, EvalRun))
    return run, {d.name: d for d in docs if isinstance(d, QuantizedModel)}


def layout(name: str) -> Any:
    return m.cluster_layout(SETTINGS, "default", name)


def ok(stage: str, kind: str, result: dict[str, Any] | None = None) -> StageResult:
    return StageResult(
        stage=stage,
        kind=kind,
        status=StageStatus.SUCCEEDED,
        started_at=T0,
        finished_at=T1,
        result=result or {},
    )


def running(stage: str, phase: str = "Running") -> JobState:
    return JobState(stage=stage, name=m.child_name("x", stage), phase=phase, created=T0)  # type: ignore[arg-type]


def conditions(decision: Decision) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in decision.status["conditions"]}


# --- QuantizedModel -----------------------------------------------------------------------


def qm_decision(observed: Observed, old: QuantizedModelStatus | None = None) -> Decision:
    _, models = demo()
    qm = models["tiny-llama-w4a16"]
    return decide_quantized_model(qm, observed, layout(qm.name), T1, 1, old)


def test_a_new_quantized_model_gets_one_quantize_job() -> None:
    d = qm_decision(Observed())
    assert [s.name for s in d.create] == ["quantize-tiny-llama-w4a16"]
    # The stage the EvalRuns' plans have, unedited: its Job builds the demo model itself.
    _, models = demo()
    qm = models["tiny-llama-w4a16"]
    assert d.create[0] == quantize_stage(qm, layout(qm.name))
    assert d.status["phase"] == "Quantizing"
    assert conditions(d)["Accepted"] == ("True", "SpecValid")
    assert conditions(d)["Ready"] == ("False", "StagesRunning")
    assert [e.reason for e in d.events] == ["JobCreated", "Quantizing"]


def test_an_existing_job_is_not_created_again_and_status_is_stable() -> None:
    observed = Observed(jobs={"quantize-tiny-llama-w4a16": running("quantize-tiny-llama-w4a16")})
    first = qm_decision(observed)
    assert first.create == ()
    again = qm_decision(observed, QuantizedModelStatus.model_validate(first.status))
    assert again.status == first.status  # nothing to write, no event
    assert again.events == ()


QUANTIZED = {
    "name": "tiny-llama-w4a16",
    "scheme": "W4A16",
    "outputDir": "/mnt/volumes/qeval-data/models/default/tiny-llama-w4a16",
    "sizeBytes": 1000,
    "baseSizeBytes": 4000,
    "compressionRatio": 4.0,
    "recipe": "quant_stage: {}",
    "quantizeSeconds": 3.0,
}


def test_a_published_result_makes_the_model_ready() -> None:
    result = QUANTIZED
    doc = ok("quantize-tiny-llama-w4a16", "quantize", result)
    d = qm_decision(Observed(results={doc.stage: doc}))
    assert d.at_rest and d.create == ()
    assert d.status["phase"] == "Ready"
    assert d.status["compressionRatio"] == 4.0
    assert d.status["output"] == result["outputDir"]
    assert conditions(d)["Ready"] == ("True", "Quantized")
    assert d.status["observedGeneration"] == 1


def test_a_failed_job_fails_the_model_with_the_jobs_reason() -> None:
    job = JobState(
        "quantize-tiny-llama-w4a16",
        "j",
        "Failed",
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    )
    d = qm_decision(Observed(jobs={job.stage: job}))
    assert d.status["phase"] == "Failed"
    assert conditions(d)["Ready"] == ("False", "BackoffLimitExceeded")
    assert any(e.type == "Warning" and e.reason == "Failed" for e in d.events)


def test_an_image_that_cannot_be_pulled_fails_the_model() -> None:
    stage = "quantize-tiny-llama-w4a16"
    problem = PodProblem(stage, "ImagePullBackOff", "container quantize: back-off pulling")
    d = qm_decision(Observed(jobs={stage: running(stage, "Pending")}, problems={stage: problem}))
    assert d.status["phase"] == "Failed"
    assert conditions(d)["Ready"] == ("False", "ImagePullBackOff")


def test_a_spec_changed_under_a_running_job_is_refused() -> None:
    stage = "quantize-tiny-llama-w4a16"
    job = JobState(stage, "j", "Running", created=T0, spec_digest="not-the-same")
    d = qm_decision(Observed(jobs={stage: job}))
    assert d.create == ()
    assert conditions(d)["Accepted"] == ("False", "SpecChanged")


def test_an_invalid_spec_is_reported_not_retried() -> None:
    d = invalid_spec("QuantizedModel", "spec.scheme: bad", T1, 2, QuantizedModelStatus())
    assert d.at_rest and d.status["phase"] == "Failed"
    assert conditions(d)["Accepted"] == ("False", "InvalidSpec")
    assert d.events[0].type == "Warning"


# --- EvalRun --------------------------------------------------------------------------------


def states(models: dict[str, QuantizedModel], phase: str | None) -> dict[str, ModelState]:
    return {name: ModelState(qm, phase) for name, qm in models.items()}


def run_decision(
    models: dict[str, ModelState], observed: Observed, old: EvalRunStatus | None = None
) -> Decision:
    run, _ = demo()
    return decide_evalrun(run, models, observed, layout(run.name), T1, 1, old)


def test_an_evalrun_waits_for_quantized_models_that_do_not_exist() -> None:
    d = run_decision({}, Observed())
    assert d.create == ()
    assert d.status["phase"] == "WaitingForModels"
    assert conditions(d)["WaitingForModels"] == ("True", "ModelsNotReady")
    assert "tiny-llama-fp8" in d.status["conditions"][1]["message"]
    # Not accepted, naming the field and the fix, until the models exist.
    assert conditions(d)["Accepted"] == ("False", "QuantizedModelNotFound")
    accepted = d.status["conditions"][0]["message"]
    assert "spec.candidates[0].quantizedModel: QuantizedModel tiny-llama-fp8" in accepted
    assert "create it" in accepted
    _, models = demo()
    d = run_decision(states(models, "Quantizing"), Observed())
    assert conditions(d)["Accepted"] == ("True", "SpecValid")


def test_an_evalrun_starts_what_it_can_while_models_quantize() -> None:
    _, models = demo()
    d = run_decision(states(models, "Quantizing"), Observed())
    # The demo model can be built now; the baseline evaluation needs it first.
    assert [s.name for s in d.create] == ["demo-model"]
    assert conditions(d)["WaitingForModels"] == ("True", "ModelsNotReady")
    assert d.status["progress"] == "0/7"


def test_ready_models_start_every_evaluation_at_once() -> None:
    _, models = demo()
    demo_doc = ok("demo-model", "demo-model")
    d = run_decision(states(models, "Ready"), Observed(results={"demo-model": demo_doc}))
    assert sorted(s.name for s in d.create) == [
        "evaluate-fp32",
        "evaluate-fp8",
        "evaluate-int8",
        "evaluate-w2a16-rtn",
        "evaluate-w4a16",
    ]
    assert d.status["phase"] == "Running"
    assert d.status["progress"] == "1/7"
    assert conditions(d)["WaitingForModels"] == ("False", "ModelsReady")


def evaluations() -> dict[str, StageResult]:
    names = ["fp32", "fp8", "int8", "w4a16", "w2a16-rtn"]
    docs = {f"evaluate-{n}": ok(f"evaluate-{n}", "evaluate") for n in names}
    docs["demo-model"] = ok("demo-model", "demo-model")
    return docs


def test_the_aggregate_runs_last_and_its_result_is_the_status() -> None:
    _, models = demo()
    ready = states(models, "Ready")
    d = run_decision(ready, Observed(results=evaluations()))
    assert [s.name for s in d.create] == ["aggregate"]

    aggregate = EvalRunStatus(mean_recovery=0.93, results_location="/mnt/volumes/qeval-data/x")
    results = evaluations() | {"aggregate": ok("aggregate", "aggregate", aggregate.dump())}
    d = run_decision(ready, Observed(results=results))
    assert d.at_rest and d.create == ()
    assert d.status["phase"] == "Succeeded"
    assert d.status["meanRecovery"] == 0.93
    assert d.status["progress"] == "7/7"
    assert d.status["completedAt"] == T1
    assert conditions(d)["Succeeded"] == ("True", "AllStagesSucceeded")
    assert all(c["observedGeneration"] == 1 for c in d.status["conditions"])


def test_a_failed_model_skips_its_evaluation_and_fails_the_run_with_the_reason() -> None:
    _, models = demo()
    ready = states(models, "Ready")
    ready["tiny-llama-int8"] = ModelState(models["tiny-llama-int8"], "Failed", "OOMKilled")
    results = evaluations()
    del results["evaluate-int8"]
    d = run_decision(ready, Observed(results=results))
    assert [s.name for s in d.create] == ["aggregate"]  # it still reports what ran

    results["aggregate"] = ok("aggregate", "aggregate", EvalRunStatus().dump())
    d = run_decision(ready, Observed(results=results))
    assert d.status["phase"] == "Failed"
    failures = {f["stage"]: f["reason"] for f in d.status["failures"]}
    assert failures == {
        "quantize-tiny-llama-int8": "QuantizedModelFailed",
        "evaluate-int8": "DependencyFailed",
    }
    assert conditions(d)["Succeeded"][0] == "False"


def test_reconcile_is_level_based_the_same_observations_give_the_same_decision() -> None:
    _, models = demo()
    observed = Observed(jobs={"demo-model": running("demo-model")})
    first = run_decision(states(models, "Quantizing"), observed)
    second = run_decision(
        states(models, "Quantizing"), observed, EvalRunStatus.model_validate(first.status)
    )
    assert first.create == second.create == ()
    assert second.status == first.status and second.events == ()


# --- observing children ---------------------------------------------------------------------


def test_job_states_from_job_conditions() -> None:
    job: dict[str, Any] = {
        "metadata": {"name": "j", "labels": {m.LABEL_STAGE: "s"}, "creationTimestamp": T0},
        "status": {},
    }
    assert job_state(job).phase == "Pending"
    job["status"] = {"active": 1, "ready": 0}  # e.g. pulling its image
    assert job_state(job).phase == "Pending"
    job["status"] = {"active": 1, "ready": 1}
    assert job_state(job).phase == "Running"
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}
    assert job_state(job).phase == "Succeeded"
    job["status"] = {
        "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}
        ]
    }
    state = job_state(job)
    assert (state.phase, state.reason, state.stage) == ("Failed", "BackoffLimitExceeded", "s")


def test_an_image_pull_error_is_retried_until_the_pull_timeout() -> None:
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": T1}
    waiting = {"reason": "ErrImagePull", "message": "429 Too Many Requests"}
    pod = {
        "metadata": {"labels": {m.LABEL_STAGE: "s"}},
        "status": {
            "conditions": [scheduled],
            "containerStatuses": [{"name": "c", "state": {"waiting": waiting}}],
        },
    }
    early = pod_problem(pod, "2026-11-23T10:14:59Z", pull_timeout=600)
    assert early is not None and not early.fatal and early.reason == "ErrImagePull"
    assert "429 Too Many Requests" in early.message and "retrying" in early.message
    late = pod_problem(pod, "2026-11-23T10:15:00Z", pull_timeout=600)
    assert late == PodProblem("s", "ErrImagePull", "container c: 429 Too Many Requests")
    pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "InvalidImageName"}}
    problem = pod_problem(pod, T1)
    assert problem is not None and problem.fatal  # never resolves: at first sight
    pod["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    assert pod_problem(pod, T1) is None


QUANTIZE = "quantize-tiny-llama-w4a16"


def test_an_unscheduled_pod_is_reported_with_the_schedulers_reason_and_not_failed() -> None:
    why = "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
    unscheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
    pod = {
        "metadata": {"name": "p", "labels": {m.LABEL_STAGE: QUANTIZE}},
        "status": {"phase": "Pending", "conditions": [unscheduled | {"message": why}]},
    }
    problem = pod_problem(pod, T1)
    assert problem == PodProblem(QUANTIZE, "Unschedulable", f"pod p: {why}", fatal=False)
    jobs = {QUANTIZE: running(QUANTIZE, "Pending")}
    d = qm_decision(Observed(jobs=jobs, problems={QUANTIZE: problem}))
    assert d.status["phase"] == "Quantizing"  # it waits: a node may free up or be added
    assert conditions(d)["Stalled"] == ("True", "Unschedulable")
    (stall,) = [c for c in d.status["conditions"] if c["type"] == "Stalled"]
    assert QUANTIZE in stall["message"] and why in stall["message"]
    assert ("Warning", "Unschedulable") in {(e.type, e.reason) for e in d.events}
    old = QuantizedModelStatus.model_validate(d.status)
    again = qm_decision(Observed(jobs=jobs, problems={QUANTIZE: problem}), old)
    assert again.events == ()  # one Warning, not one per resync
    d = qm_decision(Observed(jobs=jobs), old)
    assert conditions(d)["Stalled"] == ("False", "PodsRunning")


def test_a_pod_killed_for_memory_fails_its_stage_as_oomkilled() -> None:
    limits = {"limits": {"memory": "32Gi"}}
    terminated = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    pod = {
        "metadata": {"labels": {m.LABEL_STAGE: QUANTIZE}},
        "spec": {"containers": [{"name": "quantize", "resources": limits}]},
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"name": "quantize", "state": terminated}],
        },
    }
    problem = pod_problem(pod, T1)
    assert problem is not None and problem.fatal and problem.reason == "OOMKilled"
    assert "limit of 32Gi" in problem.message and "limits.memory" in problem.message
    # The Job says only which podFailurePolicy rule ended it; the pod says why.
    failed_job = JobState(QUANTIZE, "j", "Failed", "PodFailurePolicy", "exit code 137")
    d = qm_decision(Observed(jobs={QUANTIZE: failed_job}, problems={QUANTIZE: problem}))
    assert d.status["phase"] == "Failed" and conditions(d)["Ready"] == ("False", "OOMKilled")
    d = qm_decision(Observed(jobs={QUANTIZE: failed_job}))
    assert conditions(d)["Ready"] == ("False", "PodFailurePolicy")


RUN_OWNER = m.Owner("EvalRun", "demo", "default", "run-uid")


def result_configmap(stage: str, text: str, owner: m.Owner = RUN_OWNER) -> dict[str, Any]:
    """A result ConfigMap as the stage ``stage`` of ``owner`` publishes it."""
    return m.build_result_configmap(
        m.child_name(owner.name, stage),
        owner.namespace,
        {},
        m.labels(owner, Stage(stage, "evaluate", {})),
        owner.reference(block_owner_deletion=False),
    ) | {"data": {m.RESULT_KEY: text}}


def test_an_unreadable_result_configmap_is_a_failed_stage() -> None:
    cm = result_configmap("s", "{")
    cm["metadata"]["annotations"] = {m.ANNOTATION_STAGE: "s"}
    doc = result_document(cm)
    assert doc is not None and doc.status == StageStatus.FAILED
    assert doc.reason == "UnreadableResult"
    assert result_document({"metadata": {}, "data": {}}) is None


def test_a_result_passed_off_as_another_stages_or_runs_is_no_result() -> None:
    """A stage pod may write only the ConfigMap named after its Job, but chooses its labels,
    owner and document: any that do not match the name are not taken."""
    text = json.dumps(ok("evaluate-fp8", "evaluate").dump())
    assert result_document(result_configmap("evaluate-fp8", text)) is not None
    # Its own ConfigMap, its document naming another stage of the run.
    forged = result_configmap("evaluate-fp8", json.dumps(ok("evaluate-fp32", "evaluate").dump()))
    assert result_document(forged) is None
    # Its own ConfigMap, labelled and owned as another run's.
    other = m.Owner("EvalRun", "victim", "default", "victim-uid")
    forged = result_configmap("evaluate-fp8", text)
    forged["metadata"]["labels"][m.LABEL_OWNER_UID] = other.uid
    assert result_document(forged) is None
    forged["metadata"]["ownerReferences"] = [other.reference(block_owner_deletion=False)]
    assert result_document(forged) is None  # named after its own run, not the victim's


def test_only_results_whose_job_carries_the_reuse_key_are_reused() -> None:
    """A reuse key on a result is its writer's choice; the one on its Job is the operator's."""
    honest = Reused(ok("evaluate-fp8", "evaluate"), "/a", "run-a")
    forged = Reused(ok("evaluate-fp8", "evaluate"), "/b", "run-b")
    jobs = {"run-a": {"evaluate-fp8": "key-1"}, "run-b": {"evaluate-fp8": "key-2"}}

    def lookup(run: str) -> dict[str, str | None]:
        return dict(jobs.get(run, {}))

    assert vouched("key-1", [forged, honest], lookup) is honest
    assert vouched("key-1", [forged], lookup) is None
    assert vouched("key-2", [forged], lookup) is forged
    assert vouched("key-1", [Reused(honest.doc, "/a")], lookup) is None  # no owner known


# --- reusing another run's evaluations ------------------------------------------------------


def test_reuse_keys_name_models_only_where_the_weights_are_named() -> None:
    run, models = demo()
    stages = build_plan(run, models, layout(run.name))
    keys = reuse_keys(stages, "evaluator:1")
    # The demo model and the QuantizedModels made from it can be named without the weights.
    assert set(keys) == {
        "evaluate-fp32",
        "evaluate-fp8",
        "evaluate-int8",
        "evaluate-w4a16",
        "evaluate-w2a16-rtn",
    }
    assert len(set(keys.values())) == 5
    assert all(len(k) == 40 for k in keys.values())
    # Another run of the same study under another name: the same keys.
    other = run.model_copy(update={"metadata": run.metadata.model_copy(update={"name": "again"})})
    assert reuse_keys(build_plan(other, models, layout("again")), "evaluator:1") == keys
    # What shapes a result changes the key: the seed, the evaluator image.
    seeded = run.model_copy(update={"spec": run.spec.model_copy(update={"seed": 7})})
    assert reuse_keys(build_plan(seeded, models, layout(run.name)), "evaluator:1") != keys
    assert reuse_keys(stages, "evaluator:2") != keys


def test_a_hub_model_is_named_only_at_an_explicit_revision() -> None:
    assert named_identity({"uri": "meta-llama/Llama-3.1-8B"}, {}) is None
    assert named_identity({"uri": "meta-llama/Llama-3.1-8B", "revision": "0e9e39f"}, {}) == (
        "hf:meta-llama/Llama-3.1-8B@0e9e39f"
    )
    assert named_identity({"uri": "/mnt/volumes/models/x"}, {}) is None


# The demo study's tasks, as status.reused lists them (sorted).
DEMO_TASKS = ("qeval_demo_facts", "qeval_demo_perplexity", "qeval_demo_recall")


def test_an_evaluation_another_run_did_is_taken_not_run_again() -> None:
    _, models = demo()
    run, _ = demo()
    stages = build_plan(run, models, layout(run.name))
    keys = reuse_keys(stages, "")
    source = "/mnt/volumes/qeval-data/runs/default/earlier/stages/evaluate-fp32/result.json"
    hit = Reused(ok("evaluate-fp32", "evaluate"), source)
    observed = Observed(
        results={"demo-model": ok("demo-model", "demo-model")},
        reuse=lambda key: hit if key == keys["evaluate-fp32"] else None,
    )
    d = run_decision(states(models, "Ready"), observed)
    assert "evaluate-fp32" not in {s.name for s in d.create}
    assert {"evaluate-fp8", "evaluate-w4a16"} <= {s.name for s in d.create}
    assert d.status["reused"] == [f"fp32/{t}" for t in DEMO_TASKS]
    assert d.status["cached"] == []  # the stage-side result cache served nothing
    # Jobs carry their key, so their results can be found by the next run.
    created = {s.name for s in d.create}
    assert all(d.labels[n][LABEL_REUSE_KEY] == keys[n] for n in created)

    # The run records its own copy of what it took, with where the files are.
    (copy,) = d.copies
    assert (copy.doc.stage, copy.path) == ("evaluate-fp32", source)

    # Once the others are done, the aggregate reads the reused result where it was written:
    # from the run's copy, even when the other run (and its result) is gone by then.
    results = evaluations()
    for lookup in (observed.reuse, lambda key: None):
        seen = Observed(results=results, result_paths={"evaluate-fp32": source}, reuse=lookup)
        d = run_decision(states(models, "Ready"), seen)
        (aggregate,) = d.create
        assert aggregate.input["baseline"]["evaluate"] == source
        assert d.copies == ()  # copied once
        assert d.status["reused"] == [f"fp32/{t}" for t in DEMO_TASKS]

    # The run's status says which level served each result: the operator's reuse (taken
    # from another run) or the stage's result cache (found by the weights' contents).
    aggregate = EvalRunStatus(
        mean_recovery=0.9, cached=["fp32/qeval_demo_facts", "fp8/qeval_demo_facts"]
    )
    results = results | {"aggregate": ok("aggregate", "aggregate", aggregate.dump())}
    seen = Observed(results=results, result_paths={"evaluate-fp32": source})
    d = run_decision(states(models, "Ready"), seen)
    assert d.status["phase"] == "Succeeded"
    assert d.status["reused"] == [f"fp32/{t}" for t in DEMO_TASKS]
    assert d.status["cached"] == ["fp8/qeval_demo_facts"]


# --- a finished result never changes ----------------------------------------------------------


def finished_run(results: dict[str, StageResult], **observed: Any) -> Decision:
    """The demo run decided once its aggregate is in (``results``: every stage's document)."""
    _, models = demo()
    aggregate = EvalRunStatus(mean_recovery=0.93, results_location="/mnt/volumes/qeval-data/x")
    results = results | {"aggregate": ok("aggregate", "aggregate", aggregate.dump())}
    return run_decision(states(models, "Ready"), Observed(results=results, **observed))


def test_a_run_that_reused_evaluations_keeps_its_outcome_when_the_other_run_is_deleted() -> None:
    """(a) The reused result went with the other run: the run's own copy stays."""
    source = "/mnt/volumes/qeval-data/runs/default/earlier/stages/evaluate-fp32/result.json"
    done = finished_run(evaluations(), result_paths={"evaluate-fp32": source})
    assert (done.status["phase"], done.status["progress"]) == ("Succeeded", "7/7")
    # The other run is deleted: its result and the reuse lookup are gone, the copy is not.
    old = EvalRunStatus.model_validate(done.status)
    after = finished_run(evaluations(), result_paths={"evaluate-fp32": source})
    again = run_decision(
        states(demo()[1], "Ready"),
        Observed(results=evaluations() | {"aggregate": ok("aggregate", "aggregate")}),
        old,
    )
    assert after.status == done.status
    assert again.status == done.status and again.create == () and again.events == ()


def test_deleting_a_quantized_model_leaves_a_finished_run_as_it_was() -> None:
    """(b) It used to go back to WaitingForModels, with its scores nulled by the patch."""
    done = finished_run(evaluations())
    old = EvalRunStatus.model_validate(done.status)
    run, _ = demo()
    for models in ({}, {k: v for k, v in states(demo()[1], "Ready").items() if "fp8" not in k}):
        d = decide_evalrun(
            run, models, Observed(results=evaluations()), layout(run.name), T1, 1, old
        )
        assert d.status == done.status
        assert d.status["meanRecovery"] == 0.93
        assert d.at_rest and d.create == () and d.events == ()


def test_a_retry_that_succeeds_after_the_aggregate_does_not_flip_a_failed_run() -> None:
    """(c) The Job retried a failed stage and its new result appeared after the aggregate
    ran (result ConfigMaps are now immutable: it cannot; if it could, nothing changes)."""
    results = evaluations()
    results["evaluate-int8"] = StageResult(
        stage="evaluate-int8", kind="evaluate", status=StageStatus.FAILED, reason="Crashed"
    )
    done = finished_run(results)
    assert done.status["phase"] == "Failed"
    old = EvalRunStatus.model_validate(done.status)
    d = run_decision(
        states(demo()[1], "Ready"),
        Observed(results=evaluations() | {"aggregate": ok("aggregate", "aggregate")}),
        old,
    )
    assert d.status == done.status
    assert {f["stage"] for f in d.status["failures"]} == {"evaluate-int8"}


def test_a_finished_run_whose_jobs_are_deleted_keeps_its_times_and_creates_nothing() -> None:
    """(d) A TTL controller or a person removes the finished Jobs: startedAt came from
    them, and the stages without a result would have been created again."""
    jobs = {name: running(name, "Succeeded") for name in evaluations()}
    done = finished_run(evaluations(), jobs=jobs)
    assert done.status["startedAt"] == T0
    old = EvalRunStatus.model_validate(done.status)
    d = run_decision(states(demo()[1], "Ready"), Observed(results={}), old)
    assert d.status == done.status and d.create == () and d.at_rest


def test_a_spec_changed_after_the_run_finished_is_reported_and_the_outcome_kept() -> None:
    done = finished_run(evaluations())
    old = EvalRunStatus.model_validate(done.status)
    drifted = {
        "evaluate-fp32": JobState(
            stage="evaluate-fp32", name="j", phase="Succeeded", spec_digest="other"
        )
    }
    d = run_decision(
        states(demo()[1], "Ready"),
        Observed(results=evaluations() | {"aggregate": ok("aggregate", "aggregate")}, jobs=drifted),
        old,
    )
    assert conditions(d)["Accepted"] == ("False", "SpecChanged")
    assert {k: v for k, v in d.status.items() if k != "conditions"} == {
        k: v for k, v in done.status.items() if k != "conditions"
    }


def test_a_ready_quantized_model_whose_job_and_result_are_gone_stays_ready() -> None:
    """(d) It used to create its quantize Job again (and quantize again on a GPU)."""
    ready = qm_decision(Observed(results={QUANTIZE: ok(QUANTIZE, "quantize", QUANTIZED)}))
    assert ready.status["phase"] == "Ready"
    d = qm_decision(Observed(), QuantizedModelStatus.model_validate(ready.status))
    assert d.create == () and d.at_rest and d.status == ready.status


# --- model servers (backend vllm-server) ------------------------------------------------------


def served_run(**spec: Any) -> EvalRun:
    doc = {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "served", "namespace": "default"},
        "spec": {
            "baseline": {"name": "bf16", "model": {"uri": "org/base", "revision": "abc"}},
            "candidates": [{"name": "w4", "model": {"uri": "org/w4", "revision": "def"}}],
            "tasks": [{"name": "arc_easy"}],
            "backend": "vllm-server",
            "serving": {"readyTimeoutSeconds": 600},
            **spec,
        },
    }
    return EvalRun.model_validate(doc)


def served(observed: Observed, old: EvalRunStatus | None = None) -> Decision:
    run = served_run()
    return decide_evalrun(run, {}, observed, layout(run.name), T1, 1, old)


def up(stage: str, ready: bool = True) -> ServerState:
    return ServerState(stage, m.child_name("served", stage), ready=ready, created=T0)


SERVERS = ("serve-bf16", "serve-w4")


def test_servers_start_first_and_each_evaluation_waits_for_its_own() -> None:
    d = served(Observed())
    assert [s.name for s in d.create] == list(SERVERS)
    assert all(s.serves for s in d.create)
    assert [e.reason for e in d.events] == ["ServerCreated", "Running"]
    assert d.status["progress"] == "0/5"

    starting = Observed(servers={s: up(s, ready=False) for s in SERVERS})
    d = served(starting)
    assert d.create == () and d.status["phase"] == "Running"

    one_ready = Observed(
        servers={"serve-bf16": up("serve-bf16"), "serve-w4": up("serve-w4", False)}
    )
    d = served(one_ready)
    assert [s.name for s in d.create] == ["evaluate-bf16"]
    assert d.publish == () and d.delete == ()


def test_a_server_is_recorded_then_removed_once_its_stages_are_done() -> None:
    servers = {s: up(s) for s in SERVERS}
    results = {"evaluate-bf16": ok("evaluate-bf16", "evaluate")}
    jobs = {"evaluate-w4": running("evaluate-w4")}
    d = served(Observed(servers=servers, results=results, jobs=jobs))
    # bf16's server is done: its outcome is recorded first, the server still runs ...
    (record,) = d.publish
    assert (record.stage, record.status, record.message) == (
        "serve-bf16",
        StageStatus.SUCCEEDED,
        "served evaluate-bf16",
    )
    assert record.started_at == T0 and record.finished_at == T1
    assert d.delete == () and d.create == ()
    assert "ServerDone" in [e.reason for e in d.events]
    # ... and removed once the record is seen; w4's server stays for its evaluation.
    results["serve-bf16"] = record
    d = served(Observed(servers=servers, results=results, jobs=jobs))
    assert d.delete == ("serve-bf16",) and d.publish == ()
    assert "ServerStopped" in [e.reason for e in d.events]
    assert d.status["progress"] == "2/5"

    # Everything done and recorded, the servers gone: the run succeeds and rests.
    results |= {
        "evaluate-w4": ok("evaluate-w4", "evaluate"),
        "serve-w4": ok("serve-w4", "serve"),
        "aggregate": ok("aggregate", "aggregate"),
    }
    d = served(Observed(results=results))
    assert d.status["phase"] == "Succeeded" and d.status["progress"] == "5/5"
    assert d.at_rest and d.publish == () and d.delete == ()
    # While a server still exists the run is not at rest (its removal may need a retry).
    d = served(Observed(results=results, servers={"serve-w4": up("serve-w4")}))
    assert d.delete == ("serve-w4",) and not d.at_rest


def test_a_server_not_ready_within_its_timeout_of_starting_fails_the_run() -> None:
    stage = next(s for s in served(Observed()).create if s.name == "serve-w4")
    deployment = m.build_server(stage, m.Owner("EvalRun", "served", "default", "uid"), SETTINGS)[0]
    pod = {
        "metadata": {"name": "p", "labels": {m.LABEL_STAGE: "serve-w4"}},
        "spec": deployment["spec"]["template"]["spec"],
        "status": {
            "containerStatuses": [
                {
                    "name": "serve",
                    "started": False,
                    "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                    # Killed by the kubelet when its startup probe gave up, 600 s after start
                    # (a queue, a node scale-up or an image pull before it does not count).
                    "lastState": {
                        "terminated": {
                            "exitCode": 137,
                            "reason": "Error",
                            "startedAt": "2026-11-23T10:00:00Z",
                            "finishedAt": "2026-11-23T10:10:01Z",
                            "message": "INFO Loading safetensors checkpoint shards: 40%",
                        }
                    },
                }
            ]
        },
    }
    problem = pod_problem(pod, T1)
    assert problem is not None and problem.fatal and problem.reason == "ServerNotReady"
    assert "not ready within 600 s of starting" in problem.message
    assert "Loading safetensors" in problem.message
    # The Deployment alone never fails it: its progress deadline counts the queue too.
    deployment["status"] = {
        "replicas": 1,
        "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
        ],
    }
    state = server_state(deployment)
    assert not state.failed and state.starting and state.stage == "serve-w4"

    servers = {"serve-bf16": up("serve-bf16"), "serve-w4": state}
    results = {"evaluate-bf16": ok("evaluate-bf16", "evaluate")}
    problems = {"serve-w4": problem}
    d = served(Observed(servers=servers, results=results, problems=problems))
    failed = {r.stage: r for r in d.publish}
    assert failed["serve-w4"].status == StageStatus.FAILED
    assert failed["serve-w4"].reason == "ServerNotReady"
    assert "Warning" in {e.type for e in d.events}
    assert [s.name for s in d.create] == ["aggregate"]  # always runs, with what there is
    assert {f["stage"]: f["reason"] for f in d.status["failures"]} == {
        "serve-w4": "ServerNotReady",
        "evaluate-w4": "DependencyFailed",
    }

    results |= {r.stage: r for r in d.publish} | {"aggregate": ok("aggregate", "aggregate")}
    d = served(Observed(servers=servers, results=results))
    assert set(d.delete) == {"serve-bf16", "serve-w4"}
    assert d.status["phase"] == "Failed"
    assert conditions(d)["Succeeded"] == ("False", "ServerNotReady")


def test_a_server_that_keeps_exiting_fails_with_its_exit_code_and_log_tail() -> None:
    pod = {
        "metadata": {"labels": {m.LABEL_STAGE: "serve-w4"}},
        "status": {
            "containerStatuses": [
                {
                    "name": "serve",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    "lastState": {
                        "terminated": {
                            "exitCode": 1,
                            "message": "ValueError: max_model_len 8192 > 4096 of the model",
                        }
                    },
                }
            ]
        },
    }
    problem = pod_problem(pod)
    assert problem is not None and problem.reason == "CrashLoopBackOff"
    assert "exited with code 1: ValueError: max_model_len" in problem.message
    servers = {"serve-bf16": up("serve-bf16"), "serve-w4": up("serve-w4", ready=False)}
    d = served(Observed(servers=servers, problems={"serve-w4": problem}))
    (record,) = d.publish
    assert record.stage == "serve-w4" and record.reason == "CrashLoopBackOff"
    assert [s.name for s in d.create] == ["evaluate-bf16"]


def test_a_ready_deployment_and_a_starting_one_as_observed() -> None:
    ready = {"metadata": {"labels": {m.LABEL_STAGE: "serve-a"}}, "status": {"availableReplicas": 1}}
    assert server_state(ready).ready
    starting = {"metadata": {"labels": {m.LABEL_STAGE: "serve-a"}}, "status": {"replicas": 1}}
    state = server_state(starting)
    assert not state.ready and not state.failed and state.starting


def test_no_server_starts_for_evaluations_taken_from_another_run() -> None:
    run = served_run()
    stages = build_plan(run, {}, layout(run.name))
    keys = reuse_keys(stages, "")
    assert set(keys) == {"evaluate-bf16", "evaluate-w4"}
    # The server's address is not part of what an evaluation computes.
    other = served_run()
    other.metadata.name = "other"
    assert reuse_keys(build_plan(other, {}, layout("other")), "") == keys

    hits = {k: Reused(ok(n, "evaluate"), f"/earlier/{n}/result.json") for n, k in keys.items()}
    d = decide_evalrun(run, {}, Observed(reuse=hits.get), layout(run.name), T1, 1, None)
    assert [s.name for s in d.create] == ["aggregate"]  # no server, no evaluation
    # The servers count as done, not started (the engine's rule for what exists for users).
    assert d.status["progress"] == "4/5"
    # The same plan, its aggregate reading the results where the other run wrote them.
    inp = d.create[0].input
    assert inp["baseline"]["evaluate"] == "/earlier/evaluate-bf16/result.json"
    assert [c["evaluate"] for c in inp["candidates"]] == ["/earlier/evaluate-w4/result.json"]


# --- condition times, a Job that succeeded without a result -------------------------------


def test_a_condition_keeps_its_transition_time_until_its_status_changes() -> None:
    _, models = demo()
    qm = models["tiny-llama-w4a16"]
    stage = "quantize-tiny-llama-w4a16"
    job = {stage: running(stage)}

    def times(d: Decision) -> dict[str, str]:
        return {c["type"]: c["lastTransitionTime"] for c in d.status["conditions"]}

    first = decide_quantized_model(qm, Observed(jobs=job), layout(qm.name), T0, 1)
    assert set(times(first).values()) == {T0}
    old = QuantizedModelStatus.model_validate(first.status)
    later = decide_quantized_model(qm, Observed(jobs=job), layout(qm.name), T1, 1, old)
    assert times(later) == times(first)  # nothing changed at T1: still T0
    doc = ok(stage, "quantize", QUANTIZED)
    ready = decide_quantized_model(qm, Observed(results={stage: doc}), layout(qm.name), T1, 1, old)
    assert times(ready)["Ready"] == T1 and times(ready)["Accepted"] == T0


def test_a_job_that_succeeded_without_publishing_a_result_fails_its_stage() -> None:
    stage = "quantize-tiny-llama-w4a16"
    d = qm_decision(Observed(jobs={stage: running(stage, "Succeeded")}))
    assert d.at_rest and d.create == ()
    assert d.status["phase"] == "Failed"
    assert conditions(d)["Ready"] == ("False", "NoResult")


def test_reuse_keys_follow_the_tasks_the_recipe_and_the_calibration() -> None:
    run, models = demo()
    keys = reuse_keys(build_plan(run, models, layout(run.name)), "")

    def changed(run: EvalRun, models: dict[str, QuantizedModel]) -> set[str]:
        again = reuse_keys(build_plan(run, models, layout(run.name)), "")
        return {name for name in keys if again[name] != keys[name]}

    fewer = run.spec.model_copy(update={"tasks": run.spec.tasks[:1]})
    assert changed(run.model_copy(update={"spec": fewer}), models) == set(keys)
    w4 = models["tiny-llama-w4a16"]
    for update in (
        {"group_size": 64},
        {"calibration": w4.spec.calibration.model_copy(update={"num_samples": 128})},
    ):
        other = w4.model_copy(update={"spec": w4.spec.model_copy(update=update)})
        assert changed(run, {**models, w4.name: other}) == {"evaluate-w4a16"}, update


# --- documents from an image one release apart ----------------------------------------------


def newer_minor(doc: StageResult, **result_fields: Any) -> str:
    """``doc`` as a stage image one minor newer writes it: a field the operator does not know
    at the top and in its result."""
    out = doc.dump() | {"schemaVersion": "1.9", "fromTheFuture": True}
    out["result"] = (out.get("result") or {}) | result_fields
    return json.dumps(out)


def test_a_result_of_a_newer_minor_is_read_and_its_new_fields_ignored() -> None:
    text = newer_minor(ok("quantize-tiny-llama-w4a16", "quantize", QUANTIZED), kvCache="fp8")
    doc = result_document(result_configmap("quantize-tiny-llama-w4a16", text))
    assert doc is not None and doc.status == StageStatus.SUCCEEDED
    d = qm_decision(Observed(results={doc.stage: doc}))
    assert d.status["phase"] == "Ready" and d.status["compressionRatio"] == 4.0
    # The aggregate's result is the run's status: a field added to it is ignored too.
    _, models = demo()
    aggregate = EvalRunStatus(mean_recovery=0.93).dump()
    text = newer_minor(ok("aggregate", "aggregate", aggregate), judgedWinRate=0.4)
    agg = result_document(result_configmap("aggregate", text))
    assert agg is not None
    d = run_decision(states(models, "Ready"), Observed(results=evaluations() | {"aggregate": agg}))
    assert d.status["phase"] == "Succeeded" and d.status["meanRecovery"] == 0.93
    assert "judgedWinRate" not in d.status


def test_a_result_of_another_major_fails_its_stage_saying_why() -> None:
    text = json.dumps(ok("evaluate-fp8", "evaluate").dump() | {"schemaVersion": "2.0"})
    doc = result_document(result_configmap("evaluate-fp8", text))
    assert doc is not None and doc.status == StageStatus.FAILED
    assert doc.reason == "UnreadableResult"
    assert "schemaVersion 2.0" in (doc.message or "") and "reads 1.x" in (doc.message or "")
    for bad in ("1", "v1.0", 1.0):
        text = json.dumps(ok("evaluate-fp8", "evaluate").dump() | {"schemaVersion": bad})
        doc = result_document(result_configmap("evaluate-fp8", text))
        assert doc is not None and doc.reason == "UnreadableResult", bad


def test_a_result_written_before_versions_is_version_one() -> None:
    text = json.dumps(
        {k: v for k, v in ok("evaluate-fp8", "evaluate").dump().items() if k != "schemaVersion"}
    )
    doc = result_document(result_configmap("evaluate-fp8", text))
    assert doc is not None and doc.status == StageStatus.SUCCEEDED
    assert doc.schema_version == "1.0"
    assert json.loads(doc.model_dump_json(by_alias=True))["schemaVersion"] == "1.0"
