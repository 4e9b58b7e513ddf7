"""Accuracy recovery: a candidate's score as a fraction of the baseline's, with its error.

recovery = candidate / baseline (baseline / candidate for lower-is-better metrics).
Its standard error comes from both scores' standard errors by the delta method,
treating the two evaluations as independent:
    se(c/b) ~= sqrt(se_c^2 + (c/b)^2 * se_b^2) / |b|
The mean over tasks is the plain average; its error sqrt(sum se_i^2) / n.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from qeval.api.evalrun import Recovery, Score


def ratio(
    candidate: float,
    baseline: float,
    se_candidate: float | None = None,
    se_baseline: float | None = None,
    higher_is_better: bool = True,
) -> tuple[float, float | None]:
    """Recovery and its delta-method standard error (None if either stderr is unknown)."""
    if not higher_is_better:
        candidate, baseline = baseline, candidate
        se_candidate, se_baseline = se_baseline, se_candidate
    if baseline == 0:
        raise ZeroDivisionError("recovery is undefined when the baseline scores 0")
    r = candidate / baseline
    if se_candidate is None or se_baseline is None:
        return r, None
    return r, math.sqrt(se_candidate**2 + r**2 * se_baseline**2) / abs(baseline)


def mean_with_stderr(values: Sequence[tuple[float, float | None]]) -> tuple[float, float | None]:
    """Mean of independent estimates and its standard error (None if any error is unknown)."""
    if not values:
        raise ValueError("no values to average")
    mean = sum(v for v, _ in values) / len(values)
    if any(se is None for _, se in values):
        return mean, None
    return mean, math.sqrt(sum(se**2 for _, se in values if se is not None)) / len(values)


def _key(s: Score | Recovery) -> tuple[str, str, str]:
    return s.task, s.metric, s.filter


def recovery_table(baseline: Iterable[Score], candidate: Iterable[Score]) -> list[Recovery]:
    """Recovery for every task metric both models report (baseline 0 is skipped)."""
    base = {_key(s): s for s in baseline}
    out = []
    for c in candidate:
        b = base.get(_key(c))
        if b is None or b.value == 0:
            continue
        r, se = ratio(c.value, b.value, c.stderr, b.stderr, c.higher_is_better)
        out.append(
            Recovery(
                model=c.model, task=c.task, metric=c.metric, filter=c.filter, value=r, stderr=se
            )
        )
    return out


def mean_recovery(
    recoveries: Iterable[Recovery], primary: Iterable[Score]
) -> tuple[float, float | None] | None:
    """Mean recovery over the primary metric of each task (None if there is none)."""
    wanted = {_key(s) for s in primary if s.primary}
    chosen = [(r.value, r.stderr) for r in recoveries if _key(r) in wanted]
    return mean_with_stderr(chosen) if chosen else None
