"""Suite scores: one number per model and task suite, as the leaderboards compute it."""

from __future__ import annotations

from collections.abc import Iterable

from qeval.api.evalrun_status import Score
from qeval.api.suites import SUITES, Suite, SuiteName, SuiteTask


def normalize(value: float, baseline: float) -> float:
    """Rescale a score so random guessing gives 0 and a perfect score 1 (never below 0)."""
    return max(value - baseline, 0.0) / (1.0 - baseline)


def _value(scores: dict[tuple[str, str], list[Score]], task: str, metric: str) -> float | None:
    """The score of ``task`` on ``metric`` (``name`` or ``name,filter``)."""
    name, _, filt = metric.partition(",")
    for s in scores.get((task, name), []):
        if not filt or s.filter == filt:
            return s.value
    return None


def task_score(
    entry: SuiteTask, scores: dict[tuple[str, str], list[Score]], norm: bool
) -> float | None:
    """One suite task's contribution (None if a score it needs is missing)."""
    if norm and entry.subtasks:
        parts = [_value(scores, sub, entry.metric) for sub in entry.subtasks]
        if any(p is None for p in parts):
            return None
        return sum(
            normalize(p, entry.subtasks[sub])
            for sub, p in zip(entry.subtasks, parts, strict=True)
            if p is not None
        ) / len(parts)
    metrics = entry.metrics or (entry.metric,)
    values = [_value(scores, entry.name, m) for m in metrics]
    if any(v is None for v in values):
        return None
    mean = sum(v for v in values if v is not None) / len(values)
    return normalize(mean, entry.baseline) if norm else mean


def suite_score(suite: Suite | str, scores: Iterable[Score]) -> float | None:
    """A model's suite score from its scores: the plain mean of the tasks' scores (v1), or
    the mean of the normalised scores (v2). None when a task's score is missing."""
    suite = suite if isinstance(suite, Suite) else SUITES[SuiteName(suite)]
    index: dict[tuple[str, str], list[Score]] = {}
    for s in scores:
        index.setdefault((s.task, s.metric), []).append(s)
    norm = suite.scoring == "normalized-mean"
    parts = [task_score(t, index, norm) for t in suite.tasks]
    if not parts or any(p is None for p in parts):
        return None
    return sum(p for p in parts if p is not None) / len(parts)
