"""Confidence intervals for recovery, paired tests of candidate vs baseline, verdicts.

Pure functions on numbers and numpy arrays; distributions come from scipy.

* Recovery r = c / b gets a log-ratio interval: log r is close to normal far sooner than r
  is, so ``r * exp(+-z * se_log)`` (with ``se_log`` by the delta method) keeps its coverage
  for small or skewed ratios and never goes below 0. When both models answered the same
  items, the per-item scores are paired and their covariance enters ``se_log``; being
  evaluated on the same questions, baseline and candidate are strongly correlated, so the
  paired interval is much narrower (and still right) than one from the two stderrs alone.
* Paired tests on the same items: McNemar for 0/1 metrics (exact binomial while the
  discordant pairs are few, the continuity-corrected chi-square beyond), a paired
  bootstrap of the mean difference otherwise.
* Perplexities (``word_perplexity``, ``byte_perplexity``, ``bits_per_byte`` of
  ``loglikelihood_rolling`` tasks) are corpus-level: ``exp(-sum ll / sum weight)`` over
  the documents, for which lm-eval reports no standard error. They are ratio estimators,
  so the delta method over documents gives their standard error, and, paired over the
  same documents (whose weights, their words or bytes, are the same for both models), the
  interval of recovery (baseline / candidate: lower is better) and a paired z-test of the
  per-document loglikelihood differences.
* The verdict puts the intervals against a recovery threshold (llm-compressor's own
  accuracy gate is recovery >= 0.95 per metric).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

LEVEL = 0.95
ALPHA = 0.05  # a paired test below this flags a significant degradation
EXACT_MCNEMAR_BELOW = 25  # discordant pairs: exact binomial below, chi-square from here
BOOTSTRAP_ITERATIONS = 10_000
_CHUNK = 500  # bootstrap resamples drawn at a time (memory: _CHUNK x items)


def z_value(level: float = LEVEL) -> float:
    """The two-sided normal quantile for ``level`` (1.96 for 0.95)."""
    return float(stats.norm.ppf(0.5 + level / 2))


@dataclass(frozen=True)
class Interval:
    """An estimate with its standard error and confidence interval."""

    value: float
    stderr: float | None
    low: float | None
    high: float | None

    def covers(self, x: float) -> bool:
        return self.low is not None and self.high is not None and self.low <= x <= self.high


def ratio_interval(
    candidate: float,
    baseline: float,
    var_candidate: float | None,
    var_baseline: float | None,
    covariance: float = 0.0,
    level: float = LEVEL,
) -> Interval:
    """``candidate / baseline`` with a log-ratio interval.

    ``var_*`` are the variances of the two estimates (stderr squared) and ``covariance``
    their covariance (0 when evaluated on different items). Unknown variances give the
    ratio alone. A zero candidate (log undefined) falls back to the linear delta method.
    """
    if baseline == 0:
        raise ZeroDivisionError("recovery is undefined when the baseline scores 0")
    r = candidate / baseline
    if var_candidate is None or var_baseline is None:
        return Interval(r, None, None, None)
    z = z_value(level)
    if candidate <= 0 or baseline < 0:
        var_r = (var_candidate + r**2 * var_baseline - 2 * r * covariance) / baseline**2
        se = math.sqrt(max(var_r, 0.0))
        return Interval(r, se, max(r - z * se, 0.0) if r >= 0 else r - z * se, r + z * se)
    var_log = (
        var_candidate / candidate**2
        + var_baseline / baseline**2
        - 2 * covariance / (candidate * baseline)
    )
    se_log = math.sqrt(max(var_log, 0.0))
    return Interval(r, r * se_log, r * math.exp(-z * se_log), r * math.exp(z * se_log))


def recovery_interval(
    candidate: float,
    baseline: float,
    se_candidate: float | None = None,
    se_baseline: float | None = None,
    higher_is_better: bool = True,
    level: float = LEVEL,
) -> Interval:
    """Recovery from two independent scores and their standard errors (no per-item data)."""
    if not higher_is_better:
        candidate, baseline = baseline, candidate
        se_candidate, se_baseline = se_baseline, se_candidate
    return ratio_interval(
        candidate,
        baseline,
        None if se_candidate is None else se_candidate**2,
        None if se_baseline is None else se_baseline**2,
        level=level,
    )


def paired_recovery_interval(
    baseline: np.ndarray,
    candidate: np.ndarray,
    higher_is_better: bool = True,
    level: float = LEVEL,
) -> Interval:
    """Recovery of the mean per-item score, paired over the same items.

    ``baseline[i]`` and ``candidate[i]`` are the two models' scores on item i.
    """
    b, c = np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float)
    if b.shape != c.shape or b.ndim != 1 or len(b) < 2:
        raise ValueError("paired scores need two equal-length vectors of at least 2 items")
    if not higher_is_better:
        b, c = c, b
    n = len(b)
    cov = np.cov(c, b, ddof=1) / n
    return ratio_interval(
        float(c.mean()),
        float(b.mean()),
        float(cov[0, 0]),
        float(cov[1, 1]),
        float(cov[0, 1]),
        level,
    )


# Metrics that can be negative: a ratio of two of them means nothing (a baseline of
# -0.0005 Matthews correlation makes a "recovery" of -291).
SIGNED_METRICS = frozenset({"mcc", "pearson", "spearman", "kendall", "kendall_tau", "r2"})


def ratio_problem(
    metric: str, denominator: float, numerator: float, se_denominator: float | None
) -> str | None:
    """Why recovery (a ratio) is undefined for these scores, or None when it is defined:
    on a metric bounded below by 0 whose denominator (the baseline; the candidate when
    lower is better) is clearly positive: above 0, and by more than its 95 % half-width
    when its standard error is known."""
    if metric in SIGNED_METRICS or metric.endswith("_diff") or metric.startswith("log"):
        return f"{metric} can be negative: a ratio of two values means nothing"
    if denominator < 0 or numerator < 0:
        return f"{metric} is negative here: a ratio of two values means nothing"
    if denominator == 0 or (
        se_denominator is not None and denominator <= z_value() * se_denominator
    ):
        return f"{metric} {denominator:.4g} is not clearly above 0: a ratio would be noise"
    return None


def difference_interval(
    candidate: float,
    baseline: float,
    se_candidate: float | None,
    se_baseline: float | None,
    level: float = LEVEL,
) -> Interval:
    """candidate - baseline with a normal interval from two independent standard errors."""
    d = candidate - baseline
    if se_candidate is None or se_baseline is None:
        return Interval(d, None, None, None)
    se = math.sqrt(se_candidate**2 + se_baseline**2)
    z = z_value(level)
    return Interval(d, se, d - z * se, d + z * se)


def paired_difference_interval(
    baseline: np.ndarray, candidate: np.ndarray, level: float = LEVEL
) -> Interval:
    """mean(candidate - baseline) over the same items, with a normal interval."""
    d = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError("a paired difference needs at least 2 items")
    mean, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))
    z = z_value(level)
    return Interval(mean, se, mean - z * se, mean + z * se)


def mean_interval(intervals: Sequence[Interval], level: float = LEVEL) -> Interval:
    """The mean of independent estimates (e.g. recovery on different tasks), normal interval."""
    if not intervals:
        raise ValueError("no values to average")
    mean = sum(i.value for i in intervals) / len(intervals)
    if any(i.stderr is None for i in intervals):
        return Interval(mean, None, None, None)
    se = math.sqrt(sum(i.stderr**2 for i in intervals if i.stderr is not None)) / len(intervals)
    z = z_value(level)
    return Interval(mean, se, mean - z * se, mean + z * se)


# --- corpus-level perplexity metrics -------------------------------------------------

# lm-eval's metrics of loglikelihood_rolling tasks: per document (loglikelihood, weight),
# aggregated over the corpus; "exp": exp(-sum ll / sum w), "bits": -sum ll / sum w / ln 2.
CORPUS_METRICS = {
    "word_perplexity": "exp",
    "byte_perplexity": "exp",
    "bits_per_byte": "bits",
}


def _ratio_estimate(a: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """sum(a) / sum(w) and its delta-method standard error over the n documents."""
    n = len(a)
    r = float(a.sum() / w.sum())
    resid = a - r * w
    se = float(np.sqrt(np.sum(resid**2) / (n * (n - 1))) / w.mean()) if n > 1 else math.nan
    return r, se


def corpus_interval(metric: str, pairs: np.ndarray, level: float = LEVEL) -> Interval:
    """A perplexity metric's value over documents ``pairs[i] = (loglikelihood, weight)``,
    with its standard error and interval (delta method)."""
    a, w = -np.asarray(pairs[:, 0], dtype=float), np.asarray(pairs[:, 1], dtype=float)
    r, se = _ratio_estimate(a, w)
    z = z_value(level)
    if CORPUS_METRICS[metric] == "bits":
        value, se = r / math.log(2), se / math.log(2)
        return Interval(value, se, value - z * se, value + z * se)
    value = math.exp(r)
    return Interval(value, value * se, math.exp(r - z * se), math.exp(r + z * se))


def paired_corpus_recovery_interval(
    metric: str, baseline: np.ndarray, candidate: np.ndarray, level: float = LEVEL
) -> Interval:
    """Recovery (baseline / candidate: lower is better) of a perplexity metric, paired
    over the same documents (rows ``(loglikelihood, weight)``, same order and weights)."""
    if baseline.shape != candidate.shape or len(baseline) < 2:
        raise ValueError("paired perplexities need the same documents, at least 2")
    if not np.array_equal(baseline[:, 1], candidate[:, 1]):
        raise ValueError("the two models' documents have different weights")
    if CORPUS_METRICS[metric] == "bits":  # (sum ll_b / W) / (sum ll_c / W)
        return paired_recovery_interval(-baseline[:, 0], -candidate[:, 0], higher_is_better=False)
    # exp(-L_b/W) / exp(-L_c/W) = exp((L_c - L_b) / W)
    d, w = candidate[:, 0] - baseline[:, 0], baseline[:, 1]
    r, se = _ratio_estimate(d, w)
    z = z_value(level)
    value = math.exp(r)
    return Interval(value, value * se, math.exp(r - z * se), math.exp(r + z * se))


# --- paired tests ----------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTest:
    """A paired test of candidate against baseline on the same items."""

    test: Literal["mcnemar", "bootstrap", "paired-z"]
    p_value: float
    difference: float  # mean(candidate) - mean(baseline), in the metric's own direction
    items: int


def mcnemar(baseline: np.ndarray, candidate: np.ndarray) -> PairedTest:
    """McNemar's test on paired 0/1 outcomes.

    Only discordant items count: ``n10`` right for the baseline only, ``n01`` for the
    candidate only. Under no difference each is Binomial(n10 + n01, 1/2): the exact
    two-sided binomial test below ``EXACT_MCNEMAR_BELOW`` discordant pairs, the
    continuity-corrected chi-square (1 degree of freedom) from there on.
    """
    b, c = np.asarray(baseline).astype(bool), np.asarray(candidate).astype(bool)
    n10, n01 = int(np.sum(b & ~c)), int(np.sum(~b & c))
    discordant = n10 + n01
    if discordant == 0:
        p = 1.0
    elif discordant < EXACT_MCNEMAR_BELOW:
        p = float(stats.binomtest(n01, discordant, 0.5).pvalue)
    else:
        chi2 = (abs(n10 - n01) - 1) ** 2 / discordant
        p = float(stats.chi2.sf(chi2, df=1))
    return PairedTest("mcnemar", min(p, 1.0), (n01 - n10) / len(b), len(b))


def paired_bootstrap(
    baseline: np.ndarray,
    candidate: np.ndarray,
    iterations: int = BOOTSTRAP_ITERATIONS,
    seed: int = 0,
) -> PairedTest:
    """Two-sided paired bootstrap test of the mean difference (candidate - baseline).

    Items are resampled with replacement, keeping each item's pair together; the resampled
    differences are centred on 0 (the null) and the p-value is the share at least as far
    from 0 as the observed one (counting the observed itself, so it is never 0).
    """
    d = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    n, observed = len(d), float(d.mean())
    centred = d - observed
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, iterations, _CHUNK):
        size = min(_CHUNK, iterations - start)
        means = centred[rng.integers(0, n, size=(size, n))].mean(axis=1)
        extreme += int(np.sum(np.abs(means) >= abs(observed) - 1e-12))
    return PairedTest("bootstrap", (extreme + 1) / (iterations + 1), observed, n)


def loglikelihood_test(baseline: np.ndarray, candidate: np.ndarray, metric: str) -> PairedTest:
    """Paired z-test of the per-document loglikelihood differences of a perplexity metric
    (rows ``(loglikelihood, weight)``): the two perplexities are equal exactly when the
    summed loglikelihoods are. ``difference`` is candidate - baseline on the metric."""
    d = candidate[:, 0] - baseline[:, 0]
    n, se = len(d), float(d.std(ddof=1) / math.sqrt(len(d)))
    p = 1.0 if se == 0 else float(2 * stats.norm.sf(abs(float(d.mean())) / se))
    c = corpus_interval(metric, candidate).value
    b = corpus_interval(metric, baseline).value
    return PairedTest("paired-z", min(p, 1.0), c - b, n)


def is_binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))


def paired_test(baseline: np.ndarray, candidate: np.ndarray, seed: int = 0) -> PairedTest:
    """McNemar when both are 0/1 per item (accuracy-type metrics), else a paired bootstrap."""
    b, c = np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float)
    if is_binary(b) and is_binary(c):
        return mcnemar(b, c)
    return paired_bootstrap(b, c, seed=seed)


def significantly_worse(test: PairedTest, higher_is_better: bool = True) -> bool:
    """The candidate is worse than the baseline and the test says it is not chance."""
    worse = test.difference < 0 if higher_is_better else test.difference > 0
    return worse and test.p_value < ALPHA


# --- verdict ---------------------------------------------------------------------------

Verdict = Literal["Pass", "Degraded", "Inconclusive"]


def verdict(mean: Interval, tasks: Sequence[Interval], threshold: float) -> Verdict:
    """A candidate's verdict against a recovery threshold.

    Degraded: the mean recovery's interval, or any task's, lies wholly below the
    threshold. Pass: the mean's interval lies at or above it (and no task is Degraded).
    Inconclusive otherwise, including when no interval is known.
    """
    below = [i for i in (mean, *tasks) if i.high is not None and i.high < threshold]
    if below:
        return "Degraded"
    if mean.low is not None and mean.low >= threshold:
        return "Pass"
    return "Inconclusive"
