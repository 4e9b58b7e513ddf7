"""The benchmark stage: one model's latency and throughput under the run's load scenarios.

The model is served behind an OpenAI-compatible endpoint (``vllm serve``; with backend
``hf`` the hf backend's transformers server, labelled hf and never vLLM; or a server
already running at ``base_url``) and measured by qeval's streaming client
(``qeval.serving.client``): per scenario TTFT, inter-token and end-to-end latency
percentiles, request and output-token throughput. Prompts are random words cut to the
scenario's prompt length with the model's tokenizer, different for every request (so a
prefix cache cannot help), and every request generates exactly its output length
(``ignore_eos``). A request that still fails after its retries fails the stage: figures
with holes in them would mislead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from qeval.api.common import ApiModel, ModelSource
from qeval.api.evalrun import OPEN_LOOP, Backend, Performance, Scenario, Serving, Slo
from qeval.api.evalrun_status import PerformancePoint, Repetition
from qeval.stages.envelope import Document, StageError

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "so", "ta", "vi", "ze", "po", "da", "fe", "gu", "hi")


class BenchmarkInput(Document):
    """One model, the run's scenarios."""

    model_name: str = Field(description="Baseline or candidate name.")
    model: ModelSource
    backend: Backend = Backend.HF
    base_url: str | None = Field(
        default=None,
        description="A server already serving the model under model_name (backend "
        "vllm-server: the run's server); None: start one in this process.",
    )
    performance: Performance = Field(default_factory=Performance)
    serving: Serving | None = Field(default=None, description="vLLM server settings.")
    seed: int = 1234
    output_dir: str


class BenchmarkResult(ApiModel):
    model_name: str
    backend: str = Field(description="What served the model: hf (transformers) or vllm.")
    points: list[PerformancePoint]
    requests_path: str = Field(description="Every measured request, one JSON line each.")


def random_text(rng: np.random.Generator, words: int) -> str:
    picks = rng.integers(0, len(SYLLABLES), size=(words, 3))
    return " ".join("".join(SYLLABLES[i] for i in row) for row in picks)


def synthetic_prompts(tokenizer: Any, count: int, tokens: int, seed: int) -> list[str]:
    """``count`` distinct prompts of about ``tokens`` tokens (exactly, where the tokenizer
    round-trips; never more). Without a tokenizer, one word counts as one token."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        if tokenizer is None:
            out.append(random_text(rng, tokens))
            continue
        ids = tokenizer(random_text(rng, tokens * 2), add_special_tokens=False)["input_ids"]
        ids = ids[:tokens]
        for _ in range(5):  # decoding can merge tokens differently; trim until it fits
            text = tokenizer.decode(ids)
            over = len(tokenizer(text, add_special_tokens=False)["input_ids"]) - tokens
            if over <= 0:
                break
            ids = ids[: len(ids) - over]
        out.append(text)
    return out


def _tokenizer(path: Path) -> Any:
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception:  # no tokenizer files, or no transformers: count words instead
        return None


@contextmanager
def endpoint(inp: BenchmarkInput, path: Path, out_dir: Path) -> Iterator[tuple[str, str, str]]:
    """(base URL, served model name, backend label) of a healthy server for the model."""
    from qeval.serving.client import wait_healthy
    from qeval.serving.launch import served

    if inp.base_url:
        try:
            deadline = min(60.0, inp.performance.request_timeout_seconds)
            asyncio.run(wait_healthy(inp.base_url, deadline))
        except TimeoutError as e:
            raise StageError("ServerUnavailable", f"{e}; is the server running?") from e
        label = "hf" if inp.backend == Backend.HF else "vllm"
        yield inp.base_url, inp.model_name, label
        return
    timeout = float(inp.serving.ready_timeout_seconds) if inp.serving else 900.0
    log = out_dir / "server.log"
    with served(inp.backend, str(path), inp.model_name, log, timeout, inp.serving) as server:
        yield server.base_url, server.model, server.backend


# An open loop whose p90 send lag is over this was not sent as scheduled: the client, not
# the server, set the pace (benchmarks/client_limits.py measures where that starts).
CLIENT_LAG_LIMIT = 0.05


async def _load(
    base_url: str,
    served_name: str,
    scenario: Scenario,
    prompts: list[str],
    settings: Any,
    seed: int,
) -> Any:
    from qeval.serving.client import arrival_offsets, concurrency_of, run_arrivals, run_load

    if scenario.kind in OPEN_LOOP:
        assert scenario.rate is not None
        offsets = arrival_offsets(scenario.kind, scenario.rate, len(prompts), seed)
        return await run_arrivals(
            base_url, served_name, prompts, scenario.output_tokens, list(offsets), settings
        )
    return await run_load(
        base_url, served_name, prompts, scenario.output_tokens, concurrency_of(scenario), settings
    )


def measure(
    base_url: str,
    served_name: str,
    backend: str,
    model_name: str,
    performance: Performance,
    tokenizer: Any,
    seed: int,
    requests_log: Path | None = None,
) -> list[PerformancePoint]:
    """Run the warm-up and every scenario ``repeats`` times against a healthy server."""
    from qeval.serving.client import ClientSettings, run_load

    settings = ClientSettings(
        timeout_seconds=performance.request_timeout_seconds, retries=performance.retries
    )
    scenarios = performance.runs()
    if performance.warmup_requests:
        s = scenarios[0]
        warm = synthetic_prompts(tokenizer, performance.warmup_requests, s.prompt_tokens, seed - 1)
        asyncio.run(run_load(base_url, served_name, warm, s.output_tokens, 1, settings))
    points = []
    log = requests_log.open("w") if requests_log else None
    try:
        for i, scenario in enumerate(scenarios):
            runs = []
            for rep in range(performance.repeats):
                # the same prompts and arrivals in every model's repetition r: paired runs
                rep_seed = seed + 1000 * i + rep
                prompts = synthetic_prompts(
                    tokenizer, scenario.requests, scenario.prompt_tokens, rep_seed
                )
                run = asyncio.run(
                    _load(base_url, served_name, scenario, prompts, settings, rep_seed)
                )
                if log is not None:
                    for r in run.results:
                        row = {"scenario": scenario.name, "repeat": rep, "ok": r.ok}
                        row |= {"ttft": r.ttft, "e2e": r.e2e, "lag": r.lag}
                        row |= {"outputTokens": r.output_tokens, "attempts": r.attempts}
                        log.write(json.dumps(row | ({"error": r.error} if r.error else {})) + "\n")
                if failed := [r for r in run.results if not r.ok]:  # holes would mislead
                    where = f" (repetition {rep + 1} of {performance.repeats})" if rep else ""
                    raise StageError(
                        "RequestsFailed",
                        f"scenario {scenario.name}{where}: {len(failed)} of {len(run.results)} "
                        f"requests failed after retries (first: {failed[0].error})",
                    )
                runs.append(run)
            points.append(point(model_name, scenario, backend, runs, performance.slo))
    finally:
        if log is not None:
            log.close()
    return points


def point(
    model_name: str, scenario: Scenario, backend: str, runs: list[Any], slo: Slo | None = None
) -> PerformancePoint:
    """A scenario's figures over its repetitions (every request of which succeeded)."""
    from qeval.results.performance import mean_interval
    from qeval.serving.client import ScenarioRun, percentiles, summarize_load

    each = [summarize_load(r) for r in runs]
    pooled = summarize_load(ScenarioRun([x for r in runs for x in r.results], 1.0))
    if any(s.e2e is None for s in each) or pooled.ttft is None or pooled.e2e is None:
        raise StageError("RequestsFailed", f"scenario {scenario.name}: no request completed")
    reps = [
        Repetition(
            requests_per_second=s.requests_per_second,
            output_tokens_per_second=s.output_tokens_per_second,
            latency_seconds=s.e2e.p50 if s.e2e else 0.0,
        )
        for s in each
    ]
    rps = mean_interval([r.requests_per_second for r in reps])
    otps = mean_interval([r.output_tokens_per_second for r in reps])
    lat = mean_interval([r.latency_seconds for r in reps])
    lags = [x.lag for r in runs for x in r.results if x.lag is not None]
    lag = percentiles(lags) if lags else None
    every = [x for r in runs for x in r.results]
    tpots = [t for x in every if (t := x.tpot) is not None]
    attainment = goodput = None
    if slo is not None:
        targets = (slo.ttft_seconds, slo.tpot_seconds, slo.e2e_seconds)
        good = [sum(x.meets(*targets) for x in r.results) for r in runs]
        attainment = round(sum(good) / len(every), 6)
        goodput = round(
            sum(g / max(r.wall_seconds, 1e-9) for g, r in zip(good, runs, strict=True)) / len(runs),
            4,
        )

    def r6(x: float | None) -> float | None:
        return None if x is None else round(x, 6)

    return PerformancePoint(
        model=model_name,
        scenario=scenario.name,
        backend=backend,
        requests=pooled.requests,
        failed_requests=0,
        latency_seconds=round(lat[0], 6),
        output_tokens_per_second=round(otps[0], 3),
        requests_per_second=round(rps[0], 4),
        ttft_seconds=pooled.ttft,
        itl_seconds=pooled.itl,
        e2e_seconds=pooled.e2e,
        rate=scenario.rate,
        repetitions=reps if len(reps) > 1 else [],
        requests_per_second_ci_low=r6(rps[1]),
        requests_per_second_ci_high=r6(rps[2]),
        output_tokens_per_second_ci_low=r6(otps[1]),
        output_tokens_per_second_ci_high=r6(otps[2]),
        latency_seconds_ci_low=r6(lat[1]),
        latency_seconds_ci_high=r6(lat[2]),
        tpot_seconds=percentiles(tpots) if tpots else None,
        slo_attainment=attainment,
        goodput_requests_per_second=goodput,
        send_lag_seconds=lag,
        client_limited=lag is not None and lag.p90 > CLIENT_LAG_LIMIT,
    )


def run(inp: BenchmarkInput) -> BenchmarkResult:
    from qeval.stages.models import resolve

    path = resolve(inp.model)
    out_dir = Path(inp.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(path)
    requests_path = out_dir / "requests.jsonl"
    with endpoint(inp, path, out_dir) as (base_url, served_name, backend):
        points = measure(
            base_url,
            served_name,
            backend,
            inp.model_name,
            inp.performance,
            tokenizer,
            inp.seed,
            requests_path,
        )
    with suppress(OSError):
        (out_dir / "performance.json").write_text(
            json.dumps([p.dump() for p in points], indent=2) + "\n"
        )
    return BenchmarkResult(
        model_name=inp.model_name, backend=backend, points=points, requests_path=str(requests_path)
    )
