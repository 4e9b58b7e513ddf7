"""The aggregate stage: read the run's evaluate/quantize results, write the EvalRun status."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from qeval.api.common import ApiModel
from qeval.api.evalrun import EvalRunStatus, StageFailure
from qeval.results.summary import ModelOutcome, summarize
from qeval.stages.envelope import StageResult, StageStatus
from qeval.stages.evaluate import EvaluateResult


class ModelResults(ApiModel):
    """Where one model's stage results are."""

    name: str
    scheme: str | None = None
    evaluate: str = Field(description="Path of the evaluate stage's result document.")


class AggregateInput(ApiModel):
    baseline: ModelResults
    candidates: list[ModelResults]
    results_location: str


def outcome(ref: ModelResults) -> ModelOutcome:
    """A model's outcome from its evaluate result document (missing or failed included)."""
    path = Path(ref.evaluate)
    stage = path.parent.name
    if not path.exists():
        failure = StageFailure(stage=stage, reason="NoResult", message=f"{path} was not written")
        return ModelOutcome(ref.name, ref.scheme, failure=failure)
    doc = StageResult.read(path)
    if doc.status != StageStatus.SUCCEEDED or doc.result is None:
        failure = StageFailure(
            stage=doc.stage, reason=doc.reason or "Failed", message=doc.message or ""
        )
        return ModelOutcome(ref.name, ref.scheme, failure=failure)
    result = EvaluateResult.model_validate(doc.result)
    return ModelOutcome(ref.name, ref.scheme, tuple(result.scores), result.model_size_bytes)


def run(inp: AggregateInput) -> EvalRunStatus:
    status = summarize(outcome(inp.baseline), [outcome(c) for c in inp.candidates])
    status.results_location = inp.results_location
    return status
