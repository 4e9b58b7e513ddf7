"""From the evaluate (and quantize) results of a run to the EvalRun status: pure.

Per task: recovery with a 95 % interval (paired over the same items when both models'
per-item values are at hand, else from the two standard errors) and, on the primary
metric, a paired test that flags a significant degradation. Per candidate: mean recovery
with its interval and a verdict against the recovery threshold. Per model: suite scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from qeval.api.evalrun_status import (
    CandidateSummary,
    Difference,
    EvalRunStatus,
    JudgedResult,
    Recovery,
    Score,
    StageFailure,
    SuiteScore,
)
from qeval.results import stats
from qeval.results.samples import ItemKey, consistent, paired_vectors
from qeval.results.suites import suite_score

ScoreKey = tuple[str, str, str]  # task, metric, filter


def score_key(s: Score | Recovery | Difference) -> ScoreKey:
    return s.task, s.metric, s.filter


@dataclass(frozen=True)
class ModelOutcome:
    """What one model of the run produced: its scores and size, or why it has none.

    ``items`` holds per-item values of (some of) its scores, keyed like the scores, for
    paired statistics, and ``pairs`` each document's (loglikelihood, weight) of its
    perplexity scores; ``cached`` the tasks whose results came from the result cache.
    """

    name: str
    scheme: str | None = None
    scores: tuple[Score, ...] | None = None
    size_bytes: int | None = None
    failure: StageFailure | None = None
    items: Mapping[ScoreKey, Mapping[ItemKey, float]] = field(default_factory=dict)
    pairs: Mapping[ScoreKey, Mapping[ItemKey, tuple[float, float]]] = field(default_factory=dict)
    cached: tuple[str, ...] = ()


def _paired(
    baseline: ModelOutcome, candidate: ModelOutcome, b: Score, c: Score
) -> tuple[np.ndarray, np.ndarray] | None:
    """The two models' per-item vectors for one score, if they pair up and are plain means."""
    key = score_key(b)
    base, cand = baseline.items.get(key), candidate.items.get(key)
    if base is None or cand is None:
        return None
    if not (consistent(base, b.value) and consistent(cand, c.value)):
        return None
    pair = paired_vectors(base, cand)
    if pair is None or len(pair[0]) < 2:  # limit: 1 leaves one item: no spread to pair on
        return None
    return pair


def _paired_documents(
    baseline: ModelOutcome, candidate: ModelOutcome, b: Score, c: Score
) -> tuple[np.ndarray, np.ndarray] | None:
    """The two models' (loglikelihood, weight) rows of a perplexity score, document by
    document, if they pair up (same documents and weights) and give the reported values."""
    key = score_key(b)
    base, cand = baseline.pairs.get(key), candidate.pairs.get(key)
    if c.metric not in stats.CORPUS_METRICS or base is None or cand is None:
        return None
    pair = paired_vectors(base, cand)
    if pair is None or len(pair[0]) < 2 or not np.array_equal(pair[0][:, 1], pair[1][:, 1]):
        return None
    for rows, score in zip(pair, (b, c), strict=True):
        value = stats.corpus_interval(c.metric, rows).value
        if not math.isclose(value, score.value, rel_tol=1e-6):
            return None
    return pair


def recovery_of(baseline: ModelOutcome, candidate: ModelOutcome, b: Score, c: Score) -> Recovery:
    """One task metric's recovery and its interval, paired over the same items where the
    per-sample logs allow it; on the primary metric, the paired test too."""
    rec = Recovery(model=c.model, task=c.task, metric=c.metric, filter=c.filter, value=0.0)
    test = None
    if (docs := _paired_documents(baseline, candidate, b, c)) is not None:
        interval = stats.paired_corpus_recovery_interval(c.metric, *docs)
        test = stats.loglikelihood_test(*docs, c.metric) if b.primary else None
    elif (pair := _paired(baseline, candidate, b, c)) is not None:
        interval = stats.paired_recovery_interval(*pair, c.higher_is_better)
        test = stats.paired_test(*pair) if b.primary else None
    else:
        interval = stats.recovery_interval(c.value, b.value, c.stderr, b.stderr, c.higher_is_better)
    if test is not None:
        rec.test, rec.p_value = test.test, test.p_value
        rec.significant = stats.significantly_worse(test, c.higher_is_better)
    rec.value, rec.stderr, rec.ci_low, rec.ci_high = (
        interval.value,
        interval.stderr,
        interval.low,
        interval.high,
    )
    return rec


def difference_of(
    baseline: ModelOutcome, candidate: ModelOutcome, b: Score, c: Score, reason: str
) -> Difference:
    """candidate - baseline on one task metric, paired over the same items when it can be."""
    pair = _paired(baseline, candidate, b, c)
    if pair is not None:
        interval = stats.paired_difference_interval(*pair)
    else:
        interval = stats.difference_interval(c.value, b.value, c.stderr, b.stderr)
    return Difference(
        model=c.model,
        task=c.task,
        metric=c.metric,
        filter=c.filter,
        value=interval.value,
        stderr=interval.stderr,
        ci_low=interval.low,
        ci_high=interval.high,
        reason=reason,
    )


def candidate_recovery(
    baseline: ModelOutcome, candidate: ModelOutcome
) -> tuple[list[Recovery], list[Difference]]:
    """Recovery for every task metric both models report where a ratio is defined
    (``stats.ratio_problem``); the difference with its interval where it is not."""
    assert baseline.scores is not None and candidate.scores is not None
    base = {score_key(s): s for s in baseline.scores}
    ratios, differences = [], []
    for c in candidate.scores:
        b = base.get(score_key(c))
        if b is None:
            continue
        # The baseline decides which metric is primary, so both sides pair up.
        c = c.model_copy(update={"primary": b.primary})
        # Recovery divides by the baseline (by the candidate when lower is better).
        num, den = (c, b) if c.higher_is_better else (b, c)
        problem = stats.ratio_problem(c.metric, den.value, num.value, den.stderr)
        if problem is not None:
            differences.append(difference_of(baseline, candidate, b, c, problem))
        else:
            ratios.append(recovery_of(baseline, candidate, b, c))
    return ratios, differences


def _interval(r: Recovery) -> stats.Interval:
    return stats.Interval(r.value, r.stderr, r.ci_low, r.ci_high)


def judge(
    summary: CandidateSummary,
    recoveries: Sequence[Recovery],
    primary: set[ScoreKey],
    threshold: float,
    differences: Sequence[Difference] = (),
    candidate_primary: set[ScoreKey] | None = None,
) -> None:
    """Fill in the candidate's mean recovery, its interval, the verdict and degraded tasks.

    Never Pass when a judged task has no primary score on either side (or the two judge
    different tasks), or when a difference (a task without a ratio) lies wholly below 0.
    """
    chosen = [r for r in recoveries if score_key(r) in primary]
    covered = {score_key(r) for r in chosen} | {
        score_key(d) for d in differences if score_key(d) in primary
    }
    unscored = (primary - covered) or (
        candidate_primary is not None and candidate_primary != primary
    )
    worse = [d for d in differences if score_key(d) in primary and d.ci_high is not None]
    worse = [d for d in worse if d.ci_high is not None and d.ci_high < 0]
    if not chosen:
        if unscored or worse:
            summary.verdict = "Inconclusive"
        return
    tasks = [_interval(r) for r in chosen]
    mean = stats.mean_interval(tasks)
    summary.mean_recovery, summary.mean_recovery_stderr = mean.value, mean.stderr
    summary.mean_recovery_ci_low, summary.mean_recovery_ci_high = mean.low, mean.high
    summary.verdict = stats.verdict(mean, tasks, threshold)
    if summary.verdict == "Pass" and (unscored or worse):
        summary.verdict = "Inconclusive"
    summary.degraded_tasks = [r.task for r in chosen if r.significant]


def suite_scores(
    suites: Sequence[str], baseline: ModelOutcome, candidates: Sequence[ModelOutcome]
) -> list[SuiteScore]:
    """Every model's score on every suite it has all the scores for."""
    out = []
    for suite in suites:
        base = suite_score(suite, baseline.scores) if baseline.scores else None
        if base is not None:
            out.append(SuiteScore(model=baseline.name, suite=suite, value=base))
        for c in candidates:
            value = suite_score(suite, c.scores) if c.scores else None
            if value is not None:
                recovery = value / base if base else None
                out.append(SuiteScore(model=c.name, suite=suite, value=value, recovery=recovery))
    return out


def summarize(
    baseline: ModelOutcome,
    candidates: list[ModelOutcome],
    threshold: float = 0.95,
    suites: Sequence[str] = (),
) -> EvalRunStatus:
    """Scores, recovery per task, per-candidate summary and verdict, suite scores, the
    results reused from the cache and the failures of a run."""
    scores: list[Score] = list(baseline.scores or ())
    recovery: list[Recovery] = []
    differences: list[Difference] = []
    summaries: list[CandidateSummary] = []
    failures = [m.failure for m in (baseline, *candidates) if m.failure]
    primary = {score_key(s) for s in baseline.scores or () if s.primary}
    for c in candidates:
        summary = CandidateSummary(name=c.name, scheme=c.scheme, size_bytes=c.size_bytes)
        if c.size_bytes and baseline.size_bytes:
            summary.compression_ratio = round(baseline.size_bytes / c.size_bytes, 4)
        if c.scores is not None:
            scores += c.scores
        if c.scores is not None and baseline.scores is not None:
            rec, diff = candidate_recovery(baseline, c)
            recovery += rec
            differences += diff
            mine = {score_key(s) for s in c.scores if s.primary}
            judge(summary, rec, primary, threshold, diff, mine)
        summaries.append(summary)
    means = [s.mean_recovery for s in summaries if s.mean_recovery is not None]
    return EvalRunStatus(
        baseline_size_bytes=baseline.size_bytes,
        scores=scores,
        recovery=recovery,
        differences=differences,
        candidates=summaries,
        suite_scores=suite_scores(suites, baseline, candidates),
        cached=[f"{m.name}/{t}" for m in (baseline, *candidates) for t in m.cached],
        mean_recovery=min(means) if means else None,
        failures=failures,
    )


def primary_table(
    status: EvalRunStatus, baseline: str
) -> tuple[list[Score], list[Recovery], list[Difference]]:
    """The scores, recoveries and differences on each task's primary metric: the one the
    verdict judges (the baseline's choice), which the tables and dashboards show."""
    primary = {score_key(s) for s in status.scores if s.model == baseline and s.primary}
    return (
        [s for s in status.scores if s.primary or score_key(s) in primary],
        [r for r in status.recovery if score_key(r) in primary],
        [d for d in status.differences if score_key(d) in primary],
    )


def join_judged(
    status: EvalRunStatus, judged: Sequence[JudgedResult | None], threshold: float
) -> None:
    """Each judged set's verdicts against the threshold, joined into every candidate's:
    Degraded where any set is, Pass only where the tasks and every set pass (a set that
    did not run, ``None``, leaves its candidates no better than Inconclusive)."""
    from qeval.results.judged import verdict

    results = []
    for result in judged:
        if result is not None:
            scores = [
                s.model_copy(update={"verdict": verdict(s, threshold)}) for s in result.scores
            ]
            result = result.model_copy(update={"scores": scores})
        results.append(result)
    status.judged = [r for r in results if r is not None]
    for summary in status.candidates:
        verdicts = [
            next((s.verdict for s in r.scores if s.model == summary.name), None) if r else None
            for r in results
        ]
        if not verdicts:
            continue
        if "Degraded" in verdicts:
            summary.verdict = "Degraded"
        elif summary.verdict == "Pass" and any(v != "Pass" for v in verdicts):
            summary.verdict = "Inconclusive"
