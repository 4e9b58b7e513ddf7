"""The run report: ``report.md`` and ``report.html`` with PNG figures, from a run's status.

``qeval report RUN_DIR`` writes it from a ``qeval run`` folder; the aggregate stage
writes it to the run's storage (in a cluster too), and ``qeval run`` once more at the end
with the final phase. matplotlib is imported only here.
"""

from __future__ import annotations

from pathlib import Path

from qeval.report.model import PerfPoint, Run, load_run

__all__ = ["PerfPoint", "Run", "load_run", "write_report"]


def write_report(run: Run, out_dir: Path) -> list[Path]:
    """Write the figures, ``report.md`` and ``report.html`` into ``out_dir``; their paths."""
    from qeval.report import plots, render

    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "recovery": plots.recovery_chart(run, out_dir / "recovery.png"),
        "size": plots.size_chart(run, out_dir / "size.png"),
        "performance": plots.performance_chart(run, out_dir / "performance.png"),
        "judged": plots.judged_chart(run, out_dir / "judged.png"),
    }
    for name, path in figures.items():
        if path is None:  # a figure from an earlier report that no longer applies
            (out_dir / f"{name}.png").unlink(missing_ok=True)
    title, sections = render.outline(run, figures)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(render.markdown(title, sections))
    page.write_text(render.html_page(title, sections))
    return [md, page, *(p for p in figures.values() if p is not None)]
