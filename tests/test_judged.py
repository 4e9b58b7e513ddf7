"""Judged evaluations: the judge's messages and verdict grammar, a candidate's outcome and
verdict, the bootstrap intervals' coverage by simulation, the prompt sets' shapes, and the
judge stand-in (tests/doubles/judge) the stage tests talk to."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from qeval.api.evalrun import Judged
from qeval.api.evalrun_status import JudgedScore
from qeval.results import judged as jr
from qeval.stages import judge as sj
from qeval.stages.envelope import StageError
from tests.doubles.judge import JudgeDouble

CF, BF = jr.CANDIDATE_FIRST, jr.BASELINE_FIRST


def judged(**spec) -> Judged:
    return Judged.model_validate({"name": "arena", "judge": {"model": {"uri": "org/judge"}}} | spec)


def prompt(*turns: str, reference: tuple[str, ...] = (), id: str = "p") -> jr.JudgedPrompt:
    return jr.JudgedPrompt(id, turns, reference)


# --- the verdict grammar ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("My final verdict is: [[A>>B]]", "A>>B"),
        ("[[A>B]]", "A>B"),
        ("Tie, relatively the same: [[A=B]]", "A=B"),
        ("[[B>A]]", "B>A"),
        ("[[B>>A]]", "B>>A"),
        ("[[ A > B ]]", "A>B"),
        ("[[ B >> A ]]", "B>>A"),
        ("[[B<A]]", "A>B"),
        ("[[B<<A]]", "A>>B"),
        ("[[A<B]]", "B>A"),
        ("[[A<<B]]", "B>>A"),
        ("[[B=A]]", "A=B"),
        ("first [[A>B]], and finally [[B<A]]", "A>B"),  # the same verdict twice
        ("[[A>B]] ... on reflection [[B>A]]", None),
        ("[[A>B]] or perhaps [[A>>B]]", None),  # strength disagrees too
        ("[[A=B]] [[A>B]]", None),
        ("Both are fine.", None),
        ("", None),
        ("[[A>A]]", None),
        ("[[A>A]] so [[B>A]]", "B>A"),  # [[A>A]] says nothing, the rest counts
        ("[[A>>C]]", None),
        ("[A>B]", None),
    ],
)
def test_pairwise_verdicts(text, verdict):
    assert jr.parse_pairwise(text) == verdict
    assert jr.parse("pairwise", text) == verdict


@pytest.mark.parametrize(
    "text, rating",
    [
        ("Rating: [[9]]", 9.0),
        ("Rating: [[ 7 ]]", 7.0),
        ("Rating: [[1]]", 1.0),
        ("Rating: [[10]]", 10.0),
        ("Rating: [[7.5]]", 7.5),
        ("[[8]] as I said, [[8.0]]", 8.0),
        ("Rating: [[0]]", None),
        ("Rating: [[11]]", None),
        ("Rating: [[10.5]]", None),
        ("Rating: [[-3]]", None),
        ("Rating: [[3]], or rather [[8]]", None),
        ("Rating: 8", None),
        ("", None),
    ],
)
def test_ratings(text, rating):
    assert jr.parse_rating(text) == rating
    assert jr.parse("single", text) == (None if rating is None else f"{rating:g}")


@pytest.mark.parametrize(
    "order, verdict, value",
    [
        (CF, "A>>B", 1.0),
        (CF, "A>B", 1.0),
        (CF, "A=B", 0.5),
        (CF, "B>A", 0.0),
        (BF, "B>>A", 1.0),
        (BF, "A>B", 0.0),
        (BF, "A=B", 0.5),
    ],
)
def test_a_verdict_counts_from_the_candidates_side(order, verdict, value):
    assert jr.candidate_value("pairwise", order, verdict) == value
    assert jr.Judgement("m", "p", order, 0, verdict).value("pairwise") == value
    assert jr.Judgement("m", "p", order, 0, None).value("pairwise") is None


# --- the judge's messages ------------------------------------------------------------------


def test_answers_stay_literal_text():
    hostile = "I say {answer_b} and {reference} <script>alert(1)</script>"
    messages = jr.judge_messages(judged(), prompt("Q {question}?"), [(hostile,), ("plain",)])
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert (
        "<|The Start of Assistant A's Answer|>\n"
        "I say {answer_b} and {reference} <script>alert(1)</script>\n"
        "<|The End of Assistant A's Answer|>"
    ) in user
    assert "<|The Start of Assistant B's Answer|>\nplain\n" in user
    assert user.startswith("<|User Prompt|>\nQ {question}?\n\n")
    assert user.count("plain") == 1


def test_the_reference_template_only_where_the_prompt_has_a_reference():
    pairwise, single = judged(), judged(kind="single")
    without = jr.judge_messages(pairwise, prompt("q"), [("a",), ("b",)])[1]["content"]
    assert "Reference" not in without
    with_ref = jr.judge_messages(pairwise, prompt("q", reference=("r42",)), [("a",), ("b",)])
    assert (
        "<|The Start of Reference Answer|>\nr42\n<|The End of Reference Answer|>"
        in (with_ref[1]["content"])
    )
    one = jr.judge_messages(single, prompt("q"), [("a",)])
    assert one[1]["content"] == (
        "[Question]\nq\n\n[The Start of Assistant's Answer]\na\n[The End of Assistant's Answer]"
    )
    assert "Rating: [[5]]" in one[0]["content"]
    ref = jr.judge_messages(single, prompt("q", reference=("r42",)), [("a",)])[1]["content"]
    assert "[The Start of Reference Answer]\nr42\n[The End of Reference Answer]" in ref


def test_a_template_and_system_of_the_spec():
    spec = judged(template="Q={question} R={reference} A={answer_a} B={answer_b}", system="S")
    messages = jr.judge_messages(spec, prompt("q"), [("a",), ("b",)])
    assert messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q=q R= A=a B=b"},
    ]
    ref = jr.judge_messages(spec, prompt("q", reference=("r",)), [("a",), ("b",)])
    assert ref[1]["content"] == "Q=q R=r A=a B=b"
    assert jr.template_digest(spec) != jr.template_digest(judged())
    assert len(jr.template_digest(judged())) == 12


def test_multi_turn_conversations_are_numbered():
    p = prompt("q1", "q2", reference=("r1", "r2"))
    user = jr.judge_messages(judged(kind="single"), p, [("a1", "a2")])[1]["content"]
    assert "[Question]\nTurn 1: q1\n\nTurn 2: q2\n\n" in user
    assert "Turn 1: r1\n\nTurn 2: r2" in user
    assert "[The Start of Assistant's Answer]\nTurn 1: a1\n\nTurn 2: a2\n" in user
    assert jr.render_turns(["only"]) == "only"


# --- a candidate's outcome -------------------------------------------------------------------


def J(prompt, order, verdict, repeat=0, attempts=1, model="q4"):
    return jr.Judgement(model, prompt, order, repeat, verdict, attempts)


def test_pairwise_outcome_counts_and_means_over_prompts():
    judgements = [
        J("p0", CF, "A>B"),
        J("p0", BF, "B>>A"),  # a win in both orders: 1
        J("p1", CF, "A=B"),
        J("p1", BF, "A=B", attempts=2),  # ties: 0.5
        J("p2", CF, "B>A"),
        J("p2", BF, "A>>B"),  # losses: 0
        J("p3", CF, "A>B"),
        J("p3", BF, "A>B"),  # the order decided: 0.5, position bias
        J("p4", CF, None, attempts=3),
        J("p4", BF, None, attempts=3),  # never parseable: unjudged
        J("p0", CF, "B>>A", model="other"),  # another candidate's
    ]
    s = jr.outcome("q4", "pairwise", judgements, prompts=6, iterations=1000)
    assert (s.model, s.prompts, s.unjudged) == ("q4", 4, 2)
    assert (s.judgements, s.unparseable, s.retried) == (8, 2, 3)
    assert (s.wins, s.ties, s.losses) == (3, 2, 3)
    assert s.win_rate == 0.5 and s.recovery == 1.0
    assert s.position_bias == 0.25
    assert s.recovery_ci_low <= 1.0 <= s.recovery_ci_high
    assert s.win_rate_ci_low == pytest.approx(s.recovery_ci_low / 2)
    assert s.win_rate_ci_high == pytest.approx(s.recovery_ci_high / 2)
    assert s.score is None and s.baseline_score is None


def test_a_judge_that_always_prefers_a_is_cancelled_by_swapping_and_measured():
    """Equal answers, a judge that always says A is better: the candidate wins as A and
    loses as B on every prompt."""
    both = [J(f"p{i}", o, "A>B") for i in range(20) for o in (CF, BF)]
    s = jr.outcome("q4", "pairwise", both, prompts=20, iterations=1000)
    assert s.position_bias == 1.0
    assert (s.wins, s.ties, s.losses) == (20, 0, 20)
    assert s.recovery == 1.0
    assert (s.recovery_ci_low, s.recovery_ci_high) == (1.0, 1.0)  # every prompt 0.5
    unswapped = jr.outcome("q4", "pairwise", both[::2], prompts=20, iterations=1000)
    assert unswapped.position_bias is None  # no prompt judged in both orders
    assert unswapped.recovery == 2.0
    fair = [J(f"p{i}", o, "A=B") for i in range(20) for o in (CF, BF)]
    assert jr.outcome("q4", "pairwise", fair, prompts=20).position_bias == 0.0


def test_position_bias_pairs_orders_by_prompt_and_repeat():
    judgements = [
        J("p", CF, "A>B", repeat=0),
        J("p", BF, "B>A", repeat=0),  # consistent
        J("p", CF, "A>B", repeat=1),
        J("p", BF, "A>B", repeat=1),  # flipped
        J("q", CF, "A>B", repeat=0),  # no partner
        J("q", BF, None, repeat=0),
    ]
    assert jr.position_bias(judgements) == 0.5
    assert jr.position_bias(judgements[4:]) is None


def test_no_parseable_judgement_leaves_no_recovery():
    s = jr.outcome("q4", "pairwise", [J("p", CF, None, attempts=3)], prompts=3)
    assert (s.prompts, s.unjudged, s.unparseable, s.judgements) == (0, 3, 1, 0)
    assert s.recovery is None and s.win_rate is None and s.position_bias is None
    one = jr.outcome("q4", "pairwise", [J("p", CF, "A>B")], prompts=1)
    assert one.recovery == 2.0 and one.recovery_ci_low is None  # one prompt: no interval


def test_single_outcome_is_the_ratio_of_mean_scores_on_prompts_both_have():
    C, B = jr.CANDIDATE, jr.BASELINE
    judgements = [
        J("p0", C, "8", repeat=0),
        J("p0", C, "6", repeat=1),  # repeats: mean 7
        J("p0", B, "10"),
        J("p1", C, "6"),
        J("p1", B, "4"),
        J("p2", C, "9"),
        J("p2", B, None, attempts=3),  # the baseline unrated: not compared
    ]
    s = jr.outcome("q4", "single", judgements, prompts=3, iterations=1000)
    assert (s.prompts, s.unjudged, s.judgements, s.unparseable) == (2, 1, 6, 1)
    assert s.score == 6.5 and s.baseline_score == 7.0
    assert s.recovery == pytest.approx(13 / 14, abs=1e-6)
    assert s.recovery_ci_low <= s.recovery <= s.recovery_ci_high
    assert s.wins is None and s.win_rate is None and s.position_bias is None


def score(recovery, low, high, prompts=100, unjudged=0):
    return JudgedScore(
        model="q4",
        prompts=prompts,
        unjudged=unjudged,
        judgements=prompts,
        recovery=recovery,
        recovery_ci_low=low,
        recovery_ci_high=high,
    )


@pytest.mark.parametrize(
    "s, verdict",
    [
        (score(1.0, 0.97, 1.03), "Pass"),
        (score(0.96, 0.95, 0.97), "Pass"),  # the low end at the threshold
        (score(0.85, 0.80, 0.90), "Degraded"),
        (score(0.95, 0.90, 1.05), "Inconclusive"),
        (score(None, None, None, prompts=0, unjudged=100), "Inconclusive"),
        (score(1.0, None, None, prompts=1), "Inconclusive"),  # no interval
        # 10 of 100 unjudged may still Pass; 11 may not
        (score(1.0, 0.97, 1.03, prompts=90, unjudged=10), "Pass"),
        (score(1.0, 0.97, 1.03, prompts=89, unjudged=11), "Inconclusive"),
        (score(0.85, 0.80, 0.90, prompts=50, unjudged=50), "Degraded"),
    ],
)
def test_judged_verdicts(s, verdict):
    assert jr.verdict(s, 0.95) == verdict


# --- coverage by simulation: 2,000 trials of 80 prompts with a known truth -------------------
# 1,000 bootstrap resamples per interval rather than the stage's 4,000, to keep the file
# fast; measured with 4,000 the coverages below move by at most 0.15 points.

TRIALS, N = 2000, 80


def _pairwise_coverage(values, probs, seed):
    rng = np.random.default_rng(seed)
    truth = 2 * float(np.dot(values, probs))  # recovery = true win rate / 0.5
    outcomes = rng.choice(values, p=probs, size=(TRIALS, N))
    return sum(
        jr.pairwise_interval(o, seed=i, iterations=1000).covers(truth)
        for i, o in enumerate(outcomes)
    )


def test_pairwise_interval_covers_the_true_recovery_95_percent_of_the_time():
    """One order per prompt: loss, tie or win; true win rate 0.45, recovery 0.9."""
    covered = _pairwise_coverage([0.0, 0.5, 1.0], [0.4, 0.3, 0.3], seed=0)
    assert 0.93 <= covered / TRIALS <= 0.97, covered / TRIALS  # measured 0.947


def test_swapped_pairwise_interval_covers_the_true_recovery_95_percent_of_the_time():
    """Both orders averaged per prompt: five outcomes; true win rate 0.45."""
    values, probs = [0.0, 0.25, 0.5, 0.75, 1.0], [0.2, 0.25, 0.25, 0.15, 0.15]
    covered = _pairwise_coverage(values, probs, seed=1)
    assert 0.93 <= covered / TRIALS <= 0.97, covered / TRIALS  # measured 0.9455


def test_score_ratio_interval_covers_the_true_recovery_95_percent_of_the_time():
    """The baseline rated 1-10; the candidate the baseline's rating less a drop (-1 to 3),
    clipped to 1-10, so the two are correlated (about 0.9). The truth is the ratio of the
    exact expected means, by enumeration."""
    ratings = np.arange(1, 11)
    p_base = np.array([0.02, 0.03, 0.05, 0.08, 0.1, 0.12, 0.15, 0.17, 0.15, 0.13])
    drops, p_drop = np.array([-1, 0, 1, 2, 3]), np.array([0.1, 0.45, 0.2, 0.15, 0.1])
    cand = np.clip(ratings[:, None] - drops[None, :], 1, 10)
    truth = float((p_base[:, None] * p_drop[None, :] * cand).sum() / (p_base * ratings).sum())
    assert truth == pytest.approx(0.9002, abs=1e-4)
    rng = np.random.default_rng(2)
    b = rng.choice(ratings, p=p_base, size=(TRIALS, N)).astype(float)
    c = np.clip(b - rng.choice(drops, p=p_drop, size=(TRIALS, N)), 1, 10)
    covered = sum(
        jr.score_ratio_interval(c[i], b[i], seed=i, iterations=1000).covers(truth)
        for i in range(TRIALS)
    )
    assert 0.93 <= covered / TRIALS <= 0.97, covered / TRIALS  # measured 0.943


def test_intervals_are_reproducible_and_paired():
    rng = np.random.default_rng(5)
    b = rng.integers(1, 11, 80).astype(float)
    c = np.clip(b - rng.integers(0, 2, 80), 1, 10)
    first = jr.score_ratio_interval(c, b, seed=7, iterations=1000)
    assert first == jr.score_ratio_interval(c, b, seed=7, iterations=1000)
    assert first.value == pytest.approx(c.sum() / b.sum())
    # unpaired (the candidate's scores shuffled against the baseline's) is wider
    shuffled = jr.score_ratio_interval(rng.permutation(c), b, seed=7, iterations=1000)
    assert shuffled.high - shuffled.low > 2 * (first.high - first.low)
    o = np.array([0.0, 0.5, 1.0, 1.0])
    i = jr.pairwise_interval(o, iterations=1000)
    assert i.value == 1.25
    assert i.stderr == pytest.approx(o.std(ddof=1) / 2 / 0.5)


# --- the judge stand-in ------------------------------------------------------------------------

REF = prompt("What is the capital of France?", reference=("Paris",))
RIGHT, WRONG = ("It is paris.",), ("It is Lyon.",)


HTTP = httpx.Client(timeout=10)  # one client: a new one per request costs ~50 ms here


def ask(url, messages, key=None, model="judge"):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "messages": messages, "max_tokens": 64, "temperature": 0.0}
    return HTTP.post(f"{url}/chat/completions", json=body, headers=headers)


def verdict_of(url, kind, answers, p=REF, **kw):
    r = ask(url, jr.judge_messages(judged(kind=kind), p, answers), **kw)
    assert r.status_code == 200, r.text
    return jr.parse(kind, r.json()["choices"][0]["message"]["content"])


def test_the_double_judges_by_the_reference_in_both_orders():
    with JudgeDouble("judge") as url:
        assert url.endswith("/v1")
        assert HTTP.get(f"{url}/models").json()["data"][0]["id"] == "judge"
        assert verdict_of(url, "pairwise", [RIGHT, WRONG]) == "A>B"
        assert verdict_of(url, "pairwise", [WRONG, RIGHT]) == "B>A"
        assert verdict_of(url, "pairwise", [RIGHT, ("",)]) == "A>>B"
        assert verdict_of(url, "pairwise", [("",), RIGHT]) == "B>>A"
        assert verdict_of(url, "pairwise", [RIGHT, ("PARIS!",)]) == "A=B"
        assert verdict_of(url, "pairwise", [WRONG, ("Marseille",)]) == "A=B"
        assert verdict_of(url, "single", [RIGHT]) == "9"
        assert verdict_of(url, "single", [WRONG]) == "2"
        r = ask(url, jr.judge_messages(judged(), REF, [RIGHT, WRONG]))
        usage = r.json()["usage"]
        assert usage["prompt_tokens"] > 50 and usage["completion_tokens"] > 0
        assert ask(url, [{"role": "user", "content": "hello"}]).status_code == 400
        wrong_model = ask(url, jr.judge_messages(judged(), REF, [RIGHT, WRONG]), model="x")
        assert wrong_model.status_code == 404
        assert url.startswith("http://127.0.0.1:")


def test_the_double_reads_multi_turn_references():
    p = prompt("q1", "q2", reference=("seven", "nine"))
    with JudgeDouble() as url:
        assert verdict_of(url, "single", [("seven", "nine")], p=p) == "9"
        assert verdict_of(url, "single", [("seven", "ten")], p=p) == "2"
        # without a reference, any answer that is not empty is right
        assert verdict_of(url, "pairwise", [("a",), ("",)], p=prompt("q")) == "A>>B"


def test_the_double_garbles_chosen_questions_on_every_ask():
    other = prompt("What is the capital of Spain?", reference=("Madrid",))
    with JudgeDouble(garble={"What is the capital of France?"}) as url:
        assert verdict_of(url, "pairwise", [RIGHT, WRONG]) is None
        assert verdict_of(url, "pairwise", [RIGHT, WRONG]) is None
        assert verdict_of(url, "pairwise", [("Madrid",), ("Rome",)], p=other) == "A>B"
    with JudgeDouble(garble=lambda q: "Spain" in q) as url:
        assert verdict_of(url, "single", [("Madrid",)], p=other) is None
        assert verdict_of(url, "single", [RIGHT]) == "9"
    questions = [f"question {i}" for i in range(400)]
    with JudgeDouble(garble=0.25) as url:
        garbled = [verdict_of(url, "single", [("x",)], p=prompt(q)) is None for q in questions]
    assert 0.18 < sum(garbled) / len(questions) < 0.32  # a hash picks about a quarter
    assert garbled == [JudgeDouble(garble=0.25).garbled(q) for q in questions]


def test_the_double_breaks_first_asks_and_retries_mend_them():
    with JudgeDouble(malformed_first=True) as url:
        for kind, answers, right in (("pairwise", [RIGHT, WRONG], "A>B"), ("single", [RIGHT], "9")):
            assert verdict_of(url, kind, answers) is None
            assert verdict_of(url, kind, answers) == right
    with JudgeDouble(always_malformed=True) as url:
        assert {verdict_of(url, "pairwise", [RIGHT, WRONG]) for _ in range(3)} == {None}
        assert verdict_of(url, "single", [RIGHT]) is None


def test_the_double_with_position_bias_prefers_a_on_ties_only():
    with JudgeDouble(position_bias=True) as url:
        assert verdict_of(url, "pairwise", [RIGHT, RIGHT]) == "A>B"
        assert verdict_of(url, "pairwise", [WRONG, RIGHT]) == "B>A"


def test_the_double_down_or_locked():
    with JudgeDouble(fail_status=503) as url:
        assert HTTP.get(f"{url}/models").status_code == 503
        assert ask(url, jr.judge_messages(judged(), REF, [RIGHT, WRONG])).status_code == 503
    with JudgeDouble(key="sekrit") as url:
        messages = jr.judge_messages(judged(), REF, [RIGHT, WRONG])
        assert ask(url, messages).status_code == 401
        assert ask(url, messages, key="wrong").status_code == 401
        assert HTTP.get(f"{url}/models").status_code == 401
        assert ask(url, messages, key="sekrit").status_code == 200
    d = JudgeDouble(key="sekrit")
    with d as url:
        ask(url, messages, key="sekrit")
    (seen,) = d.requests
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["Authorization"] == "Bearer sekrit"
    assert seen["body"]["messages"] == messages


def test_the_stage_retries_unparseable_judgements_and_counts_what_stays():
    """The stage's own judging loop against the stand-in: a first ask broken, then mended;
    a garbled prompt asked 1 + retries times and recorded unparseable."""
    spec = judged(judge={"model": {"uri": "org/judge"}, "retries": 2})
    fine = prompt("What is the capital of Spain?", reference=("Madrid",), id="spain")
    todo = [
        sj.Ask("q4", REF, CF, 0, (WRONG, RIGHT)),
        sj.Ask("q4", fine, CF, 0, (("Madrid",), ("Rome",))),
    ]
    cost = sj.Cost()
    double = JudgeDouble(malformed_first=True, garble={"What is the capital of France?"})
    with double as url:
        rows = sj.judgements_of(sj.Api(url, "judge"), spec, todo, cost)
    by = {r["prompt"]: r for r in rows}
    assert (by["p"]["verdict"], by["p"]["attempts"]) == (None, 3)
    assert (by["spain"]["verdict"], by["spain"]["attempts"]) == ("A>B", 2)
    assert cost.requests == len(double.requests) == 5
    assert cost.prompt_tokens > 0 and cost.completion_tokens > 0


def test_the_stage_says_the_judge_is_down():
    with JudgeDouble(fail_status=503) as url, pytest.raises(StageError) as e:
        sj.judgements_of(
            sj.Api(url, "judge"), judged(), [sj.Ask("q4", REF, CF, 0, (RIGHT, WRONG))], sj.Cost()
        )
    assert e.value.reason == sj.JUDGE_UNAVAILABLE
    assert "HTTP 503" in str(e.value)


# --- prompt sets ---------------------------------------------------------------------------------


def test_mt_bench_rows():
    """HuggingFaceH4/mt_bench_prompts: two turns, references for math and reasoning."""
    row = {
        "prompt": ["Solve 3x + 1 = 7.", "And 3x + 1 = 10?"],
        "reference": ["x = 2", "x = 3"],
        "category": "math",
        "prompt_id": 111,
    }
    assert sj.prompt_of(row, 0, 2) == jr.JudgedPrompt(
        "111", ("Solve 3x + 1 = 7.", "And 3x + 1 = 10?"), ("x = 2", "x = 3"), "math"
    )
    assert sj.prompt_of(row, 0, 1) == jr.JudgedPrompt(
        "111", ("Solve 3x + 1 = 7.",), ("x = 2",), "math"
    )
    writing = row | {"reference": [], "category": "writing", "prompt_id": 81}
    assert sj.prompt_of(writing, 0, 2).reference == ()


def test_arena_hard_rows():
    row = {
        "question_id": "328c149ed45a41c0b9d6f14659e63599",
        "category": "arena-hard-v0.1",
        "cluster": "ABC Sequence Puzzles & Groups",
        "turns": [{"content": "Use ABC notation to write a melody."}],
    }
    assert sj.prompt_of(row, 4, 1) == jr.JudgedPrompt(
        "328c149ed45a41c0b9d6f14659e63599",
        ("Use ABC notation to write a melody.",),
        (),
        "arena-hard-v0.1",
    )


def test_plain_rows_and_bad_ones():
    assert sj.prompt_of({"question": "Why?"}, 7, 1) == jr.JudgedPrompt("7", ("Why?",))
    assert sj.prompt_of({"prompt": "Why?", "id": 0, "category": 3}, 7, 1).id == "0"
    assert sj.prompt_of({"prompt": "Why?", "category": 3}, 7, 1).category is None
    with pytest.raises(ValueError, match="needs turns or prompt"):
        sj.prompt_of({"input": "Why?"}, 0, 1)
    with pytest.raises(ValueError, match="reference must be"):
        sj.prompt_of({"prompt": "Why?", "reference": {"a": 1}}, 0, 1)
    with pytest.raises(ValueError, match="not a JSON object"):
        sj.prompt_of(["Why?"], 0, 1)


def write(tmp_path, rows):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_load_prompts_from_a_file(tmp_path):
    path = write(
        tmp_path,
        [
            {"id": "a", "turns": ["a1", "a2", "a3"], "reference": ["r1", "r2", "r3"]},
            "",
            {"id": "b", "prompt": "b1"},
            {"id": "c", "prompt": "c1"},
        ],
    )
    prompts = sj.load_prompts(judged(promptsPath=path, turns=2))
    assert [p.id for p in prompts] == ["a", "b", "c"]
    assert prompts[0].turns == ("a1", "a2") and prompts[0].reference == ("r1", "r2")
    assert [p.id for p in sj.load_prompts(judged(promptsPath=path, limit=2))] == ["a", "b"]
    assert sj.load_prompts(judged(promptsPath=path))[0].turns == ("a1",)


def test_load_prompts_names_the_bad_line(tmp_path):
    path = write(tmp_path, [{"id": "a", "prompt": "x"}, "{not json"])
    with pytest.raises(StageError) as e:
        sj.load_prompts(judged(promptsPath=path))
    assert e.value.reason == "InvalidPrompts" and f"{path}:2" in str(e.value)
    path = write(tmp_path, [{"id": "a", "prompt": "x"}, {"id": "b"}])
    with pytest.raises(StageError, match=f"{path}:2: needs turns"):
        sj.load_prompts(judged(promptsPath=path))
    path = write(tmp_path, [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    with pytest.raises(StageError, match="share the id 'a'"):
        sj.load_prompts(judged(promptsPath=path))
    with pytest.raises(StageError, match="no prompts"):
        sj.load_prompts(judged(promptsPath=write(tmp_path, ["", " "])))
    with pytest.raises(StageError) as missing:
        sj.load_prompts(judged(promptsPath=str(tmp_path / "none.jsonl")))
    assert missing.value.reason == "PromptsNotFound"


def test_the_demo_set_and_the_stand_in_agree():
    """Every demo prompt has a reference; the stand-in judges the reference itself right and
    an empty answer wrong."""
    prompts = sj.load_prompts(judged())
    assert len(prompts) == 48 and all(p.reference for p in prompts)
    double = JudgeDouble()
    for p in prompts[:5]:
        user = jr.judge_messages(judged(), p, [p.reference, ("",)])[1]["content"]
        assert jr.parse_pairwise(double.judge(user) or "") == "A>>B"
