"""The operator's metrics: what a finished run exports, and that deleting it removes it."""

from __future__ import annotations

from qeval.api.evalrun_status import (
    CandidateSummary,
    EvalRunStatus,
    Percentiles,
    PerformancePoint,
    Recovery,
    Score,
    SimilarityScore,
    Speedup,
)
from qeval.k8s.metrics import Metrics

RUN = {"namespace": "ml", "run": "study"}


def status() -> EvalRunStatus:
    def point(model: str, tps: float) -> PerformancePoint:
        return PerformancePoint(
            model=model,
            scenario="synchronous",
            backend="hf",
            requests=8,
            latency_seconds=0.5,
            output_tokens_per_second=tps,
            requests_per_second=2.0,
            ttft_seconds=Percentiles(p50=0.05, p90=0.08, p99=0.1),
            itl_seconds=None,
            e2e_seconds=Percentiles(p50=0.5, p90=0.7, p99=0.9),
        )

    return EvalRunStatus(
        phase="Succeeded",
        scores=[
            Score(model="bf16", task="gsm8k", metric="exact_match", value=0.8, stderr=0.01),
            Score(model="int4", task="gsm8k", metric="exact_match", value=0.78, stderr=0.01),
        ],
        recovery=[Recovery(model="int4", task="gsm8k", metric="exact_match", value=0.975)],
        candidates=[CandidateSummary(name="int4", scheme="W4A16", mean_recovery=0.975)],
        performance=[point("bf16", 100.0), point("int4", 240.0)],
        speedups=[
            Speedup(
                model="int4",
                scenario="synchronous",
                output_throughput=2.4,
                request_throughput=2.4,
                latency=2.0,
            )
        ],
        similarity=[
            SimilarityScore(model="int4", prompts=16, rouge1=0.9, rouge_l=0.85, identical=0.5)
        ],
    )


def test_a_finished_run_exports_scores_recovery_speed_and_similarity() -> None:
    metrics = Metrics()
    metrics.evalrun_results("ml", "study", status())
    value = metrics.registry.get_sample_value
    assert (
        value(
            "qeval_score",
            {**RUN, "model": "int4", "scheme": "W4A16", "task": "gsm8k", "metric": "exact_match"},
        )
        == 0.78
    )
    assert (
        value(
            "qeval_recovery_ratio",
            {**RUN, "model": "int4", "scheme": "W4A16", "task": "gsm8k", "metric": "exact_match"},
        )
        == 0.975
    )
    bench = {**RUN, "model": "int4", "scenario": "synchronous"}
    assert value("qeval_benchmark_ttft_seconds", {**bench, "quantile": "0.9"}) == 0.08
    assert value("qeval_benchmark_e2e_latency_seconds", {**bench, "quantile": "0.99"}) == 0.9
    assert value("qeval_benchmark_itl_seconds", {**bench, "quantile": "0.5"}) is None
    assert value("qeval_benchmark_output_tokens_per_second", bench) == 240.0
    assert value("qeval_benchmark_speedup_ratio", bench) == 2.4
    assert value("qeval_similarity_ratio", {**RUN, "model": "int4", "metric": "rougeL"}) == 0.85
    assert value("qeval_similarity_ratio", {**RUN, "model": "int4", "metric": "sts"}) is None


def test_deleting_a_run_removes_exactly_its_series() -> None:
    metrics = Metrics()
    metrics.evalrun_results("ml", "study", status())
    metrics.evalrun_results("ml", "other", status())
    metrics.phase("EvalRun", "ml", "study", "Succeeded")
    metrics.forget("EvalRun", "ml", "study")
    value = metrics.registry.get_sample_value
    bench = {"model": "int4", "scenario": "synchronous"}
    assert value("qeval_benchmark_output_tokens_per_second", {**RUN, **bench}) is None
    other = {"namespace": "ml", "run": "other", **bench}
    assert value("qeval_benchmark_output_tokens_per_second", other) == 240.0
    assert (
        value("qeval_resources", {"kind": "EvalRun", "namespace": "ml", "phase": "Succeeded"})
        is None
    )


def test_an_updated_run_keeps_its_series_and_drops_only_what_went() -> None:
    metrics = Metrics()
    metrics.evalrun_results("ml", "study", status())
    fewer = status()
    fewer.similarity = []
    metrics.evalrun_results("ml", "study", fewer)
    value = metrics.registry.get_sample_value
    assert value("qeval_similarity_ratio", {**RUN, "model": "int4", "metric": "rouge1"}) is None
    assert value("qeval_mean_recovery_ratio", {**RUN, "model": "int4", "scheme": "W4A16"}) == 0.975
