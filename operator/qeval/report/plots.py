"""The report's figures, drawn with matplotlib (Agg, no display) and saved as PNG.

Each function draws one figure from a Run and returns the PNG's path, or None when the
run has nothing to show in it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from qeval.report.model import Run  # noqa: E402
from qeval.report.text import primary_columns  # noqa: E402

DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    plt.close(fig)
    return path


def _plain_log_ticks(ax: Axes, axis: str) -> None:
    """Log-scale tick labels as plain numbers (1, 2, 5, 10, 20...), not powers of ten."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(
        FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else "")
    )


def primary_tasks(run: Run) -> list[tuple[str, str, str]]:
    """(task, metric, filter) of each task's primary metric, in the order they appear."""
    return primary_columns(run.status)


def recovery_chart(run: Run, path: Path) -> Path | None:
    """Recovery per task (and the mean) for each candidate: bars with 95 % interval
    whiskers, the threshold as a dashed line; * marks a significant paired degradation."""
    tasks = primary_tasks(run)
    candidates = [c for c in run.status.candidates if c.mean_recovery is not None]
    if not tasks or not candidates:
        return None
    rec = {(r.model, r.task, r.metric, r.filter): r for r in run.status.recovery}
    groups = [t[0] for t in tasks] + ["mean"]
    width = 0.8 / len(candidates)
    fig, ax = plt.subplots(figsize=(max(7.5, 1.6 * len(groups) + 4), 4.5))
    lows: list[float] = []
    for i, c in enumerate(candidates):
        values, err_lo, err_hi, marks = [], [], [], []
        for key in tasks:
            r = rec.get((c.name, *key))
            v = r.value if r else float("nan")
            lo = r.ci_low if r and r.ci_low is not None else v
            hi = r.ci_high if r and r.ci_high is not None else v
            values.append(v)
            err_lo.append(v - lo)
            err_hi.append(hi - v)
            marks.append(bool(r and r.significant))
        m = c.mean_recovery or float("nan")
        values.append(m)
        err_lo.append(m - (c.mean_recovery_ci_low if c.mean_recovery_ci_low is not None else m))
        err_hi.append((c.mean_recovery_ci_high if c.mean_recovery_ci_high is not None else m) - m)
        marks.append(False)
        xs = [g + (i - (len(candidates) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(
            xs,
            [100 * v for v in values],
            width,
            yerr=[[100 * e for e in err_lo], [100 * e for e in err_hi]],
            capsize=3,
            label=f"{c.name} ({c.scheme or '-'})",
        )
        for x, v, hi, mark in zip(xs, values, err_hi, marks, strict=True):
            if mark:
                ax.annotate("*", (x, 100 * (v + hi)), ha="center", va="bottom", fontsize=12)
        lows += [v - e for v, e in zip(values, err_lo, strict=True) if v == v]
    ax.axhline(
        100 * run.threshold,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"threshold {100 * run.threshold:.0f} %",
    )
    ax.axhline(100, color="grey", linewidth=0.6)
    ax.set_xticks(range(len(groups)), groups, rotation=15 if len(groups) > 4 else 0)
    bottom = min([*lows, run.threshold]) if lows else run.threshold
    ax.set_ylim(100 * bottom - 3, None)
    ax.set_ylabel("recovery (candidate / baseline), %")
    ax.set_title(f"{run.name}: recovery per task, 95 % intervals (* significantly worse)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def mean_score(run: Run, model: str) -> float | None:
    """A model's plain mean of its primary scores over the tasks where higher is better
    (a perplexity is on another scale: averaged with accuracies it would mean nothing)."""
    values = [
        s.value for s in run.status.scores if s.model == model and s.primary and s.higher_is_better
    ]
    return sum(values) / len(values) if values else None


def size_chart(run: Run, path: Path) -> Path | None:
    """Each model's mean primary score against its size on disk: the studies' "a larger
    model quantized beats a smaller one in 16-bit" view, when a run has several bases."""
    models = [run.baseline, *(c.name for c in run.status.candidates)]
    points = [
        (m, size, score)
        for m in models
        if (size := run.size(m)) and (score := mean_score(run, m)) is not None
    ]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, size, score in points:
        base = name == run.baseline
        ax.scatter(
            size / 2**20,
            score,
            s=60,
            marker="s" if base else "o",
            color="black" if base else None,
            zorder=3,
        )
        ax.annotate(
            f"{name} ({run.scheme(name)})",
            (size / 2**20, score),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    ax.set_xscale("log")
    _plain_log_ticks(ax, "x")
    ax.margins(x=0.25, y=0.1)
    ax.set_xlabel("size on disk, MiB (log scale)")
    ax.set_ylabel("mean score over tasks (primary metrics, higher is better)")
    ax.set_title(f"{run.name}: score against model size")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def performance_chart(run: Run, path: Path) -> Path | None:
    """Median latency against output throughput, one marker per scenario and model."""
    if not run.performance:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = "osD^v<>p*h"
    for i, scenario in enumerate(dict.fromkeys(p.scenario for p in run.performance)):
        pts = [p for p in run.performance if p.scenario == scenario]
        ax.scatter(
            [p.tokens_per_second for p in pts],
            [p.latency_seconds for p in pts],
            marker=markers[i % len(markers)],
            s=50,
            label=scenario,
            zorder=3,
        )
        for p in pts:
            ax.annotate(
                p.model,
                (p.tokens_per_second, p.latency_seconds),
                textcoords="offset points",
                xytext=(5, 3),
                fontsize=8,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax, "x")
    _plain_log_ticks(ax, "y")
    ax.margins(0.2)
    ax.set_xlabel("output throughput, tokens/s (log scale)")
    ax.set_ylabel("median request latency, s (log scale)")
    ax.set_title(f"{run.name}: latency against throughput per scenario")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def judged_chart(run: Run, path: Path) -> Path | None:
    """Each candidate's judged recovery per judged set: a point with its 95 % interval as a
    horizontal whisker, one row per set and candidate, the threshold as a dashed line."""
    rows = [(j, s) for j in run.status.judged for s in j.scores if s.recovery is not None]
    if not rows:
        return None
    # Each candidate in the colour it has in the recovery chart (the candidates' order).
    models = list(
        dict.fromkeys([*(c.name for c in run.status.candidates), *(s.model for _, s in rows)])
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(7.5, max(2.5, 0.45 * len(rows) + 1.5)))
    ys = list(range(len(rows)))[::-1]  # the first set's first candidate on top
    lows: list[float] = []
    highs: list[float] = []
    labelled: set[str] = set()
    for y, (_, s) in zip(ys, rows, strict=True):
        v = s.recovery or 0.0
        lo = s.recovery_ci_low if s.recovery_ci_low is not None else v
        hi = s.recovery_ci_high if s.recovery_ci_high is not None else v
        color = colors[models.index(s.model) % len(colors)]
        label = None if s.model in labelled else f"{s.model} ({run.scheme(s.model)})"
        labelled.add(s.model)
        ax.errorbar(
            100 * v,
            y,
            xerr=[[100 * (v - lo)], [100 * (hi - v)]],
            fmt="o",
            color=color,
            capsize=3,
            label=label,
        )
        ax.annotate(
            s.verdict or "",
            (100 * hi, y),
            textcoords="offset points",
            xytext=(6, -3),
            fontsize=8,
        )
        lows.append(lo)
        highs.append(hi)
    # A line between sets.
    for i in range(1, len(rows)):
        if rows[i][0] is not rows[i - 1][0]:
            ax.axhline(ys[i] + 0.5, color="grey", linewidth=0.4, alpha=0.5)
    ax.axvline(
        100 * run.threshold,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"threshold {100 * run.threshold:.0f} %",
    )
    ax.axvline(100, color="grey", linewidth=0.6)
    ax.set_yticks(ys, [f"{j.name} ({j.kind}): {s.model}" for j, s in rows], fontsize=8)
    left, right = 100 * min([*lows, run.threshold]), 100 * max([*highs, 1.0])
    ax.set_xlim(left - 5, right + 0.15 * (right - left) + 5)  # room for the verdicts
    ax.set_xlabel("judged recovery (candidate / baseline), %")
    ax.set_title(f"{run.name}: judged recovery (LLM judge vs baseline), 95 % intervals")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)
