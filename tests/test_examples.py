"""The cluster examples ask for what their stages need: every pod that loads a model has a
memory request and limit, and a quantization's request holds the model and its calibration.

Built the way the operator builds them (the real planner and the real Job and Deployment
builders), so what is checked is what a cluster would be asked for.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.utils import parse_quantity

from qeval.api.documents import load_documents
from qeval.api.evalrun import EvalRun
from qeval.api.quantizedmodel import QuantizedModel
from qeval.k8s import manifests as m
from qeval.k8s.settings import OperatorSettings
from qeval.plan import Stage, build_plan, quantize_stage
from tests.conftest import EXAMPLES

GiB = 2**30
CLUSTER_EXAMPLES = EXAMPLES / "llama-3.1-8b"

# Llama-3.1-8B-Instruct's config.json (hidden_size 4096) and parameter count (8.03e9), in bf16.
ARCHITECTURES = {"meta-llama/Llama-3.1-8B-Instruct": {"params": 8.03e9, "hidden": 4096}}
BF16 = 2  # bytes per value
RUNTIME = 4 * GiB  # torch, CUDA's host side, transformers, the tokenised calibration set
# GPTQ (W4A16) and SmoothQuant + GPTQ (INT8) calibrate; FP8's dynamic scheme is data-free.
CALIBRATED = {
    "quantize-llama-3.1-8b-w4a16": True,
    "quantize-llama-3.1-8b-w8a8-int8": True,
    "quantize-llama-3.1-8b-fp8": False,
}


def documents() -> tuple[list[EvalRun], dict[str, QuantizedModel]]:
    docs = load_documents(CLUSTER_EXAMPLES)
    runs = [d for d in docs if isinstance(d, EvalRun)]
    models = {d.name: d for d in docs if isinstance(d, QuantizedModel)}
    return runs, models


def planned() -> dict[str, tuple[Stage, dict[str, Any]]]:
    """Every stage of the examples with the container the operator would run it in."""
    settings = OperatorSettings()
    runs, models = documents()
    out: dict[str, tuple[Stage, dict[str, Any]]] = {}
    stages: list[tuple[str, Stage]] = []
    for qm in models.values():
        stages.append((qm.name, quantize_stage(qm, m.cluster_layout(settings, "ml", qm.name))))
    for run in runs:
        layout = m.cluster_layout(settings, "ml", run.name)
        stages += [(run.name, s) for s in build_plan(run, models, layout)]
    for owner_name, stage in stages:
        if stage.kind == "quantize" and owner_name not in models:
            continue  # a run's candidates: their QuantizedModel's own stage, planned above
        kind = "EvalRun" if owner_name not in models else "QuantizedModel"
        owner = m.Owner(kind, owner_name, "ml", "uid")
        layout = m.cluster_layout(settings, "ml", owner_name)
        if stage.serves:
            deployment, _ = m.build_server(stage, owner, settings)
            pod = deployment["spec"]["template"]["spec"]
        else:
            pod = m.build_job(stage, owner, layout, settings)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        out[f"{owner_name}/{stage.name}"] = (stage, container)
    return out


PLANNED = planned()
# What loads a model: a quantization, a server, an evaluation in the pod (not a server's client).
LOADING = sorted(
    name
    for name, (stage, _) in PLANNED.items()
    if stage.kind in ("quantize", "serve") or (stage.kind == "evaluate" and stage.scheduling)
)


def test_the_examples_plan_the_stages_that_load_models() -> None:
    kinds = {PLANNED[name][0].kind for name in LOADING}
    assert kinds == {"quantize", "serve", "evaluate"}
    quantizations = [n for n in LOADING if PLANNED[n][0].kind == "quantize"]
    assert len({PLANNED[n][0].name for n in quantizations}) == 3  # W4A16, INT8, FP8


@pytest.mark.parametrize("name", LOADING)
def test_every_pod_that_loads_a_model_requests_and_limits_memory(name: str) -> None:
    _, container = PLANNED[name]
    resources = container["resources"]
    request = resources.get("requests", {}).get("memory")
    limit = resources.get("limits", {}).get("memory")
    assert request and limit, f"{name}: no memory request or limit ({resources})"
    assert parse_quantity(limit) >= parse_quantity(request), name


def needed(stage: Stage) -> float:
    """A quantization's memory on the CPU: the bf16 weights (llm-compressor moves one layer
    at a time to the GPU), the hidden states of every calibration sample between two
    layers, and the runtime."""
    inp = stage.input
    arch = ARCHITECTURES[inp["model"]["uri"]]
    weights = arch["params"] * BF16
    calibration = inp.get("calibration")
    activations = 0.0
    if calibration is not None:
        tokens = calibration["numSamples"] * calibration["maxSeqLength"]
        activations = tokens * arch["hidden"] * BF16
    return weights + activations + RUNTIME


@pytest.mark.parametrize("name", [n for n in LOADING if PLANNED[n][0].kind == "quantize"])
def test_a_quantization_requests_the_model_and_its_calibration(name: str) -> None:
    stage, container = PLANNED[name]
    request = float(parse_quantity(container["resources"]["requests"]["memory"]))
    need = needed(stage)
    # Without calibration (FP8, data-free): 15.0 GiB of weights and 4 of runtime; with the
    # examples' 512 x 2048 tokens, 8.0 GiB of activations more.
    calibrated = stage.input.get("calibration") is not None
    assert calibrated == (CALIBRATED[stage.name]), name
    assert need / GiB == pytest.approx(27.0 if calibrated else 19.0, abs=0.1)
    assert request >= need, f"{name}: requests {request / GiB:.0f} GiB, needs {need / GiB:.1f}"
