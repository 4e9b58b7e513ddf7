"""The operator's store of what its watches show (``qeval.k8s.store``): pure tests.

What the store holds decides what the operator does, so each rule is checked here: an
object's entry is replaced by its next event and dropped with its deletion, an event that
changes nothing says so (the handler then reconciles nobody), a forged result is not taken,
and a start fills the store from pages of a list before any watch event."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator, Mapping
from typing import Any

from qeval.k8s import manifests as m
from qeval.k8s import store
from qeval.k8s.controller import Controller
from qeval.k8s.metrics import Metrics
from qeval.k8s.reconcile import observed_outcome
from qeval.k8s.reuse import LABEL_REUSE_KEY
from qeval.k8s.settings import OperatorSettings
from qeval.k8s.store import Index, Store
from qeval.plan import Stage
from qeval.stages.envelope import StageResult, StageStatus

T0, T1 = "2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z"
RUN = m.Owner("EvalRun", "demo", "ml", "uid-demo")


def doc(stage: str, kind: str = "evaluate", status: str = StageStatus.SUCCEEDED) -> StageResult:
    return StageResult(
        stage=stage, kind=kind, status=status, started_at=T0, finished_at=T1, result={"x": 1}
    )


def result_map(
    owner: m.Owner, stage: str, uid: str, kind: str = "evaluate", **labels: str
) -> dict[str, Any]:
    """A result ConfigMap as the API server returns it: the operator's own builder's
    manifest with the uid the server gives it."""
    body = m.build_operator_result(owner, doc(stage, kind))
    body["metadata"] |= {"uid": uid}
    body["metadata"]["labels"] |= labels
    return body


def test_an_index_keeps_one_entry_per_object_replaced_and_dropped() -> None:
    index: Index[str, int] = Index()
    assert index.put("a", {"run-1": 1}) and index.put("b", {"run-1": 2})
    assert sorted(index.get("run-1")) == [1, 2]
    assert not index.put("a", {"run-1": 1})  # the same again: nothing changed
    assert index.put("a", {"run-2": 3})  # a's entry moved: it is no longer under run-1
    assert list(index.get("run-1")) == [2] and list(index.get("run-2")) == [3]
    assert index.put("b", None) and index.get("run-1") == ()  # b has no entry now
    assert index.drop("a") and not index.drop("a") and len(index) == 0
    assert index.get("run-2", []) == []


def test_an_object_may_have_several_keys() -> None:
    index: Index[str, str] = Index()
    index.put("run", {"qm-a": "run", "qm-b": "run"})
    assert list(index.get("qm-a")) == ["run"] == list(index.get("qm-b"))
    index.put("run", {"qm-b": "run"})
    assert index.get("qm-a") == () and list(index.get("qm-b")) == ["run"]


def test_a_result_configmap_fills_results_reusable_and_paths_and_its_deletion_empties_them() -> (
    None
):
    s = Store(OperatorSettings())
    stage = "evaluate-fp32"
    body = result_map(RUN, stage, "cm-1", **{LABEL_REUSE_KEY: "k1"})
    assert s.update(store.RESULT_MAPS, body)
    [held] = s.results.get(RUN.uid)
    assert (held.stage, held.status) == (stage, StageStatus.SUCCEEDED)
    [reused] = s.reusable.get(("ml", "k1"))
    assert reused.owner == RUN.uid and reused.path.endswith(
        f"/runs/ml/demo/stages/{stage}/result.json"
    )
    assert s.result_paths.get(RUN.uid) == ()  # not a copy: no path annotation

    assert not s.update(store.RESULT_MAPS, copy.deepcopy(body))  # listed again: no change
    assert s.update(store.RESULT_MAPS, body, deleted=True)
    assert (s.results.get(RUN.uid), s.reusable.get(("ml", "k1"))) == ((), ())
    assert not s.update(store.RESULT_MAPS, body, deleted=True)


def test_a_runs_copy_of_a_reused_result_records_where_its_files_are() -> None:
    s = Store(OperatorSettings())
    body = m.build_operator_result(RUN, doc("evaluate-w4a16"), "/data/runs/ml/other/x.json")
    body["metadata"]["uid"] = "cm-2"
    s.update(store.RESULT_MAPS, body)
    assert list(s.result_paths.get(RUN.uid)) == [("evaluate-w4a16", "/data/runs/ml/other/x.json")]


def test_a_failed_result_is_held_but_never_offered_for_reuse() -> None:
    s = Store(OperatorSettings())
    body = m.build_operator_result(RUN, doc("evaluate-fp8", status=StageStatus.FAILED))
    body["metadata"] |= {"uid": "cm-3"}
    body["metadata"]["labels"][LABEL_REUSE_KEY] = "k2"
    s.update(store.RESULT_MAPS, body)
    assert [d.status for d in s.results.get(RUN.uid)] == [StageStatus.FAILED]
    assert s.reusable.get(("ml", "k2")) == ()


def test_a_result_published_under_another_runs_labels_is_not_taken_for_its() -> None:
    s = Store(OperatorSettings())
    forged = result_map(RUN, "evaluate-fp32", "cm-4")
    forged["metadata"]["labels"][m.LABEL_OWNER_UID] = "uid-victim"
    assert not s.update(store.RESULT_MAPS, forged)
    assert s.results.get("uid-victim") == () and s.results.get(RUN.uid) == ()


def test_the_result_of_a_stage_the_decisions_do_not_read_is_kept_slim() -> None:
    s = Store(OperatorSettings())
    s.update(store.RESULT_MAPS, result_map(RUN, "evaluate-fp32", "cm-5"))
    s.update(store.RESULT_MAPS, result_map(RUN, "aggregate", "cm-6", "aggregate"))
    held = {d.stage: d for d in s.results.get(RUN.uid)}
    assert held["evaluate-fp32"].result is None  # the aggregate reads it from the claim
    assert held["aggregate"].result == {"x": 1}  # the run's status is made of it


def test_runs_are_known_by_the_quantized_models_they_name() -> None:
    s = Store(OperatorSettings())
    run = {
        "kind": "EvalRun",
        "metadata": {"name": "r", "namespace": "ml", "uid": "uid-r"},
        "spec": {"candidates": [{"quantizedModel": "qa"}, {"quantizedModel": "qb"}, {}]},
    }
    assert s.update(store.RUNS, run)
    assert list(s.runs_by_model.get(("ml", "qa"))) == ["uid-r"]
    run["spec"]["candidates"] = [{"quantizedModel": "qb"}]
    assert s.update(store.RUNS, run)
    assert s.runs_by_model.get(("ml", "qa")) == ()
    assert s.update(store.RUNS, run, deleted=True) and s.runs_by_model.get(("ml", "qb")) == ()


def test_a_start_fills_the_store_from_pages_of_each_kind() -> None:
    """``prime`` takes every page of every kind it lists; each QuantizedModel's phase and
    Ready message, and each stage Job, are then there for the first reconcile."""
    qm = {
        "kind": "QuantizedModel",
        "metadata": {"name": "q", "namespace": "ml", "uid": "uid-q"},
        "spec": {"scheme": "W4A16"},
        "status": {"phase": "Ready", "conditions": [{"type": "Ready", "message": "done"}]},
    }
    job = {
        "metadata": {
            "name": "demo-evaluate-fp32",
            "namespace": "ml",
            "uid": "job-1",
            "labels": {m.LABEL_OWNER_UID: RUN.uid, m.LABEL_STAGE: "evaluate-fp32"},
        },
        "status": {"active": 1},
    }
    results = [result_map(RUN, f"evaluate-{i}", f"cm-{i}") for i in range(5)]
    listed: dict[str, list[Mapping[str, Any]]] = {
        "jobs": [job],
        "deployments": [],
        "configmaps": results,
        "quantizedmodels": [qm],
    }
    asked: list[str] = []

    def pages(kind: store.Kind) -> Iterator[list[Mapping[str, Any]]]:
        asked.append(kind.resource[-1])
        items = listed[kind.resource[-1]]
        for i in range(0, len(items), 2):  # pages of two
            yield items[i : i + 2]

    s = Store(OperatorSettings())
    counts = s.prime(pages)
    assert counts == {"jobs": 1, "deployments": 0, "configmaps": 5, "quantizedmodels": 1}
    assert sorted(asked) == sorted(listed)
    assert len(s.results.get(RUN.uid)) == 5
    assert [j.stage for j in s.jobs.get(RUN.uid)] == ["evaluate-fp32"]
    [(spec, phase, message)] = s.models.get(("ml", "q"))
    assert (spec, phase, message) == ({"scheme": "W4A16"}, "Ready", "done")


def test_namespace_patterns_are_matched_as_kopf_matches_them() -> None:
    assert store.watched("anything", [])
    assert store.watched("team-a", ["team-*"]) and not store.watched("ml", ["team-*", "ci"])
    assert store.watched("ci", ["team-*", "ci"])


def test_a_selector_is_written_as_the_api_server_reads_it() -> None:
    assert store.selector({"b": "2", "a": "1"}) == "a=1,b=2"


class ResultsInTheAPI:
    """A stand-in for ``Kube`` holding the result ConfigMaps the API server has (the watch
    has not shown them yet): answers ``configmap`` as the real list by name does."""

    def __init__(self, *bodies: dict[str, Any]):
        self.bodies = {b["metadata"]["name"]: b for b in bodies}
        self.asked: list[tuple[str, str, str]] = []

    def configmap(self, namespace: str, name: str, selector: str) -> dict[str, Any] | None:
        self.asked.append((namespace, name, selector))
        return self.bodies.get(name)


def succeeded_job(owner: m.Owner, stage: str, uid: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": m.child_name(owner.name, stage),
            "namespace": owner.namespace,
            "uid": uid,
            "labels": {**store.CHILDREN, m.LABEL_OWNER_UID: owner.uid},
            "annotations": {m.ANNOTATION_STAGE: stage},
        },
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    }


def observe(kube: ResultsInTheAPI, *jobs: dict[str, Any]) -> tuple[Any, Controller]:
    controller = Controller(OperatorSettings(), kube, Metrics())  # type: ignore[arg-type]
    for job in jobs:
        controller.store.update(store.JOBS, job)
    return asyncio.run(controller._observe(RUN, controller.store)), controller


def test_a_succeeded_job_whose_result_the_watch_has_not_shown_is_read_before_its_outcome() -> None:
    """Jobs and result ConfigMaps come by two watches: a Job's Succeeded may come first.
    Its ConfigMap is read (a list by name and the results' selector) before the stage is
    decided NoResult, a Failed outcome that would be final."""
    published = result_map(RUN, "evaluate-bf16", "cm-1")
    kube = ResultsInTheAPI(published)
    observed, controller = observe(kube, succeeded_job(RUN, "evaluate-bf16", "job-1"))
    assert observed.results["evaluate-bf16"].status == StageStatus.SUCCEEDED
    stage = Stage("evaluate-bf16", "evaluate", {})
    assert observed_outcome(stage, observed) == observed.results["evaluate-bf16"]  # not NoResult
    name = m.child_name(RUN.name, "evaluate-bf16")
    assert kube.asked == [(RUN.namespace, name, store.selector(store.RESULTS))]
    # It is in the store now: its watch event, when it comes, changes nothing.
    assert not controller.store.update(store.RESULT_MAPS, published)

    # Where the API server has no result either, the stage is NoResult (read once more).
    kube = ResultsInTheAPI()
    observed, _ = observe(kube, succeeded_job(RUN, "evaluate-bf16", "job-1"))
    assert "evaluate-bf16" not in observed.results and len(kube.asked) == 1
    failed = observed_outcome(stage, observed)
    assert failed is not None and failed.reason == "NoResult"
