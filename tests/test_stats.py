"""Recovery intervals, paired tests and verdicts: against arithmetic, scipy and simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from qeval.api.evalrun_status import Score
from qeval.results import stats
from qeval.results.summary import ModelOutcome, summarize

TRIALS = 2000


def test_independent_interval_is_the_delta_method_on_the_log_scale():
    i = stats.recovery_interval(0.8, 0.9, 0.01, 0.02)
    r = 0.8 / 0.9
    assert i.value == pytest.approx(r)
    assert i.stderr == pytest.approx(math.sqrt(0.01**2 + r**2 * 0.02**2) / 0.9)
    se_log = math.sqrt((0.01 / 0.8) ** 2 + (0.02 / 0.9) ** 2)
    assert i.low == pytest.approx(r * math.exp(-1.959964 * se_log), rel=1e-6)
    assert i.high == pytest.approx(r * math.exp(1.959964 * se_log), rel=1e-6)


def test_lower_is_better_inverts_and_unknowns_give_no_interval():
    assert stats.recovery_interval(12.0, 10.0, higher_is_better=False).value == pytest.approx(
        10 / 12
    )
    i = stats.recovery_interval(0.5, 0.5, None, 0.1)
    assert (i.value, i.stderr, i.low, i.high) == (1.0, None, None, None)
    with pytest.raises(ZeroDivisionError):
        stats.recovery_interval(0.5, 0.0, 0.1, 0.1)
    zero = stats.recovery_interval(0.0, 0.5, 0.01, 0.02)  # no log: linear, clipped at 0
    assert zero.value == 0 and zero.low == 0 and zero.high > 0


def test_pairing_narrows_the_interval_of_correlated_answers():
    rng = np.random.default_rng(1)
    b = (rng.random(1000) < 0.9).astype(float)
    c = b.copy()
    c[rng.choice(np.flatnonzero(b), 20, replace=False)] = 0  # 20 answers lost, nothing else
    paired = stats.paired_recovery_interval(b, c)
    se = lambda x: x.std(ddof=1) / math.sqrt(len(x))  # noqa: E731
    unpaired = stats.recovery_interval(c.mean(), b.mean(), se(c), se(b))
    assert paired.value == pytest.approx(unpaired.value)
    assert paired.stderr < unpaired.stderr / 2
    assert paired.high < 1.0 < unpaired.high  # only pairing sees the loss


def test_mean_interval():
    m = stats.mean_interval(
        [stats.Interval(1.0, 0.03, None, None), stats.Interval(0.9, 0.04, 0, 0)]
    )
    assert m.value == pytest.approx(0.95) and m.stderr == pytest.approx(0.025)
    assert m.low == pytest.approx(0.95 - 1.959964 * 0.025, rel=1e-6)
    assert stats.mean_interval([stats.Interval(1.0, None, None, None)]).stderr is None


def _pairs(n10: int, n01: int, same: int = 50) -> tuple[np.ndarray, np.ndarray]:
    b = np.array([1] * n10 + [0] * n01 + [1] * same + [0] * same)
    c = np.array([0] * n10 + [1] * n01 + [1] * same + [0] * same)
    return b, c


def test_mcnemar_exact_on_a_known_table():
    b, c = _pairs(8, 2)  # 10 discordant pairs: exact binomial
    t = stats.mcnemar(b, c)
    assert t.test == "mcnemar" and t.p_value == pytest.approx(112 / 1024)  # 2 * 56 / 1024
    assert t.p_value == pytest.approx(sp.binomtest(2, 10, 0.5).pvalue)
    assert t.difference == pytest.approx(-6 / len(b))


def test_mcnemar_chi_square_on_a_known_table():
    # Wikipedia's example table: b = 121, c = 59; continuity-corrected chi2 = 61^2 / 180
    b, c = _pairs(121, 59)
    t = stats.mcnemar(b, c)
    assert t.p_value == pytest.approx(sp.chi2.sf(61**2 / 180, df=1))
    assert t.p_value < 1e-4 and stats.significantly_worse(t)
    assert stats.mcnemar(*_pairs(0, 0)).p_value == 1.0


def test_paired_bootstrap_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(2)
    b = rng.normal(0.6, 0.2, 400)
    same = stats.paired_bootstrap(b, b + rng.normal(0, 0.05, 400), seed=0)
    shifted = stats.paired_bootstrap(b, b - 0.03 + rng.normal(0, 0.05, 400), seed=0)
    assert same.p_value > 0.05 and shifted.p_value < 0.001
    assert shifted.difference < 0 and stats.significantly_worse(shifted)
    assert not stats.significantly_worse(shifted, higher_is_better=False)
    again = stats.paired_bootstrap(b, b - 0.03 + np.zeros(400), seed=0)
    assert again.p_value == stats.paired_bootstrap(b, b - 0.03 + np.zeros(400), seed=0).p_value


def test_paired_test_picks_mcnemar_for_binary_metrics():
    assert stats.paired_test(*_pairs(3, 1)).test == "mcnemar"
    assert stats.paired_test(np.array([0.5, 0.2, 0.1]), np.array([0.4, 0.2, 0.3])).test == (
        "bootstrap"
    )


@pytest.mark.parametrize(
    ("mean", "tasks", "verdict"),
    [
        ((0.99, 0.97, 1.01), [(0.99, 0.96, 1.02)], "Pass"),
        ((0.99, 0.97, 1.01), [(0.99, 0.96, 1.02), (0.9, 0.88, 0.93)], "Degraded"),
        ((0.93, 0.91, 0.945), [], "Degraded"),
        ((0.96, 0.94, 0.98), [], "Inconclusive"),
        ((0.99, None, None), [], "Inconclusive"),
    ],
)
def test_verdict(mean, tasks, verdict):
    mk = lambda v, lo, hi: stats.Interval(v, None, lo, hi)  # noqa: E731
    assert stats.verdict(mk(*mean), [mk(*t) for t in tasks], 0.95) == verdict


# --- coverage by simulation: 2,000 trials with a known effect ---------------------------


def _paired_trials(rng, n, p_b, lose, gain):
    """Baseline right with p_b; the candidate loses a right answer with ``lose`` and gains a
    wrong one with ``gain``: true recovery (p_b (1 - lose) + (1 - p_b) gain) / p_b."""
    b = rng.random((TRIALS, n)) < p_b
    u = rng.random((TRIALS, n))
    c = np.where(b, u >= lose, u < gain)
    return b.astype(float), c.astype(float), (p_b * (1 - lose) + (1 - p_b) * gain) / p_b


def test_paired_interval_covers_the_true_recovery_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    b, c, truth = _paired_trials(rng, 1000, 0.8, 0.1, 0.05)
    intervals = (stats.paired_recovery_interval(bi, ci) for bi, ci in zip(b, c, strict=True))
    covered = sum(i.covers(truth) for i in intervals)
    assert 0.93 <= covered / TRIALS <= 0.97, covered / TRIALS


def test_independent_interval_covers_the_true_recovery_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    n, p_b, p_c = 1000, 0.80, 0.72
    b = rng.binomial(n, p_b, TRIALS) / n
    c = rng.binomial(n, p_c, TRIALS) / n
    covered = sum(
        stats.recovery_interval(
            ci, bi, math.sqrt(ci * (1 - ci) / n), math.sqrt(bi * (1 - bi) / n)
        ).covers(p_c / p_b)
        for bi, ci in zip(b, c, strict=True)
    )
    assert 0.93 <= covered / TRIALS <= 0.97, covered / TRIALS


def test_mean_recovery_interval_covers_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    b1, c1, t1 = _paired_trials(rng, 500, 0.9, 0.04, 0.2)
    b2, c2, t2 = _paired_trials(rng, 800, 0.6, 0.1, 0.1)
    covered = 0
    for i in range(TRIALS):
        tasks = [
            stats.paired_recovery_interval(b1[i], c1[i]),
            stats.paired_recovery_interval(b2[i], c2[i]),
        ]
        covered += stats.mean_interval(tasks).covers((t1 + t2) / 2)
    assert 0.93 <= covered / TRIALS <= 0.97, covered / TRIALS


# --- the run summary ------------------------------------------------------------------


def score(model, task, value, se, primary=True, metric="acc"):
    return Score(model=model, task=task, metric=metric, value=value, stderr=se, primary=primary)


def _items(values):
    return {("t1", "acc", "none"): {("t1", i): float(v) for i, v in enumerate(values)}}


def test_summary_pairs_items_tests_and_judges():
    rng = np.random.default_rng(4)
    b = (rng.random(1000) < 0.9).astype(float)
    good, bad = b.copy(), b.copy()
    good[np.flatnonzero(b)[:3]] = 0
    bad[np.flatnonzero(b)[:150]] = 0
    base = ModelOutcome("b", None, (score("b", "t1", b.mean(), 0.01),), 100, items=_items(b))
    cands = [
        ModelOutcome(
            "good",
            "W8A8",
            (score("good", "t1", good.mean(), 0.01),),
            50,
            items=_items(good),
            cached=("t1",),
        ),
        ModelOutcome(
            "bad", "W2A16", (score("bad", "t1", bad.mean(), 0.01),), 25, items=_items(bad)
        ),
    ]
    status = summarize(base, cands, threshold=0.95)
    rec = {r.model: r for r in status.recovery}
    assert rec["good"].test == "mcnemar" and not rec["good"].significant
    assert rec["bad"].significant and rec["bad"].p_value < 1e-6
    assert rec["good"].ci_low < rec["good"].value < rec["good"].ci_high
    summary = {c.name: c for c in status.candidates}
    assert summary["good"].verdict == "Pass" and summary["bad"].verdict == "Degraded"
    assert summary["bad"].degraded_tasks == ["t1"] and summary["good"].compression_ratio == 2
    assert status.cached == ["good/t1"] and status.mean_recovery == summary["bad"].mean_recovery


def test_summary_without_items_uses_the_standard_errors():
    base = ModelOutcome("b", None, (score("b", "t1", 0.8, 0.01), score("b", "t2", 0.0, 0.0)))
    cand = ModelOutcome("c", "W4A16", (score("c", "t1", 0.4, 0.01), score("c", "t2", 0.1, 0.0)))
    status = summarize(base, [cand])
    (r,) = status.recovery  # a baseline of 0 has no recovery
    assert r.test is None and r.p_value is None and r.ci_high < 0.6
    assert status.candidates[0].verdict == "Degraded"


def test_items_that_do_not_average_to_the_score_are_not_paired():
    b = np.ones(100)
    base = ModelOutcome("b", None, (score("b", "t1", 0.5, 0.05),), items=_items(b))
    cand = ModelOutcome("c", None, (score("c", "t1", 0.5, 0.05),), items=_items(b))
    (r,) = summarize(base, [cand]).recovery
    assert r.test is None and r.stderr == pytest.approx(math.sqrt(2) * 0.05 / 0.5)


# --- the metric's direction, the spec's threshold, the verdict's boundaries -----------------


def test_paired_recovery_of_a_lower_is_better_metric_divides_by_the_candidate():
    # Per-item values of a lower-is-better metric (a perplexity); the candidate is one
    # worse on every item: means 2.5 and 3.5, recovery 2.5 / 3.5.
    b = np.array([1.0, 2.0, 3.0, 4.0])
    c = b + 1
    i = stats.paired_recovery_interval(b, c, higher_is_better=False)
    assert i.value == pytest.approx(2.5 / 3.5)
    # Each mean's variance is var(b) / n = (5 / 3) / 4; c = b + 1: the covariance is the same.
    v = 5 / 12
    se_log = math.sqrt(v / 2.5**2 + v / 3.5**2 - 2 * v / (2.5 * 3.5))
    assert i.low == pytest.approx(2.5 / 3.5 * math.exp(-1.959964 * se_log), rel=1e-6)
    assert i.high == pytest.approx(2.5 / 3.5 * math.exp(1.959964 * se_log), rel=1e-6)
    assert i.high < 1.0  # worse, and pairing tells


def test_the_summary_judges_a_lower_is_better_metric_in_its_own_direction():
    rng = np.random.default_rng(5)
    b = rng.uniform(1.0, 3.0, 200)
    c = b + 0.5 + rng.normal(0, 0.05, 200)  # higher: worse on every item
    items = lambda v: {("t1", "ppl", "none"): {("t1", i): float(x) for i, x in enumerate(v)}}  # noqa: E731

    def outcome(name, values):
        s = Score(
            model=name,
            task="t1",
            metric="ppl",
            value=float(values.mean()),
            stderr=0.05,
            primary=True,
            higher_is_better=False,
        )
        return ModelOutcome(name, None, (s,), items=items(values))

    status = summarize(outcome("b", b), [outcome("c", c)])
    (r,) = status.recovery
    assert r.test == "bootstrap"  # paired over the items
    assert r.value == pytest.approx(b.mean() / c.mean())
    assert r.ci_high < 1.0 and r.significant
    assert status.candidates[0].verdict == "Degraded"


def test_the_recovery_threshold_reaches_the_verdict():
    # Recovery 0.9 within about +-0.012: Pass against a gate of 0.8, Degraded against 0.95.
    base = ModelOutcome("b", None, (score("b", "t1", 0.8, 0.004),))
    cand = ModelOutcome("c", None, (score("c", "t1", 0.72, 0.004),))
    verdict = lambda t: summarize(base, [cand], threshold=t).candidates[0].verdict  # noqa: E731
    assert (verdict(0.8), verdict(0.95), verdict(0.9)) == ("Pass", "Degraded", "Inconclusive")


def test_the_aggregate_stage_judges_against_its_recovery_threshold(tmp_path):
    from qeval.stages.aggregate import AggregateInput, ModelResults, run
    from qeval.stages.envelope import StageResult, StageStatus
    from qeval.stages.evaluate import EvaluateResult

    refs = []
    for name, value in (("b", 0.8), ("c", 0.72)):
        result = EvaluateResult(
            model_name=name,
            backend="hf",
            harness_version="0.4.13",
            scores=[score(name, "t1", value, 0.004)],
            results_path=str(tmp_path / "absent.json"),
            samples_dir=str(tmp_path / "absent"),
        )
        path = tmp_path / f"evaluate-{name}" / "result.json"
        StageResult(
            stage=f"evaluate-{name}",
            kind="evaluate",
            status=StageStatus.SUCCEEDED,
            result=result.dump(),
        ).write(path)
        refs.append(ModelResults(name=name, evaluate=str(path)))
    verdicts = [
        run(
            AggregateInput(
                baseline=refs[0],
                candidates=refs[1:],
                results_location=str(tmp_path / str(t)),
                recovery_threshold=t,
            )
        )
        .candidates[0]
        .verdict
        for t in (0.8, 0.95)
    ]
    assert verdicts == ["Pass", "Degraded"]


@pytest.mark.parametrize(
    ("mean", "task", "verdict"),
    [
        ((0.75, 0.5, 0.75), (0.75, 0.5, 0.75), "Inconclusive"),  # high at the gate: not below
        ((1.0, 0.75, 1.25), (1.0, 0.75, 1.25), "Pass"),  # low at the gate: at or above it
    ],
)
def test_verdict_boundaries_at_the_threshold(mean, task, verdict):
    mk = lambda v, lo, hi: stats.Interval(v, None, lo, hi)  # noqa: E731
    assert stats.verdict(mk(*mean), [mk(*task)], 0.75) == verdict


def test_paired_recovery_needs_two_matching_vectors_and_honours_the_level():
    b, c = np.array([1.0, 0.0]), np.array([1.0, 1.0])  # two items: enough to pair
    assert stats.paired_recovery_interval(b, c).value == pytest.approx(2.0)
    for bad in ((b, np.ones(3)), (np.ones((2, 2)), np.ones((2, 2))), (b[:1], c[:1])):
        with pytest.raises(ValueError):
            stats.paired_recovery_interval(*bad)
    b = np.array([1.0, 2.0, 3.0, 4.0])
    wide, narrow = (stats.paired_recovery_interval(b, b[::-1], level=x) for x in (0.95, 0.9))
    # the same log-scale standard error, z 1.645 instead of 1.960
    ratio = math.log(narrow.high / narrow.value) / math.log(wide.high / wide.value)
    assert ratio == pytest.approx(1.644854 / 1.959964, rel=1e-5)
