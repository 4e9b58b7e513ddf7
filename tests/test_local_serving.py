"""Backend vllm-server under `qeval run`: a server per model, started for the stages that
need it and stopped after them, lm-eval's local-completions and the benchmark and
similarity stages as its clients.

vLLM cannot run on these machines (no GPU): tests/doubles/vllm stands in for its `vllm`
command (first on PATH) and serves with qeval's transformers server, which answers what
those clients send as vLLM does. Everything else is real: `qeval run` as a process, the
`qeval serve` processes, lm-eval, HTTP. The scores must equal those of backend hf (lm-eval
running the model in process) on the same tasks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from qeval.api import EvalRun, QuantizedModel
from qeval.api.documents import parse
from tests.conftest import ROOT

DOUBLES = ROOT / "tests" / "doubles"

QUANTIZED = """
apiVersion: qeval.dev/v1alpha1
kind: QuantizedModel
metadata: {name: tiny-w4a16-rtn}
spec:
  model: {uri: demo://tiny-llama}
  scheme: W4A16
  algorithm: RTN
  scheduling: {gpus: 0}
"""

SERVING = (
    "{tensorParallelSize: 1, maxModelLen: 256, extraArgs: [--enforce-eager], numConcurrent: 4}"
)
PERFORMANCE = """
  performance:
    scenarios:
      - {name: synchronous, kind: synchronous, requests: 3, promptTokens: 16, outputTokens: 8}
    warmupRequests: 0
  similarity: {prompts: 4, maxNewTokens: 8}"""


def study(name: str, backend: str, limit: int, extra: str = "") -> str:
    """The quantized model and one EvalRun: facts (loglikelihood) and recall (generation)."""
    serving = f"\n  serving: {SERVING}" if backend != "hf" else ""
    return f"""{QUANTIZED}---
apiVersion: qeval.dev/v1alpha1
kind: EvalRun
metadata: {{name: {name}}}
spec:
  backend: {backend}
  baseline: {{name: fp32, model: {{uri: demo://tiny-llama}}}}
  candidates: [{{quantizedModel: tiny-w4a16-rtn, name: w4a16}}]
  tasks: [{{name: qeval_demo_facts, limit: {limit}}}, {{name: qeval_demo_recall, limit: {limit}}}]
  batchSize: 8{serving}{extra}
"""


def objects(text: str) -> list[Any]:
    return [parse(doc, "study.yaml") for doc in yaml.safe_load_all(text)]


def env(log: Path, **more: str) -> dict[str, str]:
    """PATH with the vllm double first (and this Python's folder, for its #! line)."""
    path = os.pathsep.join([str(DOUBLES), str(Path(sys.executable).parent), os.environ["PATH"]])
    return {**os.environ, "PATH": path, "QEVAL_VLLM_DOUBLE_LOG": str(log), **more}


def qeval_run(
    workdir: Path, text: str, name: str, **more: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    path = workdir / f"{name}.yaml"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "qeval", "run", str(path), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=400,
        env=env(workdir / f"{name}-vllm.jsonl", **more),
    )
    return proc, workdir / "runs" / name


def double_log(workdir: Path, name: str) -> list[dict[str, Any]]:
    path = workdir / f"{name}-vllm.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def status(run_dir: Path) -> dict[str, Any]:
    return dict(json.loads((run_dir / "status.json").read_text()))


def result(run_dir: Path, stage: str) -> dict[str, Any]:
    return dict(json.loads((run_dir / "stages" / stage / "result.json").read_text()))


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return Path(tmp_path_factory.mktemp("local-serving"))


@pytest.fixture(scope="module")
def served(workdir) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The vllm-server study, with a benchmark and similarity (first: it quantizes)."""
    return qeval_run(workdir, study("served", "vllm-server", 40, PERFORMANCE), "served")


@pytest.fixture(scope="module")
def local(workdir, served) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The same tasks with backend hf (the quantized model reused from the cache)."""
    return qeval_run(workdir, study("local", "hf", 40), "local")


# --- the run with servers ------------------------------------------------------------------


@pytest.mark.pipeline
def test_a_server_per_model_with_the_specs_flags(served, workdir):
    proc, run_dir = served
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert status(run_dir)["phase"] == "Succeeded", status(run_dir).get("failures")
    calls = double_log(workdir, "served")
    assert sorted(c["servedModelName"] for c in calls) == ["fp32", "w4a16"]  # one each
    for call in calls:
        name = call["servedModelName"]
        argv = call["argv"]
        assert argv[:2] == ["serve", call["model"]]
        flags = dict(zip(argv[2:-1:2], argv[3::2], strict=False))
        assert flags["--host"] == "127.0.0.1"
        assert flags["--tensor-parallel-size"] == "1" and flags["--max-model-len"] == "256"
        assert flags["--gpu-memory-utilization"] == "0.9" and argv[-1] == "--enforce-eager"
        inp = json.loads((run_dir / "stages" / f"serve-{name}" / "input.json").read_text())
        assert int(flags["--port"]) == call["port"] == inp["port"]
        doc = result(run_dir, f"serve-{name}")
        assert (doc["kind"], doc["status"]) == ("serve", "Succeeded")
        assert doc["result"]["served"] == [f"evaluate-{name}", "similarity", f"benchmark-{name}"]
    assert calls[1]["model"] == str(workdir.resolve() / "models" / "tiny-w4a16-rtn")


@pytest.mark.pipeline
def test_lm_eval_ran_local_completions_against_each_server(served, workdir):
    _, run_dir = served
    ports = {c["servedModelName"]: c["port"] for c in double_log(workdir, "served")}
    for name, port in ports.items():
        stage = run_dir / "stages" / f"evaluate-{name}"
        inp = json.loads((stage / "input.json").read_text())
        assert inp["backend"] == "vllm-server"
        assert inp["baseUrl"] == f"http://127.0.0.1:{port}"
        lm_eval = json.loads((stage / "results.json").read_text())
        assert lm_eval["config"]["model"] == "LocalCompletionsAPI"  # lm-eval's local-completions
        assert result(run_dir, f"evaluate-{name}")["result"]["backend"] == "vllm-server"
        bench = result(run_dir, f"benchmark-{name}")
        assert bench["status"] == "Succeeded", bench.get("message")
    sim = json.loads((run_dir / "stages" / "similarity" / "input.json").read_text())
    assert [m["baseUrl"] for m in (sim["baseline"], *sim["candidates"])] == [
        f"http://127.0.0.1:{ports['fp32']}",
        f"http://127.0.0.1:{ports['w4a16']}",
    ]
    (s,) = status(run_dir)["similarity"]
    assert s["model"] == "w4a16" and s["prompts"] == 4


METRICS = (("qeval_demo_facts", "acc,none"), ("qeval_demo_recall", "exact_match,none"))


@pytest.mark.pipeline
def test_scores_equal_those_of_backend_hf(served, local):
    (_, served_dir), (proc, local_dir) = served, local
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for model in ("fp32", "w4a16"):
        a = json.loads((served_dir / "stages" / f"evaluate-{model}" / "results.json").read_text())
        b = json.loads((local_dir / "stages" / f"evaluate-{model}" / "results.json").read_text())
        assert b["config"]["model"] != "LocalCompletionsAPI"  # lm-eval ran the model itself
        for task, metric in (
            ("qeval_demo_facts", "acc,none"),
            ("qeval_demo_recall", "exact_match,none"),
        ):
            assert a["results"][task][metric] == b["results"][task][metric], (model, task)
        facts = [samples(d, model, "qeval_demo_facts") for d in (served_dir, local_dir)]
        for x, y in zip(*facts, strict=True):  # every choice's loglikelihood, and is_greedy
            for (lx, gx), (ly, gy) in zip(x, y, strict=True):
                assert lx == pytest.approx(ly, abs=1e-5) and gx == gy
        recall = [samples(d, model, "qeval_demo_recall") for d in (served_dir, local_dir)]
        assert recall[0] == recall[1]  # the same generated text, stop string cut
    assert status(served_dir)["scores"] == status(local_dir)["scores"]


def samples(run_dir: Path, model: str, task: str) -> list[Any]:
    path = run_dir / "stages" / f"evaluate-{model}" / "samples" / f"{task}.jsonl"
    rows = sorted((json.loads(line) for line in path.read_text().splitlines()), key=_doc_id)
    return [[r[0] for r in row["resps"]] for row in rows]


def _doc_id(row: dict[str, Any]) -> int:
    return int(row["doc_id"])


@pytest.mark.pipeline
def test_every_server_is_stopped_after_the_run(served, workdir):
    calls = double_log(workdir, "served")
    assert len(calls) == 2
    for call in calls:
        assert not alive(call["pid"]), call
        assert not listening(call["port"]), call


@pytest.mark.pipeline
def test_no_server_starts_when_every_evaluation_is_reused(served, workdir):
    """Same tasks and serving settings, no benchmark or similarity: the evaluations come
    from the cache, so nothing needs a server and none starts."""
    proc, run_dir = qeval_run(workdir, study("again", "vllm-server", 40), "again")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert status(run_dir)["phase"] == "Succeeded"
    assert double_log(workdir, "again") == []
    for name in ("fp32", "w4a16"):
        assert result(run_dir, f"evaluate-{name}")["message"].startswith("reused")
        doc = result(run_dir, f"serve-{name}")
        assert doc["status"] == "Succeeded" and doc["message"].startswith("not started")


@pytest.mark.pipeline
def test_a_server_that_never_comes_up_fails_its_stage(served, workdir):
    """vllm exits at once (QEVAL_VLLM_DOUBLE_FAIL): the serve stage fails saying why, with
    the server's words; the evaluation that needed it is skipped; the run fails."""
    text = study("broken", "vllm-server", 20)  # other limits: nothing cached
    t0 = time.monotonic()
    proc, run_dir = qeval_run(workdir, text, "broken", QEVAL_VLLM_DOUBLE_FAIL="1")
    assert time.monotonic() - t0 < 60  # no wait for readyTimeoutSeconds
    assert proc.returncode != 0
    st = status(run_dir)
    assert st["phase"] == "Failed"
    failures = {f["stage"]: f for f in st["failures"]}
    assert failures["serve-fp32"]["reason"] == "ServerFailed"
    assert "failing on purpose" in failures["serve-fp32"]["message"]  # the log's tail
    doc = result(run_dir, "serve-fp32")
    assert (doc["kind"], doc["status"], doc["reason"]) == ("serve", "Failed", "ServerFailed")
    skipped = result(run_dir, "evaluate-fp32")
    assert (skipped["status"], skipped["reason"]) == ("Skipped", "DependencyFailed")
    assert skipped["message"] == "not run: serve-fp32 did not succeed"
    succeeded = next(c for c in st["conditions"] if c["type"] == "Succeeded")
    assert succeeded["status"] == "False" and succeeded["reason"] == "ServerFailed"
    assert "serve-fp32" in proc.stdout and "ServerFailed" in proc.stdout


@pytest.mark.pipeline
def test_ctrl_c_stops_the_servers(served, workdir):
    """Ctrl-C (SIGINT to the run's process group) while a server is up: the run ends and
    takes its server with it (servers run in sessions of their own: the run stops them)."""
    path = workdir / "interrupted.yaml"
    path.write_text(study("interrupted", "vllm-server", 30))
    log = workdir / "interrupted-vllm.jsonl"
    with (workdir / "interrupted.out").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qeval", "run", str(path), "--workdir", str(workdir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env(log),
            start_new_session=True,  # a terminal of its own, to send Ctrl-C to
        )
    calls: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 90
        while not (calls and listening(calls[0]["port"])):
            assert proc.poll() is None, (workdir / "interrupted.out").read_text()
            assert time.monotonic() < deadline, "no server came up"
            time.sleep(0.2)
            calls = double_log(workdir, "interrupted")
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        assert proc.returncode != 0
        (call,) = calls
        assert not alive(call["pid"]) and not listening(call["port"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for call in calls:  # never leave a server behind, even when the test fails
            if alive(call["pid"]):
                os.kill(call["pid"], signal.SIGKILL)


# --- the pieces, without running anything --------------------------------------------------


def test_preflight_needs_the_vllm_command(monkeypatch, tmp_path):
    from qeval.local.preflight import problems

    run = next(o for o in objects(study("r", "vllm-server", 5)) if isinstance(o, EvalRun))
    wanted = "spec.backend: vllm-server needs vLLM's `vllm` command"
    monkeypatch.setenv("PATH", str(tmp_path))  # no vllm here
    found = [p for p in problems(run, {}) if "spec.backend" in p]
    assert found == [
        f"EvalRun r: {wanted} (a GPU machine, or the evaluator image); use backend hf here"
    ]
    monkeypatch.setenv("PATH", str(DOUBLES))
    assert [p for p in problems(run, {}) if "spec.backend" in p] == []


def test_local_endpoints_give_each_server_a_port_of_its_own():
    from qeval.local.servers import LocalEndpoints
    from qeval.plan import Layout, build_plan

    parsed = objects(study("r", "vllm-server", 5))
    run = next(o for o in parsed if isinstance(o, EvalRun))
    models = {o.name: o for o in parsed if isinstance(o, QuantizedModel)}
    endpoints = LocalEndpoints()
    layout = Layout(PurePosixPath("/w/runs/r"), PurePosixPath("/w/models"), endpoints=endpoints)
    stages = {s.name: s for s in build_plan(run, models, layout)}
    ports = {name: endpoints.port(f"serve-{name}") for name in ("fp32", "w4a16")}
    assert len(set(ports.values())) == 2 and endpoints.port("serve-fp32") == ports["fp32"]
    for name, port in ports.items():
        serve = stages[f"serve-{name}"]
        assert serve.serves and (serve.input["host"], serve.input["port"]) == ("127.0.0.1", port)
        assert stages[f"evaluate-{name}"].input["baseUrl"] == f"http://127.0.0.1:{port}"
    assert endpoints.url("serve-w4a16") == f"http://127.0.0.1:{ports['w4a16']}"


def test_the_vllm_double_says_it_is_one(tmp_path):
    """It refuses what is not `serve MODEL --served-model-name N`, and fails on demand."""
    log = tmp_path / "calls-vllm.jsonl"
    vllm = str(DOUBLES / "vllm")
    bad = subprocess.run([vllm, "bench"], capture_output=True, text=True, env=env(log))
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    argv = [vllm, "serve", "/m", "--served-model-name", "m", "--port", "1", "-x"]
    fail = subprocess.run(
        argv, capture_output=True, text=True, env=env(log, QEVAL_VLLM_DOUBLE_FAIL="1")
    )
    assert fail.returncode == 1 and "test double" in fail.stderr
    (call,) = double_log(tmp_path, "calls")
    assert call["argv"] == argv[1:] and call["port"] == 1 and call["servedModelName"] == "m"
