"""Every Prometheus metric the operator exports (prefix ``qeval_``), in one place.

Label sets are bounded: one series per resource (or per run x model x task metric) that
exists, removed when the resource is deleted. Each operator instance has its own
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
from qeval.api.evalrun import EvalRunStatus
from qeval.api.quantizedmodel import QuantizedModelStatus

RESULT_LABELS = ("namespace", "run", "model", "scheme", "task", "metric")
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
        self.score = Gauge(
            "qeval_score", "A model's score on a task metric", RESULT_LABELS, registry=r
        )
        self.score_stderr = Gauge(
            "qeval_score_stderr", "Standard error of qeval_score", RESULT_LABELS, registry=r
        )
        self.recovery = Gauge(
            "qeval_recovery_ratio",
            "Candidate score / baseline score on a task (1 = no loss)",
            RESULT_LABELS,
            registry=r,
        )
        self.mean_recovery = Gauge(
            "qeval_mean_recovery_ratio",
            "A candidate's mean recovery over the run's tasks",
            ("namespace", "run", "model", "scheme"),
            registry=r,
        )
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
        # Series each resource owns, so deleting the resource removes exactly those.
        self._series: dict[tuple[str, str, str], list[tuple[Gauge, tuple[str, ...]]]] = {}

    def serve(self, port: int, addr: str = "0.0.0.0") -> tuple[Any, Any]:
        """Serve /metrics; returns (server, thread), so the server can be shut down."""
        return start_http_server(port, addr=addr, registry=self.registry)

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
        series: list[tuple[Gauge, tuple[str, ...], float]] = []
        for s in status.scores:
            labels = (namespace, run, s.model, schemes.get(s.model, "baseline"), s.task, s.metric)
            series.append((self.score, labels, s.value))
            if s.stderr is not None:
                series.append((self.score_stderr, labels, s.stderr))
        for r in status.recovery:
            labels = (namespace, run, r.model, schemes.get(r.model, ""), r.task, r.metric)
            series.append((self.recovery, labels, r.value))
        for c in status.candidates:
            if c.mean_recovery is not None:
                series.append(
                    (self.mean_recovery, (namespace, run, c.name, c.scheme or ""), c.mean_recovery)
                )
        self._replace(("EvalRun", namespace, run), series)

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
