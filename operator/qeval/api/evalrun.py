"""EvalRun: one comparison of a baseline with quantized candidates on a set of tasks."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from qeval.api.common import (
    DNS_LABEL,
    ApiModel,
    Condition,
    ModelSource,
    Resource,
    Rule,
    Scheduling,
    cel_rules,
    enforce,
    immutable,
)


class Backend(StrEnum):
    """How lm-eval runs the model: in-process transformers (`hf`), in-process vLLM (`vllm`),
    or against a vLLM OpenAI-compatible server qeval starts (`vllm-server`)."""

    HF = "hf"
    VLLM = "vllm"
    VLLM_SERVER = "vllm-server"


class Baseline(ApiModel):
    """The reference model, usually the unquantized BF16 original."""

    name: str = Field(
        default="baseline",
        description="Label in results and child names.",
        pattern=DNS_LABEL,
        min_length=1,
        max_length=40,
    )
    model: ModelSource = Field(description="The baseline model.")


CANDIDATE_RULES = (
    Rule(
        cel="has(self.model) != has(self.quantizedModel)",
        message="each candidate sets exactly one of model (a model reference) or quantizedModel "
        "(the name of a QuantizedModel in the same namespace)",
        check=lambda c: (c.model is not None) != (c.quantized_model is not None),
    ),
    Rule(
        cel="has(self.name) || has(self.quantizedModel)",
        message="a candidate given by model needs a name (a short label such as w4a16)",
        check=lambda c: c.name is not None or c.quantized_model is not None,
    ),
)


class Candidate(ApiModel):
    """A model compared with the baseline."""

    name: str | None = Field(
        default=None,
        description="Label in results and child names; default: the QuantizedModel's name.",
        pattern=DNS_LABEL,
        min_length=1,
        max_length=40,
    )
    quantized_model: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Name of a QuantizedModel in the same namespace; the run waits until it is "
        "Ready.",
    )
    model: ModelSource | None = Field(
        default=None, description="A model reference, for a checkpoint quantized elsewhere."
    )
    scheme: str | None = Field(
        default=None,
        max_length=64,
        description="Scheme label shown in results for a model reference (e.g. W4A16); taken "
        "from the QuantizedModel otherwise.",
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*CANDIDATE_RULES)}

    @model_validator(mode="after")
    def _rules(self) -> Candidate:
        enforce(self, CANDIDATE_RULES)
        return self

    @property
    def label(self) -> str:
        label = self.name or self.quantized_model
        assert label is not None  # guaranteed by CANDIDATE_RULES
        return label


class Task(ApiModel):
    """One lm-eval task (or group) with its settings."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="An lm-eval task or group name (e.g. arc_challenge, gsm8k, qeval_demo_facts).",
    )
    num_fewshot: int | None = Field(
        default=None, ge=0, le=64, description="Few-shot examples; default: the task's own."
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        description="Evaluate only the first N documents (for smoke runs; scores become noisier).",
    )
    metric: str | None = Field(
        default=None,
        max_length=64,
        description="The metric recovery is computed on (e.g. acc_norm, exact_match); default: "
        "the task's first metric.",
    )


SPEC_RULES = (
    Rule(
        cel="self.candidates.all(c, "
        "(has(c.name) ? c.name : c.quantizedModel) != self.baseline.name)",
        message="a candidate has the same name as the baseline; rename one of them",
        check=lambda s: all(c.label != s.baseline.name for c in s.candidates),
    ),
    Rule(
        cel="self.candidates.all(c, self.candidates.exists_one(d, "
        "(has(d.name) ? d.name : d.quantizedModel) == (has(c.name) ? c.name : c.quantizedModel)))",
        message="two candidates have the same name; give each a distinct name",
        check=lambda s: len({c.label for c in s.candidates}) == len(s.candidates),
    ),
    Rule(
        cel="self.tasks.all(t, self.tasks.exists_one(u, u.name == t.name))",
        message="a task is listed twice; list each task once",
        check=lambda s: len({t.name for t in s.tasks}) == len(s.tasks),
    ),
)


class EvalRunSpec(ApiModel):
    """The comparison: which models, which tasks, and how they are evaluated."""

    baseline: Baseline = Field(
        description="The reference model.", json_schema_extra=immutable("spec.baseline")
    )
    candidates: list[Candidate] = Field(
        min_length=1,
        max_length=32,
        description="Models compared with the baseline.",
        json_schema_extra=immutable("spec.candidates"),
    )
    tasks: list[Task] = Field(
        min_length=1,
        max_length=64,
        description="lm-eval tasks; every model runs all of them with identical settings.",
        json_schema_extra=immutable("spec.tasks"),
    )
    task_paths: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Directories of custom offline lm-eval task YAML (lm-eval's include path). "
        "qeval's own demo tasks are always available.",
        json_schema_extra=immutable("spec.taskPaths"),
    )
    backend: Backend = Field(
        default=Backend.HF,
        description="hf, vllm or vllm-server; the same backend runs every model.",
        json_schema_extra=immutable("spec.backend"),
    )
    batch_size: int = Field(
        default=16,
        ge=1,
        le=4096,
        description="lm-eval batch size (scores can shift with it, so it is the same for all).",
        json_schema_extra=immutable("spec.batchSize"),
    )
    seed: int = Field(
        default=1234,
        ge=0,
        description="Random seed for lm-eval (few-shot sampling, generation).",
        json_schema_extra=immutable("spec.seed"),
    )
    model_args: dict[str, str] = Field(
        default_factory=dict,
        description="Extra lm-eval model_args for every model (e.g. dtype: bfloat16).",
        json_schema_extra=immutable("spec.modelArgs"),
    )
    scheduling: Scheduling = Field(
        default_factory=Scheduling, description="Resources and placement of evaluation Jobs."
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*SPEC_RULES)}

    @model_validator(mode="after")
    def _rules(self) -> EvalRunSpec:
        enforce(self, SPEC_RULES)
        return self


EvalRunPhase = Literal["Pending", "WaitingForModels", "Running", "Succeeded", "Failed"]


class Score(ApiModel):
    """One model's score on one task metric."""

    model: str = Field(description="Baseline or candidate name.")
    task: str = Field(description="lm-eval task.")
    metric: str = Field(description="Metric name, e.g. acc or exact_match.")
    filter: str = Field(default="none", description="lm-eval filter, e.g. strict-match.")
    value: float = Field(description="The score.")
    stderr: float | None = Field(default=None, description="Standard error, when lm-eval has one.")
    samples: int | None = Field(default=None, description="Documents evaluated.")
    num_fewshot: int | None = Field(default=None, description="Shots used.")
    higher_is_better: bool = Field(default=True, description="Direction of the metric.")
    primary: bool = Field(default=False, description="The metric recovery is computed on.")


class Recovery(ApiModel):
    """A candidate's score as a fraction of the baseline's on one task metric."""

    model: str = Field(description="Candidate name.")
    task: str = Field(description="lm-eval task.")
    metric: str = Field(description="Metric name.")
    filter: str = Field(default="none", description="lm-eval filter.")
    value: float = Field(
        description="candidate / baseline (baseline / candidate when lower is "
        "better); 1.0 = no loss."
    )
    stderr: float | None = Field(default=None, description="Standard error (delta method).")


class CandidateSummary(ApiModel):
    """Per candidate: what it is and how much it recovers overall."""

    name: str = Field(description="Candidate name.")
    scheme: str | None = Field(default=None, description="Quantization scheme.")
    size_bytes: int | None = Field(default=None, description="Model size on disk.")
    compression_ratio: float | None = Field(default=None, description="Baseline size / size.")
    mean_recovery: float | None = Field(
        default=None, description="Mean over tasks of the primary metric's recovery."
    )
    mean_recovery_stderr: float | None = Field(default=None, description="Its standard error.")


class StageFailure(ApiModel):
    """A stage that did not succeed, and why."""

    stage: str = Field(description="Stage name.")
    reason: str = Field(description="One CamelCase word.")
    message: str = Field(description="What went wrong, for a person.")


class EvalRunStatus(ApiModel):
    """Progress and results of the comparison."""

    phase: EvalRunPhase | None = Field(
        default=None, description="Pending, WaitingForModels, Running, Succeeded or Failed."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Accepted, ModelsReady, Succeeded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation the status describes."
    )
    progress: str | None = Field(default=None, description="Stages done / total, e.g. 3/7.")
    started_at: str | None = Field(default=None, description="When the first stage started.")
    completed_at: str | None = Field(default=None, description="When the run finished.")
    baseline_size_bytes: int | None = Field(default=None, description="Baseline size on disk.")
    scores: list[Score] = Field(default_factory=list, description="Every model x task metric.")
    recovery: list[Recovery] = Field(default_factory=list, description="Every candidate x task.")
    candidates: list[CandidateSummary] = Field(
        default_factory=list, description="Per-candidate summary."
    )
    mean_recovery: float | None = Field(
        default=None, description="The lowest mean recovery among the candidates."
    )
    failures: list[StageFailure] = Field(
        default_factory=list, description="Stages that failed, with the reason."
    )
    results_location: str | None = Field(
        default=None, description="Where the full results (stage documents, samples) are."
    )


class EvalRun(Resource):
    """A comparison of a baseline with quantized candidates."""

    kind: Literal["EvalRun"] = "EvalRun"
    spec: EvalRunSpec
    status: EvalRunStatus | None = None
