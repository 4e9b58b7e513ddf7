"""Recovery and its standard error, checked against arithmetic and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qeval.api.evalrun import Score
from qeval.results.recovery import mean_recovery, mean_with_stderr, ratio, recovery_table


def test_ratio_and_delta_method():
    r, se = ratio(0.8, 0.9, 0.01, 0.02)
    assert r == pytest.approx(0.8 / 0.9)
    assert se == pytest.approx(math.sqrt(0.01**2 + r**2 * 0.02**2) / 0.9)


def test_lower_is_better_inverts():
    r, _ = ratio(12.0, 10.0, higher_is_better=False)  # perplexity went up: a loss
    assert r == pytest.approx(10 / 12)


def test_unknown_stderr_and_zero_baseline():
    assert ratio(0.5, 0.5, None, 0.1) == (1.0, None)
    with pytest.raises(ZeroDivisionError):
        ratio(0.5, 0.0)


def test_mean_with_stderr():
    mean, se = mean_with_stderr([(1.0, 0.03), (0.9, 0.04)])
    assert mean == pytest.approx(0.95) and se == pytest.approx(0.025)
    assert mean_with_stderr([(1.0, 0.03), (0.9, None)])[1] is None


def score(model, task, value, se, primary=True, metric="acc"):
    return Score(model=model, task=task, metric=metric, value=value, stderr=se, primary=primary)


def test_table_uses_primary_metrics_only_for_the_mean():
    base = [
        score("b", "t1", 0.8, 0.01),
        score("b", "t1", 0.7, 0.01, False, "acc_norm"),
        score("b", "t2", 0.5, 0.02),
        score("b", "t3", 0.0, 0.0),
    ]
    cand = [
        score("c", "t1", 0.4, 0.01),
        score("c", "t1", 0.7, 0.01, False, "acc_norm"),
        score("c", "t2", 0.5, 0.02),
        score("c", "t3", 0.1, 0.0),
    ]
    table = recovery_table(base, cand)
    assert [(r.task, r.metric) for r in table] == [("t1", "acc"), ("t1", "acc_norm"), ("t2", "acc")]
    mean, _ = mean_recovery(table, base)
    assert mean == pytest.approx((0.5 + 1.0) / 2)


def test_delta_method_interval_covers_the_true_ratio_by_simulation():
    """Binomial accuracies on n items: the 95 % interval r ± 1.96 se covers p_c/p_b ~95 %."""
    rng = np.random.default_rng(0)
    n, p_b, p_c, trials = 1000, 0.80, 0.72, 2000
    b = rng.binomial(n, p_b, trials) / n
    c = rng.binomial(n, p_c, trials) / n
    covered = 0
    for bi, ci in zip(b, c, strict=True):
        r, se = ratio(ci, bi, math.sqrt(ci * (1 - ci) / n), math.sqrt(bi * (1 - bi) / n))
        covered += abs(r - p_c / p_b) <= 1.96 * se
    assert 0.93 <= covered / trials <= 0.97
