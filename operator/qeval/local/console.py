"""The table ``qeval run`` prints: per model, size and per task score and recovery."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qeval.api.evalrun import EvalRun
from qeval.api.evalrun_status import EvalRunStatus
from qeval.report.text import (
    column_metric,
    difference,
    difference_notes,
    primary_columns,
    shown_differences,
)


def _pm(value: float | None, stderr: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    scale, unit, digits = (100, " %", 1) if percent else (1, "", 3)
    err = f" ± {stderr * scale:.{digits}f}" if stderr is not None else ""
    return f"{value * scale:.{digits}f}{err}{unit}"


def _size(size: int | None, ratio: float | None = None) -> str:
    if not size:
        return "-"
    return f"{size / 2**20:.1f} MiB" + (f" ({ratio:.1f}x)" if ratio else "")


NO_CANDIDATES = (
    "no candidates: the baseline's absolute scores only (no recovery, no verdict); add "
    "spec.candidates to compare models with it"
)


def summary_table(run: EvalRun, status: EvalRunStatus) -> Table:
    """Rows: baseline then candidates; per task, the primary metric's score and recovery
    (or, where a ratio is undefined, the difference from the baseline). Without candidates,
    the scores alone."""
    tasks = primary_columns(status)
    compared = bool(run.spec.candidates)
    table = Table(title=f"EvalRun {run.name}: {status.phase}", title_justify="left")
    for header in ("model", "scheme", "size"):
        table.add_column(header)
    for task, metric, filt in tasks:
        table.add_column(f"{task}\n{column_metric(status, task, metric, filt)}", justify="right")
        if compared:
            table.add_column("recovery", justify="right")
    if compared:
        table.add_column("mean recovery", justify="right")
        table.add_column("verdict")

    score = {(s.model, s.task, s.metric, s.filter): s for s in status.scores}
    recovery = {(r.model, r.task, r.metric, r.filter): r for r in status.recovery}
    differences = {(d.model, d.task, d.metric, d.filter): d for d in status.differences}
    baseline = run.spec.baseline.name
    rows = [(baseline, "baseline", _size(status.baseline_size_bytes), None, None, "")] + [
        (
            c.name,
            c.scheme or "-",
            _size(c.size_bytes, c.compression_ratio),
            c.mean_recovery,
            c.mean_recovery_stderr,
            c.verdict or "-",
        )
        for c in status.candidates
    ]
    for name, scheme, size, mean, mean_se, verdict in rows:
        cells = [name, scheme, size]
        for key in tasks:
            s, r = score.get((name, *key)), recovery.get((name, *key))
            d = differences.get((name, *key))
            cells.append(_pm(s.value, s.stderr) if s else "-")
            if not compared:
                continue
            if name == baseline:
                cells.append("")
            elif r or not d:
                cells.append(_pm(r.value, r.stderr, True) if r else "-")
            else:
                cells.append(escape(difference(d)))
        if compared:
            cells.append("" if name == baseline else _pm(mean, mean_se, True))
            cells.append(verdict)
        table.add_row(*cells)
    return table


def judged_lines(status: EvalRunStatus) -> list[str]:
    """One line per judged set and candidate: its judged recovery with the 95 % interval
    and the verdict."""
    lines = []
    for j in status.judged:
        for s in j.scores:
            recovery = _pm(s.recovery, None, True)
            if s.recovery_ci_low is not None and s.recovery_ci_high is not None:
                recovery += f" [{100 * s.recovery_ci_low:.1f}, {100 * s.recovery_ci_high:.1f}]"
            lines.append(
                f"judged {j.name} ({j.kind}, judge {j.judge}): {s.model} recovery {recovery}, "
                f"{s.verdict or '-'}"
            )
    return lines


def print_summary(console: Console, run: EvalRun, status: EvalRunStatus, run_dir: Path) -> None:
    console.print()
    console.print(summary_table(run, status))
    if not run.spec.candidates:
        console.print(NO_CANDIDATES)
    for note in difference_notes(shown_differences(status)):
        console.print(escape(note))
    for line in judged_lines(status):
        console.print(escape(line))
    for f in status.failures:
        console.print(f"[red]{f.stage}[/red]: {f.reason}: {f.message}")
    total = len({(s.model, s.task) for s in status.scores if s.primary})
    if status.cached:
        console.print(f"reused from the result cache: {len(status.cached)} of {total} results")
    if status.reused:
        console.print(f"taken from another run: {len(status.reused)} of {total} results")
    console.print(f"results: {run_dir}  (status.json, objects.yaml, stages/*/result.json)")
