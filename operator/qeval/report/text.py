"""How a difference (``status.differences``: a task metric without a recovery ratio) reads,
in the console table ``qeval run`` prints and in the run report alike. No matplotlib here."""

from __future__ import annotations

from collections.abc import Iterable

from qeval.api.evalrun_status import Difference, EvalRunStatus

MARK = "Δ"


def primary_columns(status: EvalRunStatus) -> list[tuple[str, str, str]]:
    """The tables' task columns: each task's primary (task, metric, filter), in order."""
    return list(dict.fromkeys((s.task, s.metric, s.filter) for s in status.scores if s.primary))


def column_metric(status: EvalRunStatus, task: str, metric: str, filt: str) -> str:
    """A task column's metric as the tables name it: ``bits_per_byte, lower is better``
    where lower is better (a perplexity), else the metric alone."""
    lower = any(
        not s.higher_is_better
        for s in status.scores
        if (s.task, s.metric, s.filter) == (task, metric, filt)
    )
    return f"{metric}, lower is better" if lower else metric


def shown_differences(status: EvalRunStatus) -> list[Difference]:
    """The differences the tables show: those on a task's primary metric (the column where
    a recovery would be)."""
    columns = set(primary_columns(status))
    return [d for d in status.differences if (d.task, d.metric, d.filter) in columns]


def difference(d: Difference) -> str:
    """The cell: ``Δ +0.158 [+0.097, +0.218]``, candidate - baseline in the metric's own
    units with its 95 % interval (the value alone when the interval is unknown)."""
    cell = f"{MARK} {d.value:+.3f}"
    if d.ci_low is not None and d.ci_high is not None:
        cell += f" [{d.ci_low:+.3f}, {d.ci_high:+.3f}]"
    return cell


def difference_notes(differences: Iterable[Difference]) -> list[str]:
    """One line per task metric shown as a difference: why it has no ratio."""
    seen = dict.fromkeys((d.task, d.metric, d.reason) for d in differences)
    return [
        f"{MARK} {task} ({metric}): no recovery ratio, {reason}; shown instead: the candidate's "
        "score minus the baseline's with its 95 % interval, left out of the mean recovery."
        for task, metric, reason in seen
    ]
