"""Draw what Grafana shows on the "Quantization recovery" dashboard, without Grafana.

No Grafana can run here, so the picture in docs/ is drawn with matplotlib from the same
PromQL the dashboard's panels run, answered by the real Prometheus scraping the real
operator (tests/test_monitoring.py collects the results and calls ``draw``). To redraw it:

    QEVAL_WRITE_DOCS=1 .venv/bin/pytest tests/test_monitoring.py -k picture
"""

from __future__ import annotations

from pathlib import Path

# Panel title -> (unit, axis range or None): the panels of charts/qeval-operator/dashboards/
# qeval-recovery.json that the picture shows, in its layout order.
PANELS: dict[str, tuple[str, tuple[float, float] | None]] = {
    "Mean recovery per candidate": ("percent", (0.85, 1.03)),
    "Recovery per task and scheme": ("percent", (0.85, 1.03)),
    "Candidate vs baseline score": ("score", (0.8, 1.0)),
    "Score change vs baseline": ("points", None),
    "Model size on disk": ("MiB", None),
    "Compression ratio": ("x", None),
    "EvalRuns by phase": ("count", None),
    "QuantizedModels by phase": ("count", None),
}
# The dashboard's recovery thresholds (red < 0.9 <= orange < 0.95 <= yellow < 0.99 <= green).
STEPS = ((0.99, "#73bf69"), (0.95, "#fade2a"), (0.9, "#ff9830"), (float("-inf"), "#f2495c"))
BACKGROUND, PANEL, TEXT, GRID = "#111217", "#181b1f", "#ccccdc", "#2c3235"


def color(unit: str, value: float) -> str:
    if unit == "percent":
        return next(c for limit, c in STEPS if value >= limit)
    if unit == "points":
        return "#73bf69" if value >= 0 else "#ff9830" if value > -0.05 else "#f2495c"
    return "#5794f2"


def label(unit: str, value: float) -> str:
    if unit in ("percent", "score"):
        return f"{value:.1%}"
    if unit == "points":
        return f"{value * 100:+.1f} pt"
    if unit == "MiB":
        return f"{value / 2**20:.1f} MiB"
    if unit == "x":
        return f"{value:.1f}x"
    return f"{value:.0f}"


def draw(results: dict[str, list[tuple[str, float]]], path: Path) -> None:
    """One horizontal bar gauge per panel: (legend, value) pairs as the panel's query gave them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = list(PANELS)
    fig = plt.figure(figsize=(16, 13), facecolor=BACKGROUND)
    fig.suptitle(
        "Quantization recovery  ·  qeval demo study (namespace default, run demo)",
        color=TEXT,
        fontsize=15,
        x=0.02,
        ha="left",
    )
    grid = fig.add_gridspec(
        4, 2, hspace=0.45, wspace=0.55, left=0.2, right=0.97, top=0.93, bottom=0.04
    )
    for i, title in enumerate(titles):
        unit, limits = PANELS[title]
        ax = fig.add_subplot(grid[i // 2, i % 2])
        ax.set_facecolor(PANEL)
        rows = sorted(results.get(title, []), key=lambda r: r[0], reverse=True)
        names = [name for name, _ in rows]
        values = [value for _, value in rows]
        shown = [v / 2**20 if unit == "MiB" else v * 100 if unit == "points" else v for v in values]
        ax.barh(names, shown, color=[color(unit, v) for v in values], height=0.6)
        for y, (value, x) in enumerate(zip(values, shown, strict=True)):
            ax.text(x, y, " " + label(unit, value), va="center", color=TEXT, fontsize=8)
        if limits:
            ax.set_xlim(*limits)
        elif shown:
            low = min(0.0, min(shown))
            ax.set_xlim(low * 1.3, max(shown) * 1.3 if max(shown) > 0 else 1)
        ax.set_title(title, color=TEXT, loc="left", fontsize=11)
        ax.tick_params(colors=TEXT, labelsize=8)
        ax.grid(axis="x", color=GRID, linewidth=0.6)
        ax.set_axisbelow(True)
        for spine in ax.spines.values():
            spine.set_color(GRID)
        if unit in ("percent", "score"):
            ax.xaxis.set_major_locator(matplotlib.ticker.MultipleLocator(0.05))
            ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0, decimals=0))
    fig.text(
        0.02,
        0.01,
        "Drawn from the dashboard panels' PromQL, answered by Prometheus 2.42 scraping the qeval "
        "operator (tests/test_monitoring.py); scores as measured by `make demo`.",
        color="#8e8e8e",
        fontsize=8,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, facecolor=BACKGROUND)
    plt.close(fig)
