"""Every Prometheus metric the operator exports (prefix ``qeval_``), in one place.

Label sets are bounded: one series per resource (or per run x model x task metric x filter)
that exists, removed when the resource is deleted. Each operator instance has its own
CollectorRegistry, so tests can run several.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from qeval import __version__
from qeval.api.evalrun_status import EvalRunStatus, Recovery, Score
from qeval.api.quantizedmodel import QuantizedModelStatus

# A task metric as lm-eval names it ("exact_match,strict-match": metric and filter), and
# whether it is the one the verdict judges (the baseline's primary metric): "true"/"false".
RESULT_LABELS = ("namespace", "run", "model", "scheme", "task", "metric", "filter", "primary")
# A score also says which way is better: "higher" (accuracy) or "lower" (a perplexity), so a
# dashboard never draws a perplexity on an accuracy's percent axis. (Recovery needs no such
# label: it is baseline / candidate where lower is better, 1 = no loss either way.)
SCORE_LABELS = (*RESULT_LABELS, "better")
CANDIDATE_LABELS = ("namespace", "run", "model", "scheme")
# A candidate on one judged evaluation (spec.judged[].name), and that evaluation's own cost.
JUDGED_LABELS = ("namespace", "run", "model", "judged")
JUDGE_LABELS = ("namespace", "run", "judged")
MODEL_LABELS = ("namespace", "quantizedmodel", "scheme")
PHASES = {
    "EvalRun": ("Pending", "WaitingForModels", "Running", "Succeeded", "Failed"),
    "QuantizedModel": ("Pending", "Quantizing", "Ready", "Failed"),
}


class _Phases(Collector):
    """qeval_resources{kind,namespace,phase}: how many resources are in each phase."""

    def __init__(self) -> None:
        self.phase: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) -> phase

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "qeval_resources",
            "QuantizedModels and EvalRuns by phase",
            labels=["kind", "namespace", "phase"],
        )
        tally = Tally((kind, ns, phase) for (kind, ns, _), phase in self.phase.items())
        for kind, ns in sorted({(k, n) for k, n, _ in self.phase}):
            for phase in PHASES[kind]:
                family.add_metric([kind, ns, phase], tally[(kind, ns, phase)])
        yield family


class Metrics:
    """The operator's metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self._phases = _Phases()
        r.register(self._phases)
        self.info = Gauge("qeval_build_info", "qeval version (always 1)", ["version"], registry=r)
        self.info.labels(__version__).set(1)
        self.reconcile_seconds = Histogram(
            "qeval_reconcile_duration_seconds",
            "Time to reconcile one resource once",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.jobs_created = Counter(
            "qeval_jobs_created", "Stage Jobs created", ["namespace", "stage_kind"], registry=r
        )
        self.jobs_failed = Counter(
            "qeval_jobs_failed",
            "Stages that failed, by reason",
            ["namespace", "stage_kind", "reason"],
            registry=r,
        )
        self.api_retries = Counter(
            "qeval_api_retries",
            "API requests retried after a transient failure, by verb, resource and reason "
            "(an HTTP status or an exception class name)",
            ["verb", "resource", "reason"],
            registry=r,
        )
        self.score = Gauge(
            "qeval_score", "A model's score on a task metric", SCORE_LABELS, registry=r
        )
        self.score_stderr = Gauge(
            "qeval_score_stderr", "Standard error of qeval_score", SCORE_LABELS, registry=r
        )
        self.recovery = Gauge(
            "qeval_recovery_ratio",
            "Candidate score / baseline score on a task metric (1 = no loss)",
            RESULT_LABELS,
            registry=r,
        )
        self.recovery_ci = {
            end: Gauge(
                f"qeval_recovery_ratio_ci_{end}",
                f"{what} end of qeval_recovery_ratio's 95 % confidence interval",
                RESULT_LABELS,
                registry=r,
            )
            for end, what in (("low", "Low"), ("high", "High"))
        }
        self.mean_recovery = Gauge(
            "qeval_mean_recovery_ratio",
            "A candidate's mean recovery over the run's tasks (their primary metrics)",
            CANDIDATE_LABELS,
            registry=r,
        )
        self.mean_recovery_ci = {
            end: Gauge(
                f"qeval_mean_recovery_ratio_ci_{end}",
                f"{what} end of qeval_mean_recovery_ratio's 95 % confidence interval",
                CANDIDATE_LABELS,
                registry=r,
            )
            for end, what in (("low", "Low"), ("high", "High"))
        }
        self.quantization_seconds = Gauge(
            "qeval_quantization_wall_seconds",
            "Wall time of a quantization",
            MODEL_LABELS,
            registry=r,
        )
        self.compression_ratio = Gauge(
            "qeval_compression_ratio", "Base size / quantized size", MODEL_LABELS, registry=r
        )
        self.model_size_bytes = Gauge(
            "qeval_model_size_bytes", "Size of a quantized model on disk", MODEL_LABELS, registry=r
        )
        bench = ("namespace", "run", "model", "scenario")
        self.benchmark_latency = {
            name: Gauge(
                f"qeval_benchmark_{name}_seconds",
                f"{what} of a model under a load scenario (quantile 0.5, 0.9, 0.99)",
                (*bench, "quantile"),
                registry=r,
            )
            for name, what in (
                ("ttft", "Time to first token"),
                ("itl", "Inter-token latency"),
                ("e2e_latency", "End-to-end request latency"),
            )
        }
        self.benchmark_output_tps = Gauge(
            "qeval_benchmark_output_tokens_per_second",
            "Output tokens per second of a model under a load scenario",
            bench,
            registry=r,
        )
        self.benchmark_rps = Gauge(
            "qeval_benchmark_requests_per_second",
            "Completed requests per second of a model under a load scenario",
            bench,
            registry=r,
        )
        self.speedup = Gauge(
            "qeval_benchmark_speedup_ratio",
            "Candidate / baseline output-token throughput under a load scenario",
            bench,
            registry=r,
        )
        self.speedup_ci = {
            end: Gauge(
                f"qeval_benchmark_speedup_ratio_ci_{end}",
                f"The {end} end of the speedup's 95 % interval over the scenario's repetitions "
                "(an interval holding 1: no measurable difference)",
                bench,
                registry=r,
            )
            for end in ("low", "high")
        }
        self.goodput = Gauge(
            "qeval_benchmark_goodput_requests_per_second",
            "Requests meeting spec.performance.slo per second, under a load scenario",
            bench,
            registry=r,
        )
        self.similarity = Gauge(
            "qeval_similarity_ratio",
            "How close a candidate's text stays to the baseline's (rouge1, rougeL, bertscore, sts)",
            ("namespace", "run", "model", "metric"),
            registry=r,
        )
        self.judged_recovery = Gauge(
            "qeval_judged_recovery_ratio",
            "A candidate's judged recovery against the baseline on a judged evaluation "
            "(pairwise: win rate / 0.5; single: mean score / the baseline's; 1 = no loss)",
            JUDGED_LABELS,
            registry=r,
        )
        self.judged_recovery_ci = {
            end: Gauge(
                f"qeval_judged_recovery_ratio_ci_{end}",
                f"{what} end of qeval_judged_recovery_ratio's 95 % paired bootstrap interval",
                JUDGED_LABELS,
                registry=r,
            )
            for end, what in (("low", "Low"), ("high", "High"))
        }
        self.judged_win_rate = Gauge(
            "qeval_judged_win_rate",
            "Pairwise judged evaluation: the candidate's wins + ties / 2 against the baseline, "
            "mean over prompts (0-1)",
            JUDGED_LABELS,
            registry=r,
        )
        self.judged_position_bias = Gauge(
            "qeval_judged_position_bias",
            "Pairwise judged evaluation with both orders: share of prompts whose verdict "
            "changed when the two answers swapped places (0-1)",
            JUDGED_LABELS,
            registry=r,
        )
        self.judged_unparseable = Gauge(
            "qeval_judged_unparseable",
            "Judgements still unparseable after the judge was asked again",
            JUDGED_LABELS,
            registry=r,
        )
        self.judge_tokens = Gauge(
            "qeval_judge_tokens",
            "Tokens the judge read (kind=prompt) and wrote (kind=completion) on a judged "
            "evaluation",
            (*JUDGE_LABELS, "kind"),
            registry=r,
        )
        self.judge_seconds = Gauge(
            "qeval_judge_seconds",
            "Wall time of a judged evaluation's judging",
            JUDGE_LABELS,
            registry=r,
        )
        # Series each resource owns, so deleting the resource removes exactly those.
        self._series: dict[tuple[str, str, str], list[tuple[Gauge, tuple[str, ...]]]] = {}

    def serve(self, port: int, addr: str = "0.0.0.0") -> tuple[Any, Any]:
        """Serve /metrics; returns (server, thread), so the server can be shut down."""
        return start_http_server(port, addr=addr, registry=self.registry)

    def api_retry(self, verb: str, resource: str, reason: str) -> None:
        """One retry of an API request (``qeval.k8s.kube.Kube``'s ``on_retry``)."""
        self.api_retries.labels(verb, resource, reason).inc()

    def phase(self, kind: str, namespace: str, name: str, phase: str | None) -> None:
        if phase:
            self._phases.phase[(kind, namespace, name)] = phase

    def _replace(
        self, key: tuple[str, str, str], series: list[tuple[Gauge, tuple[str, ...], float]]
    ) -> None:
        """Set a resource's series, then drop those it no longer has (a scrape in between
        sees either the old or the new value, never a gap)."""
        for gauge, labels, value in series:
            gauge.labels(*labels).set(value)
        keep = {(id(g), labels) for g, labels, _ in series}
        for gauge, labels in self._series.get(key, []):
            if (id(gauge), labels) not in keep:
                with suppress(KeyError):
                    gauge.remove(*labels)
        self._series[key] = [(g, labels) for g, labels, _ in series]

    def _drop(self, key: tuple[str, str, str]) -> None:
        for gauge, labels in self._series.pop(key, []):
            with suppress(KeyError):
                gauge.remove(*labels)

    def evalrun_results(self, namespace: str, run: str, status: EvalRunStatus) -> None:
        """Scores and recovery of a finished run (replacing any earlier ones)."""
        schemes = {c.name: c.scheme or "" for c in status.candidates}
        primary_scores, primary_recovery = _primary(status, schemes)
        series: list[tuple[Gauge, tuple[str, ...], float]] = []
        for s in status.scores:
            key = _key(s)
            scheme = schemes.get(s.model, "baseline")
            better = "higher" if s.higher_is_better else "lower"
            primary = _flag(key in primary_scores)
            labels = (namespace, run, s.model, scheme, *key[1:], primary, better)
            series.append((self.score, labels, s.value))
            if s.stderr is not None:
                series.append((self.score_stderr, labels, s.stderr))
        for r in status.recovery:
            key = _key(r)
            scheme = schemes.get(r.model, "")
            rec = (namespace, run, r.model, scheme, *key[1:], _flag(key in primary_recovery))
            series.append((self.recovery, rec, r.value))
            for end, value in (("low", r.ci_low), ("high", r.ci_high)):
                if value is not None:
                    series.append((self.recovery_ci[end], rec, value))
        for c in status.candidates:
            candidate = (namespace, run, c.name, c.scheme or "")
            if c.mean_recovery is not None:
                series.append((self.mean_recovery, candidate, c.mean_recovery))
            for end, value in (("low", c.mean_recovery_ci_low), ("high", c.mean_recovery_ci_high)):
                if value is not None:
                    series.append((self.mean_recovery_ci[end], candidate, value))
        series += self._serving(namespace, run, status)
        series += self._judged(namespace, run, status)
        self._replace(("EvalRun", namespace, run), series)

    def _serving(
        self, namespace: str, run: str, status: EvalRunStatus
    ) -> list[tuple[Gauge, tuple[str, ...], float]]:
        """The benchmark and similarity series of a run, where those stages ran."""
        series: list[tuple[Gauge, tuple[str, ...], float]] = []
        for p in status.performance:
            key = (namespace, run, p.model, p.scenario)
            for name, dist in (
                ("ttft", p.ttft_seconds),
                ("itl", p.itl_seconds),
                ("e2e_latency", p.e2e_seconds),
            ):
                if dist is not None:
                    for q, value in (("0.5", dist.p50), ("0.9", dist.p90), ("0.99", dist.p99)):
                        series.append((self.benchmark_latency[name], (*key, q), value))
            series.append((self.benchmark_output_tps, key, p.output_tokens_per_second))
            series.append((self.benchmark_rps, key, p.requests_per_second))
            if p.goodput_requests_per_second is not None:
                series.append((self.goodput, key, p.goodput_requests_per_second))
        for sp in status.speedups:
            key = (namespace, run, sp.model, sp.scenario)
            series.append((self.speedup, key, sp.output_throughput))
            for end, bound in (
                ("low", sp.output_throughput_ci_low),
                ("high", sp.output_throughput_ci_high),
            ):
                if bound is not None:
                    series.append((self.speedup_ci[end], key, bound))
        for sim in status.similarity:
            for metric, score in (
                ("rouge1", sim.rouge1),
                ("rougeL", sim.rouge_l),
                ("bertscore", sim.bertscore_f1),
                ("sts", sim.sts),
            ):
                if score is not None:
                    series.append((self.similarity, (namespace, run, sim.model, metric), score))
        return series

    def _judged(
        self, namespace: str, run: str, status: EvalRunStatus
    ) -> list[tuple[Gauge, tuple[str, ...], float]]:
        """The judged evaluations' series of a run: per candidate its judged recovery,
        win rate, position bias and unparseable judgements; per set what the judge cost."""
        series: list[tuple[Gauge, tuple[str, ...], float]] = []
        for j in status.judged:
            judged = (namespace, run, j.name)
            series.append((self.judge_tokens, (*judged, "prompt"), j.judge_prompt_tokens))
            series.append((self.judge_tokens, (*judged, "completion"), j.judge_completion_tokens))
            series.append((self.judge_seconds, judged, j.judge_seconds))
            for s in j.scores:
                labels = (namespace, run, s.model, j.name)
                for gauge, value in (
                    (self.judged_recovery, s.recovery),
                    (self.judged_recovery_ci["low"], s.recovery_ci_low),
                    (self.judged_recovery_ci["high"], s.recovery_ci_high),
                    (self.judged_win_rate, s.win_rate),
                    (self.judged_position_bias, s.position_bias),
                ):
                    if value is not None:
                        series.append((gauge, labels, value))
                series.append((self.judged_unparseable, labels, s.unparseable))
        return series

    def quantized_model(
        self, namespace: str, name: str, scheme: str, status: QuantizedModelStatus
    ) -> None:
        labels = (namespace, name, scheme)
        series: list[tuple[Gauge, tuple[str, ...], float]] = []
        if status.wall_seconds is not None:
            series.append((self.quantization_seconds, labels, status.wall_seconds))
        if status.compression_ratio is not None:
            series.append((self.compression_ratio, labels, status.compression_ratio))
        if status.size_bytes is not None:
            series.append((self.model_size_bytes, labels, status.size_bytes))
        self._replace(("QuantizedModel", namespace, name), series)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Remove every series of a deleted resource."""
        self._drop((kind, namespace, name))
        self._phases.phase.pop((kind, namespace, name), None)


ResultKey = tuple[str, str, str, str]  # model, task, metric, filter


def _key(s: Score | Recovery) -> ResultKey:
    return s.model, s.task, s.metric, s.filter


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _primary(
    status: EvalRunStatus, schemes: dict[str, str]
) -> tuple[set[ResultKey], set[ResultKey]]:
    """The scores and recoveries on a primary metric, by the rule the verdict and the tables
    use (``primary_table``: the baseline's choice), the baseline being the run's one model
    that is not a candidate."""
    if not status.scores:
        return set(), set()
    # Imported here: the summary module brings numpy and scipy (about 60 MiB), which the
    # operator otherwise never loads; only a run with scores needs them.
    from qeval.results.summary import primary_table

    baseline = next((s.model for s in status.scores if s.model not in schemes), "")
    scores, recovery, _ = primary_table(status, baseline)
    return {_key(s) for s in scores}, {_key(r) for r in recovery}
