"""qeval's asyncio client for OpenAI-compatible completions servers (vLLM, or the hf
backend's server), and the load scenarios of the serving benchmark.

Each request streams ``POST /v1/completions`` (``stream: true``, usage included): the time
to first token (TTFT) is from sending the request to the first streamed chunk, the
inter-token latencies (ITL) are the gaps between later chunks, and the end-to-end latency
runs to the end of the stream, as ``vllm bench serve`` and guidellm measure them. A
request that fails with a 5xx, 429, a broken connection or a timeout is retried (with
backoff) up to ``retries`` times; the figures are those of the attempt that succeeded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from qeval.api.evalrun import Scenario, ScenarioKind
from qeval.api.evalrun_status import Percentiles

RETRY_STATUS = {429, 500, 502, 503, 504}


@dataclass(frozen=True)
class ClientSettings:
    timeout_seconds: float = 600.0  # per attempt, the whole stream
    retries: int = 2
    backoff_seconds: float = 0.5  # doubles after each failed attempt
    connect_timeout_seconds: float = 10.0


@dataclass
class RequestResult:
    """One request: its latencies (seconds) and output tokens, or why it failed."""

    ok: bool
    ttft: float | None = None
    itl: list[float] = field(default_factory=list)
    e2e: float | None = None
    output_tokens: int = 0
    text: str = ""
    attempts: int = 0
    error: str | None = None
    lag: float | None = None  # open loops: how late it was sent against its schedule

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: (e2e - TTFT) / (output tokens - 1), as
        inference-perf defines it (None with one token or none)."""
        if self.ttft is None or self.e2e is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    def meets(self, ttft: float | None, tpot: float | None, e2e: float | None) -> bool:
        """Whether the request met every target given (a failed one meets none)."""
        if not self.ok:
            return False
        checks = ((ttft, self.ttft), (tpot, self.tpot), (e2e, self.e2e))
        return all(target is None or (v is not None and v <= target) for target, v in checks)


class RequestFailed(Exception):
    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def completions_url(base_url: str) -> str:
    return base_url.rstrip("/").removesuffix("/v1") + "/v1/completions"


async def _attempt(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], stream: bool
) -> RequestResult:
    t0 = time.perf_counter()
    first: float | None = None
    last = t0
    itl: list[float] = []
    chunks, text, usage_tokens = 0, [], None
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode(errors="replace")[:300]
                raise RequestFailed(
                    f"HTTP {resp.status_code}: {detail}", resp.status_code in RETRY_STATUS
                )
            if not stream:
                doc = json.loads(await resp.aread())
                e2e = time.perf_counter() - t0
                out = doc["choices"][0]["text"]
                tokens = (doc.get("usage") or {}).get("completion_tokens", 0)
                return RequestResult(True, None, [], e2e, tokens, out)
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                doc = json.loads(data)
                if doc.get("usage"):
                    usage_tokens = doc["usage"].get("completion_tokens")
                if not doc.get("choices"):
                    continue
                now = time.perf_counter()
                if first is None:
                    first = now - t0
                else:
                    itl.append(now - last)
                last = now
                chunks += 1
                text.append(doc["choices"][0].get("text") or "")
    except httpx.TimeoutException as e:
        raise RequestFailed(f"timed out ({type(e).__name__})", True) from e
    except httpx.TransportError as e:
        raise RequestFailed(f"{type(e).__name__}: {e}", True) from e
    except (ValueError, KeyError) as e:
        raise RequestFailed(f"malformed response: {e}", False) from e
    if first is None:
        raise RequestFailed("the stream ended without a token", True)
    e2e = last - t0
    return RequestResult(True, first, itl, e2e, usage_tokens or chunks, "".join(text))


async def complete(
    client: httpx.AsyncClient,
    base_url: str,
    model: str,
    prompt: str | list[int],
    max_tokens: int,
    settings: ClientSettings,
    stream: bool = True,
    ignore_eos: bool = True,
) -> RequestResult:
    """One greedy completion, retried on transient failures; never raises."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": ignore_eos,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    url = completions_url(base_url)
    error = ""
    for attempt in range(settings.retries + 1):
        try:
            result = await asyncio.wait_for(
                _attempt(client, url, body, stream), settings.timeout_seconds
            )
            result.attempts = attempt + 1
            return result
        except TimeoutError:
            error, retryable = f"timed out after {settings.timeout_seconds:g} s", True
        except RequestFailed as e:
            error, retryable = str(e), e.retryable
        if not retryable or attempt == settings.retries:
            return RequestResult(False, attempts=attempt + 1, error=error)
        await asyncio.sleep(settings.backoff_seconds * 2**attempt)
    return RequestResult(False, attempts=settings.retries + 1, error=error)  # pragma: no cover


def new_client(settings: ClientSettings, concurrency: int) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.timeout_seconds, connect=settings.connect_timeout_seconds)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(timeout=timeout, limits=limits)


def concurrency_of(scenario: Scenario) -> int:
    """Requests in flight: 1 (synchronous), the scenario's (concurrent), all (throughput)."""
    if scenario.kind == ScenarioKind.SYNCHRONOUS:
        return 1
    if scenario.kind == ScenarioKind.CONCURRENT:
        assert scenario.concurrency is not None
        return min(scenario.concurrency, scenario.requests)
    return scenario.requests


@dataclass
class ScenarioRun:
    """Every request of one scenario and the wall time from the first send to the last end."""

    results: list[RequestResult]
    wall_seconds: float


async def run_load(
    base_url: str,
    model: str,
    prompts: Sequence[str | list[int]],
    max_tokens: int,
    concurrency: int,
    settings: ClientSettings,
) -> ScenarioRun:
    """Send every prompt with at most ``concurrency`` requests in flight."""
    gate = asyncio.Semaphore(concurrency)
    async with new_client(settings, concurrency) as client:

        async def one(prompt: str | list[int]) -> RequestResult:
            async with gate:
                return await complete(client, base_url, model, prompt, max_tokens, settings)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(p) for p in prompts))
        return ScenarioRun(list(results), time.perf_counter() - t0)


def arrival_offsets(kind: str, rate: float, n: int, seed: int) -> np.ndarray:
    """When each of ``n`` requests is sent, in seconds from the first: evenly spaced at
    ``rate`` per second (``rate``), or Poisson arrivals at ``rate`` (``poisson``: gaps drawn
    from an exponential distribution of mean 1 / rate, seeded)."""
    if kind == ScenarioKind.RATE:
        return np.arange(n, dtype=float) / rate
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, max(n - 1, 0))
    return np.concatenate([[0.0], np.cumsum(gaps)])


async def run_arrivals(
    base_url: str,
    model: str,
    prompts: Sequence[str | list[int]],
    max_tokens: int,
    offsets: Sequence[float],
    settings: ClientSettings,
) -> ScenarioRun:
    """Send each prompt at its offset, whatever is still in flight (an open loop: a server
    slower than the rate queues them); each result records how late it was sent."""
    connections = max(1, min(len(prompts), 1024))
    async with new_client(settings, connections) as client:
        t0 = time.perf_counter()

        async def one(prompt: str | list[int], at: float) -> RequestResult:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(0.0, time.perf_counter() - t0 - at)
            result = await complete(client, base_url, model, prompt, max_tokens, settings)
            result.lag = lag
            return result

        results = await asyncio.gather(
            *(one(p, at) for p, at in zip(prompts, offsets, strict=True))
        )
        return ScenarioRun(list(results), time.perf_counter() - t0)


async def generate(
    base_url: str,
    model: str,
    prompts: Sequence[str],
    max_tokens: int,
    settings: ClientSettings,
    concurrency: int = 4,
) -> list[RequestResult]:
    """Greedy completions (stopping at EOS), in prompt order."""
    gate = asyncio.Semaphore(concurrency)
    async with new_client(settings, concurrency) as client:

        async def one(prompt: str) -> RequestResult:
            async with gate:
                return await complete(
                    client, base_url, model, prompt, max_tokens, settings, ignore_eos=False
                )

        return list(await asyncio.gather(*(one(p) for p in prompts)))


async def wait_healthy(base_url: str, deadline_seconds: float, interval: float = 0.25) -> None:
    """Return once ``GET /health`` answers 200; TimeoutError (saying why) at the deadline."""
    url = base_url.rstrip("/").removesuffix("/v1") + "/health"
    end = time.monotonic() + deadline_seconds
    last = "no answer"
    async with httpx.AsyncClient(timeout=min(5.0, deadline_seconds)) as client:
        while True:
            try:
                resp = await client.get(url)
                if resp.status_code == 200:
                    return
                last = f"HTTP {resp.status_code}"
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if time.monotonic() >= end:
                raise TimeoutError(f"{url} not healthy after {deadline_seconds:g} s ({last})")
            await asyncio.sleep(interval)


# --- statistics ------------------------------------------------------------------------


def percentiles(values: Sequence[float]) -> Percentiles | None:
    """p50, p90 and p99 (numpy's linear interpolation); None without values."""
    if not values:
        return None
    p50, p90, p99 = np.percentile(np.asarray(values, dtype=float), [50, 90, 99])
    return Percentiles(p50=round(float(p50), 6), p90=round(float(p90), 6), p99=round(float(p99), 6))


@dataclass(frozen=True)
class LoadSummary:
    requests: int
    failed_requests: int
    ttft: Percentiles | None
    itl: Percentiles | None
    e2e: Percentiles | None
    output_tokens_per_second: float
    requests_per_second: float
    first_error: str | None


def summarize_load(run: ScenarioRun) -> LoadSummary:
    ok = [r for r in run.results if r.ok]
    bad = [r for r in run.results if not r.ok]
    wall = max(run.wall_seconds, 1e-9)
    return LoadSummary(
        requests=len(ok),
        failed_requests=len(bad),
        ttft=percentiles([r.ttft for r in ok if r.ttft is not None]),
        itl=percentiles([x for r in ok for x in r.itl]),
        e2e=percentiles([r.e2e for r in ok if r.e2e is not None]),
        output_tokens_per_second=round(sum(r.output_tokens for r in ok) / wall, 3),
        requests_per_second=round(len(ok) / wall, 4),
        first_error=bad[0].error if bad else None,
    )


@dataclass(frozen=True)
class Chat:
    """One chat completion's text and its token counts (the server's usage)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1


async def chat(
    client: httpx.AsyncClient,
    api: str,
    model: str,
    messages: Sequence[dict[str, str]],
    max_tokens: int,
    settings: ClientSettings,
    temperature: float = 0.0,
    headers: dict[str, str] | None = None,
) -> Chat:
    """``POST <api>/chat/completions`` (``api``: the base URL with its /v1), retried on
    transient failures; raises RequestFailed when every attempt failed."""
    body = {
        "model": model,
        "messages": list(messages),
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    url = f"{api.rstrip('/')}/chat/completions"
    for attempt in range(settings.retries + 1):
        try:
            resp = await asyncio.wait_for(
                client.post(url, json=body, headers=headers or {}), settings.timeout_seconds
            )
            if resp.status_code != 200:
                detail = resp.text[:300].replace("\n", " ")
                raise RequestFailed(
                    f"HTTP {resp.status_code}: {detail}", resp.status_code in RETRY_STATUS
                )
            doc = resp.json()
            text = doc["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise RequestFailed("malformed response: the message has no text", False)
            usage = doc.get("usage") or {}
            return Chat(
                text,
                int(usage.get("prompt_tokens") or 0),
                int(usage.get("completion_tokens") or 0),
                attempt + 1,
            )
        except TimeoutError:
            error = RequestFailed(f"timed out after {settings.timeout_seconds:g} s", True)
        except httpx.TransportError as e:
            error = RequestFailed(f"{type(e).__name__}: {e}", True)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            error = RequestFailed(f"malformed response: {type(e).__name__}: {e}", False)
        except RequestFailed as e:
            error = e
        if not error.retryable or attempt == settings.retries:
            raise error
        await asyncio.sleep(settings.backoff_seconds * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover
