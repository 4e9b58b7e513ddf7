"""Size limits: the objects a run writes fit what Kubernetes stores (issue 14, item 6).

The aggregate's result becomes a ConfigMap (the API server refuses data over 1 MiB) and then
the EvalRun's status (etcd keeps an object of at most 1.5 MiB); every label value has at
most 63 characters. The largest study the API allows (tests/bigstudy.py: 32 candidates,
every suite, 64 more tasks, 16 load scenarios, similarity, every name at its longest) goes
through the real aggregate function on synthesized stage documents; what does not fit in
the status is in the full table on the run's storage, which the status names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qeval.api.evalrun import Scenario
from qeval.api.evalrun_status import EvalRunStatus
from qeval.k8s.manifests import Owner, build_result_configmap, child_name, labels
from qeval.plan import Stage
from qeval.stages import aggregate
from qeval.stages.aggregate import AggregateInput
from qeval.stages.envelope import StageResult, StageStatus, execute
from qeval.status import finish_evalrun, with_full_results
from tests.bigstudy import LARGEST, long_name, study_spec, write_study

MiB = 1024 * 1024
CONFIGMAP_LIMIT = 1 * MiB  # the API server's limit on a ConfigMap's data (keys + values)
ETCD_LIMIT = 1.5 * MiB  # etcd's request limit, which an object must fit
LABEL_LIMIT = 63
RUN_NAME = "r" * 253  # the longest name a custom resource may have
# The tasks the openllm-v1 and v2 suites are judged on (groups on their aggregate metric).
PRIMARY_V1_V2 = {
    ("arc_challenge", "acc_norm"),
    ("gsm8k", "exact_match"),
    ("hellaswag", "acc_norm"),
    ("mmlu", "acc"),
    ("truthfulqa_mc2", "acc"),
    ("winogrande", "acc"),
    ("leaderboard_bbh", "acc_norm"),
    ("leaderboard_gpqa", "acc_norm"),
    ("leaderboard_ifeval", "prompt_level_strict_acc"),
    ("leaderboard_math_hard", "exact_match"),
    ("leaderboard_mmlu_pro", "acc"),
    ("leaderboard_musr", "acc_norm"),
}


def aggregate_configmap(
    status: EvalRunStatus, namespace: str = "ns", run: str = RUN_NAME
) -> dict[str, Any]:
    """The aggregate's result ConfigMap, as its stage publishes it (for a run of the longest
    name, by default)."""
    owner = Owner("EvalRun", run, namespace, "0" * 36)
    stage = Stage("aggregate", "aggregate", {})
    doc = StageResult(
        stage="aggregate",
        kind="aggregate",
        status=StageStatus.SUCCEEDED,
        started_at="2026-12-02T05:00:00Z",
        finished_at="2026-12-02T05:00:09Z",
        wall_seconds=9.0,
        versions={"qeval": "0.1.0", "lm_eval": "0.4.13", "torch": "2.13.0"},
        result=status.dump(),
    )
    return build_result_configmap(
        child_name(run, stage.name),
        namespace,
        doc.dump(),
        labels(owner, stage),
        owner.reference(block_owner_deletion=False),
    )


def data_size(manifest: dict[str, Any]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in manifest["data"].items())


def evaluated(inp: AggregateInput) -> dict[str, list[dict[str, Any]]]:
    """Each model's scores as its evaluate stage wrote them."""
    out = {}
    for ref in (inp.baseline, *inp.candidates):
        doc = json.loads(Path(ref.evaluate).read_text())
        out[ref.name] = doc["result"]["scores"]
    return out


def keys(entries: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    return {(e["model"], e["task"], e["metric"], e.get("filter", "none")) for e in entries}


@pytest.fixture(scope="module")
def largest(tmp_path_factory: pytest.TempPathFactory) -> tuple[AggregateInput, EvalRunStatus]:
    inp = write_study(tmp_path_factory.mktemp("largest") / "run", study_spec(**LARGEST))
    return inp, aggregate.run(inp)


@pytest.fixture(scope="module")
def studies_ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[AggregateInput, EvalRunStatus]:
    """32 candidates x openllm-v1 + v2 (116 scores a model), 16 scenarios, similarity."""
    inp = write_study(tmp_path_factory.mktemp("v1v2") / "run", study_spec(32))
    return inp, aggregate.run(inp)


def test_the_largest_study_fits_a_configmap_with_its_summaries(largest):
    inp, status = largest
    manifest = aggregate_configmap(status)
    assert data_size(manifest) < CONFIGMAP_LIMIT
    assert all(len(v) <= LABEL_LIMIT for v in manifest["metadata"]["labels"].values())
    assert len(manifest["metadata"]["name"]) <= LABEL_LIMIT
    # Its 33 x 80 task tables do not fit: the status keeps what the verdicts and dashboards
    # of the whole run need, and names the table.
    assert status.detail == "summary" and status.scores == [] and status.recovery == []
    assert [c.name for c in status.candidates] == [c.name for c in inp.candidates]
    assert all(c.verdict and c.mean_recovery for c in status.candidates)
    assert len(status.suite_scores) == 33 * 4  # every model on every suite
    assert (len(status.performance), len(status.speedups)) == (33 * 16, 32 * 16)
    assert len(status.similarity) == 32
    assert status.full_results == f"{inp.results_location}/results.json"


def test_the_full_table_is_on_disk_complete(largest):
    inp, status = largest
    table = json.loads(Path(str(status.full_results)).read_text())
    written = evaluated(inp)
    assert keys(table["scores"]) == {k for s in written.values() for k in keys(s)}
    assert len(table["scores"]) == sum(len(s) for s in written.values())
    # Every candidate's every metric has a recovery or a difference from the baseline.
    baseline = {k[1:] for k in keys(written[inp.baseline.name])}
    expected = {(c.name, *k) for c in inp.candidates for k in baseline}
    assert keys(table["recovery"]) | keys(table["differences"]) == expected
    assert len(table["cached"]) == 33 * 80  # every task of every model, from the cache


def test_the_studies_ran_keep_every_tasks_primary_metric_in_the_status(studies_ran):
    inp, status = studies_ran
    assert data_size(aggregate_configmap(status)) < CONFIGMAP_LIMIT
    assert status.detail == "primary"
    models = [inp.baseline.name, *(c.name for c in inp.candidates)]
    assert {(s.model, s.task, s.metric) for s in status.scores} == {
        (m, t, metric) for m in models for t, metric in PRIMARY_V1_V2
    }
    assert {(r.model, r.task, r.metric) for r in status.recovery} == {
        (m, t, metric) for m in models[1:] for t, metric in PRIMARY_V1_V2
    }
    table = json.loads(Path(str(status.full_results)).read_text())
    assert len(table["scores"]) == 33 * 116 and len(table["recovery"]) == 32 * 116
    full = {(r["model"], r["task"], r["metric"], r["filter"]): r for r in table["recovery"]}
    assert all(full[(r.model, r.task, r.metric, r.filter)] == r.dump() for r in status.recovery)


def test_a_local_run_reads_every_result_back(largest):
    """``qeval run`` (and ``qeval report`` where the storage is at hand) show every result:
    the full table comes back from disk."""
    from qeval.local.console import summary_table
    from qeval.report.model import run_from_objects
    from qeval.report.text import primary_columns

    inp, status = largest
    full = with_full_results(status)
    table = json.loads(Path(str(status.full_results)).read_text())
    assert full.detail == "full" and len(full.scores) == len(table["scores"])
    assert len(primary_columns(full)) == 80  # 12 + 2 code + 2 demo + 64 tasks
    spec = study_spec(**LARGEST)
    run = run_from_objects(
        {"metadata": {"name": "r"}, "spec": spec.dump(), "status": status.dump()}
    )
    assert run.status.detail == "full" and run.status.recovery == full.recovery
    from qeval.api.evalrun import EvalRun

    obj = EvalRun.model_validate({"metadata": {"name": "r"}, "spec": spec.dump()})
    assert len(summary_table(obj, full).columns) == 3 + 2 * 80 + 2


def test_results_that_fit_no_status_fail_the_stage_with_a_recorded_reason(tmp_path):
    spec = study_spec(4)
    assert spec.performance is not None
    # Far more scenarios than the API allows (16): the performance points alone are too many.
    spec.performance.scenarios = [
        Scenario(name=long_name("scenario", i), kind="synchronous") for i in range(400)
    ]
    inp = write_study(tmp_path / "run", spec)
    (tmp_path / "input.json").write_text(json.dumps(inp.dump()))
    out = tmp_path / "stages" / "aggregate" / "result.json"
    doc = execute("aggregate", AggregateInput, aggregate.run, tmp_path / "input.json", out)
    assert (doc.status, doc.reason) == (StageStatus.FAILED, "ResultTooLarge")
    assert f"{tmp_path}/run/results.json" in str(doc.message)
    assert StageResult.load(out).reason == "ResultTooLarge"  # recorded, not only logged
    table = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(table["scores"]) == 5 * 116


# --- the real API server --------------------------------------------------------------


def evalrun(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_the_real_api_server_stores_the_largest_objects(
    control_plane, namespace, largest, studies_ran
):
    """The aggregate ConfigMaps and the final statuses (as the operator writes them, the
    operator's own cached entries added) of both studies: created, and read back whole."""
    ns = f"/api/v1/namespaces/{namespace}"
    runs = f"/apis/qeval.dev/v1alpha1/namespaces/{namespace}/evalruns"
    for i, ((inp, agg), kw) in enumerate(((largest, LARGEST), (studies_ran, {"candidates": 32}))):
        name = f"{i}{RUN_NAME}"[:253]
        manifest = aggregate_configmap(agg, namespace, name)
        manifest["metadata"].pop("ownerReferences")  # no such run's uid
        code, text = control_plane.request("POST", f"{ns}/configmaps", manifest)
        assert code == 201, text[:500]
        code, text = control_plane.request("POST", runs, evalrun(name, study_spec(**kw).dump()))
        assert code == 201, text[:500]
        body = json.loads(text)
        # The status the operator writes: the aggregate's, with phase, conditions, progress,
        # and every task of every model listed as reused (a run wholly from the cache).
        docs = [StageResult(stage=f"s{i}", kind="evaluate", status="Succeeded") for i in range(99)]
        stages = [Stage(d.stage, d.kind, {}) for d in docs]
        final = finish_evalrun(agg, docs, stages, "2026-12-02T05:00:00Z", "2026-12-02T06:00:00Z")
        every = [
            f"{m}/{t.name}"
            for m in (inp.baseline.name, *(c.name for c in inp.candidates))
            for t in study_spec(**kw).all_tasks()
        ]
        final.cached = sorted({*final.cached, *every})
        body["status"] = final.dump()
        code, text = control_plane.request("PUT", f"{runs}/{name}/status", body)
        assert code == 200, text[:500]
        assert len(text) < ETCD_LIMIT
        stored = control_plane.get("qeval.dev/v1alpha1/evalruns", namespace, name)
        assert stored is not None
        assert EvalRunStatus.model_validate(stored["status"]) == final
        cm = control_plane.get("v1/configmaps", namespace, manifest["metadata"]["name"])
        assert cm is not None and cm["data"] == manifest["data"]


def test_a_result_too_large_for_a_configmap_is_published_as_a_failure(control_plane, namespace):
    """Any stage: a document over 1 MiB is replaced by a Failed one the operator reads."""
    from kubernetes import client, config

    from qeval.k8s.publish import publish

    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    scores = [{"model": "m", "task": f"t{i}", "metric": "acc", "value": 0.5} for i in range(20000)]
    doc = StageResult(
        stage="evaluate-m",
        kind="evaluate",
        status=StageStatus.SUCCEEDED,
        result={"modelName": "m", "scores": scores},
    )
    env = {"QEVAL_RESULT_CONFIGMAP": "result-m", "QEVAL_RESULT_NAMESPACE": namespace}
    assert publish(doc, env, api=client.ApiClient(configuration)) == "result-m"
    cm = control_plane.get("v1/configmaps", namespace, "result-m")
    assert cm is not None
    published = StageResult.model_validate_json(cm["data"]["result.json"])
    assert (published.status, published.reason) == (StageStatus.FAILED, "ResultTooLarge")
    assert "over the API server's limit of 1048576" in str(published.message)


def test_qeval_run_keeps_and_prints_every_result(tmp_path, monkeypatch):
    """The local executor puts the full table back into status.json (and its table, report)."""
    from rich.console import Console

    from qeval.api.evalrun import EvalRun
    from qeval.local import executor

    spec = study_spec(2, scenarios=0, similarity=False)
    run = EvalRun.model_validate({"metadata": {"name": "r"}, "spec": spec.dump()})

    def stages(stages: Any, layout: Any, console: Any) -> dict[str, StageResult]:
        """The aggregate over the documents its stages would have written."""
        inp = write_study(Path(str(layout.run_root)), spec)
        (tmp_path / "input.json").write_text(json.dumps(inp.dump()))
        out = Path(str(layout.result_path("aggregate")))
        return {
            "aggregate": execute(
                "aggregate", AggregateInput, aggregate.run, tmp_path / "input.json", out
            )
        }

    monkeypatch.setattr(executor, "run_stages", stages)
    monkeypatch.setattr(executor, "preflight", lambda *_: None)  # no models, datasets here
    console = Console(record=True, width=3000)
    outcome = executor.execute_run(run, {}, tmp_path, console)
    published = StageResult.load(outcome.run_dir / "stages" / "aggregate" / "result.json")
    assert published.result is not None and published.result["detail"] == "primary"
    status = json.loads((outcome.run_dir / "status.json").read_text())
    assert status["detail"] == "full" and len(status["scores"]) == 3 * 116
    assert len(status["recovery"]) == 2 * 116
    printed = console.export_text()
    assert all(task in printed for task, _ in PRIMARY_V1_V2)
