"""The plan: which stages, in which order, with which inputs (pure, no I/O)."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from qeval.api import EvalRun, QuantizedModel, load_documents
from qeval.plan import Layout, PlanError, Stage, build_plan, ordered
from tests.conftest import EXAMPLES

LAYOUT = Layout(PurePosixPath("/w/runs/demo"), PurePosixPath("/w/models"))


def demo_objects():
    objs = load_documents(EXAMPLES / "evalrun.yaml")
    run = next(o for o in objs if isinstance(o, EvalRun))
    return run, {o.name: o for o in objs if isinstance(o, QuantizedModel)}


def test_demo_plan_order_and_dependencies():
    run, models = demo_objects()
    stages = build_plan(run, models, LAYOUT)
    names = [s.name for s in stages]
    assert names[0] == "demo-model" and names[-1] == "aggregate"
    assert len(names) == 1 + 4 + 5 + 1
    # The baseline's evaluation before any quantization: its scores are the first result.
    assert names[1] == "evaluate-fp32" and names[2].startswith("quantize-")
    position = {n: i for i, n in enumerate(names)}
    for s in stages:
        for need in s.needs:
            assert position[need] < position[s.name], f"{s.name} runs before {need}"
    by = {s.name: s for s in stages}
    assert by["evaluate-w4a16"].needs == ("quantize-tiny-llama-w4a16",)
    assert by["evaluate-fp32"].needs == ("demo-model",)
    assert by["aggregate"].always and len(by["aggregate"].needs) == 5
    # The demo model is built where the run's stages run, asking what they ask (one CPU):
    # on a small node the scheduler then runs one build at a time, not one per quantization.
    demo = by["demo-model"].scheduling
    assert demo is not None and demo.gpus == 0
    assert demo.resources is not None and demo.resources.requests == {"cpu": "1"}


def test_stage_inputs():
    run, models = demo_objects()
    by = {s.name: s for s in build_plan(run, models, LAYOUT)}
    q = by["quantize-tiny-llama-w4a16"].input
    assert q["outputDir"] == "/w/models/tiny-llama-w4a16"
    assert "GPTQModifier" in q["recipe"] and q["calibration"]["dataset"] == "demo"
    assert "calibration" not in by["quantize-tiny-llama-fp8"].input  # data-free
    e = by["evaluate-w4a16"].input
    assert e["model"] == {"uri": "/w/models/tiny-llama-w4a16"}
    assert e["batchSize"] == 64 and [t["name"] for t in e["tasks"]] == [
        t.name for t in run.spec.tasks
    ]
    agg = by["aggregate"].input
    assert agg["baseline"]["evaluate"] == "/w/runs/demo/stages/evaluate-fp32/result.json"
    assert [c["scheme"] for c in agg["candidates"]] == [
        "W8A8-FP8",
        "W8A8-INT8",
        "W4A16",
        "W2A16-RTN",
    ]


def test_argv_is_a_list_without_a_shell():
    run, models = demo_objects()
    stage = next(s for s in build_plan(run, models, LAYOUT) if s.kind == "quantize")
    assert stage.argv("/in.json", "/out.json") == [
        "qeval",
        "quantize",
        "--input",
        "/in.json",
        "--output",
        "/out.json",
    ]


def test_missing_quantized_model_is_named():
    run, models = demo_objects()
    del models["tiny-llama-w4a16"]
    with pytest.raises(PlanError, match=r"\['tiny-llama-w4a16'\].*create them"):
        build_plan(run, models, LAYOUT)


def test_pvc_output_and_model_reference_candidates():
    qm = QuantizedModel.model_validate(
        {
            "metadata": {"name": "q"},
            "spec": {
                "model": {"uri": "org/m"},
                "scheme": "W4A16",
                "output": {"uri": "pvc://models/q"},
            },
        }
    )
    run = EvalRun.model_validate(
        {
            "metadata": {"name": "r"},
            "spec": {
                "baseline": {"model": {"uri": "org/m"}},
                "candidates": [
                    {"quantizedModel": "q"},
                    {"name": "ext", "model": {"uri": "org/m-awq"}, "scheme": "W4A16-AWQ"},
                ],
                "tasks": [{"name": "arc_easy"}],
            },
        }
    )
    by = {s.name: s for s in build_plan(run, {"q": qm}, LAYOUT)}
    assert "demo-model" not in by
    assert by["quantize-q"].input["outputDir"] == "/mnt/volumes/models/q"
    assert by["quantize-q"].input["calibration"]["dataset"] == "open_platypus"
    assert by["evaluate-ext"].needs == ()


def test_ordering_is_stable_and_rejects_unknown_needs():
    a, b, c = Stage("a", "x", {}), Stage("b", "x", {}, ("c",)), Stage("c", "x", {})
    assert [s.name for s in ordered([a, b, c])] == ["a", "c", "b"]
    with pytest.raises(PlanError):
        ordered([Stage("a", "x", {}, ("nope",))])


def test_vllm_server_plan_puts_a_server_before_each_models_clients():
    run, models = demo_objects()
    spec = run.spec.model_copy(update={"backend": "vllm-server"})
    by = {s.name: s for s in build_plan(run.model_copy(update={"spec": spec}), models, LAYOUT)}
    serve = by["serve-w4a16"]
    assert serve.serves and serve.kind == "serve"
    assert serve.needs == ("quantize-tiny-llama-w4a16",)
    assert serve.scheduling == run.spec.scheduling  # the GPU work is the server's
    assert serve.input["model"]["uri"] == "/w/models/tiny-llama-w4a16"
    assert (serve.input["modelName"], serve.input["port"]) == ("w4a16", 8000)
    # A server writes no result document: no --output.
    assert serve.argv("in.json", "out.json") == ["qeval", "serve", "--input", "in.json"]
    evaluate = by["evaluate-w4a16"]
    assert evaluate.needs == ("serve-w4a16",)
    assert evaluate.scheduling is None  # a small CPU client
    assert evaluate.input["baseUrl"] == "http://serve-w4a16:8000"  # the default endpoints
    assert by["serve-fp32"].needs == ("demo-model",)
    assert list(by)[1:3] == ["serve-fp32", "evaluate-fp32"]  # the baseline first, served
    assert by["aggregate"].needs == tuple(
        f"evaluate-{n}" for n in ("fp32", "fp8", "int8", "w4a16", "w2a16-rtn")
    )


def test_the_demo_model_is_built_on_the_runs_nodes_without_its_gpus():
    run, models = demo_objects()
    scheduling = run.spec.scheduling.model_copy(update={"gpus": 2})
    spec = run.spec.model_copy(update={"backend": "vllm-server", "scheduling": scheduling})
    by = {s.name: s for s in build_plan(run.model_copy(update={"spec": spec}), models, LAYOUT)}
    assert by["serve-fp32"].scheduling is not None and by["serve-fp32"].scheduling.gpus == 2
    demo = by["demo-model"].scheduling
    # It trains on the CPU: asked for GPUs, its pod would hold them (and fail NoGPU where
    # CUDA sees none) for nothing.
    assert demo is not None and demo.gpus == 0
    assert demo.resources == scheduling.resources and demo.tolerations == scheduling.tolerations


def test_the_hf_backend_plans_no_server():
    run, models = demo_objects()
    assert not any(s.serves for s in build_plan(run, models, LAYOUT))


def test_the_aggregate_gets_the_spec_recovery_threshold():
    run, models = demo_objects()
    spec = run.spec.model_copy(update={"recovery_threshold": 0.8})
    stages = build_plan(run.model_copy(update={"spec": spec}), models, LAYOUT)
    assert stages[-1].kind == "aggregate" and stages[-1].input["recoveryThreshold"] == 0.8
