"""A model behind an existing OpenAI-compatible endpoint as baseline or candidate
(``endpoint: {baseUrl, model, apiKeySecret, tokenizer}``): the API's rules (in Python and
in CEL, agreeing), the plan (no server, quantization or GPU for it), the Job (the key by
reference), the checks before any work (the key, GET /models, prompt log-probabilities for
loglikelihood tasks), and `qeval run` end to end against qeval's hf server as the existing
endpoint (its --api-key as vLLM's). The endpoint without prompt log-probabilities is a
stand-in of the tests' own (tests/doubles/endpoint)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import celpy
import pytest
import yaml

from qeval.api import EvalRun
from qeval.api.common import SecretKeyRef, secret_env
from qeval.api.documents import SpecError, parse
from qeval.api.evalrun import (
    BASE_URL_RULE,
    BASELINE_RULES,
    CANDIDATE_RULES,
    SPEC_RULES,
    Baseline,
    Candidate,
    Endpoint,
    EvalRunSpec,
    Performance,
    Similarity,
    Task,
)
from qeval.k8s import manifests as m
from qeval.k8s.reuse import reuse_keys
from qeval.k8s.settings import OperatorSettings
from qeval.local.preflight import endpoint_problems, task_problems
from qeval.plan import Layout, build_plan
from qeval.serving import endpoint as ep
from qeval.stages.envelope import StageError
from tests.doubles.endpoint import NoPromptLogprobs

KEY = "sk-test-0123456789abcdef"  # what no file, log or status may ever hold
CEL = celpy.Environment()


def cel(rule: str, obj: Any) -> bool:
    program = CEL.program(CEL.compile(rule))
    return bool(program.evaluate({"self": celpy.json_to_cel(obj)}))


def run_doc(baseline: dict, candidates: list[dict], **spec: Any) -> dict:
    return {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r"},
        "spec": {
            "baseline": baseline,
            "candidates": candidates,
            "tasks": [{"name": "qeval_demo_facts"}],
            **spec,
        },
    }


ENDPOINT = {
    "baseUrl": "http://vllm.models.svc:8000/v1",
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "apiKeySecret": {"name": "llama-api", "key": "api-key"},
}


def refused(doc: dict) -> str:
    with pytest.raises(SpecError) as e:
        parse(doc, "r.yaml")
    return str(e.value)


# --- the API -------------------------------------------------------------------------------


def test_an_endpoint_baseline_and_candidate_parse_with_the_key_by_reference():
    run = parse(
        run_doc(
            {"name": "bf16", "endpoint": ENDPOINT},
            [{"name": "fp8", "scheme": "FP8", "endpoint": {**ENDPOINT, "model": "llama-fp8"}}],
        ),
        "r.yaml",
    )
    assert isinstance(run, EvalRun)
    baseline = run.spec.baseline.endpoint
    assert baseline is not None and run.spec.baseline.model is None
    assert baseline.api_key_secret == SecretKeyRef(name="llama-api", key="api-key")
    assert baseline.tokenizer is None and baseline.num_concurrent == 8
    assert baseline.cache is False  # an endpoint's results are not reused unless asked
    assert run.spec.candidates[0].label == "fp8"


@pytest.mark.parametrize(
    ("baseline", "candidate", "words"),
    [
        ({"model": {"uri": "o/m"}, "endpoint": ENDPOINT}, None, "exactly one of model"),
        ({}, None, "exactly one of model"),
        (None, {"name": "c", "model": {"uri": "o/m"}, "endpoint": ENDPOINT}, "exactly one"),
        (None, {"name": "c", "quantizedModel": "q", "endpoint": ENDPOINT}, "exactly one"),
        (None, {"endpoint": ENDPOINT}, "needs a name"),
        (None, {"name": "c", "endpoint": {**ENDPOINT, "uri": "o/m"}}, "uri"),
        (None, {"name": "c", "endpoint": {**ENDPOINT, "revision": "main"}}, "revision"),
        (None, {"name": "c", "endpoint": {"baseUrl": "http://h/v1"}}, "model"),
        ({"endpoint": {**ENDPOINT, "baseUrl": "ftp://h/v1"}}, None, "http:// or https://"),
        ({"endpoint": {**ENDPOINT, "baseUrl": "http://u:p@h/v1"}}, None, "user:password@"),
        ({"endpoint": {**ENDPOINT, "baseUrl": "http://h/v1?key=x"}}, None, "no user:password@"),
        ({"endpoint": {**ENDPOINT, "apiKeySecret": {"name": "Bad_Name"}}}, None, "name"),
        ({"endpoint": {**ENDPOINT, "apiKeySecret": {"name": "s", "key": "a b"}}}, None, "key"),
        ({"endpoint": {**ENDPOINT, "apiKey": KEY}}, None, "apiKey"),  # never the key itself
        ({"endpoint": {**ENDPOINT, "model": "a model"}}, None, "model"),
        ({"endpoint": {**ENDPOINT, "numConcurrent": 0}}, None, "numConcurrent"),
    ],
)
def test_endpoint_rules_refuse_with_the_field(baseline, candidate, words):
    doc = run_doc(
        {"model": {"uri": "o/m"}} if baseline is None else baseline,
        [{"name": "c", "model": {"uri": "o/m"}} if candidate is None else candidate],
    )
    message = refused(doc)
    assert words in message
    assert KEY not in message


@pytest.mark.parametrize(
    "extra",
    [
        {"performance": {"scenarios": [{"name": "s", "kind": "synchronous"}]}},
        {"similarity": {"prompts": 4}},
    ],
)
def test_performance_and_similarity_are_refused_with_an_endpoint(extra):
    doc = run_doc({"endpoint": ENDPOINT}, [{"name": "c", "model": {"uri": "o/m"}}], **extra)
    assert "spec.performance and spec.similarity measure models qeval serves" in refused(doc)
    doc = run_doc({"model": {"uri": "o/m"}}, [{"name": "c", "endpoint": ENDPOINT}], **extra)
    assert "spec.performance and spec.similarity" in refused(doc)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://vllm:8000/v1", True),
        ("https://api.example.com/openai/v1/", True),
        ("http://10.0.0.7:8000", True),
        ("http://[fd00::1]:8000/v1", True),
        ("HTTP://h/v1", False),
        ("https://h:8000/v1?x=1", False),
        ("https://h/v1#frag", False),
        ("https://token@h/v1", False),
        ("https://h//v1", False),
        ("https://h/v1\n", False),  # Python's $ matches before a final newline, RE2's does not
        ("https://-h/v1", False),
        ("file:///etc/passwd", False),
        ("h:8000/v1", False),
    ],
)
def test_base_url_rule_in_python_and_cel_agree(url, ok):
    assert BASE_URL_RULE.check(url) is ok
    assert cel(BASE_URL_RULE.cel, url) is ok


def test_model_source_rules_in_python_and_cel_agree():
    """Baseline and candidate: which of model, quantizedModel and endpoint are set, over
    every combination, and the spec rule on performance and similarity."""
    model, endpoint = {"uri": "o/m"}, {"baseUrl": "http://h/v1", "model": "m"}
    checked = 0
    for has_model, has_endpoint in itertools.product([False, True], repeat=2):
        wire = {"name": "b"} | ({"model": model} if has_model else {})
        wire |= {"endpoint": endpoint} if has_endpoint else {}
        obj = Baseline.model_construct(
            name="b",
            model=model if has_model else None,
            endpoint=endpoint if has_endpoint else None,
        )
        for rule in BASELINE_RULES:
            assert cel(rule.cel, wire) == rule.check(obj), (rule.cel, wire)
            checked += 1
    for name, has_model, qm, has_endpoint in itertools.product(
        [None, "c"], [False, True], [None, "q"], [False, True]
    ):
        fields = {"name": name, "quantizedModel": qm}
        fields |= {
            "model": model if has_model else None,
            "endpoint": endpoint if has_endpoint else None,
        }
        wire = {k: v for k, v in fields.items() if v is not None}
        obj = Candidate.model_construct(
            name=name,
            quantized_model=qm,
            model=fields["model"],
            endpoint=fields["endpoint"],
        )
        for rule in CANDIDATE_RULES:
            assert cel(rule.cel, wire) == rule.check(obj), (rule.cel, wire)
            checked += 1
    perf_rule = next(r for r in SPEC_RULES if "similarity" in r.cel)
    outcomes = set()
    for base_ep, cand_ep, perf, sim in itertools.product([False, True], repeat=4):
        wire: dict[str, Any] = {
            "baseline": {"name": "b", **({"endpoint": endpoint} if base_ep else {"model": model})},
            "candidates": [
                {"name": "c", **({"endpoint": endpoint} if cand_ep else {"model": model})}
            ],
            "tasks": [{"name": "t"}],
        }
        if perf:
            wire["performance"] = {"scenarios": [{"name": "s", "kind": "synchronous"}]}
        if sim:
            wire["similarity"] = {}
        obj = EvalRunSpec.model_construct(
            baseline=Baseline.model_construct(name="b", endpoint=endpoint if base_ep else None),
            candidates=[
                Candidate.model_construct(name="c", endpoint=endpoint if cand_ep else None)
            ],
            tasks=[Task.model_construct(name="t")],
            performance=Performance.model_construct() if perf else None,
            similarity=Similarity.model_construct() if sim else None,
        )
        ok = cel(perf_rule.cel, wire)
        assert ok == perf_rule.check(obj), wire
        outcomes.add(ok)
        checked += 1
    assert outcomes == {True, False}
    assert checked == 4 + 16 * len(CANDIDATE_RULES) + 16


def test_the_crd_carries_the_endpoint_and_its_rules():
    crd = yaml.safe_load(Path("crds/qeval.dev_evalruns.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    baseline = spec["properties"]["baseline"]
    assert "endpoint" in baseline["properties"] and "model" not in baseline.get("required", [])
    assert BASELINE_RULES[0].cel in [r["rule"] for r in baseline["x-kubernetes-validations"]]
    endpoint = baseline["properties"]["endpoint"]
    assert set(endpoint["required"]) == {"baseUrl", "model"}
    assert endpoint["properties"]["baseUrl"]["x-kubernetes-validations"][0]["rule"] == (
        BASE_URL_RULE.cel
    )
    candidate = spec["properties"]["candidates"]["items"]
    assert "endpoint" in candidate["properties"]


def test_secret_env_names_a_portable_variable_per_secret_key():
    assert secret_env(SecretKeyRef(name="llama-api", key="api-key")) == (
        "QEVAL_SECRET_LLAMA_API_API_KEY"
    )
    assert secret_env(SecretKeyRef(name="openai.prod")) == "QEVAL_SECRET_OPENAI_PROD_TOKEN"


# --- the plan, the Job, the operator's reuse ------------------------------------------------

LAYOUT = Layout(PurePosixPath("/w/runs/r"), PurePosixPath("/w/models"), PurePosixPath("/w/cache"))


def plan(baseline: dict, candidates: list[dict], **spec: Any):
    run = parse(run_doc(baseline, candidates, **spec), "r.yaml")
    return {s.name: s for s in build_plan(run, {}, LAYOUT)}


def test_an_endpoint_gets_no_server_quantization_or_gpu_and_its_candidate_does():
    stages = plan(
        {"name": "bf16", "endpoint": ENDPOINT},
        [{"name": "w4a16", "model": {"uri": "org/model-w4a16"}}],
        backend="vllm-server",
        scheduling={"gpus": 2},
    )
    assert list(stages) == ["evaluate-bf16", "serve-w4a16", "evaluate-w4a16", "aggregate"]
    evaluate = stages["evaluate-bf16"]
    assert evaluate.needs == () and evaluate.scheduling is None  # a light client: no GPU
    assert evaluate.input["endpoint"] == {**ENDPOINT, "numConcurrent": 8, "cache": False}
    assert not {"model", "baseUrl", "serving"} & set(evaluate.input)
    assert stages["evaluate-w4a16"].input["baseUrl"].endswith(":8000")  # its own server
    assert stages["serve-w4a16"].scheduling.gpus == 2


def test_an_endpoint_candidate_with_the_demo_tokenizer_waits_for_the_demo_model():
    stages = plan(
        {"model": {"uri": "o/m"}},
        [{"name": "served", "endpoint": {**ENDPOINT, "tokenizer": {"uri": "demo://tiny-llama"}}}],
    )
    assert list(stages) == ["demo-model", "evaluate-baseline", "evaluate-served", "aggregate"]
    assert stages["evaluate-served"].needs == ("demo-model",)
    assert stages["evaluate-baseline"].scheduling is not None  # backend hf: its own GPU work
    no_tokenizer = plan({"model": {"uri": "o/m"}}, [{"name": "served", "endpoint": ENDPOINT}])
    assert "demo-model" not in no_tokenizer


def test_the_endpoints_job_reads_its_key_from_the_secret_by_reference():
    stages = plan({"name": "bf16", "endpoint": ENDPOINT}, [{"name": "c", "model": {"uri": "o/m"}}])
    settings = OperatorSettings()
    owner = m.Owner("EvalRun", "r", "team-a", "uid-1")
    layout = m.cluster_layout(settings, "team-a", "r")
    job = m.build_job(stages["evaluate-bf16"], owner, layout, settings)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["QEVAL_SECRET_LLAMA_API_API_KEY"] == {
        "name": "QEVAL_SECRET_LLAMA_API_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "llama-api", "key": "api-key"}},
    }
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert container["image"] == settings.client_image
    other = m.build_job(stages["evaluate-c"], owner, layout, settings)
    assert "QEVAL_SECRET" not in json.dumps(other)  # only the endpoint's own Job


def test_the_operator_never_reuses_another_runs_endpoint_result():
    stages = plan(
        {"name": "bf16", "endpoint": ENDPOINT},
        [{"name": "c", "model": {"uri": "demo://tiny-llama"}}],
    )
    keys = reuse_keys(list(stages.values()), "image")
    assert list(keys) == ["evaluate-c"]


# --- the checks before any work -------------------------------------------------------------


def endpoint(url: str, **more: Any) -> Endpoint:
    return Endpoint.model_validate({"baseUrl": url, "model": "m", **more})


def test_no_api_key_in_the_environment_is_named_with_its_variable(monkeypatch):
    monkeypatch.delenv("QEVAL_SECRET_S_TOKEN", raising=False)
    with pytest.raises(StageError) as e:
        ep.connect(endpoint("http://127.0.0.1:9/v1", apiKeySecret={"name": "s"}))
    assert e.value.reason == ep.NO_API_KEY and "export QEVAL_SECRET_S_TOKEN" in str(e.value)


def test_connect_sends_the_key_and_says_what_is_wrong(monkeypatch):
    monkeypatch.setenv("QEVAL_SECRET_S_TOKEN", KEY)
    with NoPromptLogprobs("m", key=KEY) as url:
        conn = ep.connect(endpoint(url, apiKeySecret={"name": "s"}))
        assert conn.card is not None and conn.card["id"] == "m"
        assert "created" not in json.dumps(conn.identity())  # the answer's time names nothing
        with pytest.raises(StageError) as e:
            ep.connect(endpoint(url, model="other", apiKeySecret={"name": "s"}))
        assert e.value.reason == ep.MODEL_NOT_SERVED and "['m']" in str(e.value)
        monkeypatch.setenv("QEVAL_SECRET_S_TOKEN", "wrong")
        with pytest.raises(StageError) as e:
            ep.connect(endpoint(url, apiKeySecret={"name": "s"}))
        assert e.value.reason == ep.ENDPOINT_FAILED and "HTTP 401" in str(e.value)
        assert "wrong" not in str(e.value)
    with pytest.raises(StageError) as e:
        ep.connect(endpoint(url))  # no longer listening
    assert e.value.reason == ep.ENDPOINT_FAILED and url in str(e.value)


def test_an_endpoint_without_prompt_logprobs_is_refused_for_loglikelihood_tasks():
    tokenizer = {"tokenizer": {"uri": "demo://tiny-llama"}}
    double = NoPromptLogprobs("m")
    with double as url:
        conn = ep.connect(endpoint(url, **tokenizer))
        ep.check_scoring(conn, [], chat=False)  # generative tasks only: nothing to ask
        with pytest.raises(StageError) as e:
            ep.check_scoring(conn, ["qeval_demo_facts"], chat=False)
        assert e.value.reason == ep.NO_PROMPT_LOGPROBS
        assert "generated token only" in str(e.value)
        (probe,) = [r["body"] for r in double.requests if r["body"] is not None]
        assert probe["echo"] is True and probe["logprobs"] == 1 and probe["max_tokens"] == 1
        with pytest.raises(StageError) as e:
            ep.check_scoring(ep.connect(endpoint(url)), ["qeval_demo_facts"], chat=False)
        assert e.value.reason == ep.NO_TOKENIZER and "endpoint.tokenizer" in str(e.value)
        with pytest.raises(StageError) as e:
            ep.check_scoring(conn, ["qeval_demo_facts"], chat=True)
        assert e.value.reason == ep.NO_PROMPT_LOGPROBS and "chat completions" in str(e.value)


LOGPROBS = {"token_logprobs": [None, -1.0, -2.0], "top_logprobs": [None, {"a": -1.0}, {"b": -2.0}]}


@pytest.mark.parametrize(
    ("answer", "ok"),
    [
        ({"choices": [{"logprobs": LOGPROBS}]}, True),
        (
            {"choices": [{"logprobs": {"token_logprobs": [-2.0], "top_logprobs": [{"b": -2}]}}]},
            False,
        ),
        ({"choices": [{"logprobs": None}]}, False),
        ({"choices": [{"logprobs": {**LOGPROBS, "token_logprobs": [None, None, -2.0]}}]}, False),
        ({"choices": [{"logprobs": {**LOGPROBS, "top_logprobs": [None, {}, {"b": -2.0}]}}]}, False),
        ({"choices": []}, False),
        ({}, False),
    ],
)
def test_prompt_logprobs_are_read_as_lm_eval_reads_them(answer, ok):
    assert (ep.prompt_logprobs_problem(answer) is None) is ok


def test_the_key_is_cut_from_log_records_and_given_to_lm_eval_only_meanwhile(monkeypatch, caplog):
    """lm-eval logs a failed request's repr, aiohttp's carries the request's headers."""
    from aiohttp import ClientResponseError, RequestInfo
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL

    monkeypatch.setenv("OPENAI_API_KEY", "the-persons-own-key")
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {KEY}"}))
    url = URL("http://h/v1/completions")
    error = ClientResponseError(RequestInfo(url, "POST", headers, url), (), status=500)
    assert KEY in repr(error)
    conn = ep.Connection(endpoint("http://h/v1"), KEY)
    with caplog.at_level(logging.INFO), ep.keyed(conn):
        assert os.environ["OPENAI_API_KEY"] == KEY
        logging.getLogger("lm_eval.models.api_models").error(f"Exception:{error!r}, retrying.")
        logging.getLogger("x").info("key %s", KEY)
    assert os.environ["OPENAI_API_KEY"] == "the-persons-own-key"
    assert KEY not in caplog.text and caplog.text.count("[redacted]") == 2
    with ep.keyed(ep.Connection(endpoint("http://h/v1"))):  # no key: none of the person's
        assert os.environ["OPENAI_API_KEY"] == ""


def test_preflight_names_the_field_and_the_fix(monkeypatch):
    """``qeval run``'s checks before any work, through the stage's own (one rule)."""
    monkeypatch.setenv("QEVAL_SECRET_S_TOKEN", KEY)
    with NoPromptLogprobs("m", key=KEY) as url:
        good = {"baseUrl": url, "model": "m", "apiKeySecret": {"name": "s"}}
        run = parse(
            run_doc(
                {"endpoint": {**good, "tokenizer": {"uri": "demo://tiny-llama"}}},
                [{"name": "c", "endpoint": {**good, "model": "absent"}}],
            ),
            "r.yaml",
        )
        problems = list(endpoint_problems(run, ["qeval_demo_facts"]))
        assert len(problems) == 2
        assert problems[0].startswith("EvalRun r: spec.baseline.endpoint: loglikelihood tasks")
        assert "prompt log-probabilities" in problems[0]
        assert problems[1].startswith("EvalRun r: spec.candidates[0].endpoint: ")
        assert "does not serve 'absent'" in problems[1]
        assert list(endpoint_problems(run, [])) == [problems[1]]  # generative tasks only
        # qeval validate asks no endpoint anything: only what the spec says
        offline = list(endpoint_problems(run, ["qeval_demo_facts"], local=False))
        assert len(offline) == 1 and "set endpoint.tokenizer" in offline[0]
        assert KEY not in json.dumps(problems + offline)
    clash = parse(
        run_doc(
            {"endpoint": {**good, "apiKeySecret": {"name": "a-b", "key": "c"}}},
            [{"name": "c", "endpoint": {**good, "apiKeySecret": {"name": "a", "key": "b.c"}}}],
        ),
        "r.yaml",
    )
    assert "the same variable QEVAL_SECRET_A_B_C" in " ".join(
        endpoint_problems(clash, [], local=False)
    )


def test_loglikelihood_tasks_through_an_endpoints_chat_completions_are_refused():
    run = parse(
        run_doc(
            {"endpoint": ENDPOINT},
            [{"name": "c", "model": {"uri": "o/m"}}],
            prompt={"chatTemplate": True},
            tasks=[{"name": "qeval_demo_facts"}, {"name": "qeval_demo_recall"}],
        ),
        "r.yaml",
    )
    (problem,) = task_problems(run, local=False)
    assert problem.startswith("EvalRun r: spec.tasks[0].name: qeval_demo_facts score log")
    assert "an endpoint" in problem


def test_lm_eval_gets_the_endpoints_model_url_and_context_never_the_key():
    from qeval.api.evalrun import Prompt
    from qeval.stages import evaluate

    card = {"id": "m", "max_model_len": 4096, "created": 1}
    conn = ep.Connection(endpoint("https://h/v1/", numConcurrent=3), KEY, card)

    def args(prompt: Prompt | None = None, **model_args: str) -> dict[str, Any]:
        inp = evaluate.EvaluateInput(
            model_name="served",
            endpoint=conn.endpoint,
            tasks=[],
            prompt=prompt,
            model_args=model_args,
            output_dir="/o",
        )
        return evaluate._endpoint_model_args(inp, None, conn)

    plain = args()
    assert plain["base_url"] == "https://h/v1/completions" and plain["model"] == "m"
    assert plain["num_concurrent"] == 3 and plain["max_length"] == 4096
    assert plain["tokenizer_backend"] is None  # no tokenizer: text prompts
    assert args(max_length="2048")["max_length"] == 2048  # spec.modelArgs wins
    chat = args(Prompt(chat_template=True, think_end_token="</think>"))
    assert chat["base_url"] == "https://h/v1/chat/completions"
    assert chat["think_end_token"] == "</think>"
    assert KEY not in json.dumps([plain, chat])
    assert evaluate.chat_server(
        evaluate.EvaluateInput(
            model_name="s",
            endpoint=conn.endpoint,
            tasks=[],
            prompt=Prompt(chat_template=True),
            output_dir="/o",
        )
    )


# --- for real: the evaluate stage, and qeval run ------------------------------------------


@pytest.mark.pipeline
def test_the_stage_refuses_before_lm_eval_sends_anything(tmp_path):
    """In a cluster the evaluate stage checks the endpoint itself: it fails NoPromptLogprobs
    after one probe, before lm-eval sends a request."""
    from qeval.stages import evaluate

    double = NoPromptLogprobs("m")
    with double as url:
        inp = evaluate.EvaluateInput(
            model_name="served",
            endpoint=endpoint(url, tokenizer={"uri": "demo://tiny-llama"}),
            tasks=[
                {"name": "qeval_demo_recall", "limit": 2},
                {"name": "qeval_demo_facts", "limit": 2},
            ],
            output_dir=str(tmp_path / "out"),
        )
        with pytest.raises(StageError) as e:
            evaluate.run(inp)
    assert e.value.reason == ep.NO_PROMPT_LOGPROBS and "qeval_demo_facts" not in str(e.value)
    sent = [(r["path"], r["body"] and r["body"].get("echo")) for r in double.requests]
    assert sent == [("/v1/models", None), ("/v1/completions", True)]


def free_port() -> int:
    from qeval.serving.launch import free_port as free

    return free()


@pytest.fixture(scope="module")
def served_endpoint(tmp_path_factory) -> Iterator[str]:
    """The demo model behind qeval's hf server with an API key: the existing endpoint."""
    import httpx

    from qeval.demo.model import demo_model_path

    model = demo_model_path()
    port = free_port()
    log = tmp_path_factory.mktemp("endpoint") / "server.log"
    argv = [sys.executable, "-m", "qeval.serving.hf_server", "--model", str(model)]
    argv += ["--served-model-name", "tiny", "--port", str(port), "--api-key", KEY]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(30)


STUDY = """
apiVersion: qeval.dev/v1alpha1
kind: EvalRun
metadata: {{name: endpoint}}
spec:
  baseline:
    name: served
    endpoint:
      baseUrl: {url}
      model: tiny
      apiKeySecret: {{name: tiny-api}}
      tokenizer: {{uri: demo://tiny-llama}}
  candidates: [{{name: local, model: {{uri: demo://tiny-llama}}}}]
  tasks: [{{name: qeval_demo_facts, limit: 20}}, {{name: qeval_demo_recall, limit: 20}}]
  batchSize: 8
"""


@pytest.mark.pipeline
def test_qeval_run_with_an_endpoint_baseline(served_endpoint, tmp_path):
    """The demo model behind the endpoint and the same weights in process (backend hf):
    the same scores, loglikelihood (facts) and generation (recall) alike; no server, no
    size for the endpoint; the key in no file and no output; the endpoint measured again
    on a second run (its cache off), the local model reused."""
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(url=served_endpoint))

    def qeval_run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "qeval", "run", str(study), "--workdir", str(tmp_path / "w")],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, **env},
        )

    refused = qeval_run()
    assert refused.returncode != 0
    assert "export QEVAL_SECRET_TINY_API_TOKEN" in refused.stdout + refused.stderr
    proc = qeval_run(QEVAL_SECRET_TINY_API_TOKEN=KEY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = tmp_path / "w" / "runs" / "endpoint"
    plan = [s["name"] for s in json.loads((run_dir / "plan.json").read_text())]
    assert plan == ["demo-model", "evaluate-served", "evaluate-local", "aggregate"]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["phase"] == "Succeeded", status
    scores = {(s["model"], s["task"]): s["value"] for s in status["scores"] if s["primary"]}
    assert set(scores) == {
        (m, t) for m in ("served", "local") for t in ("qeval_demo_facts", "qeval_demo_recall")
    }
    for task in ("qeval_demo_facts", "qeval_demo_recall"):
        assert scores[("served", task)] == scores[("local", task)], task
    result = json.loads((run_dir / "stages" / "evaluate-served" / "result.json").read_text())
    assert result["result"]["backend"] == "endpoint" and "modelSizeBytes" not in result["result"]

    again = qeval_run(QEVAL_SECRET_TINY_API_TOKEN=KEY)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "evaluate-local: reused" in again.stdout
    assert "evaluate-served: succeeded" in again.stdout  # measured again: endpoint.cache off

    for text in (proc.stdout, proc.stderr, again.stdout, again.stderr):
        assert KEY not in text
    for path in (tmp_path / "w").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
