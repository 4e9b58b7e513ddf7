"""Parsing lm-eval's results JSON: metrics, filters, "N/A" stderrs, groups, primary metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qeval.results.lmeval import (
    LayoutError,
    harness_version,
    judged_tasks,
    parse_scores,
    primary_metrics,
    top_level_tasks,
)

DATA = Path(__file__).parent / "data" / "lmeval-0.4.13"  # written by lm-eval 0.4.13 itself

# Shaped as lm-eval 0.4.13 writes it (keys "<metric>,<filter>", stderr "N/A" possible).
RESULTS = {
    "results": {
        "gsm8k": {
            "alias": "gsm8k",
            "exact_match,strict-match": 0.75,
            "exact_match_stderr,strict-match": 0.012,
            "exact_match,flexible-extract": 0.77,
            "exact_match_stderr,flexible-extract": 0.0118,
        },
        "mmlu": {"alias": "mmlu", "acc,none": 0.68, "acc_stderr,none": 0.0037},
        "mmlu_anatomy": {"alias": " - anatomy", "acc,none": 0.6, "acc_stderr,none": 0.04},
        "ifeval": {
            "alias": "ifeval",
            "prompt_level_strict_acc,none": 0.7,
            "prompt_level_strict_acc_stderr,none": "N/A",
        },
    },
    "group_subtasks": {"gsm8k": [], "mmlu": ["mmlu_anatomy"], "ifeval": []},
    "n-shot": {"gsm8k": 5, "mmlu": 5, "mmlu_anatomy": 5, "ifeval": 0},
    "n-samples": {
        "gsm8k": {"original": 1319, "effective": 1319},
        "ifeval": {"original": 541, "effective": 541},
    },
    "higher_is_better": {"gsm8k": {"exact_match": True}, "mmlu": {"acc": True}},
    "lm_eval_version": "0.4.13",
}


def test_every_metric_and_filter():
    scores = parse_scores(RESULTS, "base")
    keys = {(s.task, s.metric, s.filter) for s in scores}
    assert ("gsm8k", "exact_match", "flexible-extract") in keys
    assert ("mmlu_anatomy", "acc", "none") in keys
    assert len(scores) == 5
    gsm = next(s for s in scores if s.filter == "strict-match")
    assert (gsm.value, gsm.stderr, gsm.samples, gsm.num_fewshot) == (0.75, 0.012, 1319, 5)


def test_na_stderr_becomes_none():
    (ifeval,) = [s for s in parse_scores(RESULTS, "base") if s.task == "ifeval"]
    assert ifeval.stderr is None


def test_one_primary_per_top_level_task():
    scores = parse_scores(RESULTS, "base")
    primary = {(s.task, s.filter) for s in scores if s.primary}
    assert primary == {("gsm8k", "strict-match"), ("mmlu", "none"), ("ifeval", "none")}
    assert top_level_tasks(RESULTS) == ["gsm8k", "mmlu", "ifeval"]


def test_requested_primary_metric():
    results = {"results": {"arc": {"acc,none": 0.5, "acc_norm,none": 0.55}}}
    chosen = primary_metrics(results, {"arc": "acc_norm"})
    assert chosen == {"arc": "acc_norm,none"}
    (norm, acc) = parse_scores(results, "m", chosen)  # the judged metric first
    assert norm.primary and norm.metric == "acc_norm" and not acc.primary
    with pytest.raises(ValueError, match="reports no metric 'f1'"):
        primary_metrics(results, {"arc": "f1"})


# gsm8k's config as lm-eval 0.4.13's task index has it (metric_list, filter_list order).
GSM8K_CONFIG = {
    "task": "gsm8k",
    "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    "filter_list": [{"name": "strict-match"}, {"name": "flexible-extract"}],
}
IFEVAL_CONFIG = {
    "task": "leaderboard_ifeval",
    "metric_list": [
        {"metric": "prompt_level_strict_acc"},
        {"metric": "inst_level_strict_acc"},
        {"metric": "prompt_level_loose_acc"},
        {"metric": "inst_level_loose_acc"},
    ],
}


def _sorted(doc):
    """The document as the result cache stores it: keys sorted (json sort_keys)."""
    return json.loads(json.dumps(doc, sort_keys=True))


def test_the_default_metric_follows_the_task_config_not_the_key_order():
    doc = {
        "results": {
            "gsm8k": RESULTS["results"]["gsm8k"],
            "leaderboard_ifeval": {
                "alias": "leaderboard_ifeval",
                "prompt_level_strict_acc,none": 0.7,
                "prompt_level_strict_acc_stderr,none": 0.02,
                "inst_level_strict_acc,none": 0.8,
                "inst_level_strict_acc_stderr,none": "N/A",
            },
        },
        "group_subtasks": {"gsm8k": [], "leaderboard_ifeval": []},
        "configs": {"gsm8k": GSM8K_CONFIG, "leaderboard_ifeval": IFEVAL_CONFIG},
    }
    expected = {
        "gsm8k": "exact_match,strict-match",
        "leaderboard_ifeval": "prompt_level_strict_acc,none",
    }
    wanted = {"gsm8k": None, "leaderboard_ifeval": None}
    assert primary_metrics(doc, wanted) == expected
    assert primary_metrics(_sorted(doc), wanted) == expected  # "flexible" < "strict"


def test_a_group_without_aggregate_is_judged_by_its_subtasks():
    doc = json.loads((DATA / "group_noagg.json").read_text())
    assert doc["results"]["qeval_demo_noagg"] == {
        "alias": "qeval_demo_noagg",
        "name": "qeval_demo_noagg",
    }
    assert judged_tasks(doc, "qeval_demo_noagg") == ["qeval_demo_facts", "qeval_demo_recall"]
    assert primary_metrics(doc, {"qeval_demo_noagg": None}) == {
        "qeval_demo_facts": "acc,none",
        "qeval_demo_recall": "exact_match,none",
    }
    primary = {s.task for s in parse_scores(doc, "m") if s.primary}
    assert primary == {"qeval_demo_facts", "qeval_demo_recall"}


def test_a_group_with_aggregate_is_judged_on_it():
    doc = json.loads((DATA / "group_agg.json").read_text())
    assert primary_metrics(doc, {"qeval_demo_agg": None}) == {"qeval_demo_agg": "acc,none"}


def test_a_tag_reports_no_score_of_its_own():
    doc = json.loads((DATA / "tag.json").read_text())
    assert "qeval_demo" not in doc["results"]
    assert primary_metrics(doc, {"qeval_demo": None}) == {}


LM_EVAL_03 = {  # lm-eval 0.3: metrics without a filter
    "results": {"arc_easy": {"acc": 0.75, "acc_stderr": 0.01, "acc_norm": 0.7}},
    "versions": {"arc_easy": 0},
    "config": {"model": "hf-causal", "num_fewshot": 0},
}
LM_EVAL_040 = {  # lm-eval 0.4.0/0.4.1: groups beside their members, no group_subtasks
    "results": {
        "mmlu": {"acc,none": 0.6, "acc_stderr,none": 0.004, "alias": "mmlu"},
        "mmlu_anatomy": {"acc,none": 0.5, "acc_stderr,none": 0.04, "alias": " - anatomy"},
    },
    "groups": {"mmlu": {"acc,none": 0.6, "acc_stderr,none": 0.004, "alias": "mmlu"}},
    "configs": {"mmlu_anatomy": {"task": "mmlu_anatomy", "group": "mmlu_stem"}},
}


@pytest.mark.parametrize(
    ("doc", "words"), [(LM_EVAL_03, "lm-eval 0.3"), (LM_EVAL_040, "0.4.0/0.4.1")]
)
def test_older_layouts_are_refused_not_read_as_nothing(doc, words):
    with pytest.raises(LayoutError, match=words):
        parse_scores(doc, "m")
    with pytest.raises(LayoutError, match=words):
        primary_metrics(doc, {"arc_easy": None})


def test_version():
    assert harness_version(RESULTS) == "0.4.13"


def test_a_tasks_scores_come_in_one_order_whatever_the_documents_key_order():
    """The result cache stores documents with sorted keys: read back, a task's scores list
    as they did fresh (judged metric first, then by name)."""
    doc = {
        "results": {"gsm8k": RESULTS["results"]["gsm8k"]},
        "configs": {"gsm8k": GSM8K_CONFIG},
    }
    fresh = parse_scores(doc, "m")
    assert [(s.filter, s.primary) for s in fresh] == [
        ("strict-match", True),
        ("flexible-extract", False),
    ]
    assert parse_scores(_sorted(doc), "m") == fresh
