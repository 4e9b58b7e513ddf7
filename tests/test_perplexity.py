"""Perplexity (lm-eval's loglikelihood_rolling metrics): lower is better everywhere.

lm-eval logs ``[loglikelihood, words or bytes]`` per document and reports the corpus value
without a standard error; qeval gives it one (delta method over documents) and pairs the
two models' documents for the recovery interval and the test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from lm_eval.api.metrics import bits_per_byte, weighted_perplexity

from qeval.api.evalrun_status import Score
from qeval.results import stats
from qeval.results.samples import item_pairs, item_values
from qeval.results.summary import ModelOutcome, summarize

RNG = np.random.default_rng(7)


def corpus(n: int, rng: np.random.Generator, loss_per_word: float = 2.0) -> np.ndarray:
    """n documents: (loglikelihood, words), loglikelihoods noisy around -loss x words."""
    words = rng.integers(4, 12, size=n).astype(float)
    ll = -words * rng.gamma(20, loss_per_word / 20, size=n)
    return np.column_stack([ll, words])


@pytest.mark.parametrize(
    ("metric", "lmeval"),
    [
        ("word_perplexity", weighted_perplexity),
        ("byte_perplexity", weighted_perplexity),
        ("bits_per_byte", bits_per_byte),
    ],
)
def test_the_value_is_lm_evals_own_aggregation(metric, lmeval):
    docs = corpus(50, RNG)
    got = stats.corpus_interval(metric, docs)
    assert got.value == pytest.approx(lmeval([tuple(r) for r in docs]), rel=1e-12)
    assert got.low < got.value < got.high and got.stderr > 0


@pytest.mark.parametrize("metric", ["word_perplexity", "bits_per_byte"])
def test_the_interval_covers_the_corpus_value_about_95_percent_of_the_time(metric):
    """Documents drawn from a population of 20,000: the interval from 200 of them covers
    the population's value in about 95 % of 400 draws."""
    rng = np.random.default_rng(1)
    population = corpus(20_000, rng)
    truth = stats.corpus_interval(metric, population).value
    covered = 0
    for _ in range(400):
        sample = population[rng.integers(0, len(population), size=200)]
        covered += stats.corpus_interval(metric, sample).covers(truth)
    assert 0.92 <= covered / 400 <= 0.98, covered


def test_paired_recovery_is_baseline_over_candidate_and_covers_the_truth():
    """A candidate that loses 5 % more loglikelihood per word on every document: its word
    perplexity is higher, so recovery = baseline / candidate < 1; the paired interval
    covers the population's recovery about 95 % of the time and is far narrower than one
    from the two standard errors alone."""
    rng = np.random.default_rng(2)
    base = corpus(20_000, rng)
    cand = base.copy()
    cand[:, 0] = base[:, 0] * 1.05 + rng.normal(0, 0.5, size=len(base))
    true = (
        stats.corpus_interval("word_perplexity", base).value
        / stats.corpus_interval("word_perplexity", cand).value
    )
    covered, widths, unpaired = 0, [], []
    for _ in range(300):
        idx = rng.integers(0, len(base), size=200)
        got = stats.paired_corpus_recovery_interval("word_perplexity", base[idx], cand[idx])
        covered += got.covers(true)
        widths.append(got.high - got.low)
        b = stats.corpus_interval("word_perplexity", base[idx])
        c = stats.corpus_interval("word_perplexity", cand[idx])
        alone = stats.recovery_interval(c.value, b.value, c.stderr, b.stderr, False)
        unpaired.append(alone.high - alone.low)
    assert true < 0.95
    assert 0.91 <= covered / 300 <= 0.98, covered
    assert np.median(widths) < np.median(unpaired) / 3


def test_bits_per_byte_recovery_is_the_ratio_of_the_summed_loglikelihoods():
    base = corpus(100, RNG)
    cand = base.copy()
    cand[:, 0] *= 1.1
    got = stats.paired_corpus_recovery_interval("bits_per_byte", base, cand)
    assert got.value == pytest.approx(bits_per_byte(base) / bits_per_byte(cand))
    assert got.high < 1.0


def test_the_same_model_twice_recovers_exactly_one():
    docs = corpus(40, RNG)
    got = stats.paired_corpus_recovery_interval("word_perplexity", docs, docs.copy())
    assert (got.value, got.low, got.high) == (1.0, 1.0, 1.0)
    test = stats.loglikelihood_test(docs, docs.copy(), "word_perplexity")
    assert test.p_value == 1.0 and test.difference == 0.0


def test_documents_of_other_lengths_do_not_pair():
    docs = corpus(40, RNG)
    other = docs.copy()
    other[0, 1] += 1
    with pytest.raises(ValueError, match="different weights"):
        stats.paired_corpus_recovery_interval("word_perplexity", docs, other)


def write_samples(path, docs, metric="word_perplexity"):
    lines = [
        {"doc_id": i, "filter": "none", metric: [float(ll), int(w)], "bits_per_byte": [ll, 3 * w]}
        for i, (ll, w) in enumerate(docs)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_the_per_sample_logs_give_each_documents_pair(tmp_path):
    docs = corpus(5, RNG)
    write_samples(tmp_path / "ppl.jsonl", docs)
    pairs = item_pairs(tmp_path, ["ppl"], "word_perplexity")
    assert pairs == {("ppl", i): (float(ll), float(w)) for i, (ll, w) in enumerate(docs)}
    assert item_values(tmp_path, ["ppl"], "word_perplexity") is None  # no per-item mean


def outcome(name: str, docs: np.ndarray, stderr: float | None = None) -> ModelOutcome:
    value = weighted_perplexity([tuple(r) for r in docs])
    score = Score(
        model=name,
        task="ppl",
        metric="word_perplexity",
        value=value,
        stderr=stderr,
        higher_is_better=False,
        primary=True,
    )
    rows = {("ppl", i): (float(ll), float(w)) for i, (ll, w) in enumerate(docs)}
    return ModelOutcome(name, scores=(score,), pairs={("ppl", "word_perplexity", "none"): rows})


def test_a_candidate_whose_perplexity_rises_is_degraded_and_significantly_worse():
    base = corpus(300, RNG)
    worse = base.copy()
    worse[:, 0] *= 1.2
    same = base.copy()
    same[:, 0] += RNG.normal(0, 0.2, size=len(base))
    status = summarize(outcome("b", base), [outcome("w", worse), outcome("s", same)])
    rec = {r.model: r for r in status.recovery}
    assert rec["w"].test == "paired-z" and rec["w"].significant
    assert rec["w"].ci_high < 0.95 and rec["w"].value < 1
    assert not rec["s"].significant and rec["s"].ci_low <= 1 <= rec["s"].ci_high
    verdict = {c.name: c.verdict for c in status.candidates}
    assert verdict == {"w": "Degraded", "s": "Pass"}
    assert status.candidates[0].degraded_tasks == ["ppl"]


def test_logs_that_do_not_give_the_reported_value_are_not_paired():
    """A per-sample log of other documents than the score (e.g. from another limit) is
    never paired: the interval then comes from the standard errors alone."""
    base, cand = corpus(100, RNG), corpus(100, RNG)
    b, c = outcome("b", base), outcome("c", cand)
    shifted = ModelOutcome(
        "c",
        scores=(c.scores[0].model_copy(update={"value": c.scores[0].value * 1.01}),),
        pairs=c.pairs,
    )
    (rec,) = summarize(b, [shifted]).recovery
    assert rec.test is None and rec.ci_low is None
    assert math.isclose(rec.value, b.scores[0].value / shifted.scores[0].value)
