"""Parsing lm-eval's results JSON: metrics, filters, "N/A" stderrs, groups, primary metric."""

from __future__ import annotations

import pytest

from qeval.results.lmeval import harness_version, parse_scores, top_level_tasks

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
    (_, norm) = parse_scores(results, "m", {"arc": "acc_norm"})
    assert norm.primary and norm.metric == "acc_norm"
    with pytest.raises(ValueError, match="reports no metric 'f1'"):
        parse_scores(results, "m", {"arc": "f1"})


def test_version():
    assert harness_version(RESULTS) == "0.4.13"
