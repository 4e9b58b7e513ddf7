"""Wrong verdicts, each with the real lm-eval output shape (tests/data/lmeval-0.4.13 was
written by lm-eval 0.4.13 on the demo model): the metric judged is chosen once and kept on
a cache hit, a tag or an empty group is never cached nor Succeeded, a group without an
aggregate is judged by its subtasks, signed metrics get a difference instead of a ratio,
limit: 1 aggregates, and modelArgs are read as lm-eval reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qeval.api.common import ModelSource
from qeval.api.evalrun import Task
from qeval.api.evalrun_status import Score
from qeval.results.summary import ModelOutcome, summarize
from qeval.stages.envelope import StageError
from qeval.stages.evaluate import EvaluateInput, _model_args, finish, lookup, parse_model_args
from tests.test_lmeval_parse import GSM8K_CONFIG, RESULTS

DATA = Path(__file__).parent / "data" / "lmeval-0.4.13"


def model_dir(tmp_path: Path, name: str = "model") -> Path:
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llama"}')
    return path


def evaluate_input(tmp_path: Path, model: Path, tasks: list[Task], out: str) -> EvaluateInput:
    return EvaluateInput(
        model_name="base",
        model=ModelSource(uri=str(model)),
        tasks=tasks,
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / out),
    )


def samples_of(name: str) -> dict[str, list]:
    folder = DATA / f"{name}.samples"
    return {
        p.stem: [json.loads(line) for line in p.read_text().splitlines()]
        for p in folder.glob("*.jsonl")
    }


# --- 5: the primary metric is chosen once and kept on a cache hit -----------------------


def test_a_cache_hit_judges_on_the_metric_the_first_run_chose(tmp_path):
    model = model_dir(tmp_path)
    fresh = {**RESULTS, "configs": {"gsm8k": GSM8K_CONFIG}}
    tasks = [Task(name="gsm8k"), Task(name="mmlu"), Task(name="ifeval")]
    first_inp = evaluate_input(tmp_path, model, tasks, "first")
    first = finish(first_inp, model, lookup(first_inp, model), fresh, {})
    again_inp = evaluate_input(tmp_path, model, tasks, "again")
    found = lookup(again_inp, model)
    assert set(found.hits) == {"gsm8k", "mmlu", "ifeval"}
    again = finish(again_inp, model, found, {}, {})
    assert again.cached_tasks == ["gsm8k", "mmlu", "ifeval"]
    assert (
        again.primary
        == first.primary
        == {
            "gsm8k": "exact_match,strict-match",
            "mmlu": "acc,none",
            "ifeval": "prompt_level_strict_acc,none",
        }
    )
    key = lambda s: (s.task, s.metric, s.filter)  # noqa: E731
    assert sorted(again.scores, key=key) == sorted(first.scores, key=key)


def test_an_old_cache_entry_without_a_recorded_metric_uses_the_task_config(tmp_path):
    model = model_dir(tmp_path)
    fresh = {**RESULTS, "configs": {"gsm8k": GSM8K_CONFIG}}
    inp = evaluate_input(tmp_path, model, [Task(name="gsm8k")], "first")
    finish(inp, model, lookup(inp, model), fresh, {})
    for entry in (tmp_path / "cache").rglob("entry.json"):  # as the old format stored it
        doc = json.loads(entry.read_text())
        del doc["primary"]
        entry.write_text(json.dumps(doc, sort_keys=True))
    again = evaluate_input(tmp_path, model, [Task(name="gsm8k")], "again")
    result = finish(again, model, lookup(again, model), {}, {})
    assert result.primary == {"gsm8k": "exact_match,strict-match"}


# --- 4: a tag names no task of its own: refused, never cached -----------------------------


def test_a_tag_fails_the_stage_and_caches_nothing(tmp_path):
    model = model_dir(tmp_path)
    fresh = json.loads((DATA / "tag.json").read_text())
    inp = evaluate_input(tmp_path, model, [Task(name="qeval_demo")], "out")
    with pytest.raises(StageError) as e:
        finish(inp, model, lookup(inp, model), fresh, samples_of("tag"))
    assert e.value.reason == "NoScore" and "qeval_demo" in str(e.value)
    assert not list((tmp_path / "cache").rglob("entry.json"))


# --- 6: a group without aggregate_metric_list: its subtasks are judged ------------------


def test_a_group_without_aggregate_is_judged_by_its_subtasks_and_cached_whole(tmp_path):
    model = model_dir(tmp_path)
    fresh = json.loads((DATA / "group_noagg.json").read_text())
    inp = evaluate_input(tmp_path, model, [Task(name="qeval_demo_noagg")], "out")
    result = finish(inp, model, lookup(inp, model), fresh, samples_of("group_noagg"))
    assert result.primary == {
        "qeval_demo_facts": "acc,none",
        "qeval_demo_recall": "exact_match,none",
    }
    again = evaluate_input(tmp_path, model, [Task(name="qeval_demo_noagg")], "again")
    hit = finish(again, model, lookup(again, model), {}, {})
    assert hit.primary == result.primary and hit.cached_tasks == ["qeval_demo_noagg"]


def score(model, task, value, stderr=0.01, metric="acc", primary=True) -> Score:
    return Score(model=model, task=task, metric=metric, value=value, stderr=stderr, primary=primary)


def test_a_candidate_missing_a_judged_task_is_not_passed():
    base = ModelOutcome("base", scores=(score("base", "a", 0.8), score("base", "b", 0.7)))
    cand = ModelOutcome("c", scores=(score("c", "a", 0.8),))
    status = summarize(base, [cand])
    assert status.candidates[0].mean_recovery == 1.0
    assert status.candidates[0].verdict == "Inconclusive"


def test_the_same_candidate_with_every_task_passes():
    base = ModelOutcome("base", scores=(score("base", "a", 0.8), score("base", "b", 0.7)))
    cand = ModelOutcome("c", scores=(score("c", "a", 0.8), score("c", "b", 0.7)))
    assert summarize(base, [cand]).candidates[0].verdict == "Pass"


# --- 7: signed metrics and near-zero baselines: a difference, out of the mean ratio ------


def test_matthews_correlation_gets_a_difference_not_a_ratio():
    # cola as lm-eval reports it: mcc,none with its stderr; the baseline is at chance.
    base = ModelOutcome(
        "base",
        scores=(
            score("base", "cola", -0.00054, 0.031, metric="mcc"),
            score("base", "arc", 0.8, 0.01),
        ),
    )
    cand = ModelOutcome(
        "c", scores=(score("c", "cola", 0.157, 0.03, metric="mcc"), score("c", "arc", 0.8, 0.01))
    )
    status = summarize(base, [cand])
    assert [r.task for r in status.recovery] == ["arc"]
    (diff,) = status.differences
    assert diff.task == "cola" and diff.value == pytest.approx(0.15754)
    assert diff.ci_low == pytest.approx(0.15754 - 1.959964 * (0.031**2 + 0.03**2) ** 0.5)
    assert "can be negative" in diff.reason
    assert status.candidates[0].mean_recovery == 1.0  # arc alone: not -291


def test_a_baseline_not_clearly_above_zero_gets_a_difference():
    base = ModelOutcome("base", scores=(score("base", "t", 0.01, 0.01, metric="exact_match"),))
    cand = ModelOutcome("c", scores=(score("c", "t", 0.02, 0.01, metric="exact_match"),))
    status = summarize(base, [cand])
    assert status.recovery == [] and status.differences[0].value == pytest.approx(0.01)
    assert "not clearly above 0" in status.differences[0].reason
    assert status.candidates[0].mean_recovery is None


def test_a_clearly_positive_baseline_keeps_its_ratio():
    base = ModelOutcome("base", scores=(score("base", "t", 0.05, 0.01, metric="exact_match"),))
    cand = ModelOutcome("c", scores=(score("c", "t", 0.04, 0.01, metric="exact_match"),))
    status = summarize(base, [cand])
    assert status.recovery[0].value == pytest.approx(0.8) and status.differences == []


def test_a_difference_wholly_below_zero_prevents_pass():
    base = ModelOutcome(
        "base", scores=(score("base", "cola", 0.3, 0.01, metric="mcc"), score("base", "a", 0.8))
    )
    cand = ModelOutcome(
        "c", scores=(score("c", "cola", 0.1, 0.01, metric="mcc"), score("c", "a", 0.8))
    )
    assert summarize(base, [cand]).candidates[0].verdict == "Inconclusive"


# --- 8: limit: 1, the schema's minimum, aggregates ----------------------------------------


def test_limit_one_aggregates_from_the_real_results(tmp_path):
    from qeval.stages.aggregate import AggregateInput, ModelResults, run
    from qeval.stages.envelope import StageResult, StageStatus

    model = model_dir(tmp_path)
    refs = []
    for name in ("base", "cand"):
        doc = json.loads((DATA / "limit1.json").read_text())
        tasks = [Task(name="qeval_demo_facts", limit=1), Task(name="qeval_demo_recall", limit=1)]
        inp = evaluate_input(tmp_path, model, tasks, f"evaluate-{name}").model_copy(
            update={"model_name": name, "cache_dir": None}
        )
        result = finish(inp, model, lookup(inp, model), doc, samples_of("limit1"))
        path = tmp_path / f"evaluate-{name}" / "result.json"
        StageResult(
            stage=f"evaluate-{name}",
            kind="evaluate",
            status=StageStatus.SUCCEEDED,
            result=result.model_dump(by_alias=True, mode="json"),
        ).write(path)
        refs.append(ModelResults(name=name, evaluate=str(path)))
    status = run(
        AggregateInput(baseline=refs[0], candidates=refs[1:], results_location=str(tmp_path))
    )
    assert [(r.task, r.value, r.stderr) for r in status.recovery] == [
        ("qeval_demo_facts", 1.0, None),
        ("qeval_demo_recall", 1.0, None),
    ]
    assert status.candidates[0].verdict == "Inconclusive"  # one item: nothing to tell


# --- 1, 2: modelArgs as lm-eval's --model_args reads them ---------------------------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("False", False), ("false", False), ("True", True), ("8", 8), ("0.5", 0.5)]
    + [("bfloat16", "bfloat16"), ("'8'", "8"), ("None", None)],
)
def test_model_args_values_are_read_as_lm_eval_reads_them(value, parsed):
    assert parse_model_args({"k": value}) == {"k": parsed}


def test_remote_code_is_off_unless_the_spec_says_so(tmp_path):
    inp = evaluate_input(tmp_path, tmp_path, [Task(name="a")], "o")
    args = _model_args(inp.model_copy(update={"model_args": {"dtype": "float32"}}), tmp_path)
    assert args == {"pretrained": str(tmp_path), "dtype": "float32", "trust_remote_code": False}
    trusted = _model_args(inp.model_copy(update={"trust_remote_code": True}), tmp_path)
    assert trusted["trust_remote_code"] is True


def test_qeval_own_args_win_over_model_args(tmp_path):
    # The API refuses these keys; a stage input written by hand cannot swap the weights.
    inp = evaluate_input(tmp_path, tmp_path, [Task(name="a")], "o")
    bad = inp.model_copy(update={"model_args": {"pretrained": "/other", "trust_remote_code": "1"}})
    args = _model_args(bad, tmp_path)
    assert args["pretrained"] == str(tmp_path) and args["trust_remote_code"] is False
