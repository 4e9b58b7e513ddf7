"""Serving figures against the baseline: pure."""

from __future__ import annotations

from collections.abc import Sequence

from qeval.api.evalrun_status import PerformancePoint, Speedup


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0 or num <= 0:
        return None
    return round(num / den, 4)


def speedups(points: Sequence[PerformancePoint], baseline: str) -> list[Speedup]:
    """Each candidate against the baseline in every scenario both were measured in:
    throughput ratios (candidate / baseline) and latency ratios (baseline / candidate),
    so that above 1 always means the candidate is faster."""
    base = {p.scenario: p for p in points if p.model == baseline}
    out = []
    for p in points:
        b = base.get(p.scenario)
        if p.model == baseline or b is None:
            continue
        output = _ratio(p.output_tokens_per_second, b.output_tokens_per_second)
        requests = _ratio(p.requests_per_second, b.requests_per_second)
        latency = _ratio(b.latency_seconds, p.latency_seconds)
        if output is None or requests is None or latency is None:
            continue
        ttft = _ratio(b.ttft_seconds.p50, p.ttft_seconds.p50)
        out.append(
            Speedup(
                model=p.model,
                scenario=p.scenario,
                output_throughput=output,
                request_throughput=requests,
                latency=latency,
                ttft=ttft,
            )
        )
    return out
