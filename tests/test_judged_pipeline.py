"""Judged evaluations for real: `qeval run` on a small demo study where the demo model is
the baseline and its candidates (itself, and a 2-bit round-to-nearest quantization of it
that must lose), every model answers through its real server (backend hf: transformers
behind qeval's server; vllm-server: the vLLM double, which serves with the same server),
and the judge is tests/doubles/judge: a stand-in for a judge model that rates answers by
the demo set's reference answers, with the faults a real judge has (malformed verdicts,
one it never judges, a preference for the first position, being down)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.doubles.judge import JudgeDouble

pytestmark = pytest.mark.pipeline

DOUBLES = Path(__file__).parent / "doubles"  # its `vllm` command
KEY = "sk-judge-test"

QUANTIZED = """
apiVersion: qeval.dev/v1alpha1
kind: QuantizedModel
metadata: {name: tiny-w2a16-rtn}
spec:
  model: {uri: demo://tiny-llama}
  scheme: W2A16
  algorithm: RTN
  scheduling: {gpus: 0}
---
"""


def study(name: str, judged: str, backend: str = "hf", more: str = "") -> str:
    return (
        QUANTIZED
        + f"""
apiVersion: qeval.dev/v1alpha1
kind: EvalRun
metadata: {{name: {name}}}
spec:
  backend: {backend}
  baseline: {{name: fp32, model: {{uri: demo://tiny-llama}}}}
  candidates:
    - {{name: same, model: {{uri: demo://tiny-llama}}}}
    - {{quantizedModel: tiny-w2a16-rtn, name: w2a16}}
  tasks: [{{name: qeval_demo_recall, limit: 16}}]
  batchSize: 8{more}
  judged:
{judged}
"""
    )


def judged_set(url: str, name: str = "arena", kind: str = "pairwise", limit: int = 48) -> str:
    return f"""    - name: {name}
      kind: {kind}
      limit: {limit}
      chatTemplate: false
      maxNewTokens: 8
      judge:
        endpoint:
          baseUrl: "{url}"
          model: judge
          apiKeySecret: {{name: judge, key: token}}
          cache: true  # what answers behind this URL is the same judge: cache its verdicts
"""


def qeval_run(workdir: Path, text: str, name: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    path = workdir / f"{name}.yaml"
    path.write_text(text)
    path_env = os.pathsep.join([str(DOUBLES), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {
        **os.environ,
        "PATH": path_env,
        "QEVAL_SECRET_JUDGE_TOKEN": KEY,
        "QEVAL_VLLM_DOUBLE_LOG": str(workdir / f"{name}-vllm.jsonl"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "qeval", "run", str(path), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    return proc, workdir / "runs" / name


def status(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "status.json").read_text()))


def stage_doc(run_dir: Path, stage: str) -> dict[str, Any]:
    return dict(json.loads((run_dir / "stages" / stage / "result.json").read_text()))


def by_model(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["model"]: s for s in result["scores"]}


GARBLED = "rate laziin works as a"  # the one prompt the double never judges


def posts(double: JudgeDouble) -> int:
    """The judge requests the double was sent (not GET /v1/models)."""
    return sum(r["path"].endswith("/chat/completions") for r in double.requests)


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory):
    """The study with a pairwise set (both orders, the double biased towards position A,
    malformed first answers, one prompt never judged) and a single-grading set, then the
    same study under another name in the same work folder: the second run takes every
    judgement from the result cache."""
    workdir = tmp_path_factory.mktemp("judged")
    double = JudgeDouble(key=KEY, malformed_first=True, position_bias=True, garble={GARBLED})
    with double as url:
        sets = judged_set(url) + judged_set(url, "mt", "single", 24)
        more = "\n  similarity: {prompts: 16, maxNewTokens: 8}"
        first = qeval_run(workdir, study("judged", sets, more=more), "judged")
        asked = posts(double)
        second = qeval_run(workdir, study("again", sets, more=more), "again")
        again = posts(double) - asked
    return first, second, asked, again, double


def test_the_run_succeeds_and_judges_every_candidate(judged_run):
    (proc, run_dir), *_ = judged_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    arena, mt = status(run_dir)["judged"]
    assert (arena["name"], arena["kind"], mt["name"], mt["kind"]) == (
        "arena",
        "pairwise",
        "mt",
        "single",
    )
    assert arena["prompts"] == 48 and mt["prompts"] == 24 and arena["swapped"] and not mt["swapped"]
    assert set(by_model(arena)) == set(by_model(mt)) == {"same", "w2a16"}


def test_the_baseline_against_itself_ties_and_swapping_cancels_the_position_bias(judged_run):
    (_, run_dir), *_ = judged_run
    same = by_model(status(run_dir)["judged"][0])["same"]
    # Identical answers: the double says A>B for A in both orders, so the candidate wins
    # as A and loses as B on every prompt it judges; swapped, that is a tie.
    assert same["positionBias"] == 1.0
    assert same["winRate"] == 0.5 and same["recovery"] == 1.0
    assert same["wins"] == same["losses"] == 47 and same["ties"] == 0
    assert (same["recoveryCiLow"], same["recoveryCiHigh"]) == (1.0, 1.0)


def test_unparseable_judgements_are_retried_counted_and_reported(judged_run):
    (_, run_dir), *_ = judged_run
    arena = status(run_dir)["judged"][0]
    for s in arena["scores"]:
        # the never-judged prompt: both orders, each asked 1 + retries (2) times
        assert s["unparseable"] == 2 and s["unjudged"] == 1 and s["prompts"] == 47
        assert s["judgements"] == 94
    rows = [json.loads(x) for x in Path(arena["judgementsPath"]).read_text().splitlines()]
    never = [r for r in rows if r["verdict"] is None]
    assert len(never) == 4 and all(r["attempts"] == 3 for r in never)
    # The double breaks the first answer to each distinct judge message (a message the
    # two candidates share, where their answers are the same, once): every one was asked
    # again and then parsed.
    messages = {json.dumps(r["messages"]) for r in double_requests(judged_run)}
    fixed = [r for r in rows if r["verdict"] is not None and r["attempts"] == 2]
    assert fixed and all(r["attempts"] <= 2 for r in rows if r["verdict"] is not None)
    assert len(fixed) >= len(messages) - 2 * 2  # (the garbled prompt's are never parsed)
    assert arena["judgeRequests"] == sum(r["attempts"] for r in rows)


def double_requests(judged_run) -> list[dict[str, Any]]:
    """The first run's judge requests of the pairwise set (its system message)."""
    *_, double = judged_run
    bodies = [r["body"] for r in double.requests if r["path"].endswith("/chat/completions")]
    first = bodies[: judged_run[2]]
    return [b for b in first if "[[A>>B]]" in b["messages"][0]["content"]]


def test_the_two_bit_model_loses_and_the_judged_verdict_joins_its_verdict(judged_run):
    (_, run_dir), *_ = judged_run
    st = status(run_dir)
    arena, mt = (by_model(r) for r in st["judged"])
    w2 = arena["w2a16"]
    assert w2["losses"] > w2["wins"] and w2["winRate"] < 0.5
    assert w2["recoveryCiHigh"] < 0.95 and w2["verdict"] == "Degraded"
    assert mt["w2a16"]["score"] < mt["w2a16"]["baselineScore"]
    assert mt["same"]["score"] == mt["same"]["baselineScore"] and mt["same"]["recovery"] == 1.0
    verdicts = {c["name"]: c["verdict"] for c in st["candidates"]}
    assert verdicts["w2a16"] == "Degraded"
    assert arena["same"]["verdict"] == "Pass" and verdicts["same"] == "Pass"


def test_answers_come_from_the_similarity_generations_where_they_match(judged_run):
    (_, run_dir), *_ = judged_run
    arena = status(run_dir)["judged"][0]
    # the demo set alternates recall and facts prompts; similarity generated the first 16
    # recall prompts: 16 of the 48 judged ones, for each of the three models
    assert arena["reusedAnswers"] == 3 * 16
    answers = [
        json.loads(x)
        for x in (run_dir / "stages" / "judge-arena" / "answers.jsonl").read_text().splitlines()
    ]
    generations = [
        json.loads(x)
        for x in (run_dir / "stages" / "similarity" / "generations.jsonl").read_text().splitlines()
    ]
    same_similarity = {g["prompt"]: g["candidate"] for g in generations if g["model"] == "same"}
    for a in answers:
        if a["model"] == "same" and a["turns"][0] in same_similarity:
            assert a["answers"] == [same_similarity[a["turns"][0]]]


def test_the_judge_got_the_key_and_the_cost_is_recorded(judged_run):
    (_, run_dir), _, asked, _, double = judged_run
    assert double.requests and all(
        r["headers"].get("Authorization") == f"Bearer {KEY}" for r in double.requests
    )
    arena, mt = status(run_dir)["judged"]
    assert arena["judgeRequests"] + mt["judgeRequests"] == asked
    assert arena["judgePromptTokens"] > arena["judgeCompletionTokens"] > 0
    assert arena["judgeSeconds"] > 0 and arena["answerTokens"] > 0
    # single grading rates the baseline's answers once, for every candidate
    assert mt["judgeRequests"] == sum(
        json.loads(x)["attempts"]
        for x in Path(mt["judgementsPath"]).read_text().splitlines()
        if json.loads(x)["model"] == "same"
    ) + sum(
        json.loads(x)["attempts"]
        for x in Path(mt["judgementsPath"]).read_text().splitlines()
        if json.loads(x)["model"] == "w2a16" and json.loads(x)["order"] == "candidate"
    )
    report = (run_dir / "report" / "report.md").read_text()
    assert "Judged" in report


def test_a_second_run_takes_every_judgement_from_the_cache(judged_run):
    (_, first_dir), (proc, run_dir), _, again, _ = judged_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert again == 0  # the judge was not asked anything
    first, second = status(first_dir)["judged"], status(run_dir)["judged"]
    for a, b in zip(first, second, strict=True):
        assert all(s["cached"] for s in b["scores"])
        strip = ("cached", "judgeRequests", "judgePromptTokens", "judgeCompletionTokens")
        assert [{k: v for k, v in s.items() if k not in strip} for s in a["scores"]] == [
            {k: v for k, v in s.items() if k not in strip} for s in b["scores"]
        ]
        assert b["judgeRequests"] == 0


def test_a_judge_that_is_down_fails_the_stage_with_a_reason_and_no_pass(tmp_path):
    with JudgeDouble(key=KEY, fail_status=503) as url:
        proc, run_dir = qeval_run(tmp_path, study("down", judged_set(url, limit=2)), "down")
    assert proc.returncode != 0
    doc = stage_doc(run_dir, "judge-arena")
    assert doc["status"] == "Failed" and doc["reason"] == "JudgeUnavailable"
    assert "HTTP 503" in doc["message"] and "judge" in doc["message"]
    st = status(run_dir)
    assert any(f["stage"] == "judge-arena" for f in st["failures"])
    assert all(c["verdict"] != "Pass" for c in st["candidates"])
    assert st["scores"]  # the evaluations stand


def test_with_vllm_server_the_judge_is_served_and_removed_like_any_server(tmp_path):
    """The judge is the demo model (which cannot judge): its server starts as a stage of its
    own, its judgements are unparseable and counted, and it is stopped once judged."""
    judged = """    - name: self
      limit: 3
      chatTemplate: false
      maxNewTokens: 4
      template: "Q {question} A {answer_a} B {answer_b}"
      system: "Judge."  # the demo model's context is 256 tokens
      judge: {model: {uri: demo://tiny-llama}, maxNewTokens: 8, retries: 1, gpus: 0}
"""
    text = study("served", judged, backend="vllm-server", more="\n  scheduling: {gpus: 0}")
    text = text.replace("    - {quantizedModel: tiny-w2a16-rtn, name: w2a16}\n", "")
    proc, run_dir = qeval_run(tmp_path, text, "served")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    server = stage_doc(run_dir, "judge-server-self")
    assert server["status"] == "Succeeded" and "judge-self" in server["message"]
    (result,) = status(run_dir)["judged"]
    (same,) = result["scores"]
    assert same["judgements"] + same["unparseable"] == 6 and same["unparseable"] > 0
    log = [json.loads(x) for x in (tmp_path / "served-vllm.jsonl").read_text().splitlines()]
    assert any(
        "--served-model-name" in e.get("argv", []) and "judge" in e.get("argv", []) for e in log
    ), log
