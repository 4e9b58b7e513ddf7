"""The report's recommendation, computed from the run's measured numbers.

The studies' advice (Kurtic et al., "Give Me BF16 or Give Me Death?"): W4A16 for
latency-bound single-stream use (decoding one request at a time is memory-bound, and
4-bit weights move the fewest bytes), W8A8 (INT8 or FP8) for throughput-bound serving
(large batches are compute-bound, and 8-bit activations use the faster tensor cores);
both kept about 99 % of the baseline's accuracy there. The recommendation picks from
this run's candidates that keep accuracy and says where its numbers disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from qeval.api.evalrun_status import CandidateSummary
from qeval.report.model import SINGLE_STREAM, THROUGHPUT, PerfPoint, Run

Use = Literal["latency", "throughput"]
ADVICE: dict[Use, str] = {"latency": "W4A16", "throughput": "W8A8"}
TITLE: dict[Use, str] = {
    "latency": "Latency-bound single-stream use",
    "throughput": "Throughput-bound serving",
}


def family(scheme: str | None) -> str:
    """The scheme family the studies' advice names (W4A16, W8A8), else the scheme."""
    s = (scheme or "").upper()
    for fam in ("W4A16", "W8A8"):
        if s.startswith(fam):
            return fam
    return scheme or "-"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _recovery(c: CandidateSummary) -> str:
    text = f"mean recovery {pct(c.mean_recovery)}"
    if c.mean_recovery_ci_low is not None and c.mean_recovery_ci_high is not None:
        text += f" [{pct(c.mean_recovery_ci_low)}, {pct(c.mean_recovery_ci_high)}]"
    return text


def eligible(run: Run) -> list[CandidateSummary]:
    """Candidates that keep accuracy: those that Pass, else the Inconclusive ones."""
    passing = [c for c in run.status.candidates if c.verdict == "Pass"]
    return passing or [c for c in run.status.candidates if c.verdict == "Inconclusive"]


@dataclass(frozen=True)
class Pick:
    """Which candidate fits one use, on what basis, and whether the studies agree."""

    use: Use
    model: str | None
    scheme: str | None
    basis: Literal["measured", "size", "none"]
    text: str
    agrees: bool | None


def _points(run: Run, scenarios: Sequence[str]) -> dict[str, PerfPoint]:
    return {p.model: p for p in run.performance if p.scenario.lower() in scenarios}


def _mib(c: CandidateSummary) -> str:
    return f"{(c.size_bytes or 0) / 2**20:.1f} MiB"


def _advice_check(run: Run, use: Use, best: CandidateSummary, worse: dict[str, str]) -> str:
    """Whether ``best`` is of the family the studies advise for ``use``, and if not, what
    this run measured for the advised candidates (``worse``: name -> what they did)."""
    advised = ADVICE[use]
    if family(best.scheme) == advised:
        return f"This agrees with the studies' advice ({advised})."
    same = [c for c in run.status.candidates if family(c.scheme) == advised]
    if not same:
        return f"The studies advise {advised}; no {advised} candidate was evaluated here."
    reasons = "; ".join(worse.get(c.name, f"{c.name} ({c.scheme}) did worse") for c in same)
    return f"This differs from the studies' advice ({advised}): {reasons}."


def _failing(run: Run, chosen: list[CandidateSummary]) -> dict[str, str]:
    """For each candidate that does not keep accuracy: its verdict and recovery."""
    names = {c.name for c in chosen}
    return {
        c.name: f"{c.name} ({c.scheme}) is {c.verdict or 'unmeasured'} ({_recovery(c)})"
        for c in run.status.candidates
        if c.name not in names
    }


def latency_pick(run: Run) -> Pick:
    """The candidate for latency-bound single-stream use: the lowest measured latency, or
    (not measured) the smallest weights, among those that keep accuracy."""
    title, chosen = TITLE["latency"], eligible(run)
    worse = _failing(run, chosen)
    points = _points(run, SINGLE_STREAM)
    measured = [c for c in chosen if c.name in points]
    sized = [c for c in chosen if c.size_bytes]
    basis: Literal["measured", "size"]
    if measured:
        best = min(measured, key=lambda c: points[c.name].latency_seconds)
        latency = points[best.name].latency_seconds
        base = points.get(run.baseline)
        vs = f", {base.latency_seconds / latency:.2f}x the baseline's speed" if base else ""
        text = f"{title}: {best.name} ({best.scheme}), median latency {latency:.3g} s{vs}"
        for c in measured:
            worse[c.name] = f"{c.name} ({c.scheme}) measured {points[c.name].latency_seconds:.3g} s"
        basis = "measured"
    elif sized:
        best = min(sized, key=lambda c: c.size_bytes or 0)
        ratio = f", {best.compression_ratio:.1f}x smaller" if best.compression_ratio else ""
        text = (
            f"{title}: {best.name} ({best.scheme}), chosen by size as latency was not measured "
            "(the serving stage did not run): decoding one request at a time is memory-bound, "
            f"so the smallest weights ({_mib(best)}{ratio}) predict the lowest latency"
        )
        for c in sized:
            worse[c.name] = f"{c.name} ({c.scheme}) is larger ({_mib(c)})"
        basis = "size"
    else:
        reason = "no candidate keeps accuracy" if not chosen else "neither latency nor size known"
        return Pick("latency", None, None, "none", f"{title}: {reason}; keep the baseline.", None)
    text += f"; {_recovery(best)}. " + _advice_check(run, "latency", best, worse)
    return Pick("latency", best.name, best.scheme, basis, text, family(best.scheme) == "W4A16")


def throughput_pick(run: Run) -> Pick:
    """The candidate for throughput-bound serving: the highest measured output throughput
    among those that keep accuracy (no pick when throughput was not measured)."""
    title, chosen = TITLE["throughput"], eligible(run)
    worse = _failing(run, chosen)
    points = _points(run, THROUGHPUT)
    measured = [c for c in chosen if c.name in points]
    if not measured:
        advised = [c for c in run.status.candidates if family(c.scheme) == ADVICE["throughput"]]
        keep = [c for c in advised if c in chosen]
        if keep:
            state = "here the W8A8 candidates that keep accuracy are " + ", ".join(
                f"{c.name} ({c.scheme}, {_recovery(c)})" for c in keep
            )
        elif advised:
            state = "no W8A8 candidate keeps accuracy here: " + "; ".join(
                worse[c.name] for c in advised
            )
        else:
            state = "no W8A8 candidate was evaluated here"
        text = (
            f"{title}: throughput was not measured (the serving stage did not run), so there "
            f"is no measured pick; the studies advise W8A8 for it, and {state}."
        )
        return Pick("throughput", None, None, "none", text, None)
    best = max(measured, key=lambda c: points[c.name].tokens_per_second)
    tps = points[best.name].tokens_per_second
    base = points.get(run.baseline)
    vs = f", {tps / base.tokens_per_second:.2f}x the baseline's" if base else ""
    for c in measured:
        worse[c.name] = (
            f"{c.name} ({c.scheme}) served {points[c.name].tokens_per_second:.4g} tokens/s"
        )
    text = (
        f"{title}: {best.name} ({best.scheme}), {tps:.4g} output tokens/s{vs}; "
        f"{_recovery(best)}. " + _advice_check(run, "throughput", best, worse)
    )
    return Pick(
        "throughput", best.name, best.scheme, "measured", text, family(best.scheme) == "W8A8"
    )


def accuracy_notes(run: Run) -> list[str]:
    """Where accuracy disagrees with the studies (W4A16 and W8A8 near-lossless there), and
    candidates that pass the gate yet are significantly worse on a task."""
    notes = []
    for c in run.status.candidates:
        fam = family(c.scheme)
        if fam in ADVICE.values() and c.verdict == "Degraded":
            notes.append(
                f"Unlike in the studies, where {fam} kept about 99 % of the baseline's "
                f"accuracy, {c.name} ({c.scheme}) is Degraded here ({_recovery(c)}, "
                f"threshold {pct(run.threshold)})."
            )
        elif c.verdict == "Degraded":
            notes.append(
                f"{c.name} ({c.scheme}) falls below the {pct(run.threshold)} gate ({_recovery(c)})."
            )
        if c.verdict == "Pass" and c.degraded_tasks:
            notes.append(
                f"{c.name} passes the gate but is significantly worse than the baseline on "
                f"{', '.join(c.degraded_tasks)} (paired test, p < 0.05)."
            )
    return notes


def recommend(run: Run) -> list[str]:
    """The recommendation, one paragraph per line: the two uses, then accuracy notes."""
    return [latency_pick(run).text, throughput_pick(run).text, *accuracy_notes(run)]
