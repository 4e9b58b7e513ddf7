"""Serving and similarity for real: `qeval run` on a small demo study with performance
scenarios and similarity, backend hf (transformers behind the hf backend's server; vLLM
cannot run on these machines). No mocks: the benchmark stage starts the server and
measures it over HTTP, the similarity stage generates and scores with the real encoders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.pipeline

STUDY = """
apiVersion: qeval.dev/v1alpha1
kind: QuantizedModel
metadata: {name: tiny-w4a16-rtn}
spec:
  model: {uri: demo://tiny-llama}
  scheme: W4A16
  algorithm: RTN
  scheduling: {gpus: 0}
---
apiVersion: qeval.dev/v1alpha1
kind: EvalRun
metadata: {name: serving}
spec:
  baseline: {name: fp32, model: {uri: demo://tiny-llama}}
  candidates: [{quantizedModel: tiny-w4a16-rtn, name: w4a16}]
  tasks: [{name: qeval_demo_recall, limit: 50}]
  performance:
    scenarios:
      - {name: synchronous, kind: synchronous, requests: 4, promptTokens: 32, outputTokens: 16}
      - {name: throughput, kind: throughput, requests: 8, promptTokens: 32, outputTokens: 16}
    warmupRequests: 1
  similarity: {prompts: 8, maxNewTokens: 12}
"""


@pytest.fixture(scope="module")
def serving_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path]:
    workdir = tmp_path_factory.mktemp("serving")
    study = workdir / "study.yaml"
    study.write_text(STUDY)
    proc = subprocess.run(
        [sys.executable, "-m", "qeval", "run", str(study), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, workdir / "runs" / "serving"


def test_run_succeeds_with_benchmark_and_similarity_stages(serving_run):
    proc, run_dir = serving_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = [s["name"] for s in json.loads((run_dir / "plan.json").read_text())]
    assert {"benchmark-fp32", "benchmark-w4a16", "similarity"} <= set(plan)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["phase"] == "Succeeded", status.get("failures")


def test_performance_per_model_and_scenario_labelled_hf(serving_run):
    _, run_dir = serving_run
    status = json.loads((run_dir / "status.json").read_text())
    points = {(p["model"], p["scenario"]): p for p in status["performance"]}
    assert set(points) == {(m, s) for m in ("fp32", "w4a16") for s in ("synchronous", "throughput")}
    for p in points.values():
        assert p["backend"] == "hf" and p["failedRequests"] == 0
        for key in ("ttftSeconds", "itlSeconds", "e2eSeconds"):
            q = p[key]
            assert 0 < q["p50"] <= q["p90"] <= q["p99"], (key, q)
        assert p["ttftSeconds"]["p50"] < p["e2eSeconds"]["p50"]
        assert p["outputTokensPerSecond"] > 0 and p["requestsPerSecond"] > 0
        # repeated 3 times (the default): the median latency is the repetitions' mean,
        # the percentiles are over every request of them
        reps = p["repetitions"]
        assert len(reps) == 3
        mean = sum(r["latencySeconds"] for r in reps) / 3
        assert p["latencySeconds"] == pytest.approx(mean, abs=1e-6)  # (status rounds to 1 us)
        assert p["latencySecondsCiLow"] <= p["latencySeconds"] <= p["latencySecondsCiHigh"]
    assert points[("fp32", "throughput")]["requests"] == 3 * 8
    speedups = {(s["model"], s["scenario"]) for s in status["speedups"]}
    assert speedups == {("w4a16", "synchronous"), ("w4a16", "throughput")}
    requests = (run_dir / "stages" / "benchmark-fp32" / "requests.jsonl").read_text()
    assert len(requests.splitlines()) == 3 * 12
    assert (
        "transformers, not vLLM"
        in (run_dir / "stages" / "benchmark-fp32" / "server.log").read_text()
    )


def test_similarity_of_the_candidate(serving_run):
    _, run_dir = serving_run
    status = json.loads((run_dir / "status.json").read_text())
    (s,) = status["similarity"]
    assert s["model"] == "w4a16" and s["prompts"] == 8
    for key in ("rouge1", "rougeL", "bertscoreF1", "sts", "identical"):
        assert 0 <= s[key] <= 1.0001, (key, s)
    # W4A16 keeps the demo model's answers: its text stays close to the baseline's
    assert s["rouge1"] > 0.5 and s["sts"] > 0.5
    rows = (run_dir / "stages" / "similarity" / "generations.jsonl").read_text().splitlines()
    assert len(rows) == 8 and {"baseline", "candidate", "rougeL"} <= set(json.loads(rows[0]))
    objects = list(yaml.safe_load_all((run_dir / "objects.yaml").read_text()))
    run = next(o for o in objects if o["kind"] == "EvalRun")
    assert run["status"]["similarity"] == status["similarity"]
    assert (run_dir / "report" / "performance.png").is_file()
    report = (run_dir / "report" / "report.md").read_text()
    assert "## Serving benchmark" in report and "## Similarity to the baseline" in report
