"""The parser on results that lm-eval 0.4.2 to 0.4.13 wrote themselves.

tests/data/lmeval-<version>/groups*.json were written by each version (excerpts; see
tests/data/make_lmeval_fixtures.py) for the same request: qeval_mc (acc, acc_norm),
qeval_agg (a group aggregating acc and acc_norm over qeval_mc_a and qeval_mc_b, both
aliased) and qeval_noagg (a group of qeval_gen, two filters, and qeval_mc_c; without an
aggregate from 0.4.4 on). ``groups`` ran 4 documents per task, ``groups-limit1`` one,
so that every stderr there is "N/A".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qeval.results.lmeval import (
    check_layout,
    default_metric,
    judged_tasks,
    parse_scores,
    primary_metrics,
    top_level_tasks,
)
from qeval.results.samples import consistent, item_values, leaf_tasks

DATA = Path(__file__).parent / "data"
VERSIONS = ["0.4.2", "0.4.3", "0.4.4", "0.4.5", "0.4.8", "0.4.13"]
OLD = {"0.4.2", "0.4.3"}  # before the group refactor of 0.4.4
ALIASES = {"MC subset A", "MC subset B", "MC subset C", "Aggregated group"}


def load(version: str, run: str = "groups") -> dict[str, Any]:
    return json.loads((DATA / f"lmeval-{version}" / f"{run}.json").read_text())


def group_key(version: str) -> str:
    """lm-eval 0.4.2 and 0.4.3 report a group declared with a group_alias under the alias
    (in results, groups, group_subtasks and n-shot): its name is nowhere in the file."""
    return "Aggregated group" if version in OLD else "qeval_agg"


def requested(version: str) -> dict[str, str | None]:
    return {"qeval_mc": None, group_key(version): None, "qeval_noagg": None}


def expected_primary(version: str) -> set[tuple[str, str, str]]:
    if version in OLD:  # every group aggregates: qeval_noagg is judged on its own aggregate
        return {
            ("qeval_mc", "acc", "none"),
            ("Aggregated group", "acc", "none"),
            ("qeval_noagg", "acc", "none"),
        }
    return {
        ("qeval_mc", "acc", "none"),
        ("qeval_agg", "acc", "none"),
        ("qeval_gen", "exact_match", "strict-match"),
        ("qeval_mc_c", "acc", "none"),
    }


def _with_keys(doc: dict[str, Any], order: str) -> dict[str, Any]:
    """The document with each task's keys reversed or sorted (as the result cache writes)."""
    out = json.loads(json.dumps(doc))
    for task, entries in out["results"].items():
        keys = sorted(entries) if order == "sorted" else list(reversed(entries))
        out["results"][task] = {k: entries[k] for k in keys}
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_the_layout_is_read_not_refused(version):
    for run in ("groups", "groups-limit1"):
        check_layout(load(version, run))


@pytest.mark.parametrize("version", VERSIONS)
def test_one_primary_score_per_judged_task_and_none_on_group_members(version):
    doc = load(version)
    chosen = primary_metrics(doc, requested(version))
    scores = parse_scores(doc, "m", chosen)
    primary = {(s.task, s.metric, s.filter) for s in scores if s.primary}
    assert primary == expected_primary(version)
    assert len([s for s in scores if s.primary]) == len(expected_primary(version))
    # the aggregated group's members are kept, but never judged beside their aggregate
    members = {s.task for s in scores if s.task in ("qeval_mc_a", "qeval_mc_b")}
    assert members == {"qeval_mc_a", "qeval_mc_b"}
    assert not [s for s in scores if s.task in members and s.primary]
    # without a request, the top-level tasks are judged the same way
    assert {(s.task, s.metric, s.filter) for s in parse_scores(doc, "m") if s.primary} == (
        expected_primary(version)
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_the_group_aggregate_is_one_score_with_its_own_stderr(version):
    doc = load(version)
    group = group_key(version)
    assert judged_tasks(doc, group) == [group]
    scores = {(s.metric, s.filter): s for s in parse_scores(doc, "m") if s.task == group}
    assert set(scores) == {("acc", "none"), ("acc_norm", "none")}
    acc = scores["acc", "none"]
    assert acc.primary and not scores["acc_norm", "none"].primary
    # pooled over 2 x 4 documents: its own stderr, not a subtask's (0.25)
    assert (acc.value, acc.stderr) == pytest.approx((0.75, 0.1767767))
    assert acc.samples is None  # n-samples lists tasks, never groups
    group1 = [s for s in parse_scores(load(version, "groups-limit1"), "m") if s.task == group]
    assert {(s.metric, s.value, s.stderr, s.primary) for s in group1} == {
        ("acc", 1.0, None, True),  # "N/A" in the file
        ("acc_norm", 0.0, None, False),
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("order", ["reversed", "sorted"])
def test_the_group_default_does_not_follow_the_key_order(version, order):
    # lm-eval 0.4.2 to 0.4.8 write a group's aggregate keys in set order (acc_norm first
    # in one run, acc in the next); the result cache sorts them.
    doc = _with_keys(load(version), order)
    assert default_metric(doc, group_key(version)) == "acc,none"
    assert default_metric(doc, "qeval_gen") == "exact_match,strict-match"
    assert default_metric(doc, "qeval_mc") == "acc,none"
    assert {(s.task, s.metric, s.filter) for s in parse_scores(doc, "m") if s.primary} == (
        expected_primary(version)
    )


@pytest.mark.parametrize("version", sorted(OLD))
def test_an_aliased_group_is_not_found_by_its_name_before_0_4_4(version):
    doc = load(version)
    assert "qeval_agg" not in json.dumps(doc)
    assert primary_metrics(doc, {"qeval_agg": None}) == {}  # the caller refuses: NoScore
    assert set(top_level_tasks(doc)) == {"qeval_noagg", "qeval_mc", "Aggregated group"}


@pytest.mark.parametrize("version", sorted(set(VERSIONS) - OLD))
def test_a_group_without_aggregate_is_judged_by_its_subtasks(version):
    doc = load(version)
    assert judged_tasks(doc, "qeval_noagg") == ["qeval_gen", "qeval_mc_c"]
    assert not [s for s in parse_scores(doc, "m") if s.task == "qeval_noagg"]
    assert set(top_level_tasks(doc)) == {"qeval_mc", "qeval_agg", "qeval_noagg"}


@pytest.mark.parametrize("version", VERSIONS)
def test_aliases_are_never_task_names(version):
    scores = parse_scores(load(version), "m")
    names = {s.task for s in scores}
    assert {"qeval_mc", "qeval_mc_a", "qeval_mc_b", "qeval_mc_c", "qeval_gen"} <= names
    assert names & ALIASES == ({"Aggregated group"} if version in OLD else set())
    assert not [n for n in names if n.startswith(" ")]  # " - MC subset A" (0.4.2-0.4.8)


@pytest.mark.parametrize("version", VERSIONS)
def test_acc_and_acc_norm_and_both_filters(version):
    scores = {(s.task, s.metric, s.filter): s for s in parse_scores(load(version), "m")}
    acc, norm = scores["qeval_mc", "acc", "none"], scores["qeval_mc", "acc_norm", "none"]
    assert (acc.value, acc.stderr, norm.value, norm.stderr) == (0.75, 0.25, 0.25, 0.25)
    assert acc.primary and not norm.primary  # the config's first metric
    strict = scores["qeval_gen", "exact_match", "strict-match"]
    flexible = scores["qeval_gen", "exact_match", "flexible-extract"]
    assert (strict.value, flexible.value) == (0.5, 1.0)
    assert strict.stderr == pytest.approx(0.2886751) and flexible.stderr == 0.0
    for s in (acc, norm, strict, flexible):
        # n-samples appeared in 0.4.3
        assert s.samples == (None if version == "0.4.2" else 4)
        assert (s.num_fewshot, s.higher_is_better) == (0, True)


@pytest.mark.parametrize("version", VERSIONS)
def test_na_stderr_is_none(version):
    scores = parse_scores(load(version, "groups-limit1"), "m")
    assert scores and all(s.stderr is None for s in scores)
    assert all(isinstance(s.value, float) for s in scores)
    assert {s.samples for s in scores if s.task == "qeval_mc"} == {
        None if version == "0.4.2" else 1
    }


@pytest.mark.parametrize("version", VERSIONS)
def test_per_sample_pairing_per_subtask(version):
    doc = load(version)
    samples = DATA / f"lmeval-{version}" / "groups.samples"
    group = group_key(version)
    assert sorted(leaf_tasks(doc, group)) == ["qeval_mc_a", "qeval_mc_b"]
    values = item_values(samples, leaf_tasks(doc, group), "acc", "none")
    assert values is not None
    assert sorted(values) == [(t, i) for t in ("qeval_mc_a", "qeval_mc_b") for i in range(4)]
    assert consistent(values, doc["results"][group]["acc,none"])
    strict = item_values(samples, ["qeval_gen"], "exact_match", "strict-match")
    if version in {"0.4.2", "0.4.3", "0.4.4", "0.4.5"}:
        # their samples carry no filter name: no pairing, rather than the wrong filter's
        assert strict is None
    else:
        assert strict is not None and consistent(strict, 0.5)
