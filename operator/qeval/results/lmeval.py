"""Read lm-eval's results JSON (``results.<task>["<metric>,<filter>"]``), never its table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qeval.api.evalrun import Score

_SKIP = {"alias", "name", "sample_len", "samples"}


def _number(value: Any) -> float | None:
    """lm-eval writes a missing stderr as the string "N/A"."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _matches(score: Score, wanted: str) -> bool:
    """``wanted`` names a metric (``acc``) or a metric and filter (``exact_match,strict-match``)."""
    metric, _, filt = wanted.partition(",")
    return score.metric == metric and (not filt or score.filter == filt)


def top_level_tasks(results: Mapping[str, Any]) -> list[str]:
    """Tasks and groups that were asked for, i.e. not merely members of a group."""
    members = {t for subs in results.get("group_subtasks", {}).values() for t in subs}
    return [t for t in results.get("results", {}) if t not in members]


def parse_scores(
    results: Mapping[str, Any], model: str, primary_metric: Mapping[str, str] | None = None
) -> list[Score]:
    """Every ``(task, metric, filter)`` value in an lm-eval results document, as Scores.

    ``primary_metric`` maps a task to the metric recovery is computed on (``metric`` or
    ``metric,filter``); a task not in it uses its first metric (lm-eval keeps
    ``metric_list`` order). Exactly one Score per top-level task is marked primary.
    """
    primary_metric = primary_metric or {}
    top = set(top_level_tasks(results))
    scores: list[Score] = []
    for task, entries in results.get("results", {}).items():
        shots = results.get("n-shot", {}).get(task)
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        better = results.get("higher_is_better", {}).get(task, {})
        task_scores = []
        for key, value in entries.items():
            if "," not in key or key.split(",")[0] in _SKIP or "_stderr" in key.split(",")[0]:
                continue
            metric, filt = key.split(",", 1)
            number = _number(value)
            if number is None:
                continue
            task_scores.append(
                Score(
                    model=model,
                    task=task,
                    metric=metric,
                    filter=filt,
                    value=number,
                    stderr=_number(entries.get(f"{metric}_stderr,{filt}")),
                    samples=n,
                    num_fewshot=shots if isinstance(shots, int) else None,
                    higher_is_better=bool(better.get(metric, True)),
                )
            )
        if task in top and task_scores:
            wanted = primary_metric.get(task)
            chosen = next((s for s in task_scores if _matches(s, wanted)), None) if wanted else None
            if wanted and chosen is None:
                have = sorted({f"{s.metric},{s.filter}" for s in task_scores})
                raise ValueError(f"task {task} reports no metric {wanted!r}; it has {have}")
            (chosen or task_scores[0]).primary = True
        scores += task_scores
    return scores


def harness_version(results: Mapping[str, Any]) -> str | None:
    """The lm-eval version recorded in a results document."""
    version = results.get("lm_eval_version") or results.get("config", {}).get("lm_eval_version")
    return str(version) if version else None
