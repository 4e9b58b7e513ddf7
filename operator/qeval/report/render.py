"""The report as Markdown and as self-contained HTML (figures embedded), from one outline."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from qeval.api.evalrun_status import JudgedResult, JudgedScore, PerformancePoint, Speedup
from qeval.report.model import Run
from qeval.report.plots import primary_tasks
from qeval.report.recommend import pct, recommend
from qeval.report.text import column_metric, difference, difference_notes, shown_differences
from qeval.results.judged import MIN_PROMPTS_TO_PASS, UNJUDGED_TOLERANCE
from qeval.results.performance import measurable

CACHED_MARK = "†"
SIGNIFICANT_MARK = "*"


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Image:
    path: Path
    alt: str


Block = str | Table | Image | list[str]  # a paragraph, a table, a figure, a bullet list


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Block]


def _pm(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr is not None else "")


def _interval(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "-"
    if low is None or high is None:
        return pct(value)
    return f"{100 * value:.1f} % [{100 * low:.1f}, {100 * high:.1f}]"


def _size(size: int | None, ratio: float | None = None) -> str:
    if not size:
        return "-"
    return f"{size / 2**20:.1f} MiB" + (f" ({ratio:.1f}x)" if ratio else "")


def results_table(run: Run) -> Table:
    """Per model: scheme, size, per task the primary score and recovery, mean, verdict
    (without candidates: the baseline's scores alone)."""
    status = run.status
    tasks = primary_tasks(run)
    cached = {*status.cached, *status.reused}
    score = {(s.model, s.task, s.metric, s.filter): s for s in status.scores}
    recovery = {(r.model, r.task, r.metric, r.filter): r for r in status.recovery}
    differences = {(d.model, d.task, d.metric, d.filter): d for d in status.differences}
    compared = bool(status.candidates)
    headers = ["model", "scheme", "size"]
    for task, metric, filt in tasks:
        name = column_metric(status, task, metric, filt)
        headers += [f"{task} ({name})", *(["recovery [95 % CI]"] if compared else [])]
    headers += ["mean recovery [95 % CI]", "verdict"] if compared else []
    rows = [[run.baseline, run.scheme(run.baseline), _size(status.baseline_size_bytes)]]
    for task, metric, filt in tasks:
        s = score.get((run.baseline, task, metric, filt))
        mark = CACHED_MARK if f"{run.baseline}/{task}" in cached else ""
        rows[0] += [(_pm(s.value, s.stderr) if s else "-") + mark, *([""] if compared else [])]
    rows[0] += ["", ""] if compared else []
    for c in status.candidates:
        row = [c.name, c.scheme or "-", _size(c.size_bytes, c.compression_ratio)]
        for task, metric, filt in tasks:
            s = score.get((c.name, task, metric, filt))
            r = recovery.get((c.name, task, metric, filt))
            mark = CACHED_MARK if f"{c.name}/{task}" in cached else ""
            row.append((_pm(s.value, s.stderr) if s else "-") + mark)
            d = differences.get((c.name, task, metric, filt))
            cell = _interval(r.value, r.ci_low, r.ci_high) if r else difference(d) if d else "-"
            if r and r.p_value is not None:
                cell += f" p={r.p_value:.2g}" + (SIGNIFICANT_MARK if r.significant else "")
            row.append(cell)
        row.append(_interval(c.mean_recovery, c.mean_recovery_ci_low, c.mean_recovery_ci_high))
        row.append(c.verdict or "-")
        rows.append(row)
    return Table(headers, rows)


def suite_table(run: Run) -> Table | None:
    if not run.status.suite_scores:
        return None
    rows = [
        [s.model, s.suite, f"{100 * s.value:.2f}", pct(s.recovery) if s.recovery else ""]
        for s in run.status.suite_scores
    ]
    return Table(["model", "suite", "score (x100)", "recovery"], rows)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.3g}"


def speedup_text(sp: Speedup | None) -> str:
    """A candidate's output-throughput speedup, with its interval over repetitions; one
    whose interval holds 1 is no measurable difference."""
    if sp is None:
        return ""
    low, high = sp.output_throughput_ci_low, sp.output_throughput_ci_high
    if low is None or high is None:
        return f"{sp.output_throughput:.2f}x"
    text = f"{sp.output_throughput:.2f}x [{low:.2f}, {high:.2f}]"
    return text + (" (no measurable difference)" if not measurable(low, high) else "")


def _throughput(p: PerformancePoint) -> str:
    low, high = p.output_tokens_per_second_ci_low, p.output_tokens_per_second_ci_high
    if low is None or high is None:
        return f"{p.output_tokens_per_second:.4g}"
    return f"{p.output_tokens_per_second:.4g} [{low:.4g}, {high:.4g}]"


def serving_table(run: Run) -> Table | None:
    """Per model and scenario, as qeval benchmark measured it (milliseconds)."""
    points = run.status.performance
    if not points:
        return None
    speed = {(s.model, s.scenario): s for s in run.status.speedups}
    rows = []
    for p in points:
        sp = speed.get((p.model, p.scenario))
        rows.append(
            [
                p.model,
                p.scenario,
                p.backend,
                f"{_ms(p.ttft_seconds.p50)} / {_ms(p.ttft_seconds.p99)}",
                _ms(p.itl_seconds.p50) if p.itl_seconds else "-",
                f"{_ms(p.e2e_seconds.p50)} / {_ms(p.e2e_seconds.p99)}",
                _throughput(p) + (" (client-limited)" if p.client_limited else ""),
                f"{p.requests_per_second:.3g}",
                speedup_text(sp),
            ]
        )
    headers = ["model", "scenario", "backend", "TTFT p50 / p99 ms", "ITL p50 ms"]
    headers += ["e2e p50 / p99 ms", "output tok/s", "req/s", "speedup"]
    if any(p.slo_attainment is not None for p in points):  # spec.performance.slo
        headers += ["SLO met", "goodput req/s"]
        for row, p in zip(rows, points, strict=True):
            row += [pct(p.slo_attainment), f"{p.goodput_requests_per_second:.3g}"]
    return Table(headers, rows)


def similarity_table(run: Run) -> Table | None:
    if not run.status.similarity:
        return None
    rows = [
        [
            s.model,
            str(s.prompts),
            f"{s.rouge1:.3f}",
            f"{s.rouge_l:.3f}",
            "-" if s.bertscore_f1 is None else f"{s.bertscore_f1:.3f}",
            "-" if s.sts is None else f"{s.sts:.3f}",
            pct(s.identical),
        ]
        for s in run.status.similarity
    ]
    headers = ["model", "prompts", "ROUGE-1", "ROUGE-L", "BERTScore F1", "STS", "identical"]
    return Table(headers, rows)


def duration(seconds: float) -> str:
    """``42.0 s``, ``3 min 12 s``, ``1 h 02 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _judged_row(j: JudgedResult, s: JudgedScore) -> list[str]:
    name = s.model + (CACHED_MARK if s.cached else "")
    if j.kind == "pairwise":
        tally = (
            "-"
            if s.wins is None or s.ties is None or s.losses is None
            else f"{s.wins} / {s.ties} / {s.losses}"
        )
        judged = [tally, _interval(s.win_rate, s.win_rate_ci_low, s.win_rate_ci_high)]
    else:
        judged = [
            "-"
            if s.score is None or s.baseline_score is None
            else f"{s.score:.2f} / {s.baseline_score:.2f}"
        ]
    row = [name, str(s.prompts), *judged]
    row.append(_interval(s.recovery, s.recovery_ci_low, s.recovery_ci_high))
    if j.kind == "pairwise":
        row.append(pct(s.position_bias))
    return [*row, str(s.unparseable), str(s.unjudged), s.verdict or "-"]


def judged_table(j: JudgedResult) -> Table:
    """One judged set: per candidate the judge's tally (pairwise: wins / ties / losses
    against the baseline and the win rate; single: the candidate's mean score against the
    baseline's), the recovery with its 95 % interval, what went unparsed, the verdict."""
    if j.kind == "pairwise":
        judged = ["wins / ties / losses", "win rate [95 % CI]"]
    else:
        judged = ["score / baseline (1-10)"]
    headers = ["model", "prompts", *judged, "recovery [95 % CI]"]
    headers += ["position bias"] if j.kind == "pairwise" else []
    headers += ["unparseable", "unjudged", "verdict"]
    return Table(headers, [_judged_row(j, s) for s in j.scores])


def judged_cost_table(judged: list[JudgedResult]) -> Table:
    """Per judged set: what the judge read and wrote, and what answering took."""
    rows = [
        [
            j.name,
            f"{j.judge_requests:,}",
            f"{j.judge_prompt_tokens:,} + {j.judge_completion_tokens:,}",
            duration(j.judge_seconds),
            f"{j.answer_tokens:,}",
            duration(j.answer_seconds),
            f"{j.reused_answers:,}",
        ]
        for j in judged
    ]
    headers = ["judged set", "judge requests", "judge tokens (prompt + completion)"]
    headers += ["judge time", "answer tokens", "answer time", "answers reused"]
    return Table(headers, rows)


def judged_cost(judged: list[JudgedResult]) -> str:
    """The judged evaluations' cost in one sentence (summed over the sets)."""
    requests = sum(j.judge_requests for j in judged)
    prompt = sum(j.judge_prompt_tokens for j in judged)
    completion = sum(j.judge_completion_tokens for j in judged)
    seconds = sum(j.judge_seconds for j in judged)
    answers = sum(j.answer_tokens for j in judged)
    answering = sum(j.answer_seconds for j in judged)
    reused = sum(j.reused_answers for j in judged)
    return (
        f"Cost: {requests:,} judge requests (retries included) reading {prompt:,} prompt "
        f"tokens and writing {completion:,} completion tokens in {duration(seconds)} of "
        f"judging; the models wrote {answers:,} answer tokens in {duration(answering)}, "
        f"and {reused:,} answers were reused from the similarity stage's generations."
    )


def judged_blocks(run: Run, figure: Path | None) -> list[Block]:
    """The "Judged evaluations" section: what was judged, the figure, a table per set, and
    what the judging cost."""
    judged = run.status.judged
    blocks: list[Block] = [
        "An LLM judge rated each candidate's answers against the baseline's on the same "
        "prompts. Pairwise: the judge picks the better of two answers; win rate = (wins + "
        "ties / 2) / judgements, averaged over prompts; recovery = win rate / 50 % (100 %: "
        "as good as the baseline). Single: the judge scores each answer 1-10; recovery = "
        "the candidate's mean score / the baseline's. Intervals: paired bootstrap over "
        f"prompts. Verdicts against the recovery threshold {pct(run.threshold)}: Pass when "
        "the interval lies at or above it, Degraded when wholly below, else Inconclusive "
        f"(also when over {pct(UNJUDGED_TOLERANCE)} of the prompts went unjudged or fewer "
        f"than {MIN_PROMPTS_TO_PASS} were judged)."
    ]
    if figure is not None:
        blocks.append(Image(figure, "Judged recovery per set"))
    for j in judged:
        orders = (
            "; both orders judged (position bias: the share of prompts whose verdict changed "
            "when the two answers swapped places)"
            if j.swapped
            else ""
        )
        blocks.append(
            f"{j.name}: {j.kind}, judge {j.judge}, {j.prompts} prompts of {j.prompt_set}{orders}."
        )
        blocks.append(judged_table(j))
    blocks += [judged_cost_table(judged), judged_cost(judged)]
    if any(s.cached for j in judged for s in j.scores):
        note = f"{CACHED_MARK} judgements taken from the result cache: the judge was not asked."
        blocks.append([note])
    return blocks


def outline(run: Run, figures: dict[str, Path | None]) -> tuple[str, list[Section]]:
    """The report's title and sections."""
    status = run.status
    title = f"EvalRun {run.name}" + (f": {status.phase}" if status.phase else "")
    n_results = len({(s.model, s.task) for s in status.scores if s.primary})
    compared = bool(status.candidates)
    intro = (
        f"Baseline {run.baseline}; {len(status.candidates)} candidates; recovery threshold "
        f"{pct(run.threshold)}. Verdicts: Pass when the mean recovery's 95 % interval lies "
        "at or above the threshold (and no task's below it), Degraded when the mean's or a "
        "task's interval lies wholly below it, else Inconclusive."
        if compared
        else f"{run.baseline} evaluated alone (no candidates): its absolute scores with their "
        "standard errors; no recovery and no verdict."
    )
    notes = (
        [
            f"{SIGNIFICANT_MARK} the paired test on the same items (McNemar for 0/1 metrics, "
            "a z-test of the per-document loglikelihoods for perplexities, a paired bootstrap "
            "otherwise) finds the candidate significantly worse (p < 0.05)."
        ]
        if compared
        else []
    )
    if status.cached:
        notes.append(
            f"{CACHED_MARK} reused from the result cache ({len(status.cached)} of {n_results} "
            "model/task results); nothing was recomputed for them."
        )
    if status.reused:
        notes.append(
            f"{CACHED_MARK} taken from another run's evaluation with the same model and settings "
            f"({len(status.reused)} of {n_results} model/task results); no Job ran for them."
        )
    notes += difference_notes(shown_differences(status))
    sections = [Section("Results", [intro, results_table(run), notes])]
    if (suites := suite_table(run)) is not None:
        sections.append(Section("Suite scores", [suites]))
    for key, heading, missing in (
        (
            "recovery",
            "Recovery per task and scheme",
            "No recovery to plot." if compared else "No candidates: no recovery.",
        ),
        ("size", "Score against model size", "No sizes to plot."),
        (
            "performance",
            "Latency against throughput",
            "The serving stage did not run: no latency or throughput was measured.",
        ),
    ):
        path = figures.get(key)
        sections.append(Section(heading, [Image(path, heading) if path else missing]))
    if (serving := serving_table(run)) is not None:
        note = (
            "Measured by qeval's streaming client; speedup: output throughput against the "
            "baseline's in the same scenario. Backend hf is transformers serving one request "
            "at a time, not vLLM: its figures say nothing about vLLM's."
        )
        sections.append(Section("Serving benchmark", [serving, note]))
    if (similar := similarity_table(run)) is not None:
        note = (
            "Greedy text of each candidate against the baseline's on the same prompts "
            "(means over prompts): ROUGE F1, BERTScore F1 (unrescaled), STS (cosine of "
            "sentence embeddings)."
        )
        sections.append(Section("Similarity to the baseline", [similar, note]))
    if status.judged:
        sections.append(Section("Judged evaluations", judged_blocks(run, figures.get("judged"))))
    advice = (
        recommend(run)
        if compared
        else [
            "No candidates were evaluated: nothing to recommend. Add spec.candidates to "
            f"compare quantized models with {run.baseline}."
        ]
    )
    sections.append(Section("Recommendation", [advice]))
    if status.failures:
        sections.append(
            Section("Failures", [[f"{f.stage}: {f.reason}: {f.message}" for f in status.failures]])
        )
    return title, sections


def _md(text: str) -> str:
    """Text safe in a Markdown paragraph, list item or table cell."""
    return text.replace("*", "\\*").replace("|", "\\|").replace("\n", " ")


def markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                out.append("| " + " | ".join(map(_md, block.headers)) + " |")
                out.append("|" + "---|" * len(block.headers))
                out += ["| " + " | ".join(map(_md, row)) + " |" for row in block.rows]
            elif isinstance(block, Image):
                out.append(f"![{block.alt}]({block.path.name})")
            elif isinstance(block, list):
                out += [f"- {_md(item)}" for item in block]
            else:
                out.append(_md(block))
            out.append("")
    return "\n".join(out)


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th:first-child,td:first-child,td:nth-child(2){text-align:left}"
    "th{background:#f3f3f3}img{max-width:100%}"
)


def html_page(title: str, sections: list[Section]) -> str:
    """A self-contained HTML page: the figures embedded as data: URIs."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>',
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for section in sections:
        out.append(f"<h2>{e(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                out.append("<table><thead><tr>")
                out += [f"<th>{e(h)}</th>" for h in block.headers]
                out.append("</tr></thead><tbody>")
                for row in block.rows:
                    out.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
                out.append("</tbody></table>")
            elif isinstance(block, Image):
                data = base64.b64encode(block.path.read_bytes()).decode()
                out.append(f'<p><img alt="{e(block.alt)}" src="data:image/png;base64,{data}"></p>')
            elif isinstance(block, list):
                out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in block) + "</ul>")
            else:
                out.append(f"<p>{e(block)}</p>")
    out.append("</body></html>")
    return "\n".join(out)
