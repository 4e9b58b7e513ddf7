"""Resource status derived from stage result documents (pure; shared by both executors).

Conditions follow the Kubernetes API conventions; their reasons are defined here once.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

from pydantic import ValidationError

from qeval.api.common import Condition, ConditionStatus
from qeval.api.evalrun_status import EvalRunStatus, FullResults, StageFailure
from qeval.api.quantizedmodel import QuantizedModelStatus
from qeval.engine import own, progress
from qeval.plan import Stage
from qeval.reasons import (
    ACCEPTED,
    ALL_STAGES_SUCCEEDED,
    QUANTIZED,
    READY,
    SPEC_VALID,
    STAGE_FAILED,
    SUCCEEDED,
)
from qeval.stages.envelope import StageResult, StageStatus, read_part
from qeval.stages.quantize import QuantizeResult


def condition(
    type_: str, ok: bool | None, reason: str, message: str, when: str, generation: int | None = None
) -> Condition:
    status = (
        ConditionStatus.UNKNOWN
        if ok is None
        else ConditionStatus.TRUE
        if ok
        else ConditionStatus.FALSE
    )
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=when,
        observed_generation=generation,
    )


def quantized_model_status(doc: StageResult) -> QuantizedModelStatus:
    """A QuantizedModel's status from its quantize stage's result document."""
    when = doc.finished_at
    if doc.status != StageStatus.SUCCEEDED or doc.result is None:
        return QuantizedModelStatus(
            phase="Failed",
            conditions=[
                condition(READY, False, doc.reason or STAGE_FAILED, doc.message or "", when or "")
            ],
            started_at=doc.started_at,
            completed_at=when,
            wall_seconds=doc.wall_seconds,
        )
    result = read_part(QuantizeResult, doc.result)
    return QuantizedModelStatus(
        phase="Ready",
        conditions=[
            condition(
                READY,
                True,
                QUANTIZED,
                f"{result.scheme}: {result.compression_ratio}x smaller"
                + (" (reused from the result cache)" if result.cached else ""),
                when or "",
            )
        ],
        output=result.output_dir,
        size_bytes=result.size_bytes,
        base_size_bytes=result.base_size_bytes,
        compression_ratio=result.compression_ratio,
        applied_recipe=result.recipe,
        started_at=doc.started_at,
        completed_at=when,
        wall_seconds=doc.wall_seconds,
    )


def failures(docs: Iterable[StageResult]) -> list[StageFailure]:
    """Every stage that failed, first the root causes, then what they made skip."""
    docs = list(docs)
    failed = [d for d in docs if d.status == StageStatus.FAILED]
    skipped = [d for d in docs if d.status == StageStatus.SKIPPED]
    return [
        StageFailure(stage=d.stage, reason=d.reason or STAGE_FAILED, message=d.message or "")
        for d in failed + skipped
    ]


# The Succeeded message of a run that evaluated its baseline alone (spec.candidates empty).
SCORES_ONLY = (
    "all stages succeeded; no candidates: the baseline's absolute scores only, no recovery "
    "and no verdict"
)


def finish_evalrun(
    aggregate: EvalRunStatus | None,
    docs: list[StageResult],
    stages: list[Stage],
    started: str,
    finished: str,
) -> EvalRunStatus:
    """The final EvalRun status: the aggregate's results plus phase, progress and conditions.
    ``docs``: the documents of the stages that ended, in plan order (of the run's own stages
    and of the QuantizedModels' that failed); ``stages``: the plan."""
    status = aggregate.model_copy() if aggregate else EvalRunStatus()
    status.failures = failures(docs)
    ended = {d.stage: d.status for d in docs}
    ok = not status.failures and all(
        ended.get(s.name) == StageStatus.SUCCEEDED for s in own(stages)
    )
    status.phase = "Succeeded" if ok else "Failed"
    status.progress = progress(stages, ended)
    status.started_at, status.completed_at = started, finished
    if ok:
        reason, message = ALL_STAGES_SUCCEEDED, "all stages succeeded"
        if aggregate is not None and not aggregate.candidates:  # it has an entry per candidate
            message = SCORES_ONLY
    elif status.failures:
        first = status.failures[0]
        reason, message = first.reason, f"{first.stage}: {first.message}"
    else:
        reason, message = STAGE_FAILED, "not every stage ran"
    status.conditions = [
        condition(ACCEPTED, True, SPEC_VALID, "spec is valid", started),
        condition(SUCCEEDED, ok, reason, message, finished),
    ]
    return status


def with_full_results(status: EvalRunStatus) -> EvalRunStatus:
    """``status`` with every score, recovery and difference (``detail: full``), read from its
    full results table where that is at hand (a local run; a machine with the run's storage);
    else ``status`` as it is."""
    if status.full_results is None or status.detail == "full":
        return status
    with suppress(OSError, ValueError, ValidationError):
        table = FullResults.model_validate_json(Path(status.full_results).read_text())
        return status.model_copy(
            update={
                "scores": table.scores,
                "recovery": table.recovery,
                "differences": table.differences,
                "cached": list(dict.fromkeys([*status.cached, *table.cached])),
                "detail": "full",
            }
        )
    return status
