"""Judged evaluations, pure: the judge's messages, its verdict grammar, and from its
judgements to each candidate's outcome with a paired bootstrap interval over prompts.

The default judge prompts are qeval's own wording of the published judge prompts'
structure: Arena-Hard-Auto's pairwise prompt (the judge answers the prompt itself first,
then compares both assistants' answers for mistakes, helpfulness, relevance, concision and
what they miss, and ends with one of five verdicts [[A>>B]] ... [[B>>A]]) and MT-Bench's
single-answer grading (an explanation, then "Rating: [[n]]" from 1 to 10), each with a
reference answer where the prompt has one.

A judgement is parsed as Arena-Hard-Auto parses it: every verdict the text contains is
read, and it counts only when they all agree (two different verdicts, or none, is
unparseable). In a pairwise judgement the candidate is assistant A in one order and B in
the other; its outcome is 1 (a win, slight or significant), 0.5 (a tie) or 0, from its
own side. A prompt's outcome is the mean over its orders and repeats.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from qeval.api.evalrun import Judged, JudgedKind
from qeval.api.evalrun_status import JudgedScore, Verdict
from qeval.results import stats

# Orders of a pairwise judgement (which side the candidate's answer is on), and the two
# answers a single-answer judgement scores.
CANDIDATE_FIRST, BASELINE_FIRST = "candidate-first", "baseline-first"
CANDIDATE, BASELINE = "candidate", "baseline"

# A verdict is one of A>>B, A>B, A=B, B>A, B>>A (B<A and the like read the same way).
_PAIRWISE = re.compile(r"\[\[\s*([AB])\s*(>>|>|=|<<|<)\s*([AB])\s*\]\]")
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
RATING_RANGE = (1.0, 10.0)
# A candidate whose judged prompts are fewer than this share of the set cannot Pass: the
# prompts the judge could not rate may be the ones it would have lost.
UNJUDGED_TOLERANCE = 0.10
# Nor with fewer judged prompts than this: a handful of prompts that all tie (a judge that
# cannot tell the two apart) gives an interval of no width, which says nothing.
MIN_PROMPTS_TO_PASS = 10
JUDGED_ITERATIONS = 4_000  # bootstrap resamples of the prompts

PAIRWISE_SYSTEM = (
    "You judge two AI assistants' answers to the same user prompt, impartially. First "
    "write your own short answer to the prompt. Then compare both assistants' answers with "
    "yours (and with the reference answer, where one is given): name every mistake or "
    "piece of wrong information, and judge whether each answer is helpful (it does what "
    "the prompt asks, or asks back where the prompt is ambiguous), relevant (every part of "
    "it fits the prompt) and concise (not wordy), and what important information it leaves "
    "out. The order the answers come in, their length and the assistants' names must not "
    "sway you. End with exactly one final verdict, one of:\n"
    "1. Assistant A is significantly better: [[A>>B]]\n"
    "2. Assistant A is slightly better: [[A>B]]\n"
    "3. Tie, relatively the same: [[A=B]]\n"
    "4. Assistant B is slightly better: [[B>A]]\n"
    "5. Assistant B is significantly better: [[B>>A]]\n"
    'For example: "My final verdict is tie: [[A=B]]".'
)
PAIRWISE_TEMPLATE = (
    "<|User Prompt|>\n{question}\n\n"
    "<|The Start of Assistant A's Answer|>\n{answer_a}\n<|The End of Assistant A's Answer|>\n\n"
    "<|The Start of Assistant B's Answer|>\n{answer_b}\n<|The End of Assistant B's Answer|>"
)
PAIRWISE_REFERENCE_TEMPLATE = (
    "<|User Prompt|>\n{question}\n\n"
    "<|The Start of Reference Answer|>\n{reference}\n<|The End of Reference Answer|>\n\n"
    "<|The Start of Assistant A's Answer|>\n{answer_a}\n<|The End of Assistant A's Answer|>\n\n"
    "<|The Start of Assistant B's Answer|>\n{answer_b}\n<|The End of Assistant B's Answer|>"
)
SINGLE_SYSTEM = (
    "You judge the quality of an AI assistant's answer to a user prompt, impartially: its "
    "helpfulness, relevance, accuracy, depth, creativity and level of detail. Where a "
    "reference answer is given, compare the answer with it: a fact or final result that "
    "differs from the reference is a mistake. Explain your judgement briefly and "
    "objectively, then rate the answer from 1 to 10 in exactly this form: "
    '"Rating: [[5]]".'
)
SINGLE_TEMPLATE = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
SINGLE_REFERENCE_TEMPLATE = (
    "[Question]\n{question}\n\n"
    "[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"
    "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
_PLACEHOLDER = re.compile(r"\{(question|answer_a|answer_b|answer|reference)\}")


@dataclass(frozen=True)
class JudgedPrompt:
    """One prompt of a judged set: its user turns, and the reference answers if any."""

    id: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] = ()
    category: str | None = None


def templates(judged: Judged) -> tuple[str, str, str]:
    """The judge's system message, its user template, and the template used where a prompt
    has a reference answer (the spec's template serves both)."""
    pairwise = judged.kind == JudgedKind.PAIRWISE
    system = judged.system or (PAIRWISE_SYSTEM if pairwise else SINGLE_SYSTEM)
    if judged.template is not None:
        return system, judged.template, judged.template
    if pairwise:
        return system, PAIRWISE_TEMPLATE, PAIRWISE_REFERENCE_TEMPLATE
    return system, SINGLE_TEMPLATE, SINGLE_REFERENCE_TEMPLATE


def template_digest(judged: Judged) -> str:
    """12 hex digits naming the judge's messages' form (part of every cache key)."""
    return hashlib.sha256("\x00".join(templates(judged)).encode()).hexdigest()[:12]


def render_turns(texts: Sequence[str]) -> str:
    """One turn as it is; several numbered, as the judge reads a conversation."""
    if len(texts) == 1:
        return texts[0]
    return "\n\n".join(f"Turn {i}: {t}" for i, t in enumerate(texts, 1))


def fill(template: str, values: dict[str, str]) -> str:
    """The template with its placeholders replaced in one pass (a model's answer that
    contains ``{answer_b}`` stays text)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def judge_messages(
    judged: Judged, prompt: JudgedPrompt, answers: Sequence[Sequence[str]]
) -> list[dict[str, str]]:
    """The chat messages that ask the judge about ``answers`` (two, A then B, pairwise;
    one, single) to ``prompt``."""
    system, plain, with_reference = templates(judged)
    values = {"question": render_turns(prompt.turns)}
    values["reference"] = render_turns(prompt.reference) if prompt.reference else ""
    if judged.kind == JudgedKind.PAIRWISE:
        values["answer_a"], values["answer_b"] = (render_turns(a) for a in answers)
    else:
        values["answer"] = render_turns(answers[0])
    template = with_reference if prompt.reference else plain
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": fill(template, values)},
    ]


def parse_pairwise(text: str) -> str | None:
    """The verdict of a pairwise judgement as A>>B, A>B, A=B, B>A or B>>A; None when it
    has none, or several that disagree."""
    found = set()
    for left, op, right in _PAIRWISE.findall(text):
        if left == right:
            continue  # [[A>A]] says nothing
        if op == "=":
            found.add("A=B")
            continue
        strong = len(op) == 2
        a_wins = (op.startswith(">")) == (left == "A")
        found.add(("A" if a_wins else "B") + (">>" if strong else ">") + ("B" if a_wins else "A"))
    return found.pop() if len(found) == 1 else None


def parse_rating(text: str) -> float | None:
    """The 1-10 rating of a single-answer judgement; None when there is none, one out of
    range, or several that disagree."""
    found = {float(x) for x in _RATING.findall(text)}
    if len(found) != 1:
        return None
    value = found.pop()
    return value if RATING_RANGE[0] <= value <= RATING_RANGE[1] else None


def parse(kind: JudgedKind | str, text: str) -> str | None:
    """A judgement's verdict as text (a pairwise verdict, or a rating), or None."""
    if kind == JudgedKind.PAIRWISE:
        return parse_pairwise(text)
    rating = parse_rating(text)
    return None if rating is None else f"{rating:g}"


def candidate_value(kind: JudgedKind | str, order: str, verdict: str) -> float:
    """What a parsed verdict gives the side the judgement is about: pairwise, the
    candidate's outcome (1 win, 0.5 tie, 0 loss) in ``order``; single, the rating."""
    if kind != JudgedKind.PAIRWISE:
        return float(verdict)
    if verdict == "A=B":
        return 0.5
    a_wins = verdict.startswith("A")
    return float(a_wins == (order == CANDIDATE_FIRST))


@dataclass(frozen=True)
class Judgement:
    """One judgement as the stage recorded it (``judgements.jsonl``): for pairwise, the
    candidate's outcome in ``order``; for single, the rating of ``order``'s answer."""

    model: str  # the candidate it is about
    prompt: str  # the prompt's id
    order: str  # CANDIDATE_FIRST or BASELINE_FIRST; CANDIDATE or BASELINE (single)
    repeat: int
    verdict: str | None  # None: unparseable after every attempt
    attempts: int = 1

    def value(self, kind: JudgedKind | str) -> float | None:
        return None if self.verdict is None else candidate_value(kind, self.order, self.verdict)


def _bootstrap(
    values: np.ndarray, statistic: str, seed: int, iterations: int
) -> tuple[float, float]:
    """Percentile interval (95 %) of the statistic over prompts resampled with replacement:
    ``mean`` of a vector, or ``ratio`` of the two columns' sums (each prompt's pair kept
    together)."""
    rng = np.random.default_rng(seed)
    n, out = len(values), []
    for start in range(0, iterations, 500):
        idx = rng.integers(0, n, size=(min(500, iterations - start), n))
        if statistic == "mean":
            out.append(values[idx].mean(axis=1))
        else:
            sums = values[idx].sum(axis=1)
            out.append(sums[:, 0] / sums[:, 1])
    draws = np.concatenate(out)
    tail = (1 - stats.LEVEL) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def pairwise_interval(
    outcomes: np.ndarray, seed: int = 0, iterations: int = JUDGED_ITERATIONS
) -> stats.Interval:
    """Recovery (win rate / 0.5) from per-prompt outcomes, with its paired bootstrap
    interval: the candidate and the baseline answered the same prompts, and each prompt's
    outcome already compares the two."""
    value = float(outcomes.mean()) / 0.5
    if len(outcomes) < 2:
        return stats.Interval(value, None, None, None)
    low, high = _bootstrap(outcomes, "mean", seed, iterations)
    return stats.Interval(
        value, float(outcomes.std(ddof=1) / np.sqrt(len(outcomes))) / 0.5, low / 0.5, high / 0.5
    )


def score_ratio_interval(
    candidate: np.ndarray, baseline: np.ndarray, seed: int = 0, iterations: int = JUDGED_ITERATIONS
) -> stats.Interval:
    """Recovery (the candidate's mean score / the baseline's) with its paired bootstrap
    interval over prompts (each prompt's two scores resampled together)."""
    value = float(candidate.sum() / baseline.sum())
    if len(candidate) < 2:
        return stats.Interval(value, None, None, None)
    low, high = _bootstrap(np.column_stack([candidate, baseline]), "ratio", seed, iterations)
    return stats.Interval(value, None, low, high)


def _means(rows: Iterable[tuple[str, float]]) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for key, value in rows:
        groups[key].append(value)
    return {k: float(np.mean(v)) for k, v in groups.items()}


def outcome(
    model: str,
    kind: JudgedKind | str,
    judgements: Sequence[Judgement],
    prompts: int,
    seed: int = 0,
    iterations: int = JUDGED_ITERATIONS,
) -> JudgedScore:
    """One candidate's outcome on a judged set of ``prompts`` prompts (no verdict yet:
    that takes the run's threshold, ``verdict``)."""
    mine = [j for j in judgements if j.model == model]
    parsed = [j for j in mine if j.verdict is not None]
    score = JudgedScore(
        model=model,
        prompts=0,
        judgements=len(parsed),
        unparseable=len(mine) - len(parsed),
        retried=sum(j.attempts > 1 for j in mine),
    )
    if kind == JudgedKind.PAIRWISE:
        values = [(j.prompt, v) for j in parsed if (v := j.value(kind)) is not None]
        score.wins = sum(v == 1.0 for _, v in values)
        score.ties = sum(v == 0.5 for _, v in values)
        score.losses = sum(v == 0.0 for _, v in values)
        per_prompt = _means(values)
        score.position_bias = position_bias(parsed)
        if per_prompt:
            outcomes = np.array([per_prompt[p] for p in sorted(per_prompt)])
            interval = pairwise_interval(outcomes, seed, iterations)
            score.win_rate = round(float(outcomes.mean()), 6)
            if interval.low is not None and interval.high is not None:
                score.win_rate_ci_low = round(interval.low * 0.5, 6)
                score.win_rate_ci_high = round(interval.high * 0.5, 6)
    else:
        rated = [(j, v) for j in parsed if (v := j.value(kind)) is not None]
        cand = _means((j.prompt, v) for j, v in rated if j.order == CANDIDATE)
        base = _means((j.prompt, v) for j, v in rated if j.order == BASELINE)
        both = sorted(set(cand) & set(base))
        per_prompt = {p: cand[p] for p in both}
        if both:
            c, b = np.array([cand[p] for p in both]), np.array([base[p] for p in both])
            interval = score_ratio_interval(c, b, seed, iterations)
            score.score, score.baseline_score = round(float(c.mean()), 6), round(float(b.mean()), 6)
    score.prompts = len(per_prompt)
    score.unjudged = prompts - len(per_prompt)
    if per_prompt:
        score.recovery = round(interval.value, 6)
        if interval.low is not None and interval.high is not None:
            score.recovery_ci_low = round(interval.low, 6)
            score.recovery_ci_high = round(interval.high, 6)
    return score


def position_bias(judgements: Sequence[Judgement]) -> float | None:
    """The share of (prompt, repeat) judged in both orders whose outcome for the candidate
    changed with the order; None without such pairs."""
    by: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
    for j in judgements:
        if j.verdict is not None and j.order in (CANDIDATE_FIRST, BASELINE_FIRST):
            by[(j.prompt, j.repeat)][j.order] = candidate_value(
                JudgedKind.PAIRWISE, j.order, j.verdict
            )
    pairs = [v for v in by.values() if len(v) == 2]
    if not pairs:
        return None
    return round(sum(v[CANDIDATE_FIRST] != v[BASELINE_FIRST] for v in pairs) / len(pairs), 6)


def verdict(score: JudgedScore, threshold: float) -> Verdict:
    """The judged verdict against the recovery threshold (as the task verdicts are given);
    never Pass with more than ``UNJUDGED_TOLERANCE`` of the prompts unjudged, nor on fewer
    than ``MIN_PROMPTS_TO_PASS`` judged prompts."""
    interval = stats.Interval(
        score.recovery or 0.0, None, score.recovery_ci_low, score.recovery_ci_high
    )
    if score.recovery is None:
        return "Inconclusive"
    found = stats.verdict(interval, [], threshold)
    total = score.prompts + score.unjudged
    if found == "Pass" and total and score.unjudged / total > UNJUDGED_TOLERANCE:
        return "Inconclusive"
    if found == "Pass" and score.prompts < MIN_PROMPTS_TO_PASS:
        return "Inconclusive"
    return found
