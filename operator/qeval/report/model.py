"""What a report is made from: a run's status plus, when the serving stage ran, its
latency and throughput per scenario. Read from a run folder or built by the aggregate."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qeval.api.evalrun_status import EvalRunStatus, PerformancePoint
from qeval.status import with_full_results

# Scenario names (guidellm / vllm bench profiles) that mean one request at a time, and
# those that mean as many as the server takes.
SINGLE_STREAM = ("synchronous", "single-stream", "sync", "concurrency-1")
THROUGHPUT = ("throughput", "max-throughput", "offline")


@dataclass(frozen=True)
class PerfPoint:
    """One model under one load scenario: median request latency and output throughput."""

    model: str
    scenario: str
    latency_seconds: float
    tokens_per_second: float


@dataclass(frozen=True)
class Run:
    """Everything the report shows about one EvalRun."""

    name: str
    baseline: str
    status: EvalRunStatus
    threshold: float = 0.95
    baseline_scheme: str | None = None
    performance: tuple[PerfPoint, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.performance and self.status.performance:  # measured by qeval benchmark
            points = performance_points(self.status.dump())
            object.__setattr__(self, "performance", points)

    def scheme(self, model: str) -> str:
        if model == self.baseline:
            return self.baseline_scheme or "baseline"
        c = next((c for c in self.status.candidates if c.name == model), None)
        return (c.scheme if c else None) or "-"

    def size(self, model: str) -> int | None:
        if model == self.baseline:
            return self.status.baseline_size_bytes
        c = next((c for c in self.status.candidates if c.name == model), None)
        return c.size_bytes if c else None


def performance_points(status: Mapping[str, Any]) -> tuple[PerfPoint, ...]:
    """Latency/throughput points from a status document's ``performance`` list, each
    ``{model, scenario, latencySeconds, outputTokensPerSecond}`` (entries lacking one are
    left out). Empty when the serving stage did not run."""
    out = []
    for p in status.get("performance") or []:
        try:
            out.append(
                PerfPoint(
                    str(p["model"]),
                    str(p["scenario"]),
                    float(p["latencySeconds"]),
                    float(p["outputTokensPerSecond"]),
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return tuple(out)


def _full_point(p: Any) -> bool:
    try:
        PerformancePoint.model_validate(p)
    except ValueError:
        return False
    return True


def run_from_objects(evalrun: Mapping[str, Any]) -> Run:
    """A Run from an EvalRun object with its status (as ``objects.yaml`` or kubectl has it)."""
    spec, raw = evalrun.get("spec", {}), dict(evalrun.get("status") or {})
    known = {f.alias or n for n, f in EvalRunStatus.model_fields.items()}
    # The report's own reading of performance (performance_points) accepts the short form
    # {model, scenario, latencySeconds, outputTokensPerSecond}; the status keeps full entries.
    fields = {k: v for k, v in raw.items() if k in known}
    fields["performance"] = [p for p in raw.get("performance") or [] if _full_point(p)]
    # Every result, where the full table is at hand (the status may keep only the primary
    # metrics, or only the summaries).
    status = with_full_results(EvalRunStatus.model_validate(fields))
    candidates = {c.name for c in status.candidates}
    others = [s.model for s in status.scores if s.model not in candidates]
    return Run(
        name=evalrun["metadata"]["name"],
        baseline=spec.get("baseline", {}).get("name") or (others[0] if others else "baseline"),
        status=status,
        threshold=float(spec.get("recoveryThreshold", 0.95)),
        performance=performance_points(raw),
    )


def load_run(run_dir: Path) -> Run:
    """The Run of a ``qeval run`` folder (its ``objects.yaml``, else ``status.json``)."""
    objects = run_dir / "objects.yaml"
    if objects.is_file():
        for doc in yaml.safe_load_all(objects.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "EvalRun":
                return run_from_objects(doc)
    status = run_dir / "status.json"
    if not status.is_file():
        raise FileNotFoundError(f"{run_dir}: neither objects.yaml nor status.json; is it a run?")
    return run_from_objects(
        {"metadata": {"name": run_dir.name}, "status": json.loads(status.read_text())}
    )
