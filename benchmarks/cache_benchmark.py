"""The result cache on the demo study: what a re-run and an added candidate cost.

Runs ``qeval run`` three times in a fresh work folder (the demo model itself is built or
found first, outside the measurement):

1. the demo study (a baseline and four candidates) with an empty cache;
2. the same study again: every quantization and evaluation should be reused;
3. the study with a fifth candidate (W4A16 with round-to-nearest): only that candidate's
   quantization and evaluation should run.

Prints the figures and writes them to ``benchmarks/results/cache.json`` and ``cache.md``.
Usage: ``python benchmarks/cache_benchmark.py [--workdir DIR]`` (about 3 minutes here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "evalrun.yaml"
RESULTS = ROOT / "benchmarks" / "results"
REUSED = "reused a cached result: nothing to run"

FIFTH_MODEL = {
    "apiVersion": "qeval.dev/v1alpha1",
    "kind": "QuantizedModel",
    "metadata": {"name": "tiny-llama-w4a16-rtn"},
    "spec": {
        "model": {"uri": "demo://tiny-llama"},
        "scheme": "W4A16",
        "algorithm": "RTN",
        "groupSize": 128,
        "scheduling": {"gpus": 0},
    },
}


def qeval(*args: str | Path) -> float:
    """Run ``qeval ARGS``; its wall time in seconds (raises if it fails)."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "qeval", *map(str, args)], capture_output=True, text=True
    )
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"qeval {' '.join(map(str, args))} failed:\n{proc.stdout}{proc.stderr}")
    return seconds


def stages(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per stage: its wall time inside the stage and whether it was reused."""
    out = {}
    for path in sorted((run_dir / "stages").glob("*/result.json")):
        doc = json.loads(path.read_text())
        out[doc["stage"]] = {
            "seconds": doc.get("wallSeconds") or 0.0,
            "reused": doc.get("message") == REUSED,
        }
    return out


def with_fifth_candidate(path: Path) -> Path:
    docs = list(yaml.safe_load_all(EXAMPLE.read_text()))
    run = next(d for d in docs if d["kind"] == "EvalRun")
    fifth = {"quantizedModel": "tiny-llama-w4a16-rtn", "name": "w4a16-rtn"}
    run["spec"]["candidates"].append(fifth)
    path.write_text(yaml.safe_dump_all([*docs[:-1], FIFTH_MODEL, run], sort_keys=False))
    return path


def candidate_work(stage_times: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each candidate's quantize + evaluate time (inside the stages) in a cold run."""
    quantize = {
        k.removeprefix("quantize-tiny-llama-"): v
        for k, v in stage_times.items()
        if k.startswith("quantize-")
    }
    return {
        name: round(v["seconds"] + stage_times[f"evaluate-{name}"]["seconds"], 2)
        for name, v in quantize.items()
        if f"evaluate-{name}" in stage_times
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="default: a fresh temporary folder")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="qeval-cache-bench-"))
    run_dir = workdir / "runs" / "demo"

    qeval("demo-model")  # built or found: not part of the measurement
    first = qeval("run", EXAMPLE, "--workdir", workdir)
    cold = stages(run_dir)
    scores_first = json.loads((run_dir / "status.json").read_text())["scores"]
    second = qeval("run", EXAMPLE, "--workdir", workdir)
    warm = stages(run_dir)
    scores_second = json.loads((run_dir / "status.json").read_text())["scores"]
    fifth = qeval("run", with_fifth_candidate(workdir / "five.yaml"), "--workdir", workdir)
    added = stages(run_dir)

    work = candidate_work(cold)
    per_candidate = sum(work.values()) / len(work)
    new_stages = ["quantize-tiny-llama-w4a16-rtn", "evaluate-w4a16-rtn"]
    figures = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": metadata.version("torch"),
            "lm_eval": metadata.version("lm_eval"),
            "llmcompressor": metadata.version("llmcompressor"),
        },
        "first_run_seconds": round(first, 2),
        "second_run_seconds": round(second, 2),
        "second_over_first": round(second / first, 4),
        "second_run_reused_stages": sum(s["reused"] for s in warm.values()),
        "second_run_stages": len(warm),
        "same_scores": scores_first == scores_second,
        "fifth_candidate_run_seconds": round(fifth, 2),
        "fifth_candidate_extra_seconds": round(fifth - second, 2),
        "fifth_candidate_stage_seconds": round(sum(added[s]["seconds"] for s in new_stages), 2),
        "fifth_candidate_reused_stages": sum(s["reused"] for s in added.values()),
        "cold_candidate_work_seconds": work,
        "mean_cold_candidate_work_seconds": round(per_candidate, 2),
        "fifth_extra_over_mean_candidate_work": round((fifth - second) / per_candidate, 3),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cache.json").write_text(json.dumps(figures, indent=2) + "\n")
    (RESULTS / "cache.md").write_text(markdown(figures))
    print(markdown(figures))


def markdown(f: dict[str, Any]) -> str:
    m = f["machine"]
    rows = [
        ("1. baseline + 4 candidates, empty cache", f["first_run_seconds"], "-"),
        (
            "2. the same study again",
            f["second_run_seconds"],
            f"{f['second_run_reused_stages']} of {f['second_run_stages']}",
        ),
        (
            "3. with a fifth candidate (W4A16 RTN)",
            f["fifth_candidate_run_seconds"],
            str(f["fifth_candidate_reused_stages"]),
        ),
    ]
    table = "\n".join(f"| {name} | {seconds:.1f} s | {reused} |" for name, seconds, reused in rows)
    return f"""# Result cache on the demo study

`python benchmarks/cache_benchmark.py` on {m["cpus"]} CPUs, Python {m["python"]},
torch {m["torch"]} (CPU), lm-eval {m["lm_eval"]}, llm-compressor {m["llmcompressor"]}.
The demo model was already built (cached); each figure is one `qeval run` in the same
work folder.

| run | wall time | reused stages |
|---|---|---|
{table}

* Second run / first run: **{100 * f["second_over_first"]:.1f} %** (target < 10 %);
  identical scores: {f["same_scores"]}. What remains is process start-up, reading the
  specs, the aggregate stage (statistics) and the report.
* Adding a fifth candidate cost {f["fifth_candidate_extra_seconds"]:.1f} s more than the
  cached re-run ({f["fifth_candidate_stage_seconds"]:.1f} s inside its quantize and
  evaluate stages, the rest is their process start-up), against
  {f["mean_cold_candidate_work_seconds"]:.1f} s of quantize + evaluate work per candidate in
  the cold run: **{f["fifth_extra_over_mean_candidate_work"]:.2f}x** one candidate's work
  (per candidate, cold: {f["cold_candidate_work_seconds"]}).
"""


if __name__ == "__main__":
    main()
