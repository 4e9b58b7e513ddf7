"""Object sizes of a large study: the EvalRun status, the aggregate's ConfigMap, label values.

For N = 1, 8, 16, 32 candidates (32: spec.candidates' maxItems) x openllm-v1 + openllm-v2
with their subtasks (116 scores a model), with the serving benchmark (the default 4 load
scenarios, and the API's maximum of 16) and similarity, plus the largest study the API
allows (every suite, 64 more tasks, 16 scenarios), every name at its longest: the stage
documents are synthesized as the stages write them (tests/bigstudy.py) and the real
aggregate function runs on them. "before" is the status as the aggregate published it
before the status was bounded (every score, recovery and difference); "after" is today's.

Prints the figures and writes ``benchmarks/results/size.json`` and the "## Size limits"
section of ``benchmarks/results/reliability.md``.
Usage: ``python benchmarks/size_benchmark.py`` (about a minute here).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qeval.api.evalrun_status import EvalRunStatus  # noqa: E402
from qeval.k8s.manifests import (  # noqa: E402
    Owner,
    build_result_configmap,
    child_name,
    labels,
)
from qeval.plan import Stage  # noqa: E402
from qeval.results.cache import key_of, label_value  # noqa: E402
from qeval.stages import aggregate  # noqa: E402
from qeval.stages.envelope import StageResult, StageStatus  # noqa: E402
from qeval.status import with_full_results  # noqa: E402
from tests.bigstudy import LARGEST, study_spec, write_study  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
KiB, MiB = 1024, 1024 * 1024
CONFIGMAP_LIMIT, ETCD_LIMIT, LABEL_LIMIT = MiB, 1.5 * MiB, 63
RUN_NAME = "r" * 253  # the longest custom resource name
SECTION = "## Size limits"
TARGET = 256 * KiB  # the status size aimed at for 32 candidates
HEADER = (
    "| study | scores a model | status before | ConfigMap before | status after | "
    "ConfigMap after | detail (entries) | full table on disk | label |\n" + "| --- " * 9 + "|"
)


def configmap(status: EvalRunStatus) -> dict[str, Any]:
    """The aggregate's result ConfigMap, as the stage publishes it."""
    owner = Owner("EvalRun", RUN_NAME, "a" * 63, "0" * 36)
    stage = Stage("aggregate", "aggregate", {})
    doc = StageResult(stage="aggregate", kind="aggregate", status=StageStatus.SUCCEEDED)
    doc.result = status.dump()
    return build_result_configmap(
        child_name(RUN_NAME, stage.name),
        owner.namespace,
        doc.dump(),
        labels(owner, stage),
        owner.reference(block_owner_deletion=False),
        cache_key=label_value(key_of(["a cache key"])),
    )


def sizes(status: EvalRunStatus) -> dict[str, Any]:
    cm = configmap(status)
    data = sum(len(k.encode()) + len(v.encode()) for k, v in cm["data"].items())
    doc = status.dump()
    serving = {k: doc.get(k, []) for k in ("performance", "speedups", "similarity")}
    return {
        "status_bytes": len(json.dumps(doc, separators=(",", ":")).encode()),
        "serving_bytes": len(json.dumps(serving, separators=(",", ":")).encode()),
        "configmap_bytes": data,
        "entries": len(status.scores) + len(status.recovery) + len(status.differences),
        "detail": status.detail,
        "max_label_value": max(len(v) for v in cm["metadata"]["labels"].values()),
        "name_length": len(cm["metadata"]["name"]),
    }


def measure(name: str, spec_args: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qeval-size-") as tmp:
        inp = write_study(Path(tmp) / "run", study_spec(**spec_args))
        t0 = time.monotonic()
        try:
            after = aggregate.run(inp)
        except aggregate.StageError as e:
            return {"study": name, **spec_args, "failed": f"{e.reason}: {e}"}
        seconds = time.monotonic() - t0
        before = with_full_results(after).model_copy(update={"detail": None, "full_results": None})
        full = Path(str(after.full_results)).stat().st_size
    return {
        "study": name,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in spec_args.items()},
        "scores_per_model": len(before.scores) // (1 + len(after.candidates)),
        "before": sizes(before),
        "after": sizes(after),
        "full_results_bytes": full,
        "aggregate_seconds": round(seconds, 2),
    }


def kib(n: int) -> str:
    return f"{n / KiB:,.0f} KiB"


def markdown(f: dict[str, Any]) -> str:
    rows = []
    for r in f["studies"]:
        b, a = r["before"], r["after"]
        over = " **over**" if b["configmap_bytes"] > CONFIGMAP_LIMIT else ""
        rows.append(
            f"| {r['study']} | {r['scores_per_model']} | {kib(b['status_bytes'])} | "
            f"{kib(b['configmap_bytes'])}{over} | {kib(a['status_bytes'])} | "
            f"{kib(a['configmap_bytes'])} | {a['detail']} ({a['entries']}) | "
            f"{kib(r['full_results_bytes'])} | {a['max_label_value']} |"
        )
    table = "\n".join(rows)
    m = f["machine"]
    budget = f["status_budget_bytes"]
    after = {r["study"]: r["after"] for r in f["studies"]}
    four, sixteen = after["32 x v1+v2, 4 scenarios"], after["32 x v1+v2, 16 scenarios"]
    target = [name for name, a in after.items() if a["status_bytes"] < TARGET]
    share = sixteen["serving_bytes"] / sixteen["status_bytes"]
    return f"""{SECTION}

Written by `python benchmarks/size_benchmark.py` ({m["cpus"]} CPUs, Python {m["python"]}): the
real aggregate function over synthesized stage documents (tests/bigstudy.py: lm-eval 0.4.13's
layout of openllm-v1 + v2 with every subtask, 20 items a leaf task, the per-sample logs for
paired tests), every name at the API's maximum (models and scenarios 40 characters, tasks
128, the run 253). Status: compact JSON, as the EvalRun stores it; ConfigMap: the
aggregate's result ConfigMap data as the API server counts it (limit 1,024 KiB); label: the
longest label value on it (limit 63). "before": the status the aggregate published before it
was bounded (every score, recovery and difference); "after": today's.

{HEADER}
{table}

* Bound: the aggregate's document is kept to {kib(budget)} as its ConfigMap holds it
  (`STATUS_BUDGET`): each task's primary metric (`detail: primary`) where that fits, else the
  summaries alone (`detail: summary`: candidates with mean recovery and verdict, suite scores,
  performance, speedups, similarity); where even those do not fit, the stage fails
  `ResultTooLarge` in its recorded result. Every score, recovery, difference and cached entry
  is in the full table (`status.fullResults`, `results.json` in the run's folder).
* 32 candidates x openllm-v1 + v2: the status is {kib(four["status_bytes"])} with the
  default 4 scenarios, {kib(sixteen["status_bytes"])} with 16 (the serving figures, kept
  whole for the dashboards, are {100 * share:.0f} % of it then). Under the {kib(TARGET)}
  target: {"; ".join(target)} (names of 40 characters, the longest allowed).
* Any stage's document over 1 MiB is published as a Failed `ResultTooLarge` document
  (`qeval.k8s.publish`), so the cause reaches the EvalRun, not only a pod log.
* `tests/test_size.py` creates the aggregate ConfigMaps of the largest study and of 32 x
  v1+v2 x 16 scenarios on a real kube-apiserver and etcd, and writes each final status (with
  the operator's cached entries of a run wholly reused) through the EvalRun's status
  subresource: both accepted and read back whole.
"""


def write_section(path: Path, section: str) -> None:
    """Put ``section`` in place of the file's "## Size limits" section (the others kept)."""
    text = path.read_text() if path.is_file() else "# Reliability\n"
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    path.write_text(text)


def main() -> None:
    studies = [
        (f"{n} x v1+v2, {s} scenarios", {"candidates": n, "scenarios": s})
        for s in (4, 16)
        for n in (1, 8, 16, 32)
    ]
    studies.append(("largest the API allows", dict(LARGEST)))
    results = [measure(name, args) for name, args in studies]
    figures = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "limits": {"configmap": CONFIGMAP_LIMIT, "etcd": ETCD_LIMIT, "label": LABEL_LIMIT},
        "status_budget_bytes": aggregate.STATUS_BUDGET,
        "studies": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "size.json").write_text(json.dumps(figures, indent=2) + "\n")
    section = markdown(figures)
    write_section(RESULTS / "reliability.md", section)
    print(section)


if __name__ == "__main__":
    main()
