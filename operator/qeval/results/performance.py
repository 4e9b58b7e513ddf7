"""Serving figures against the baseline, and their intervals over repetitions: pure.

A scenario run ``repeats`` times on a warm server gives each figure once per repetition.
Its interval is the t-interval of the mean over them; a ratio of two models' means gets
Welch's interval on the log ratio (the delta method: the variance of a mean's log is the
mean's squared relative standard error), with Welch-Satterthwaite's degrees of freedom.
Coverage is checked by simulation in tests/test_performance_intervals.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats as sps

from qeval.api.evalrun_status import PerformancePoint, Speedup
from qeval.results.stats import LEVEL

Interval3 = tuple[float, float | None, float | None]  # value, low, high


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval3:
    """The mean and its t-interval (None bounds from a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def ratio_interval(
    numerator: Sequence[float], denominator: Sequence[float], level: float = LEVEL
) -> Interval3:
    """mean(numerator) / mean(denominator) with Welch's interval on its log; no bounds
    with fewer than two values on a side."""
    a, b = sum(numerator) / len(numerator), sum(denominator) / len(denominator)
    ratio = a / b
    if len(numerator) < 2 or len(denominator) < 2:
        return ratio, None, None

    def rel_var(xs: Sequence[float], m: float) -> float:  # var(log mean) ~ var(mean) / m^2
        return sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs) / m**2

    va, vb = rel_var(numerator, a), rel_var(denominator, b)
    se = math.sqrt(va + vb)
    if se == 0:
        return ratio, ratio, ratio
    df = (va + vb) ** 2 / (va**2 / (len(numerator) - 1) + vb**2 / (len(denominator) - 1))
    half = float(sps.t.ppf(0.5 + level / 2, df)) * se
    return ratio, ratio * math.exp(-half), ratio * math.exp(half)


def measurable(low: float | None, high: float | None) -> bool | None:
    """Whether a ratio's interval excludes 1 (None: no interval)."""
    if low is None or high is None:
        return None
    return not (low <= 1.0 <= high)


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0 or num <= 0:
        return None
    return round(num / den, 4)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def speedups(points: Sequence[PerformancePoint], baseline: str) -> list[Speedup]:
    """Each candidate against the baseline in every scenario both were measured in:
    throughput ratios (candidate / baseline) and latency ratios (baseline / candidate),
    so that above 1 always means the candidate is faster; with repetitions on both sides,
    each with its interval."""
    base = {p.scenario: p for p in points if p.model == baseline}
    out = []
    for p in points:
        b = base.get(p.scenario)
        if p.model == baseline or b is None:
            continue
        output = _ratio(p.output_tokens_per_second, b.output_tokens_per_second)
        requests = _ratio(p.requests_per_second, b.requests_per_second)
        latency = _ratio(b.latency_seconds, p.latency_seconds)
        if output is None or requests is None or latency is None:
            continue
        ttft = _ratio(b.ttft_seconds.p50, p.ttft_seconds.p50)
        s = Speedup(
            model=p.model,
            scenario=p.scenario,
            output_throughput=output,
            request_throughput=requests,
            latency=latency,
            ttft=ttft,
        )
        mine, theirs = p.repetitions, b.repetitions
        if (
            len(mine) > 1
            and len(theirs) > 1
            and all(r.latency_seconds > 0 and r.requests_per_second > 0 for r in (*mine, *theirs))
        ):
            _, s.output_throughput_ci_low, s.output_throughput_ci_high = map(
                _r,
                ratio_interval(
                    [r.output_tokens_per_second for r in mine],
                    [r.output_tokens_per_second for r in theirs],
                ),
            )
            _, s.request_throughput_ci_low, s.request_throughput_ci_high = map(
                _r,
                ratio_interval(
                    [r.requests_per_second for r in mine], [r.requests_per_second for r in theirs]
                ),
            )
            _, s.latency_ci_low, s.latency_ci_high = map(
                _r,
                ratio_interval(
                    [r.latency_seconds for r in theirs], [r.latency_seconds for r in mine]
                ),
            )
        out.append(s)
    return out
