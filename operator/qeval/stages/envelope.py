"""The documents a stage reads and writes, and the runner that guarantees the result one.

A stage reads one input document and writes one result document. Whatever happens —
bad input, a library error, an unexpected exception — ``execute`` writes a document
saying Failed with a reason and a message, so nothing goes silently missing. (A process
killed outright writes nothing; the executor then writes the Failed document itself.)
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator

from qeval.api.common import ApiModel, now
from qeval.reasons import CRASHED, INVALID_INPUT

# The exit code of a stage process that wrote (and, in a Job, published) a Failed document:
# the failure is recorded and deterministic, so a stage Job's podFailurePolicy fails the Job
# on it instead of running the stage again on its GPUs. A crash outside the envelope (the
# publish itself) exits 1 and is retried; a kill by the kernel's OOM killer is 137.
EXIT_RECORDED_FAILURE = 3

# Intel MKL (torch's BLAS and LAPACK on x86) may pick a code path by the data's memory
# alignment and use fewer threads than asked when the machine is busy, so the same stage
# could sum in a different order from one process to the next: GPTQ's Hessian on a node
# shared with three other quantize pods gave one answer in a thousand differently from the
# same stage run alone. Conditional numerical reproducibility (AUTO: the best code path of
# this processor, the same one every run; measured as fast as without) and a fixed thread
# count make a stage's numbers depend on its input and its machine only (a value the user
# set is kept).
REPRODUCIBLE_MATH = {"MKL_CBWR": "AUTO", "MKL_DYNAMIC": "FALSE"}

LIBRARIES = ("qeval", "torch", "transformers", "llmcompressor", "compressed-tensors", "lm_eval")


# --- versioned documents ---------------------------------------------------------------
#
# A stage's input and result cross a process boundary, and in a cluster an image boundary:
# the operator of one release may read what the evaluator image of the next one wrote.
# Each such document carries ``schemaVersion: "MAJOR.MINOR"``. A reader accepts any minor of
# its own major and ignores the fields it does not know (a minor only adds fields that are
# safe to ignore); it refuses another major with a reason that says so (a major is a change
# an older reader would misread: a field renamed, removed or whose meaning changed). What
# users write (the API) stays strict: an unknown field there is a typo.
SCHEMA_VERSION = "1.1"  # 1.1: StageResult.timings
SCHEMA_MAJOR = SCHEMA_VERSION.split(".")[0]
FIRST_VERSION = "1.0"

D = TypeVar("D", bound=BaseModel)


class Document(ApiModel):
    """A document one process writes and another reads: versioned, tolerant of a newer minor."""

    schema_version: str = Field(
        default=SCHEMA_VERSION,
        description="MAJOR.MINOR of the document format; a reader refuses another major. "
        "Missing: a document from before versions were written, which is 1.0.",
    )

    @field_validator("schema_version")
    @classmethod
    def _same_major(cls, v: str) -> str:
        major, dot, minor = v.partition(".")
        if not (major.isdigit() and dot and minor.isdigit()):
            raise ValueError(f"schemaVersion {v!r} is not MAJOR.MINOR (e.g. {SCHEMA_VERSION!r})")
        if major != SCHEMA_MAJOR:
            raise ValueError(
                f"schemaVersion {v} was written by a qeval whose documents are version "
                f"{major}.x; this qeval reads {SCHEMA_MAJOR}.x: run the operator and the stage "
                "images of one release"
            )
        return v

    @classmethod
    def read(cls, data: Any) -> Self:
        """Validate a document another process wrote (a dict, or its JSON text)."""
        if isinstance(data, str | bytes):
            data = json.loads(data)
        if isinstance(data, dict) and "schemaVersion" not in data and "schema_version" not in data:
            data = {**data, "schemaVersion": FIRST_VERSION}  # written before versions were
        return cls.model_validate(data, extra="ignore")


def read_part(model: type[D], data: Any) -> D:
    """A part of a document that was ``read`` (a stage's ``result``, the aggregate's status):
    its version was checked with the document's, and fields of a newer minor are ignored."""
    return model.model_validate(data, extra="ignore")


class StageStatus(StrEnum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


class StageError(Exception):
    """An expected failure: ``reason`` is one CamelCase word, the message says what to do."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class StageResult(Document):
    """What a stage did: its status, why, when, with which library versions, and its result."""

    stage: str = Field(description="Stage name, e.g. quantize-w4a16.")
    kind: str = Field(description="quantize, evaluate, aggregate or demo-model.")
    status: StageStatus
    reason: str | None = None
    message: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    wall_seconds: float | None = None
    timings: dict[str, float] = Field(
        default_factory=dict,
        description="Seconds of each phase inside the stage (Phase: imports, taskIndex, "
        "modelLoad, modelWork, resultWriting); the rest of wallSeconds is the stage's own "
        "bookkeeping (reading the input, the cache lookup).",
    )
    versions: dict[str, str] = Field(default_factory=dict)
    result: dict[str, Any] | None = None

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.dump(), indent=2) + "\n")
        tmp.replace(path)  # readers never see half a document

    @classmethod
    def load(cls, path: Path) -> StageResult:
        return cls.read(path.read_text())


class Phase(StrEnum):
    """Where a stage's time goes (``StageResult.timings``)."""

    IMPORTS = "imports"  # torch, transformers, llm-compressor, lm-eval: ~0 in a warm worker
    TASK_INDEX = "taskIndex"  # lm-eval's TaskManager
    MODEL_LOAD = "modelLoad"  # weights, tokenizer, calibration data
    MODEL_WORK = "modelWork"  # oneshot, simple_evaluate, generation
    RESULT_WRITING = "resultWriting"  # the model saved, results and samples, the cache


_timings: dict[str, float] = {}  # the running stage's (one stage at a time per process)


@contextmanager
def phase(name: Phase) -> Iterator[None]:
    """Add the time the block takes to the running stage's ``timings[name]``."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        _timings[name] = round(_timings.get(name, 0.0) + time.monotonic() - t0, 3)


def reproducible_math() -> None:
    """REPRODUCIBLE_MATH in the environment (a value the user set is kept): before torch loads."""
    for var, value in REPRODUCIBLE_MATH.items():
        os.environ.setdefault(var, value)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a result (those installed)."""
    out = {}
    for name in LIBRARIES:
        with suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def failed(stage: str, kind: str, reason: str, message: str, **extra: Any) -> StageResult:
    return StageResult(
        stage=stage,
        kind=kind,
        status=StageStatus.FAILED,
        reason=reason,
        message=message,
        finished_at=now(),
        **extra,
    )


def outcome_line(doc: StageResult) -> str:
    """The line a stage prints last: its status, and why if it failed."""
    return f"{doc.stage}: {doc.status}" + (f" ({doc.reason}): {doc.message}" if doc.reason else "")


def execute(
    kind: str,
    input_model: type[Document],
    run: Callable[[Any], BaseModel],
    input_path: Path,
    output_path: Path,
) -> StageResult:
    """Run one stage on ``input_path`` and write its result document to ``output_path``."""
    stage = output_path.parent.name or kind
    started, t0 = now(), time.monotonic()
    reproducible_math()  # before the stage's libraries load
    _timings.clear()
    try:
        try:
            raw = json.loads(input_path.read_text())
            stage = raw.pop("stage", stage)  # the executors' label of the document
            inp = input_model.read(raw)
        except (OSError, ValueError, ValidationError) as e:
            raise StageError(INVALID_INPUT, f"cannot read stage input {input_path}: {e}") from e
        from qeval.stages.accelerators import require_gpus  # here: it imports StageError

        require_gpus()  # given GPUs that CUDA does not see: fail now, not hours later on the CPU
        result = run(inp)
        doc = StageResult(
            stage=stage,
            kind=kind,
            status=StageStatus.SUCCEEDED,
            result=result.model_dump(by_alias=True, exclude_none=True, mode="json"),
        )
    except StageError as e:
        doc = failed(stage, kind, e.reason, str(e))
    except Exception as e:  # the point is to record any failure
        tb = traceback.format_exception(e)
        doc = failed(stage, kind, CRASHED, f"{type(e).__name__}: {e}\n{''.join(tb[-3:])}")
    doc.started_at, doc.finished_at = started, now()
    doc.wall_seconds = round(time.monotonic() - t0, 3)
    doc.timings = dict(_timings)
    doc.versions = library_versions()
    doc.write(output_path)
    return doc
