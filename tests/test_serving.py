"""The serving benchmark and the similarity stage: scenarios, statistics, speedups, scores,
and qeval's client over real HTTP against test doubles of a vLLM server (the hf backend's
server with the demo model; small stubs that are slow, fail or are not there)."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from qeval.api import EvalRun, QuantizedModel, load_documents
from qeval.api.common import ModelSource
from qeval.api.evalrun import PERFORMANCE_RULES, SCENARIO_RULES, Performance, Scenario, Similarity
from qeval.api.evalrun_status import Percentiles, PerformancePoint
from qeval.plan import Layout, build_plan
from qeval.results.performance import speedups
from qeval.serving.client import (
    ClientSettings,
    RequestResult,
    ScenarioRun,
    concurrency_of,
    generate,
    percentiles,
    run_load,
    summarize_load,
)
from qeval.stages.envelope import StageError, StageStatus, execute
from tests.conftest import EXAMPLES
from tests.test_api import cel

# --- scenarios and the API ---------------------------------------------------------------


def test_default_scenarios_are_the_studies_set():
    perf = Performance()
    assert [(s.name, s.kind, concurrency_of(s)) for s in perf.runs()] == [
        ("synchronous", "synchronous", 1),
        ("concurrent-4", "concurrent", 4),
        ("concurrent-16", "concurrent", 16),
        ("throughput", "throughput", 128),
    ]
    spec = load_documents(EXAMPLES / "evalrun.yaml")[-1].spec  # type: ignore[attr-defined]
    assert spec.performance is None and spec.similarity is None  # both off unless set


def test_scenario_rules_in_cel_and_python_agree():
    for kind, concurrency in itertools.product(
        ["synchronous", "concurrent", "throughput"], [None, 4]
    ):
        wire = {"name": "s", "kind": kind} | ({"concurrency": concurrency} if concurrency else {})
        obj = Scenario.model_construct(name="s", kind=kind, concurrency=concurrency)
        for rule in SCENARIO_RULES:
            assert cel(rule.cel, wire) == rule.check(obj), wire
    with pytest.raises(ValueError, match="needs concurrency"):
        Scenario(name="c", kind="concurrent")
    with pytest.raises(ValueError, match="take none"):
        Scenario(name="s", kind="synchronous", concurrency=2)
    twice = [{"name": "a", "kind": "synchronous"}, {"name": "a", "kind": "throughput"}]
    wire = {"scenarios": twice}
    obj = Performance.model_construct(scenarios=[Scenario.model_validate(s) for s in twice])
    names = PERFORMANCE_RULES[0]  # (the preset rule: tests/test_loads.py)
    assert cel(names.cel, wire) is False and names.check(obj) is False
    with pytest.raises(ValueError, match="same name"):
        Performance.model_validate(wire)


def test_concurrency_never_exceeds_the_requests():
    assert concurrency_of(Scenario(name="c", kind="concurrent", concurrency=64, requests=8)) == 8
    assert concurrency_of(Scenario(name="t", kind="throughput", requests=20)) == 20


# --- statistics and speedups -------------------------------------------------------------


def test_percentiles_interpolate_like_numpy():
    p = percentiles([float(x) for x in range(1, 101)])
    assert p == Percentiles(p50=50.5, p90=90.1, p99=99.01)
    assert percentiles([]) is None
    assert percentiles([2.0]) == Percentiles(p50=2.0, p90=2.0, p99=2.0)


def test_load_summary_counts_tokens_over_the_wall_time_and_failures_apart():
    ok = RequestResult(True, ttft=0.1, itl=[0.01, 0.03], e2e=0.2, output_tokens=3)
    slow = RequestResult(True, ttft=0.3, itl=[0.02], e2e=0.5, output_tokens=2)
    bad = RequestResult(False, attempts=3, error="HTTP 500: boom")
    s = summarize_load(ScenarioRun([ok, slow, bad], wall_seconds=2.0))
    assert (s.requests, s.failed_requests, s.first_error) == (2, 1, "HTTP 500: boom")
    assert s.output_tokens_per_second == 2.5 and s.requests_per_second == 1.0
    assert s.ttft is not None and s.ttft.p50 == pytest.approx(0.2)
    assert s.itl is not None and s.itl.p50 == pytest.approx(0.02)


def point(model: str, scenario: str, tps: float, rps: float, latency: float) -> PerformancePoint:
    p = Percentiles(p50=latency, p90=latency, p99=latency)
    return PerformancePoint(
        model=model,
        scenario=scenario,
        backend="vllm",
        requests=10,
        latency_seconds=latency,
        output_tokens_per_second=tps,
        requests_per_second=rps,
        ttft_seconds=Percentiles(p50=latency / 10, p90=1, p99=1),
        e2e_seconds=p,
    )


def test_speedups_are_candidate_over_baseline_and_above_one_when_faster():
    points = [
        point("bf16", "synchronous", 100, 1.0, 2.0),
        point("bf16", "throughput", 1000, 8.0, 9.0),
        point("w4a16", "synchronous", 240, 2.4, 0.8),
        point("int8", "throughput", 1800, 14.4, 5.0),
        point("int8", "concurrent-4", 500, 4.0, 1.0),  # the baseline has no such scenario
    ]
    got = {(s.model, s.scenario): s for s in speedups(points, "bf16")}
    assert set(got) == {("w4a16", "synchronous"), ("int8", "throughput")}
    w4 = got[("w4a16", "synchronous")]
    assert (w4.output_throughput, w4.request_throughput, w4.latency, w4.ttft) == (
        2.4,
        2.4,
        2.5,
        2.5,
    )
    assert got[("int8", "throughput")].output_throughput == 1.8
    assert got[("int8", "throughput")].latency == 1.8


def test_status_keeps_the_reports_short_fields():
    """The report reads {model, scenario, latencySeconds, outputTokensPerSecond}."""
    from qeval.report.model import performance_points

    doc = point("bf16", "synchronous", 100, 1.0, 2.0).dump()
    assert {"latencySeconds", "outputTokensPerSecond", "e2eSeconds", "ttftSeconds"} <= set(doc)
    (p,) = performance_points({"performance": [doc]})
    assert (p.model, p.latency_seconds, p.tokens_per_second) == ("bf16", 2.0, 100)


# --- the plan ----------------------------------------------------------------------------

LAYOUT = Layout(PurePosixPath("/w/runs/demo"), PurePosixPath("/w/models"))


def test_plan_adds_a_benchmark_per_model_and_one_similarity_stage():
    objs = load_documents(EXAMPLES / "evalrun.yaml")
    run = next(o for o in objs if isinstance(o, EvalRun))
    models = {o.name: o for o in objs if isinstance(o, QuantizedModel)}
    spec = run.spec.model_copy(update={"performance": Performance(), "similarity": Similarity()})
    stages = build_plan(run.model_copy(update={"spec": spec}), models, LAYOUT)
    by = {s.name: s for s in stages}
    bench = [s for s in stages if s.kind == "benchmark"]
    assert [s.name for s in bench] == [
        "benchmark-fp32",
        "benchmark-fp8",
        "benchmark-int8",
        "benchmark-w4a16",
        "benchmark-w2a16-rtn",
    ]
    assert by["benchmark-fp32"].needs == ("demo-model",)
    assert by["benchmark-w4a16"].needs == ("quantize-tiny-llama-w4a16",)
    assert by["benchmark-w4a16"].input["model"] == {"uri": "/w/models/tiny-llama-w4a16"}
    performance = Performance.model_validate(by["benchmark-w4a16"].input["performance"])
    assert performance.runs()[0].name == "synchronous"
    sim = by["similarity"]
    assert set(sim.needs) == {"demo-model"} | {s.name for s in stages if s.kind == "quantize"}
    assert sim.input["baseline"]["name"] == "fp32" and len(sim.input["candidates"]) == 4
    agg = by["aggregate"]
    assert set(agg.needs) >= {"similarity", *(s.name for s in bench)}
    assert agg.input["baseline"]["benchmark"] == "/w/runs/demo/stages/benchmark-fp32/result.json"
    assert agg.input["similarity"] == "/w/runs/demo/stages/similarity/result.json"
    assert stages[-1].name == "aggregate"
    assert bench[0].argv("in", "out") == ["qeval", "benchmark", "--input", "in", "--output", "out"]


# --- similarity scores on fixed strings --------------------------------------------------


def test_rouge_on_fixed_strings():
    from qeval.stages.similarity import rouge

    r1, rl = rouge(["the cat sat on the mat", "", "a b c d"], ["the cat sat on the mat", "", "d c"])
    assert r1[:2] == [1.0, 1.0] and rl[:2] == [1.0, 1.0]
    assert r1[2] == pytest.approx(2 * (1.0 * 0.5) / 1.5)  # precision 1, recall 2/4
    assert rl[2] == pytest.approx(2 * (0.5 * 0.25) / 0.75)  # LCS of one token


def test_bertscore_and_sts_with_the_offline_encoder():
    from sentence_transformers import SentenceTransformer

    from qeval.stages.similarity import bertscore, encoder_path, sts

    path = encoder_path(None)
    assert (path / "config.json").is_file()
    refs = ["the weather is lovely today", "the weather is lovely today"]
    cands = ["the weather is lovely today", "quarterly revenue fell by ten percent"]
    f1 = bertscore(refs, cands, path, None)
    assert f1[0] == pytest.approx(1.0, abs=1e-4) and f1[1] < 0.9
    cos = sts(refs, cands, SentenceTransformer(str(path), device="cpu"))
    assert cos[0] == pytest.approx(1.0, abs=1e-4) and cos[1] < 0.5


def test_prompts_from_the_demo_tasks_or_a_jsonl(tmp_path):
    from qeval.stages.similarity import load_prompts

    demo = load_prompts(Similarity(prompts=3))
    assert demo == ["dilmim reshirek lives in", "rate laziin lives in", "zeza kershuk lives in"]
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"text": "b"}\n{"question": "c"}\n')
    assert load_prompts(Similarity(prompts=2, prompts_path=str(path))) == ["a", "b"]
    path.write_text('{"answer": "x"}\n')
    with pytest.raises(StageError, match="prompt or question or text"):
        load_prompts(Similarity(prompts_path=str(path)))
    with pytest.raises(StageError) as e:
        load_prompts(Similarity(prompts_path=str(tmp_path / "missing.jsonl")))
    assert e.value.reason == "PromptsNotFound"


# --- the client against the hf backend's server (the test double of vLLM) ---------------


@pytest.fixture(scope="module")
def demo_path() -> Path:
    from qeval.demo.model import demo_model_path

    return demo_model_path()


@pytest.fixture(scope="module")
def hf_server(demo_path: Path, tmp_path_factory) -> Iterator[Any]:
    """The hf backend's server on the demo model, started as the benchmark starts it."""
    from qeval.serving.launch import served

    log = tmp_path_factory.mktemp("server") / "server.log"
    with served("hf", str(demo_path), "fp32", log, start_timeout=120) as server:
        yield server


def test_streaming_load_against_the_demo_model(hf_server, demo_path):
    from transformers import AutoTokenizer

    from qeval.stages.benchmark import synthetic_prompts

    assert hf_server.backend == "hf"
    tok = AutoTokenizer.from_pretrained(str(demo_path))
    prompts = synthetic_prompts(tok, 6, 24, seed=1)
    assert len(set(prompts)) == 6
    assert all(len(tok(p, add_special_tokens=False)["input_ids"]) <= 24 for p in prompts)
    run = asyncio.run(
        run_load(hf_server.base_url, hf_server.model, prompts, 12, 3, ClientSettings())
    )
    assert all(r.ok and r.attempts == 1 for r in run.results), run.results
    for r in run.results:
        assert r.output_tokens == 12 and len(r.itl) == 11  # ignore_eos: every token comes
        assert r.ttft is not None and r.e2e is not None and 0 < r.ttft < r.e2e
    s = summarize_load(run)
    assert s.requests == 6 and s.output_tokens_per_second > 0
    assert s.e2e is not None and s.e2e.p99 <= run.wall_seconds


def test_every_connection_of_a_throughput_burst_is_accepted(hf_server):
    """128 connections at once, no retries: none may be dropped by the listen backlog."""
    settings = ClientSettings(retries=0)
    run = asyncio.run(
        run_load(hf_server.base_url, hf_server.model, ["a b"] * 128, 2, 128, settings)
    )
    assert [r.error for r in run.results if not r.ok] == []


def test_served_greedy_text_equals_in_process_generation(hf_server, demo_path):
    from qeval.stages.similarity import generate_hf

    prompts = ["dilmim reshirek lives in", "rate laziin works as a"]
    served_texts = asyncio.run(
        generate(hf_server.base_url, hf_server.model, prompts, 8, ClientSettings())
    )
    assert [r.text for r in served_texts] == generate_hf(demo_path, prompts, 8)
    assert served_texts[0].text.strip()  # the demo model knows where dilmim lives


def test_server_refuses_a_prompt_beyond_the_context(hf_server):
    settings = ClientSettings(retries=2, backoff_seconds=0.01)
    (r,) = asyncio.run(
        run_load(hf_server.base_url, hf_server.model, ["x " * 400], 16, 1, settings)
    ).results
    assert not r.ok and r.attempts == 1 and "HTTP 400" in (r.error or "")  # 4xx: no retry
    assert "context" in (r.error or "")


# --- what lm-eval's local-completions sends (loglikelihood and generate_until) ------------


def complete(server: Any, **body: Any) -> Any:
    import httpx

    body = {"model": server.model, **body}
    resp = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=30)
    return resp.status_code, resp.json()


def test_echo_logprobs_equal_the_models_own(hf_server, demo_path):
    """lm-eval's loglikelihood request (echo, logprobs 1, max_tokens 1) answered as vLLM does:
    the prompt's logprobs, None for its first token, then the greedy next token."""
    import torch
    from lm_eval.models.openai_completions import LocalCompletionsAPI
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_path))
    model = AutoModelForCausalLM.from_pretrained(str(demo_path)).eval()
    context, continuation = "dilmim reshirek works as a", " miner"
    ctx = tok(context)["input_ids"]
    ids = ctx + tok(continuation, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        expected = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)

    payload = {"prompt": [ids], "temperature": 0, "max_tokens": 1, "logprobs": 1}
    code, out = complete(hf_server, **payload, seed=1234, echo=True)
    assert code == 200, out
    (choice,) = out["choices"]
    lp = choice["logprobs"]
    n = len(ids)
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n + 1
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    for j in range(1, n):
        assert lp["token_logprobs"][j] == pytest.approx(float(expected[j - 1, ids[j]]), abs=1e-5)
        top = lp["top_logprobs"][j]
        assert lp["tokens"][j] in top and 1 <= len(top) <= 2  # the token and the best one
        assert max(top.values()) == pytest.approx(float(expected[j - 1].max()), abs=1e-5)
    greedy = int(expected[n - 1].argmax())
    assert lp["tokens"][n] == tok.decode([greedy])
    assert lp["token_logprobs"][n] == pytest.approx(float(expected[n - 1, greedy]), abs=1e-5)
    assert "".join(lp["tokens"]) == choice["text"] == tok.decode(ids) + tok.decode([greedy])
    assert lp["text_offset"] == [sum(map(len, lp["tokens"][:i])) for i in range(n + 1)]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": n, "completion_tokens": 1, "total_tokens": n + 1}

    # what lm-eval makes of it: the continuation's logprob and whether it is greedy
    ((ll, greedy_cont),) = LocalCompletionsAPI.parse_logprobs(out, ctxlens=[len(ctx)])
    cont = range(len(ctx), n)
    assert ll == pytest.approx(sum(float(expected[j - 1, ids[j]]) for j in cont), abs=1e-5)
    assert greedy_cont == all(int(expected[j - 1].argmax()) == ids[j] for j in cont)

    # max_tokens 0 with echo: the prompt alone; logprobs 0: the token's own logprob only
    code, out = complete(hf_server, prompt=ids, max_tokens=0, logprobs=0, echo=True)
    assert code == 200, out
    lp0 = out["choices"][0]["logprobs"]
    assert lp0["token_logprobs"] == lp["token_logprobs"][:n]
    assert all(t is None or len(t) == 1 for t in lp0["top_logprobs"])
    assert out["usage"]["completion_tokens"] == 0


def test_a_batch_of_prompts_gets_one_choice_each(hf_server, demo_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_path))
    prompts = ["dilmim reshirek lives in", "rate laziin works as a", "zeza kershuk lives in"]
    alone = []
    for p in prompts:
        code, out = complete(hf_server, prompt=p, max_tokens=4, logprobs=2)
        assert code == 200, out
        alone.append(out["choices"][0])
    for batch in (prompts, [tok(p)["input_ids"] for p in prompts]):
        code, out = complete(hf_server, prompt=batch, max_tokens=4, logprobs=2)
        assert code == 200, out
        assert [c["index"] for c in out["choices"]] == [0, 1, 2]
        for c, a in zip(out["choices"], alone, strict=True):
            assert c["text"] == a["text"] and c["finish_reason"] == a["finish_reason"]
            assert c["logprobs"]["tokens"] == a["logprobs"]["tokens"]
            assert c["logprobs"]["token_logprobs"] == pytest.approx(
                a["logprobs"]["token_logprobs"], abs=1e-5
            )
        assert out["usage"]["prompt_tokens"] == sum(len(tok(p)["input_ids"]) for p in prompts)
    # what lm-eval's parse_generations reads
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    assert LocalCompletionsAPI.parse_generations(out) == [a["text"] for a in alone]


def test_generation_ends_at_the_first_stop_string(hf_server):
    prompt = "dilmim reshirek lives in"
    code, out = complete(hf_server, prompt=prompt, max_tokens=8, ignore_eos=True)
    assert code == 200, out
    free = out["choices"][0]["text"]
    assert "\n" in free.strip(" ")  # the demo model ends its answer with a line break
    for stop in (["\n"], "\n", ["zzz", "\n"], [free[3:5], "\n"]):
        first = min(
            (i, s) for s in ([stop] if isinstance(stop, str) else stop) if (i := free.find(s)) >= 0
        )
        code, out = complete(hf_server, prompt=prompt, max_tokens=8, stop=stop, seed=7)
        assert code == 200, out
        (c,) = out["choices"]
        assert c["text"] == free[: first[0]], stop
        assert (c["finish_reason"], c["stop_reason"]) == ("stop", first[1])
    # streamed, text that may start a stop string waits: the same text arrives
    events = list(_stream(hf_server, prompt=prompt, max_tokens=8, stop=["\n"]))
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == free.split("\n")[0]
    # the same with lm-eval's generate_until payload (until + max_gen_toks)
    code, out = complete(hf_server, prompt=[prompt], max_tokens=8, temperature=0.0, stop=["\n"])
    assert out["choices"][0]["text"] == free.split("\n")[0]


def _stream(server: Any, **body: Any) -> Iterator[dict]:
    import httpx

    body = {"model": server.model, "stream": True, **body}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                yield json.loads(line.removeprefix("data: "))


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"prompt": "a", "max_tokens": 0}, "max_tokens must be at least 1"),
        ({"prompt": "a", "logprobs": 21}, "logprobs must be between 0 and 20"),
        ({"prompt": "a", "temperature": 0.7}, "greedily only"),
        ({"prompt": []}, "prompt must be"),
        ({"prompt": ""}, "a prompt is empty"),
        ({"prompt": [[1, 2], "a", 3]}, "prompt must be"),
        ({"prompt": ["a", "b"], "stream": True}, "streams one prompt"),
        ({"prompt": "a", "stop": [""]}, "non-empty"),
    ],
)
def test_requests_it_cannot_answer_are_refused(hf_server, body, words):
    code, out = complete(hf_server, **body)
    assert code == 400 and words in out["error"]["message"], out


def test_a_model_it_does_not_serve_is_not_found(hf_server):
    """As vLLM: requests name the served model (--served-model-name), not its path."""
    code, out = complete(hf_server, prompt="a", max_tokens=1, model="/models/fp32")
    assert code == 404 and "does not exist" in out["error"]["message"], out


# --- slow, failing and absent servers ----------------------------------------------------


class Stub:
    """A stand-in completions server: ``delay`` seconds before answering, and HTTP 500
    for the first ``failures`` requests (``-1``: always)."""

    def __init__(self, delay: float = 0.0, failures: int = 0):
        self.delay, self.failures, self.requests = delay, failures, 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send(200, b'{"status": "ok"}', "application/json")

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stub.requests += 1
                if stub.failures < 0 or stub.requests <= stub.failures:
                    self._send(500, b'{"error": "engine crashed"}', "application/json")
                    return
                time.sleep(stub.delay)
                events = [{"choices": [{"text": t}]} for t in ("a", "b")]
                events.append({"choices": [], "usage": {"completion_tokens": 2}})
                body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                self._send(200, body.encode(), "text/event-stream")

            def _send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> Stub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def load(url: str, settings: ClientSettings, n: int = 1) -> list[RequestResult]:
    return asyncio.run(run_load(url, "m", ["p"] * n, 2, 1, settings)).results


def test_transient_500s_are_retried():
    with Stub(failures=2) as stub:
        (r,) = load(stub.url, ClientSettings(retries=2, backoff_seconds=0.01))
    assert r.ok and r.attempts == 3 and r.output_tokens == 2 and stub.requests == 3


def test_persistent_500s_fail_after_the_retries():
    with Stub(failures=-1) as stub:
        (r,) = load(stub.url, ClientSettings(retries=2, backoff_seconds=0.01))
    assert not r.ok and r.attempts == 3 and stub.requests == 3
    assert r.error is not None and "HTTP 500" in r.error and "engine crashed" in r.error


def test_a_slow_server_times_out_and_is_retried():
    with Stub(delay=1.0) as stub:
        t0 = time.monotonic()
        (r,) = load(stub.url, ClientSettings(timeout_seconds=0.2, retries=1, backoff_seconds=0))
        elapsed = time.monotonic() - t0
    assert not r.ok and r.attempts == 2 and "timed out" in (r.error or "")
    assert elapsed < 1.0  # gave up at the timeout, did not wait for the answer
    with Stub(delay=0.1) as stub:
        (r,) = load(stub.url, ClientSettings(timeout_seconds=5))
    assert r.ok and r.ttft is not None and r.ttft >= 0.1


def bench_input(tmp_path: Path, url: str, retries: int = 1) -> Path:
    from qeval.stages.benchmark import BenchmarkInput

    perf = Performance(
        scenarios=[Scenario(name="synchronous", kind="synchronous", requests=2, prompt_tokens=8)],
        request_timeout_seconds=2,
        retries=retries,
        warmup_requests=0,
    )
    inp = BenchmarkInput(
        model_name="fp32",
        model=ModelSource(uri="demo://tiny-llama"),
        base_url=url,
        performance=perf,
        output_dir=str(tmp_path / "out"),
    )
    path = tmp_path / "input.json"
    path.write_text(json.dumps(inp.dump()))
    return path


def run_benchmark_stage(tmp_path: Path, url: str) -> Any:
    from qeval.stages.benchmark import BenchmarkInput
    from qeval.stages.benchmark import run as bench

    out = tmp_path / "benchmark-fp32" / "result.json"
    return execute("benchmark", BenchmarkInput, bench, bench_input(tmp_path, url), out)


def test_benchmark_stage_fails_clearly_when_the_server_keeps_failing(tmp_path, demo_path):
    with Stub(failures=-1) as stub:
        doc = run_benchmark_stage(tmp_path, stub.url)
    assert doc.status == StageStatus.FAILED and doc.reason == "RequestsFailed"
    assert "2 of 2 requests failed after retries" in doc.message and "HTTP 500" in doc.message
    assert (tmp_path / "benchmark-fp32" / "result.json").is_file()


def test_benchmark_stage_fails_with_a_reason_when_the_server_is_down(tmp_path, demo_path):
    from qeval.serving.launch import free_port

    t0 = time.monotonic()
    doc = run_benchmark_stage(tmp_path, f"http://127.0.0.1:{free_port()}")
    assert doc.status == StageStatus.FAILED and doc.reason == "ServerUnavailable"
    assert "not healthy after 2 s" in doc.message and "is the server running" in doc.message
    assert time.monotonic() - t0 < 10


def test_benchmark_stage_against_a_running_server(tmp_path, demo_path):
    with Stub() as stub:
        doc = run_benchmark_stage(tmp_path, stub.url)
    assert doc.status == StageStatus.SUCCEEDED, doc.message
    assert doc.result is not None
    (p,) = doc.result["points"]
    # 2 requests, repeated 3 times (the default) on the warm server
    assert p["scenario"] == "synchronous" and p["requests"] == 6 and p["backend"] == "hf"
    assert len(p["repetitions"]) == 3 and p["requestsPerSecondCiLow"] <= p["requestsPerSecond"]
    rows = (tmp_path / "out" / "requests.jsonl").read_text().splitlines()
    assert len(rows) == 6 and json.loads(rows[0])["ok"] is True
    assert [json.loads(r)["repeat"] for r in rows] == [0, 0, 1, 1, 2, 2]


def test_a_server_that_cannot_start_fails_the_stage(tmp_path):
    from qeval.serving.launch import served

    (tmp_path / "model").mkdir()
    with (
        pytest.raises(StageError, match="exited with code") as e,
        served("hf", str(tmp_path / "model"), "m", tmp_path / "server.log", 60),
    ):
        pass
    assert e.value.reason == "ServerFailed"


def test_aggregate_puts_benchmarks_speedups_and_similarity_into_the_status(tmp_path):
    from qeval.api.evalrun_status import EvalRunStatus, SimilarityScore
    from qeval.stages.aggregate import AggregateInput, ModelResults, serving
    from qeval.stages.envelope import StageResult, failed

    def write(stage: str, kind: str, result: dict) -> str:
        path = tmp_path / stage / "result.json"
        StageResult(stage=stage, kind=kind, status=StageStatus.SUCCEEDED, result=result).write(path)
        return str(path)

    def bench(model: str, tps: float, latency: float) -> str:
        doc = {"modelName": model, "backend": "vllm", "requestsPath": "r.jsonl"}
        doc["points"] = [point(model, "throughput", tps, tps / 100, latency).dump()]
        return write(f"benchmark-{model}", "benchmark", doc)

    sim = SimilarityScore(model="int8", prompts=4, rouge1=0.9, rouge_l=0.8, identical=0.5)
    broken = tmp_path / "benchmark-w4a16" / "result.json"
    failed("benchmark-w4a16", "benchmark", "RequestsFailed", "boom").write(broken)
    inp = AggregateInput(
        baseline=ModelResults(name="bf16", evaluate="-", benchmark=bench("bf16", 1000, 9.0)),
        candidates=[
            ModelResults(name="int8", evaluate="-", benchmark=bench("int8", 1800, 5.0)),
            ModelResults(name="w4a16", evaluate="-", benchmark=str(broken)),
        ],
        results_location=str(tmp_path),
        similarity=write(
            "similarity",
            "similarity",
            {"backend": "vllm", "scores": [sim.dump()], "generationsPath": "g.jsonl"},
        ),
    )
    status = EvalRunStatus()
    serving(inp, status)
    assert [(p.model, p.scenario) for p in status.performance] == [
        ("bf16", "throughput"),
        ("int8", "throughput"),
    ]
    (s,) = status.speedups
    assert (s.model, s.output_throughput, s.latency) == ("int8", 1.8, 1.8)
    assert status.similarity == [sim]
    wire = status.dump()
    assert wire["similarity"][0]["rougeL"] == 0.8
    assert wire["speedups"][0]["outputThroughput"] == 1.8
