"""The aggregate stage: read the run's evaluate results, write the EvalRun status (and the
report, when asked).

It works from the result documents alone: each evaluate result names lm-eval's results
JSON and the per-sample logs, from which the paired statistics are computed; without
those logs the intervals come from the reported standard errors.

The status it returns is bounded (``bounded``): it becomes a ConfigMap (1 MiB at most) and
then the EvalRun's status (etcd keeps an object to 1.5 MiB), so it keeps each task's primary
metric, and the full table (every metric of every task and subtask) is written beside the
stage documents (``FULL_RESULTS``), named by ``status.fullResults``.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from qeval.api.common import ApiModel
from qeval.api.evalrun_status import EvalRunStatus, FullResults, Score, StageFailure
from qeval.reasons import NO_RESULT, RESULT_TOO_LARGE
from qeval.stages.envelope import Document, StageError, StageResult, StageStatus, read_part
from qeval.stages.evaluate import EvaluateResult

if TYPE_CHECKING:
    from qeval.results.samples import ItemKey
    from qeval.results.summary import ModelOutcome, ScoreKey


# What the stage imports: a warm worker imports it once (``qeval.local.worker``).
WARM = ("qeval.results.summary", "qeval.report.plots", "qeval.report.render")


class ModelResults(ApiModel):
    """Where one model's stage results are."""

    name: str
    scheme: str | None = None
    evaluate: str = Field(description="Path of the evaluate stage's result document.")
    benchmark: str | None = Field(
        default=None, description="Path of the benchmark stage's result document, if any."
    )


class AggregateInput(Document):
    baseline: ModelResults
    candidates: list[ModelResults]
    results_location: str
    run_name: str | None = None
    suites: list[str] = Field(default_factory=list, description="Suites to score.")
    recovery_threshold: float = Field(default=0.95, description="The verdicts' gate.")
    report_dir: str | None = Field(default=None, description="Write the report here.")
    similarity: str | None = Field(
        default=None, description="Path of the similarity stage's result document, if any."
    )
    judged: list[str] = Field(
        default_factory=list, description="Paths of the judge stages' result documents."
    )


@dataclass
class PerItem:
    """A model's per-item values (plain means) and per-document (loglikelihood, weight)
    rows (perplexities), keyed like its scores, from its per-sample logs."""

    values: dict[ScoreKey, dict[ItemKey, float]] = field(default_factory=dict)
    pairs: dict[ScoreKey, dict[ItemKey, tuple[float, float]]] = field(default_factory=dict)


def per_item(result: EvaluateResult, scores: list[Score]) -> PerItem:
    """Per-item values of every score (a group's over its subtasks' samples, a subtask's
    over its own), for paired statistics; what a log cannot give is left out."""
    from qeval.results.samples import item_pairs, item_values, leaf_tasks
    from qeval.results.stats import CORPUS_METRICS

    out = PerItem()
    try:
        results = json.loads(Path(result.results_path).read_text())
    except (OSError, ValueError):
        return out
    samples = Path(result.samples_dir)
    for s in scores:
        key, tasks = (s.task, s.metric, s.filter), leaf_tasks(results, s.task)
        if s.metric in CORPUS_METRICS:
            if (pairs := item_pairs(samples, tasks, s.metric, s.filter)) is not None:
                out.pairs[key] = pairs
        elif (values := item_values(samples, tasks, s.metric, s.filter)) is not None:
            out.values[key] = values
    return out


def with_corpus_stderr(scores: list[Score], pairs: PerItem) -> list[Score]:
    """Perplexity scores with the standard error lm-eval does not report (the delta
    method over their documents, when their logs give the reported value)."""
    import numpy as np

    from qeval.results.stats import corpus_interval

    out = []
    for s in scores:
        rows = pairs.pairs.get((s.task, s.metric, s.filter))
        if s.stderr is None and rows is not None and len(rows) > 1:
            interval = corpus_interval(s.metric, np.array([rows[k] for k in sorted(rows)]))
            if math.isclose(interval.value, s.value, rel_tol=1e-6):
                s = s.model_copy(update={"stderr": interval.stderr})
        out.append(s)
    return out


def model_outcome(ref: ModelResults) -> ModelOutcome:
    """A model's outcome from its evaluate result document (missing or failed included)."""
    from qeval.results.summary import ModelOutcome

    path = Path(ref.evaluate)
    stage = path.parent.name
    if not path.exists():
        failure = StageFailure(stage=stage, reason=NO_RESULT, message=f"{path} was not written")
        return ModelOutcome(ref.name, ref.scheme, failure=failure)
    doc = StageResult.load(path)
    if doc.status != StageStatus.SUCCEEDED or doc.result is None:
        failure = StageFailure(
            stage=doc.stage, reason=doc.reason or "Failed", message=doc.message or ""
        )
        return ModelOutcome(ref.name, ref.scheme, failure=failure)
    result = read_part(EvaluateResult, doc.result)
    # Named as this run names the model (a result reused from another run may say otherwise).
    scores = [s.model_copy(update={"model": ref.name}) for s in result.scores]
    items = per_item(result, scores)
    return ModelOutcome(
        ref.name,
        ref.scheme,
        tuple(with_corpus_stderr(scores, items)),
        result.model_size_bytes,
        items=items.values,
        pairs=items.pairs,
        cached=tuple(result.cached_tasks),
    )


def _result(path: str) -> dict[str, Any] | None:
    """A stage's result when it succeeded (its failure is reported from its own document)."""
    try:
        doc = StageResult.load(Path(path))
    except (OSError, ValueError):
        return None
    return doc.result if doc.status == StageStatus.SUCCEEDED else None


def serving(inp: AggregateInput, status: EvalRunStatus) -> None:
    """Fill in the benchmark and similarity figures, and the speedups, where they ran."""
    from qeval.results.performance import speedups
    from qeval.stages.benchmark import BenchmarkResult
    from qeval.stages.similarity import SimilarityResult

    for ref in (inp.baseline, *inp.candidates):
        result = _result(ref.benchmark) if ref.benchmark else None
        if result is not None:
            status.performance += read_part(BenchmarkResult, result).points
    status.speedups = speedups(status.performance, inp.baseline.name)
    result = _result(inp.similarity) if inp.similarity else None
    if result is not None:
        status.similarity = read_part(SimilarityResult, result).scores


def judged(inp: AggregateInput, status: EvalRunStatus) -> None:
    """The judged evaluations' outcomes, their verdicts joined into the candidates'."""
    from qeval.results.summary import join_judged
    from qeval.stages.judge import JudgeResult

    results = [_result(path) for path in inp.judged]
    found = [read_part(JudgeResult, r).judged if r is not None else None for r in results]
    join_judged(status, found, inp.recovery_threshold)


FULL_RESULTS = "results.json"  # in the run's results location
# The aggregate's document, as its result ConfigMap holds it (indented), is kept to this:
# 128 KiB of the ConfigMap limit (1 MiB) are left for the envelope, and the EvalRun (the
# status written compact, plus the spec and the stages' failures) stays well under etcd's
# 1.5 MiB. 32 candidates x openllm-v1 + v2 x 16 scenarios, names of 40 characters: 737 KiB.
STATUS_BUDGET = 896 * 1024


def status_bytes(status: EvalRunStatus) -> int:
    """The status's size as the aggregate's result ConfigMap holds it."""
    from qeval.k8s.publish import document_bytes

    doc = StageResult(stage="aggregate", kind="aggregate", status=StageStatus.SUCCEEDED)
    doc.result = status.dump()
    return document_bytes(doc)


def write_full_results(status: EvalRunStatus, path: Path) -> None:
    """Every score, recovery and difference, as one JSON document (written whole or not)."""
    table = FullResults(
        scores=status.scores,
        recovery=status.recovery,
        differences=status.differences,
        cached=status.cached,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(table.dump(), separators=(",", ":")) + "\n")
    tmp.replace(path)


def bounded(full: EvalRunStatus, baseline: str, full_results: str) -> EvalRunStatus:
    """The status to publish: each task's primary metric (``detail: primary``); where even
    that is over ``STATUS_BUDGET``, the summaries alone (``detail: summary``: no per-task
    entries, no cached list). Raises StageError ResultTooLarge when those do not fit either."""
    from qeval.results.summary import primary_table

    scores, recovery, differences = primary_table(full, baseline)
    update = {"scores": scores, "recovery": recovery, "differences": differences}
    status = full.model_copy(update={**update, "detail": "primary", "full_results": full_results})
    if (size := status_bytes(status)) <= STATUS_BUDGET:
        return status
    empty: dict[str, Any] = {"scores": [], "recovery": [], "differences": [], "cached": []}
    status = status.model_copy(update={**empty, "detail": "summary"})
    if (small := status_bytes(status)) <= STATUS_BUDGET:
        return status
    raise StageError(
        RESULT_TOO_LARGE,
        f"the run's results do not fit in a status: {size} bytes with each task's primary "
        f"metric, {small} with the summaries alone, of at most {STATUS_BUDGET} "
        f"({len(full.candidates)} candidates, {len(full.performance)} performance points, "
        f"{len(full.cached)} cached results); every result is in {full_results}",
    )


def run(inp: AggregateInput) -> EvalRunStatus:
    from qeval.results.summary import summarize

    status = summarize(
        model_outcome(inp.baseline),
        [model_outcome(c) for c in inp.candidates],
        threshold=inp.recovery_threshold,
        suites=inp.suites,
    )
    status.results_location = inp.results_location
    serving(inp, status)
    judged(inp, status)
    if inp.report_dir:
        from qeval.report import Run, write_report

        run = Run(
            name=inp.run_name or Path(inp.results_location).name,
            baseline=inp.baseline.name,
            baseline_scheme=inp.baseline.scheme,
            threshold=inp.recovery_threshold,
            status=status,
        )
        try:
            write_report(run, Path(inp.report_dir))
        except Exception as e:  # the status matters more than its report: keep it
            print(f"report not written: {type(e).__name__}: {e}", file=sys.stderr)
    path = Path(inp.results_location) / FULL_RESULTS
    try:
        write_full_results(status, path)
    except OSError as e:
        raise StageError("ResultsNotWritten", f"cannot write the full results {path}: {e}") from e
    return bounded(status, inp.baseline.name, str(path))
