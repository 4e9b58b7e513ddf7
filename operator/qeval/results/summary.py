"""From the evaluate (and quantize) results of a run to the EvalRun status: pure."""

from __future__ import annotations

from dataclasses import dataclass

from qeval.api.evalrun import CandidateSummary, EvalRunStatus, Recovery, Score, StageFailure
from qeval.results.recovery import mean_recovery, recovery_table


@dataclass(frozen=True)
class ModelOutcome:
    """What one model of the run produced: its scores and size, or why it has none."""

    name: str
    scheme: str | None = None
    scores: tuple[Score, ...] | None = None
    size_bytes: int | None = None
    failure: StageFailure | None = None


def summarize(baseline: ModelOutcome, candidates: list[ModelOutcome]) -> EvalRunStatus:
    """Scores, recovery per task, mean recovery per candidate and the failures of a run."""
    scores: list[Score] = list(baseline.scores or ())
    recovery: list[Recovery] = []
    summaries: list[CandidateSummary] = []
    failures = [m.failure for m in (baseline, *candidates) if m.failure]
    for c in candidates:
        summary = CandidateSummary(name=c.name, scheme=c.scheme, size_bytes=c.size_bytes)
        if c.size_bytes and baseline.size_bytes:
            summary.compression_ratio = round(baseline.size_bytes / c.size_bytes, 4)
        if c.scores is not None:
            scores += c.scores
        if c.scores is not None and baseline.scores is not None:
            rec = recovery_table(baseline.scores, c.scores)
            recovery += rec
            mean = mean_recovery(rec, baseline.scores)
            if mean is not None:
                summary.mean_recovery, summary.mean_recovery_stderr = mean
        summaries.append(summary)
    means = [s.mean_recovery for s in summaries if s.mean_recovery is not None]
    return EvalRunStatus(
        baseline_size_bytes=baseline.size_bytes,
        scores=scores,
        recovery=recovery,
        candidates=summaries,
        mean_recovery=min(means) if means else None,
        failures=failures,
    )
