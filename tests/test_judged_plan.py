"""Judged evaluations in the plan, the operator and the aggregate: which stages a judged set
becomes, what they need and where they run, the judge's key by reference only, the reuse
key, and how a set's verdict joins the candidate's."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from qeval.api.documents import parse
from qeval.api.evalrun_status import CandidateSummary, EvalRunStatus, JudgedResult, JudgedScore
from qeval.k8s import manifests as m
from qeval.k8s.reuse import judge_identity, reuse_keys, reused_entries_of
from qeval.plan import Layout, build_plan
from qeval.results.judged import MIN_PROMPTS_TO_PASS
from qeval.results.summary import join_judged
from qeval.stages.aggregate import AggregateInput
from qeval.stages.aggregate import run as aggregate
from qeval.stages.envelope import StageResult, StageStatus
from qeval.stages.judge import JudgeResult

LAYOUT = Layout(PurePosixPath("/r"), PurePosixPath("/m"), PurePosixPath("/c"))
ENDPOINT = {
    "baseUrl": "https://judge.example.com/v1",
    "model": "gpt-judge",
    "apiKeySecret": {"name": "judge-key", "key": "token"},
}


def run(judged: list[dict[str, Any]], **spec: Any):
    base = {
        "baseline": {
            "name": "bf16",
            "model": {"uri": "meta-llama/Llama-3.1-8B-Instruct", "revision": "0e9e39f"},
        },
        "candidates": [
            {
                "name": "w4a16",
                "model": {
                    "uri": "RedHatAI/Llama-3.1-8B-Instruct-quantized.w4a16",
                    "revision": "abc1234",
                },
            },
            {
                "name": "ext",
                "endpoint": {"baseUrl": "http://vllm.models.svc:8000/v1", "model": "q"},
            },
        ],
        "tasks": [{"name": "gsm8k"}],
        "judged": judged,
    }
    doc = {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r"},
        "spec": base | spec,
    }
    return parse(doc, "run.yaml")


def stages(r) -> dict[str, Any]:
    return {s.name: s for s in build_plan(r, {}, LAYOUT)}


def test_an_endpoint_judge_on_hf_is_one_gpu_stage_after_every_model_is_ready():
    plan = stages(run([{"name": "arena", "judge": {"endpoint": ENDPOINT}}]))
    judge = plan["judge-arena"]
    assert judge.kind == "judge" and judge.scheduling is not None  # it starts the models' servers
    assert "judge-arena" in plan["aggregate"].needs
    assert plan["aggregate"].input["judged"] == ["/r/stages/judge-arena/result.json"]
    inp = judge.input
    assert [inp["baseline"]["name"], *(c["name"] for c in inp["candidates"])] == [
        "bf16",
        "w4a16",
        "ext",
    ]
    assert inp["candidates"][1]["endpoint"]["model"] == "q" and "judgeUrl" not in inp


def test_with_vllm_server_the_judge_gets_a_server_of_its_own_and_the_stage_is_a_client():
    judge = {
        "model": {"uri": "meta-llama/Llama-3.1-70B-Instruct", "revision": "1605565"},
        "gpus": 4,
        "serving": {"tensorParallelSize": 4},
    }
    r = run(
        [{"name": "arena", "judge": judge}],
        backend="vllm-server",
        scheduling={"gpus": 1},
        performance={"scenarios": [{"name": "sync", "kind": "synchronous"}]},
        candidates=[{"name": "w4a16", "model": {"uri": "org/w4", "revision": "abc1234"}}],
    )
    plan = stages(r)
    server = plan["judge-server-arena"]
    assert server.serves and server.scheduling.gpus == 4
    # up only once the evaluations ended, however they did: its GPUs do not wait idle
    assert server.always and set(server.needs) == {"evaluate-bf16", "evaluate-w4a16"}
    assert (
        server.input["serving"]["tensorParallelSize"] == 4 and server.input["modelName"] == "judge"
    )
    judge_stage = plan["judge-arena"]
    assert judge_stage.scheduling is None  # a client of the servers
    assert {"serve-bf16", "serve-w4a16", "judge-server-arena"} <= set(judge_stage.needs)
    assert judge_stage.input["judgeUrl"] == "http://judge-server-arena:8000"
    assert judge_stage.input["baseline"]["baseUrl"] == "http://serve-bf16:8000"
    # A benchmark runs alone on its server: after the judging too.
    assert "judge-arena" in plan["benchmark-w4a16"].needs


def test_similarity_generations_are_reused_only_where_the_settings_match():
    same = {"name": "a", "judge": {"endpoint": ENDPOINT}, "chatTemplate": False, "maxNewTokens": 64}
    other = {**same, "name": "b", "maxNewTokens": 32}
    chat = {**same, "name": "c", "chatTemplate": True}
    plan = stages(
        run(
            [same, other, chat],
            similarity={"maxNewTokens": 64},
            candidates=[{"name": "w4a16", "model": {"uri": "org/w4"}}],
        )
    )
    assert (
        plan["judge-a"].input["similarity"]["generations"]
        == "/r/stages/similarity/generations.jsonl"
    )
    assert "similarity" in plan["judge-a"].needs
    for name in ("judge-b", "judge-c"):
        assert "similarity" not in plan[name].input and "similarity" not in plan[name].needs


def test_the_judge_stage_pod_gets_every_api_key_by_reference_only():
    r = run(
        [{"name": "arena", "judge": {"endpoint": ENDPOINT}}],
        candidates=[
            {
                "name": "ext",
                "endpoint": {
                    "baseUrl": "http://v:8000/v1",
                    "model": "q",
                    "apiKeySecret": {"name": "ext-key", "key": "k"},
                },
            }
        ],
    )
    env = m.endpoint_env(stages(r)["judge-arena"])
    assert env == [
        {
            "name": "QEVAL_SECRET_EXT_KEY_K",
            "valueFrom": {"secretKeyRef": {"name": "ext-key", "key": "k"}},
        },
        {
            "name": "QEVAL_SECRET_JUDGE_KEY_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "judge-key", "key": "token"}},
        },
    ]
    assert all("value" not in e for e in env)  # never a literal key


def test_the_reuse_key_names_models_judge_and_settings_and_never_an_endpoint():
    judge = {"model": {"uri": "org/judge", "revision": "1605565"}}
    r = run(
        [{"name": "arena", "judge": judge}],
        candidates=[{"name": "w4a16", "model": {"uri": "org/w4", "revision": "abc1234"}}],
    )
    plan = build_plan(r, {}, LAYOUT)
    key = reuse_keys(plan, "evaluator:1")["judge-arena"]
    again = reuse_keys(
        build_plan(r, {}, Layout(PurePosixPath("/elsewhere"), PurePosixPath("/m2"))), "evaluator:1"
    )
    assert again["judge-arena"] == key  # places do not count
    for change in ({"repeats": 2}, {"template": "{question} {answer_a} {answer_b}"}, {"limit": 10}):
        other = run(
            [{"name": "arena", "judge": judge, **change}],
            candidates=[{"name": "w4a16", "model": {"uri": "org/w4", "revision": "abc1234"}}],
        )
        assert reuse_keys(build_plan(other, {}, LAYOUT), "evaluator:1")["judge-arena"] != key, (
            change
        )
    other_judge = run(
        [{"name": "arena", "judge": {"model": {"uri": "org/judge", "revision": "ffff000"}}}],
        candidates=[{"name": "w4a16", "model": {"uri": "org/w4", "revision": "abc1234"}}],
    )
    assert reuse_keys(build_plan(other_judge, {}, LAYOUT), "evaluator:1")["judge-arena"] != key
    # an endpoint (as judge, or a model) is named by no spec: no key
    for r2 in (
        run(
            [{"name": "arena", "judge": {"endpoint": ENDPOINT}}],
            candidates=[{"name": "w4a16", "model": {"uri": "org/w4", "revision": "abc1234"}}],
        ),
        run([{"name": "arena", "judge": judge}]),
    ):
        stage = next(s for s in build_plan(r2, {}, LAYOUT) if s.kind == "judge")
        assert judge_identity(stage, {}) is None
        assert "judge-arena" not in reuse_keys(build_plan(r2, {}, LAYOUT), "evaluator:1")
    assert reused_entries_of(plan, {"judge-arena": object()}) == ["judged/arena"]  # type: ignore[dict-item]


def score(model: str, low: float, high: float, prompts: int = 80, unjudged: int = 0) -> JudgedScore:
    return JudgedScore(
        model=model,
        prompts=prompts,
        unjudged=unjudged,
        judgements=2 * prompts,
        recovery=(low + high) / 2,
        recovery_ci_low=low,
        recovery_ci_high=high,
    )


def result(*scores: JudgedScore) -> JudgedResult:
    return JudgedResult(
        name="arena",
        kind="pairwise",
        judge="j",
        prompts=80,
        prompt_set="demo",
        template="0" * 12,
        scores=list(scores),
    )


@pytest.mark.parametrize(
    ("task_verdict", "judged", "joined"),
    [
        ("Pass", [result(score("c", 0.96, 1.04))], "Pass"),
        ("Pass", [result(score("c", 0.80, 0.93))], "Degraded"),  # chat quality dropped
        ("Pass", [result(score("c", 0.90, 1.02))], "Inconclusive"),
        ("Pass", [None], "Inconclusive"),  # the set did not run
        ("Pass", [result(score("c", 0.96, 1.04, prompts=70, unjudged=10))], "Inconclusive"),
        ("Pass", [result(score("c", 1.0, 1.0, prompts=MIN_PROMPTS_TO_PASS - 1))], "Inconclusive"),
        ("Inconclusive", [result(score("c", 0.96, 1.04))], "Inconclusive"),
        ("Degraded", [result(score("c", 0.96, 1.04))], "Degraded"),
        ("Inconclusive", [result(score("c", 0.5, 0.7))], "Degraded"),
    ],
)
def test_a_judged_verdict_joins_the_candidates(task_verdict, judged, joined):
    status = EvalRunStatus(candidates=[CandidateSummary(name="c", verdict=task_verdict)])
    join_judged(status, judged, 0.95)
    assert status.candidates[0].verdict == joined
    if judged[0] is not None:
        assert status.judged[0].scores[0].verdict in ("Pass", "Degraded", "Inconclusive")


def test_the_aggregate_reads_the_judge_documents_and_applies_its_threshold(tmp_path: Path):
    from qeval.api.evalrun_status import Score
    from qeval.stages.evaluate import EvaluateResult

    def evaluate(name: str, value: float) -> str:
        doc = StageResult(stage=f"evaluate-{name}", kind="evaluate", status=StageStatus.SUCCEEDED)
        doc.result = EvaluateResult(
            model_name=name,
            backend="hf",
            harness_version="0.4.13",
            scores=[
                Score(model=name, task="t", metric="acc", value=value, stderr=0.001, primary=True)
            ],
            results_path=str(tmp_path / "none.json"),
            samples_dir=str(tmp_path),
        ).dump()
        path = tmp_path / f"evaluate-{name}.json"
        path.write_text(json.dumps(doc.dump()))
        return str(path)

    judge_doc = StageResult(stage="judge-arena", kind="judge", status=StageStatus.SUCCEEDED)
    judge_doc.result = JudgeResult(judged=result(score("c", 0.80, 0.93))).dump()
    (tmp_path / "judge.json").write_text(json.dumps(judge_doc.dump()))
    inp = AggregateInput.model_validate(
        {
            "baseline": {"name": "b", "evaluate": evaluate("b", 0.8)},
            "candidates": [{"name": "c", "evaluate": evaluate("c", 0.8)}],
            "resultsLocation": str(tmp_path),
            "judged": [str(tmp_path / "judge.json")],
        }
    )
    status = aggregate(inp)
    assert status.candidates[0].verdict == "Degraded"
    assert status.judged[0].scores[0].verdict == "Degraded"
    lenient = aggregate(inp.model_copy(update={"recovery_threshold": 0.5}))
    assert lenient.judged[0].scores[0].verdict == "Pass" and lenient.candidates[0].verdict == "Pass"
