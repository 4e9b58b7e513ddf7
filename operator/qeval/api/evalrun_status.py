"""An EvalRun's status, and the aggregate's full results table: what the aggregate stage
writes (its result document, ``results.json``) and the executors read back into the status.
The spec, what users write, is ``qeval.api.evalrun``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from qeval.api.common import ApiModel, Condition

EvalRunPhase = Literal["Pending", "WaitingForModels", "Running", "Succeeded", "Failed"]


class Score(ApiModel):
    """One model's score on one task metric."""

    model: str = Field(description="Baseline or candidate name.")
    task: str = Field(description="lm-eval task.")
    metric: str = Field(description="Metric name, e.g. acc or exact_match.")
    filter: str = Field(default="none", description="lm-eval filter, e.g. strict-match.")
    value: float = Field(description="The score.")
    stderr: float | None = Field(
        default=None,
        description="Standard error: lm-eval's; for a perplexity, which lm-eval reports "
        "without one, the delta-method estimate over its documents.",
    )
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
    stderr: float | None = Field(
        default=None,
        description="Standard error (delta method; paired over the same items when the "
        "per-sample logs allow it, else from the two scores' standard errors).",
    )
    ci_low: float | None = Field(default=None, description="95 % confidence interval, low end.")
    ci_high: float | None = Field(default=None, description="95 % confidence interval, high end.")
    test: Literal["mcnemar", "bootstrap", "paired-z"] | None = Field(
        default=None,
        description="Paired test of candidate vs baseline on the same items (primary metric): "
        "McNemar for 0/1 metrics, a paired z-test of the per-document loglikelihoods for "
        "perplexities, a paired bootstrap otherwise.",
    )
    p_value: float | None = Field(default=None, description="Two-sided p-value of that test.")
    significant: bool | None = Field(
        default=None, description="True: the candidate is significantly worse (p < 0.05)."
    )


class Difference(ApiModel):
    """A candidate's score minus the baseline's, where a ratio means nothing: a metric that
    can be negative (Matthews correlation, a correlation, a *_diff) or a baseline not
    clearly above 0. Kept out of the mean recovery."""

    model: str = Field(description="Candidate name.")
    task: str = Field(description="lm-eval task.")
    metric: str = Field(description="Metric name.")
    filter: str = Field(default="none", description="lm-eval filter.")
    value: float = Field(description="candidate - baseline, in the metric's own units.")
    stderr: float | None = Field(default=None, description="Standard error.")
    ci_low: float | None = Field(default=None, description="95 % confidence interval, low end.")
    ci_high: float | None = Field(default=None, description="95 % confidence interval, high end.")
    reason: str = Field(description="Why no ratio: the metric or the baseline.")


Verdict = Literal["Pass", "Degraded", "Inconclusive"]


class CandidateSummary(ApiModel):
    """Per candidate: what it is, how much it recovers overall, and the verdict."""

    name: str = Field(description="Candidate name.")
    scheme: str | None = Field(default=None, description="Quantization scheme.")
    size_bytes: int | None = Field(default=None, description="Model size on disk.")
    compression_ratio: float | None = Field(default=None, description="Baseline size / size.")
    mean_recovery: float | None = Field(
        default=None, description="Mean over tasks of the primary metric's recovery."
    )
    mean_recovery_stderr: float | None = Field(default=None, description="Its standard error.")
    mean_recovery_ci_low: float | None = Field(default=None, description="95 % interval, low.")
    mean_recovery_ci_high: float | None = Field(default=None, description="95 % interval, high.")
    verdict: Verdict | None = Field(
        default=None,
        description="Against spec.recoveryThreshold: Pass (mean recovery's interval above it, "
        "no task's interval below it, every task scored, every judged set passed), Degraded "
        "(the mean's, a task's or a judged set's interval wholly below it), else Inconclusive "
        "(more items needed to tell, a task without a score, a difference wholly below 0, a "
        "judged set inconclusive or not run).",
    )
    degraded_tasks: list[str] = Field(
        default_factory=list,
        description="Tasks on which the paired test finds the candidate significantly worse.",
    )


class SuiteScore(ApiModel):
    """A model's score on a task suite (e.g. the Open LLM Leaderboard average)."""

    model: str = Field(description="Baseline or candidate name.")
    suite: str = Field(description="Suite name, e.g. openllm-v2.")
    value: float = Field(
        description="Fraction 0-1 (the leaderboards show it x100): the plain average, or for "
        "openllm-v2 the average of scores rescaled between random guessing and 1."
    )
    recovery: float | None = Field(default=None, description="Candidate / baseline suite score.")


class Percentiles(ApiModel):
    """A latency distribution, seconds."""

    p50: float = Field(description="Median.")
    p90: float = Field(description="90th percentile.")
    p99: float = Field(description="99th percentile.")


class Repetition(ApiModel):
    """One run of a scenario: the figures its interval is computed over."""

    requests_per_second: float = Field(description="Completed requests / wall time.")
    output_tokens_per_second: float = Field(description="Output tokens / wall time.")
    latency_seconds: float = Field(description="Median end-to-end latency.")


class PerformancePoint(ApiModel):
    """One model under one load scenario, as the streaming client measured it: with
    repeats, the throughputs and the median latency are means over the repetitions (with a
    95 % t-interval), the percentiles over every request of them."""

    model: str = Field(description="Baseline or candidate name.")
    scenario: str = Field(description="Scenario name.")
    backend: str = Field(description="What served it: vllm, or hf (transformers; not vLLM).")
    requests: int = Field(description="Requests that completed.")
    failed_requests: int = Field(default=0, description="Requests that failed after retries.")
    latency_seconds: float = Field(description="Median end-to-end request latency.")
    output_tokens_per_second: float = Field(description="Output tokens / wall time.")
    requests_per_second: float = Field(description="Completed requests / wall time.")
    ttft_seconds: Percentiles = Field(description="Time to first token.")
    itl_seconds: Percentiles | None = Field(
        default=None, description="Inter-token latency (the first token excluded)."
    )
    e2e_seconds: Percentiles = Field(alias="e2eSeconds", description="End-to-end request latency.")
    rate: float | None = Field(
        default=None, description="Requests per second asked (rate, poisson)."
    )
    repetitions: list[Repetition] = Field(
        default_factory=list, description="Each repetition's figures (spec.performance.repeats)."
    )
    requests_per_second_ci_low: float | None = Field(default=None, description="95 % interval.")
    requests_per_second_ci_high: float | None = Field(default=None, description="Its high end.")
    output_tokens_per_second_ci_low: float | None = Field(
        default=None, description="95 % interval."
    )
    output_tokens_per_second_ci_high: float | None = Field(
        default=None, description="Its high end."
    )
    latency_seconds_ci_low: float | None = Field(default=None, description="95 % interval.")
    latency_seconds_ci_high: float | None = Field(default=None, description="Its high end.")
    tpot_seconds: Percentiles | None = Field(
        default=None,
        description="Time per output token: (e2e - TTFT) / (output tokens - 1) per request "
        "(inference-perf's TPOT; ITL, itlSeconds, is every gap between tokens).",
    )
    slo_attainment: float | None = Field(
        default=None, description="With spec.performance.slo: the share of requests meeting it."
    )
    goodput_requests_per_second: float | None = Field(
        default=None,
        description="With spec.performance.slo: requests meeting it per second (mean over the "
        "repetitions).",
    )
    send_lag_seconds: Percentiles | None = Field(
        default=None,
        description="Rate and poisson: how late the client sent requests against their "
        "schedule (its own limit, not the server's).",
    )
    client_limited: bool = Field(
        default=False,
        description="The client could not keep the schedule (p90 send lag over 50 ms): the "
        "figures are the client's limit, not the server's.",
    )


class Speedup(ApiModel):
    """A candidate against the baseline under one scenario (above 1: the candidate is faster)."""

    model: str = Field(description="Candidate name.")
    scenario: str = Field(description="Scenario name.")
    output_throughput: float = Field(description="Candidate / baseline output tokens per second.")
    request_throughput: float = Field(description="Candidate / baseline requests per second.")
    latency: float = Field(description="Baseline / candidate median end-to-end latency.")
    ttft: float | None = Field(default=None, description="Baseline / candidate median TTFT.")
    output_throughput_ci_low: float | None = Field(
        default=None,
        description="95 % interval over the repetitions (Welch, on the log ratio); one that "
        "holds 1 is no measurable difference.",
    )
    output_throughput_ci_high: float | None = Field(default=None, description="Its high end.")
    request_throughput_ci_low: float | None = Field(default=None, description="95 % interval.")
    request_throughput_ci_high: float | None = Field(default=None, description="Its high end.")
    latency_ci_low: float | None = Field(default=None, description="95 % interval.")
    latency_ci_high: float | None = Field(default=None, description="Its high end.")


class SimilarityScore(ApiModel):
    """How close a candidate's greedy text stays to the baseline's on the same prompts
    (means over prompts, 0-1)."""

    model: str = Field(description="Candidate name.")
    prompts: int = Field(description="Prompts compared.")
    rouge1: float = Field(description="ROUGE-1 F1.")
    rouge_l: float = Field(description="ROUGE-L F1.")
    bertscore_f1: float | None = Field(default=None, description="BERTScore F1 (unrescaled).")
    sts: float | None = Field(default=None, description="Cosine similarity of sentence embeddings.")
    identical: float = Field(description="Fraction of prompts with identical text.")


class JudgedScore(ApiModel):
    """One candidate on one judged evaluation: the judge's verdicts against the baseline
    (pairwise) or its scores of both (single), the recovery with a paired bootstrap interval
    over prompts, and the verdict against spec.recoveryThreshold."""

    model: str = Field(description="Candidate name.")
    prompts: int = Field(description="Prompts with at least one parseable judgement.")
    unjudged: int = Field(
        default=0, description="Prompts left without any parseable judgement (not scored)."
    )
    judgements: int = Field(description="Parseable judgements.")
    unparseable: int = Field(
        default=0,
        description="Judgements that stayed unparseable after judge.retries new asks.",
    )
    retried: int = Field(default=0, description="Judgements asked again (unparseable at first).")
    wins: int | None = Field(default=None, description="Pairwise: judgements for the candidate.")
    ties: int | None = Field(default=None, description="Pairwise: ties.")
    losses: int | None = Field(default=None, description="Pairwise: judgements for the baseline.")
    win_rate: float | None = Field(
        default=None, description="Pairwise: mean over prompts of wins + ties / 2 (0-1)."
    )
    win_rate_ci_low: float | None = Field(default=None, description="95 % interval, low.")
    win_rate_ci_high: float | None = Field(default=None, description="95 % interval, high.")
    score: float | None = Field(default=None, description="Single: the candidate's mean 1-10.")
    baseline_score: float | None = Field(
        default=None, description="Single: the baseline's mean 1-10 on the same prompts."
    )
    recovery: float | None = Field(
        default=None,
        description="Pairwise: win rate / 0.5; single: score / baseline score.",
    )
    recovery_ci_low: float | None = Field(
        default=None, description="Paired bootstrap 95 % interval over prompts, low."
    )
    recovery_ci_high: float | None = Field(default=None, description="Its high end.")
    position_bias: float | None = Field(
        default=None,
        description="Pairwise with swapPositions: the share of judgements asked in both "
        "orders (a prompt, each repeat) whose outcome changed when the two answers swapped "
        "places (0: none).",
    )
    verdict: Verdict | None = Field(
        default=None,
        description="Against spec.recoveryThreshold: Pass (interval at or above it), Degraded "
        "(wholly below), else Inconclusive (also when over a tenth of the prompts went "
        "unjudged).",
    )
    cached: bool = Field(default=False, description="Judgements taken from the result cache.")


class JudgedResult(ApiModel):
    """One judged evaluation of the run: what judged, on which prompts, what it cost, and
    each candidate's outcome."""

    name: str = Field(description="spec.judged[].name.")
    kind: str = Field(description="pairwise or single.")
    judge: str = Field(description="The judge: model reference, or endpoint model at URL.")
    prompts: int = Field(description="Prompts in the set (after limit).")
    prompt_set: str = Field(description="The named set, or the JSONL file.")
    template: str = Field(description="sha256 (12 hex digits) of the judge's messages' form.")
    swapped: bool = Field(default=False, description="Both orders judged.")
    judge_requests: int = Field(default=0, description="Requests sent to the judge (retries too).")
    judge_prompt_tokens: int = Field(default=0, description="Tokens the judge read.")
    judge_completion_tokens: int = Field(default=0, description="Tokens the judge wrote.")
    judge_seconds: float = Field(default=0.0, description="Wall time of the judging.")
    answer_tokens: int = Field(default=0, description="Tokens the models wrote as answers.")
    answer_seconds: float = Field(default=0.0, description="Wall time of the answering.")
    reused_answers: int = Field(
        default=0, description="Answers taken from the similarity stage's generations."
    )
    scores: list[JudgedScore] = Field(default_factory=list, description="Per candidate.")
    judgements_path: str | None = Field(
        default=None, description="Every judgement (prompt, order, judge output, verdict) as JSONL."
    )


class StageFailure(ApiModel):
    """A stage that did not succeed, and why."""

    stage: str = Field(description="Stage name.")
    reason: str = Field(description="One CamelCase word.")
    message: str = Field(description="What went wrong, for a person.")


StatusDetail = Literal["primary", "summary", "full"]


class FullResults(ApiModel):
    """The full results table, written by the aggregate stage beside the run's stage
    documents (``EvalRunStatus.full_results``): what the status keeps of it is bounded."""

    model_config = ApiModel.model_config | {"extra": "ignore"}  # a later v1's fields: kept out

    schema_version: Literal["v1"] = Field(default="v1", description="Document version.")
    scores: list[Score] = Field(default_factory=list, description="Every model x task metric.")
    recovery: list[Recovery] = Field(default_factory=list, description="Every candidate x task.")
    differences: list[Difference] = Field(
        default_factory=list,
        description="Candidate x task metrics where a ratio is undefined: the difference.",
    )
    cached: list[str] = Field(
        default_factory=list, description="Results reused from the result cache, as model/task."
    )


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
    scores: list[Score] = Field(
        default_factory=list,
        description="Per model and task, the primary metric's score (see detail; every metric "
        "of every task and subtask: fullResults).",
    )
    recovery: list[Recovery] = Field(
        default_factory=list,
        description="Per candidate and task, the primary metric's recovery (see detail).",
    )
    differences: list[Difference] = Field(
        default_factory=list,
        description="Per candidate and task, where a ratio is undefined on the primary metric "
        "(signed metric, or a baseline not clearly above 0): the difference with its interval "
        "instead (see detail).",
    )
    detail: StatusDetail | None = Field(
        default=None,
        description="What scores, recovery and differences hold: primary (each task's primary "
        "metric), summary (none, nor cached: too many to fit an object; the candidates' "
        "summaries, suite scores and performance stay) or full (every metric of every task: a "
        "local run's status.json).",
    )
    full_results: str | None = Field(
        default=None,
        description="The full results table on the run's storage (every score, recovery and "
        "difference, of every metric, task and subtask), as JSON.",
    )
    candidates: list[CandidateSummary] = Field(
        default_factory=list, description="Per-candidate summary."
    )
    suite_scores: list[SuiteScore] = Field(
        default_factory=list, description="Per model and suite, the suite's score."
    )
    cached: list[str] = Field(
        default_factory=list,
        description="Results an evaluate stage found in the result cache (keyed by the contents "
        "of the model's weights) instead of computing them, as model/task.",
    )
    reused: list[str] = Field(
        default_factory=list,
        description="Results the operator took from another run's evaluation of the same model "
        "and settings (its reuse key) instead of creating a Job, as model/task (judged/<name> "
        "for a judged evaluation).",
    )
    mean_recovery: float | None = Field(
        default=None, description="The lowest mean recovery among the candidates."
    )
    performance: list[PerformancePoint] = Field(
        default_factory=list, description="Per model and scenario: latency and throughput."
    )
    speedups: list[Speedup] = Field(
        default_factory=list, description="Per candidate and scenario: against the baseline."
    )
    similarity: list[SimilarityScore] = Field(
        default_factory=list, description="Per candidate: text similarity to the baseline."
    )
    judged: list[JudgedResult] = Field(
        default_factory=list,
        description="Per judged evaluation: its cost and each candidate's judged recovery.",
    )
    failures: list[StageFailure] = Field(
        default_factory=list, description="Stages that failed, with the reason."
    )
    results_location: str | None = Field(
        default=None, description="Where the full results (stage documents, samples) are."
    )
