"""The operator's metrics: what a finished run exports, and that deleting it removes it."""

from __future__ import annotations

from prometheus_client import generate_latest

from qeval.api.evalrun_status import (
    CandidateSummary,
    EvalRunStatus,
    JudgedResult,
    JudgedScore,
    Percentiles,
    PerformancePoint,
    Recovery,
    Score,
    SimilarityScore,
    Speedup,
)
from qeval.k8s.metrics import Metrics

RUN = {"namespace": "ml", "run": "study"}
GSM8K = {"task": "gsm8k", "metric": "exact_match"}
STRICT, FLEXIBLE = "strict-match", "flexible-extract"
INT4 = {**RUN, "model": "int4", "scheme": "W4A16", **GSM8K}


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
            goodput_requests_per_second=1.5 if model == "int4" else None,
        )

    return EvalRunStatus(
        phase="Succeeded",
        scores=[
            # gsm8k's two filters: the baseline judges strict-match.
            Score(**GSM8K, filter=STRICT, model="bf16", value=0.8, stderr=0.01, primary=True),
            Score(**GSM8K, filter=FLEXIBLE, model="bf16", value=0.84, stderr=0.01),
            Score(**GSM8K, filter=STRICT, model="int4", value=0.78, stderr=0.01, primary=True),
            Score(**GSM8K, filter=FLEXIBLE, model="int4", value=0.7, stderr=0.01),
        ],
        recovery=[
            Recovery(**GSM8K, filter=STRICT, model="int4", value=0.975, ci_low=0.95, ci_high=1.0),
            Recovery(**GSM8K, filter=FLEXIBLE, model="int4", value=0.833, ci_low=0.8, ci_high=0.86),
        ],
        candidates=[
            CandidateSummary(
                name="int4",
                scheme="W4A16",
                mean_recovery=0.975,
                mean_recovery_ci_low=0.95,
                mean_recovery_ci_high=1.0,
            )
        ],
        performance=[point("bf16", 100.0), point("int4", 240.0)],
        speedups=[
            Speedup(
                model="int4",
                scenario="synchronous",
                output_throughput=2.4,
                request_throughput=2.4,
                latency=2.0,
                output_throughput_ci_low=2.2,
                output_throughput_ci_high=2.6,
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
    strict = {**INT4, "filter": STRICT, "primary": "true"}
    flexible = {**INT4, "filter": FLEXIBLE, "primary": "false"}
    # Each filter its own series; the baseline's primary one (the verdict's) says so.
    assert value("qeval_score", {**strict, "better": "higher"}) == 0.78
    assert value("qeval_score", {**flexible, "better": "higher"}) == 0.7
    assert value("qeval_score_stderr", {**flexible, "better": "higher"}) == 0.01
    assert (
        value("qeval_score", {**strict, "model": "bf16", "scheme": "baseline", "better": "higher"})
        == 0.8
    )
    assert (
        value(
            "qeval_score", {**flexible, "model": "bf16", "scheme": "baseline", "better": "higher"}
        )
        == 0.84
    )
    assert value("qeval_recovery_ratio", strict) == 0.975
    assert value("qeval_recovery_ratio_ci_low", strict) == 0.95
    assert value("qeval_recovery_ratio_ci_high", strict) == 1.0
    assert value("qeval_recovery_ratio", flexible) == 0.833
    assert value("qeval_recovery_ratio_ci_high", flexible) == 0.86
    assert value("qeval_recovery_ratio", {**strict, "primary": "false"}) is None
    candidate = {**RUN, "model": "int4", "scheme": "W4A16"}
    assert value("qeval_mean_recovery_ratio", candidate) == 0.975
    assert value("qeval_mean_recovery_ratio_ci_low", candidate) == 0.95
    assert value("qeval_mean_recovery_ratio_ci_high", candidate) == 1.0
    bench = {**RUN, "model": "int4", "scenario": "synchronous"}
    assert value("qeval_benchmark_ttft_seconds", {**bench, "quantile": "0.9"}) == 0.08
    assert value("qeval_benchmark_e2e_latency_seconds", {**bench, "quantile": "0.99"}) == 0.9
    assert value("qeval_benchmark_itl_seconds", {**bench, "quantile": "0.5"}) is None
    assert value("qeval_benchmark_output_tokens_per_second", bench) == 240.0
    assert value("qeval_benchmark_speedup_ratio", bench) == 2.4
    assert value("qeval_benchmark_speedup_ratio_ci_low", bench) == 2.2
    assert value("qeval_benchmark_speedup_ratio_ci_high", bench) == 2.6
    assert value("qeval_benchmark_goodput_requests_per_second", bench) == 1.5
    assert value("qeval_benchmark_goodput_requests_per_second", {**bench, "model": "bf16"}) is None
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


def test_primary_is_the_baselines_choice() -> None:
    """The candidate's own flags do not matter (the baseline decides, as for the verdict);
    an interval the run does not have is no series."""
    run = status()
    run.scores = [
        s.model_copy(update={"primary": s.filter == FLEXIBLE}) if s.model == "int4" else s
        for s in run.scores
    ]
    run.recovery[0].ci_low = run.recovery[0].ci_high = None
    metrics = Metrics()
    metrics.evalrun_results("ml", "study", run)
    value = metrics.registry.get_sample_value
    strict = {**INT4, "filter": STRICT, "primary": "true"}
    assert value("qeval_recovery_ratio", strict) == 0.975
    assert value("qeval_recovery_ratio_ci_high", strict) is None
    flexible = {**INT4, "filter": FLEXIBLE}
    assert value("qeval_recovery_ratio", {**flexible, "primary": "false"}) == 0.833
    # A score is shown as primary where either side judged it (primary_table's rule).
    assert value("qeval_score", {**flexible, "primary": "true", "better": "higher"}) == 0.7
    assert value("qeval_score", {**strict, "primary": "true", "better": "higher"}) == 0.78


def test_a_run_whose_primary_metric_changed_drops_the_old_series() -> None:
    metrics = Metrics()
    metrics.evalrun_results("ml", "study", status())
    flipped = status()
    flipped.scores = [
        s.model_copy(update={"primary": s.filter == FLEXIBLE}) for s in flipped.scores
    ]
    metrics.evalrun_results("ml", "study", flipped)
    value = metrics.registry.get_sample_value
    strict, flexible = {**INT4, "filter": STRICT}, {**INT4, "filter": FLEXIBLE}
    assert value("qeval_recovery_ratio", {**strict, "primary": "false"}) == 0.975
    assert value("qeval_recovery_ratio", {**strict, "primary": "true"}) is None
    assert value("qeval_recovery_ratio_ci_high", {**strict, "primary": "true"}) is None
    assert value("qeval_recovery_ratio", {**flexible, "primary": "true"}) == 0.833
    assert value("qeval_recovery_ratio", {**flexible, "primary": "false"}) is None
    metrics.forget("EvalRun", "ml", "study")
    names = {m.name for m in metrics.registry.collect() for _ in m.samples}
    assert not names & {"qeval_score", "qeval_recovery_ratio", "qeval_recovery_ratio_ci_high"}


def test_a_perplexity_says_lower_is_better() -> None:
    """A score where lower is better is labelled so (a dashboard draws it on its own axis,
    never as a percent beside accuracies); its recovery needs no label (1 = no loss)."""
    run = status()
    wikitext = {"task": "wikitext", "metric": "bits_per_byte"}
    run.scores += [
        Score(**wikitext, model="bf16", value=0.61, higher_is_better=False, primary=True),
        Score(**wikitext, model="int4", value=0.64, higher_is_better=False, primary=True),
    ]
    metrics = Metrics()
    metrics.evalrun_results("ml", "study", run)
    value = metrics.registry.get_sample_value
    labels = {**RUN, "model": "int4", "scheme": "W4A16", **wikitext, "filter": "none"}
    assert value("qeval_score", {**labels, "primary": "true", "better": "lower"}) == 0.64
    assert value("qeval_score", {**labels, "primary": "true", "better": "higher"}) is None
    strict = {**INT4, "filter": STRICT, "primary": "true"}
    assert value("qeval_score", {**strict, "better": "lower"}) is None


def judged() -> list[JudgedResult]:
    """A pairwise set judged in both orders and a single-answer one, on the one candidate."""
    return [
        JudgedResult(
            name="mt-bench",
            kind="pairwise",
            judge="Qwen/Qwen2.5-72B-Instruct",
            prompts=80,
            prompt_set="mt-bench",
            template="3f9a0c1d2e4b",
            swapped=True,
            judge_requests=164,
            judge_prompt_tokens=310_402,
            judge_completion_tokens=24_388,
            judge_seconds=191.5,
            scores=[
                JudgedScore(
                    model="int4",
                    prompts=80,
                    judgements=157,
                    unparseable=3,
                    wins=57,
                    ties=31,
                    losses=69,
                    win_rate=0.459,
                    win_rate_ci_low=0.401,
                    win_rate_ci_high=0.517,
                    recovery=0.918,
                    recovery_ci_low=0.802,
                    recovery_ci_high=1.034,
                    position_bias=0.138,
                    verdict="Inconclusive",
                )
            ],
        ),
        JudgedResult(
            name="helpfulness",
            kind="single",
            judge="judge at http://judge.ml:8000/v1",
            prompts=40,
            prompt_set="prompts/helpfulness.jsonl",
            template="a1b2c3d4e5f6",
            judge_requests=80,
            judge_prompt_tokens=52_000,
            judge_completion_tokens=6_400,
            judge_seconds=48.0,
            scores=[
                JudgedScore(
                    model="int4",
                    prompts=40,
                    judgements=80,
                    score=7.12,
                    baseline_score=7.74,
                    recovery=0.92,
                    recovery_ci_low=0.871,
                    recovery_ci_high=0.969,
                    verdict="Inconclusive",
                )
            ],
        ),
    ]


def test_a_judged_run_exports_judged_recovery_and_the_judges_cost() -> None:
    run = status()
    run.judged = judged()
    metrics = Metrics()
    metrics.evalrun_results("ml", "study", run)
    value = metrics.registry.get_sample_value
    mt_bench = {**RUN, "model": "int4", "judged": "mt-bench"}
    assert value("qeval_judged_recovery_ratio", mt_bench) == 0.918
    assert value("qeval_judged_recovery_ratio_ci_low", mt_bench) == 0.802
    assert value("qeval_judged_recovery_ratio_ci_high", mt_bench) == 1.034
    assert value("qeval_judged_win_rate", mt_bench) == 0.459
    assert value("qeval_judged_position_bias", mt_bench) == 0.138
    assert value("qeval_judged_unparseable", mt_bench) == 3
    # A single-answer set has no win rate and no position bias; none unparseable is a 0.
    helpful = {**RUN, "model": "int4", "judged": "helpfulness"}
    assert value("qeval_judged_recovery_ratio", helpful) == 0.92
    assert value("qeval_judged_recovery_ratio_ci_high", helpful) == 0.969
    assert value("qeval_judged_win_rate", helpful) is None
    assert value("qeval_judged_position_bias", helpful) is None
    assert value("qeval_judged_unparseable", helpful) == 0
    # The judge's cost, per set (not per candidate).
    assert value("qeval_judge_tokens", {**RUN, "judged": "mt-bench", "kind": "prompt"}) == 310402
    assert value("qeval_judge_tokens", {**RUN, "judged": "mt-bench", "kind": "completion"}) == (
        24388
    )
    assert value("qeval_judge_tokens", {**RUN, "judged": "helpfulness", "kind": "prompt"}) == (
        52000
    )
    assert value("qeval_judge_seconds", {**RUN, "judged": "mt-bench"}) == 191.5
    assert value("qeval_judge_seconds", {**RUN, "judged": "helpfulness"}) == 48.0
    exposition = generate_latest(metrics.registry).decode()
    assert "# TYPE qeval_judged_recovery_ratio gauge" in exposition
    assert (
        'qeval_judge_tokens{judged="mt-bench",kind="completion",namespace="ml",run="study"} '
        "24388.0" in exposition
    )


def test_a_judged_set_gone_or_its_run_deleted_takes_its_series_along() -> None:
    run = status()
    run.judged = judged()
    metrics = Metrics()
    metrics.evalrun_results("ml", "study", run)
    metrics.evalrun_results("ml", "other", run)
    run.judged = run.judged[:1]  # helpfulness no longer judged
    metrics.evalrun_results("ml", "study", run)
    value = metrics.registry.get_sample_value
    helpful = {**RUN, "model": "int4", "judged": "helpfulness"}
    assert value("qeval_judged_recovery_ratio", helpful) is None
    assert value("qeval_judge_seconds", {**RUN, "judged": "helpfulness"}) is None
    assert value("qeval_judged_recovery_ratio", {**helpful, "judged": "mt-bench"}) == 0.918
    metrics.forget("EvalRun", "ml", "study")
    study = [
        s.labels
        for m in metrics.registry.collect()
        if m.name.startswith(("qeval_judged_", "qeval_judge_"))
        for s in m.samples
        if s.labels.get("run") == "study"
    ]
    assert not study
    other = {"namespace": "ml", "run": "other", "judged": "helpfulness"}
    assert value("qeval_judge_tokens", {**other, "kind": "completion"}) == 6400
    assert value("qeval_judged_unparseable", {**other, "model": "int4"}) == 0
