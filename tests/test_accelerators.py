"""A stage given GPUs that CUDA does not see fails at once with NoGPU, saying how many it was
given, how many CUDA sees, torch's CUDA build and the driver it needs, instead of quantizing
on the CPU for hours. The CLI is run as a stage Job runs it; CUDA_VISIBLE_DEVICES="" hides
any GPU, so the test means the same on a machine that has one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from qeval.stages.accelerators import gpu_problem, gpus_given
from qeval.stages.envelope import StageError


def test_the_variable_the_manifests_set_is_qeval_gpus():
    assert gpus_given({"QEVAL_GPUS": "2"}) == 2
    assert gpus_given({"QEVAL_GPUS": ""}) == 0
    assert gpus_given({}) == 0


@pytest.mark.parametrize("value", ["two", "-1", "1.5"])
def test_a_bad_gpu_count_is_refused_naming_the_variable(value):
    with pytest.raises(StageError) as e:
        gpus_given({"QEVAL_GPUS": value})
    assert e.value.reason == "InvalidInput"
    assert "QEVAL_GPUS" in str(e.value) and repr(value) in str(e.value)


@pytest.mark.parametrize(
    ("given", "visible"),
    [(0, 0), (1, 1), (2, 2), (1, 8)],
)
def test_no_problem_when_cuda_sees_what_was_given(given, visible):
    assert gpu_problem(given, visible, "13.0", None) is None


def test_the_message_says_given_seen_build_driver_and_why():
    msg = gpu_problem(1, 0, "13.0", "Found no NVIDIA driver on your system.")
    assert msg is not None
    for words in ("given 1 GPU ", "CUDA sees 0", "CUDA 13.0", "Found no NVIDIA driver", ">= 580"):
        assert words in msg, (words, msg)
    fewer = gpu_problem(2, 1, "13.0", None)
    assert fewer is not None and "given 2 GPUs" in fewer and "CUDA sees 1" in fewer
    cpu_build = gpu_problem(1, 0, None, None)
    assert cpu_build is not None and "CPU-only build of torch" in cpu_build


def run_quantize(tmp_path, gpus: str | None) -> tuple[int, dict, float]:
    """``qeval quantize`` on a model that does not exist, as a stage Job runs it."""
    doc = {
        "name": "q",
        "model": {"uri": str(tmp_path / "no-such-model")},
        "scheme": "recipe",
        "recipe": "quant_stage: {}",
        "outputDir": str(tmp_path / "out"),
    }
    (tmp_path / "in.json").write_text(json.dumps(doc))
    env = {k: v for k, v in os.environ.items() if k != "QEVAL_GPUS"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    if gpus is not None:
        env["QEVAL_GPUS"] = gpus
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "qeval", "quantize", "--input", str(tmp_path / "in.json")]
        + ["--output", str(tmp_path / "result.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - t0
    return proc.returncode, json.loads((tmp_path / "result.json").read_text()), seconds


def test_a_stage_given_a_gpu_it_cannot_see_fails_at_once_before_loading_the_model(tmp_path):
    code, doc, seconds = run_quantize(tmp_path, "1")
    assert code == 3  # a recorded failure: the Job's podFailurePolicy does not retry it
    assert doc["status"] == "Failed" and doc["reason"] == "NoGPU", doc
    # The model does not exist: failing with NoGPU, not ModelNotFound, shows the check ran
    # before the stage touched the model.
    for words in ("given 1 GPU", "CUDA sees 0", "NVIDIA driver >= 580"):
        assert words in doc["message"], doc["message"]
    assert seconds < 60, seconds  # torch's import, not llm-compressor's nor a model's load


@pytest.mark.parametrize("gpus", [None, "0"])
def test_a_stage_given_no_gpu_proceeds(tmp_path, gpus):
    code, doc, _ = run_quantize(tmp_path, gpus)
    assert code == 3
    assert doc["reason"] == "ModelNotFound", doc  # it went on to the model
