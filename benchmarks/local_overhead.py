"""What ``qeval run`` costs beyond the work itself: the demo study through ``qeval run``
against the same library calls made by hand in one process (``benchmarks/hand_study.py``).

The demo model is built (or found) first, outside the measurement; then the two alternate,
``--runs`` times each (default 3), each qeval run in a fresh work folder with
``--no-cache``, so that both quantize four models and evaluate five. The benchmark checks
that both produce identical scores (it fails otherwise), and writes to
``benchmarks/results/local-overhead.json`` and ``local-overhead.md``:

* the wall time of each run and the median ratio qeval / hand;
* the time to the first printed result (the baseline's scores: the line a person waits for);
* peak memory (the sum of the resident memory of the process and all its children,
  sampled every 0.1 s);
* per stage of the last qeval run: its wait for its worker and the hand-over (process
  start), and its phases (imports, task index, model load, model work, result writing,
  from the result documents' ``timings``); and the hand script's phases.

Usage: ``python benchmarks/local_overhead.py [--runs N]`` (about 5 minutes here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from qeval.stages.envelope import Phase

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "evalrun.yaml"
RESULTS = ROOT / "benchmarks" / "results"
FIRST_RESULT = "evaluate-fp32: succeeded"  # the baseline's scores, printed as it ends
PHASES = tuple(Phase)  # the same names in the result documents and the hand script


class PeakMemory(threading.Thread):
    """The largest sum of RSS over a process and its descendants while it runs."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root, self.peak, self.done = psutil.Process(pid), 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.1):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                with suppress(psutil.NoSuchProcess):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)


def timed(argv: list[str], marker: str | None = None) -> dict[str, Any]:
    """Run ``argv``: its wall time, the time until ``marker`` appeared on its output, and
    its peak memory (raises if it fails)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    )
    memory = PeakMemory(proc.pid)
    memory.start()
    first, lines = None, []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if first is None and marker is not None and marker in line:
            first = time.monotonic() - t0
    proc.wait()
    seconds = time.monotonic() - t0
    memory.done.set()
    memory.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{''.join(lines[-40:])}")
    return {
        "seconds": round(seconds, 2),
        "firstResultSeconds": None if first is None else round(first, 2),
        "peakMemoryMiB": round(memory.peak / 2**20),
    }


def qeval_scores(run_dir: Path) -> dict[str, float]:
    status = json.loads((run_dir / "status.json").read_text())
    return {
        f"{s['model']}/{s['task']}/{s['metric']},{s.get('filter', 'none')}": s["value"]
        for s in status["scores"]
    }


def hand_scores(figures: dict[str, Any]) -> dict[str, float]:
    return {
        f"{model}/{task}/{key}": value
        for model, tasks in figures["scores"].items()
        for task, values in tasks.items()
        for key, value in values.items()
    }


def stage_breakdown(run_dir: Path) -> list[dict[str, Any]]:
    """Per stage that ran: process start (the wait for its worker and the hand-over) and
    the phases its result document records."""
    rows = []
    for entry in json.loads((run_dir / "timeline.json").read_text()):
        doc = json.loads((run_dir / "stages" / entry["stage"] / "result.json").read_text())
        wall = doc.get("wallSeconds") or 0.0
        timings = doc.get("timings") or {}
        outside = entry["doneSeconds"] - entry["queuedSeconds"] - wall
        rows.append(
            {
                "stage": entry["stage"],
                "processStart": round(outside, 3),
                **{p: timings.get(p, 0.0) for p in PHASES},
                "other": round(wall - sum(timings.values()), 3),
                "wall": round(outside + wall, 3),
            }
        )
    return rows


def markdown(figures: dict[str, Any]) -> str:
    q, h = figures["qeval"], figures["hand"]
    q_runs = ", ".join(f"{r['seconds']:.1f}" for r in q)
    h_runs = ", ".join(f"{r['seconds']:.1f}" for r in h)
    lines = [
        "# `qeval run` against the same calls by hand",
        "",
        f"{figures['machine']}; {figures['runs']} runs each, alternating, in one run of "
        "`benchmarks/local_overhead.py`; the demo study (a baseline and four quantized "
        "candidates, two offline tasks of 1,000 items), the demo model built beforehand, "
        "`qeval run --no-cache` in a fresh work folder each time. Scores identical: "
        f"**{figures['identicalScores']}** ({figures['scoresCompared']} scores compared).",
        "",
        "| | runs (s) | median (s) | first result (s) | peak memory (MiB) |",
        "|---|---|---|---|---|",
        f"| qeval run | {q_runs} | "
        f"{figures['qevalMedian']:.1f} | "
        f"{statistics.median(r['firstResultSeconds'] for r in q):.1f} | "
        f"{max(r['peakMemoryMiB'] for r in q)} |",
        f"| by hand | {h_runs} | "
        f"{figures['handMedian']:.1f} | (after every quantization) | "
        f"{max(r['peakMemoryMiB'] for r in h)} |",
        "",
        f"Median ratio qeval / hand: **{figures['ratio']:.2f}x** (per round: "
        f"{', '.join(f'{r:.2f}' for r in figures['ratios'])}).",
        "",
        "## Where the time goes (the last qeval run)",
        "",
        "Process start is the time from handing a stage to its worker to having its result, "
        "less the stage's own wall time (a worker still importing its libraries, the "
        "hand-over); the phases are the result documents' `timings`; other is the rest of "
        "the stage (its input, the cache lookup).",
        "",
        "| stage | process start | " + " | ".join(PHASES) + " | other | total |",
        "|---|" + "---|" * (len(PHASES) + 3),
    ]
    for row in figures["stages"]:
        cells = [row["processStart"], *(row[p] for p in PHASES), row["other"], row["wall"]]
        lines.append(f"| {row['stage']} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    total = sum(r["wall"] for r in figures["stages"])
    lines += [
        "",
        f"Stages {total:.1f} s of the run's {q[-1]['seconds']:.1f} s; the rest is "
        "`qeval run`'s own start (imports, reading the specs, preflight with lm-eval's task "
        "summary), the reused demo model, the status, the report and the workers' exit.",
        "",
        "The hand script's phases (last run, s): "
        + ", ".join(f"{p} {figures['handPhases'].get(p, 0.0):.2f}" for p in PHASES)
        + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from qeval.demo.model import demo_model_path

    demo_model_path()  # built once, outside the measurement
    qeval_runs, hand_runs, ratios = [], [], []
    with tempfile.TemporaryDirectory(prefix="qeval-overhead-") as tmp:
        for i in range(args.runs):
            workdir = Path(tmp) / f"qeval-{i}"
            argv = [sys.executable, "-m", "qeval", "run", str(EXAMPLE), "--workdir", str(workdir)]
            qeval_runs.append(timed([*argv, "--no-cache"], FIRST_RESULT))
            run_dir = workdir / "runs" / "demo"
            hand_dir = Path(tmp) / f"hand-{i}"
            hand_runs.append(
                timed([sys.executable, str(ROOT / "benchmarks" / "hand_study.py"), str(hand_dir)])
            )
            hand = json.loads((hand_dir / "hand.json").read_text())
            ratios.append(qeval_runs[-1]["seconds"] / hand_runs[-1]["seconds"])
            print(
                f"round {i + 1}: qeval {qeval_runs[-1]['seconds']:.1f} s (first result "
                f"{qeval_runs[-1]['firstResultSeconds']:.1f} s), by hand "
                f"{hand_runs[-1]['seconds']:.1f} s: {ratios[-1]:.2f}x",
                flush=True,
            )
            ours, theirs = qeval_scores(run_dir), hand_scores(hand)
            if ours != theirs:
                diff = {
                    k: (ours.get(k), theirs.get(k))
                    for k in ours.keys() | theirs.keys()
                    if ours.get(k) != theirs.get(k)
                }
                raise SystemExit(f"the scores differ (qeval, hand): {diff}")
        stages = stage_breakdown(run_dir)
    q_median = statistics.median(r["seconds"] for r in qeval_runs)
    h_median = statistics.median(r["seconds"] for r in hand_runs)
    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, torch {metadata.version('torch')}, llm-compressor "
        f"{metadata.version('llmcompressor')}, lm-eval {metadata.version('lm_eval')}",
        "runs": args.runs,
        "qeval": qeval_runs,
        "hand": hand_runs,
        "qevalMedian": q_median,
        "handMedian": h_median,
        "ratio": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "identicalScores": True,
        "scoresCompared": len(ours),
        "stages": stages,
        "handPhases": hand["phases"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "local-overhead.json").write_text(json.dumps(figures, indent=2) + "\n")
    text = markdown(figures)
    (RESULTS / "local-overhead.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
