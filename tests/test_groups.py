"""lm-eval groups through to the verdict (issue 15, item 3): a group with an aggregate is
one score and one entry of the mean recovery; its subtasks are kept, each paired over its
own items, and never counted again. On a results document and per-sample logs lm-eval
0.4.13 wrote (tests/data/lmeval-0.4.13/groups.*), the candidate's made by changing one
answer of one subtask (and the two scores lm-eval would then report)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qeval.results import stats
from qeval.results.lmeval import parse_scores
from qeval.results.summary import ModelOutcome, primary_table, summarize
from qeval.stages.aggregate import per_item
from qeval.stages.evaluate import EvaluateResult

DATA = Path(__file__).parent / "data" / "lmeval-0.4.13"


def outcome(name: str, doc: dict, samples: Path, tmp: Path) -> ModelOutcome:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(doc))
    scores = parse_scores(doc, name)
    result = EvaluateResult(
        model_name=name,
        backend="hf",
        harness_version="0.4.13",
        scores=scores,
        results_path=str(path),
        samples_dir=str(samples),
    )
    items = per_item(result, scores)
    return ModelOutcome(name, scores=tuple(scores), items=items.values, pairs=items.pairs)


@pytest.fixture
def study(tmp_path):
    doc = json.loads((DATA / "groups.json").read_text())
    base = outcome("base", doc, DATA / "groups.samples", tmp_path)
    # The candidate misses document 1 of qeval_mc_b (right for the baseline).
    samples = tmp_path / "cand.samples"
    shutil.copytree(DATA / "groups.samples", samples)
    path = samples / "qeval_mc_b.jsonl"
    rows = [json.loads(line) for line in path.open()]
    assert rows[1]["acc"] == 1.0
    rows[1]["acc"] = 0.0
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cand = json.loads(json.dumps(doc))
    cand["results"]["qeval_mc_b"]["acc,none"] = 0.5  # 2 of 4
    cand["results"]["qeval_agg"]["acc,none"] = 0.625  # 5 of the group's 8
    return summarize(base, [outcome("cand", cand, samples, tmp_path)], threshold=0.95)


def test_the_group_is_one_entry_of_the_mean_and_its_subtasks_are_not(study):
    """Judged: the aggregated group (not its two subtasks), the ungrouped task, and the
    subtasks of the group without an aggregate: four entries, the group once."""
    primary = {
        (s.task, s.metric, s.filter) for s in study.scores if s.model == "base" and s.primary
    }
    assert primary == {
        ("qeval_agg", "acc", "none"),
        ("qeval_mc", "acc", "none"),
        ("qeval_gen", "exact_match", "strict-match"),
        ("qeval_mc_c", "acc", "none"),
    }
    # qeval_gen's strict-match, 0.5 on 4 documents, is not clearly above 0: a difference,
    # not a ratio; the mean is over the other three, the group's recovery once.
    (cand,) = study.candidates
    assert cand.mean_recovery == pytest.approx((2 + 0.625 / 0.75) / 3)
    _, shown, differences = primary_table(study, "base")
    assert {r.task for r in shown} == {"qeval_agg", "qeval_mc", "qeval_mc_c"}
    assert [d.task for d in differences] == ["qeval_gen"]


def test_a_subtask_is_kept_and_paired_over_its_own_items(study):
    rec = {(r.task, r.metric): r for r in study.recovery}
    sub, group = rec[("qeval_mc_b", "acc")], rec[("qeval_agg", "acc")]
    assert sub.value == pytest.approx(0.5 / 0.75) and group.value == pytest.approx(0.625 / 0.75)
    # Paired over the subtask's 4 documents: the interval the items give, narrower
    # than one from the two scores' standard errors (0.25 and 0.29 on 4 documents).
    paired = stats.paired_recovery_interval([1, 1, 0, 1], [1, 0, 0, 1])
    assert (sub.ci_low, sub.ci_high) == pytest.approx((paired.low, paired.high))
    alone = stats.recovery_interval(0.5, 0.75, 0.2887, 0.25)
    assert sub.ci_high - sub.ci_low < 0.7 * (alone.high - alone.low)
    # The group pairs over its subtasks' 8 documents; only it gets the paired test.
    assert group.test == "mcnemar" and sub.test is None
    assert study.candidates[0].degraded_tasks == []  # one answer of 8 is no evidence
