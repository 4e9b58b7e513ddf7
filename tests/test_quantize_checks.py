"""A quantization that quantized nothing fails with the reason (it used to be saved
unquantized, 1.0x, and pass); a calibration on a hub dataset reads the split it names, and
one that cannot be had fails as a dataset error, not as a refused recipe. Real
llm-compressor on the demo model (seconds)."""

from __future__ import annotations

import json

import pytest

from qeval.api.common import ModelSource
from qeval.api.quantizedmodel import Calibration
from qeval.stages.envelope import StageError
from qeval.stages.quantize import QuantizeInput, quantization_problem, quantize
from tests.doubles.hub_dataset import ULTRACHAT_SPLITS, cache_hub_dataset, ultrachat_rows

pytestmark = pytest.mark.pipeline

RTN_W4A16 = """quant_stage:
  quant_modifiers:
    QuantizationModifier:
      ignore: [lm_head]
      config_groups:
        group_0:
          targets: [Linear]
          weights: {num_bits: 4, type: int, symmetric: true, strategy: group, group_size: 32}
"""
# Valid YAML, a quantizing modifier, and a target no layer of the model has.
NOTHING_MATCHES = RTN_W4A16.replace("targets: [Linear]", "targets: [Conv3d]")


GPTQ_W4A16 = RTN_W4A16.replace("QuantizationModifier", "GPTQModifier")


def inp(tmp_path, recipe: str, calibration: Calibration | None = None) -> QuantizeInput:
    return QuantizeInput(
        name="q",
        model=ModelSource(uri="demo://tiny-llama"),
        scheme="recipe",
        recipe=recipe,
        calibration=calibration,
        output_dir=str(tmp_path / "out"),
    )


def test_a_recipe_that_quantizes_no_layer_fails(tmp_path):
    with pytest.raises(StageError) as e:
        quantize(inp(tmp_path, NOTHING_MATCHES))
    assert e.value.reason == "NotQuantized", str(e.value)
    assert "applied no quantization" in str(e.value)


def test_a_real_quantization_passes_the_check_and_its_config_is_the_shape_checked(tmp_path):
    result = quantize(inp(tmp_path, RTN_W4A16))
    assert result.compression_ratio > 1.5
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert quantization_problem(config, result.size_bytes, result.base_size_bytes) is None
    # The same config claiming no size gain, and a config without quantization: refused.
    assert "not smaller" in quantization_problem(config, 10, 10)
    unquantized = {k: v for k, v in config.items() if k != "quantization_config"}
    assert "applied no quantization" in quantization_problem(unquantized, 5, 10)


@pytest.fixture
def ultrachat(tmp_path, monkeypatch):
    """The stand-in HuggingFaceH4/ultrachat_200k (tests/doubles/hub_dataset): its four
    splits, none named train, in the datasets cache offline mode reads."""
    import datasets

    cache = tmp_path / "datasets"
    cache_hub_dataset(
        cache, "HuggingFaceH4/ultrachat_200k", {s: ultrachat_rows(s, 32) for s in ULTRACHAT_SPLITS}
    )
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))


def test_gptq_calibrates_on_ultrachat_200k_as_the_llama_examples_ask(tmp_path, ultrachat):
    # examples/llama-3.1-8b: {dataset: ultrachat_200k, numSamples: 512, maxSeqLength: 2048},
    # no split; before the split was given this stopped with "No split specified".
    calibration = Calibration(dataset="ultrachat_200k", num_samples=16, max_seq_length=64)
    result = quantize(inp(tmp_path, GPTQ_W4A16, calibration))
    assert result.compression_ratio > 1.5
    assert "GPTQModifier" in (tmp_path / "out" / "recipe.yaml").read_text()


def test_a_missing_split_is_a_dataset_error_not_a_refused_recipe(tmp_path, ultrachat):
    calibration = Calibration(dataset="ultrachat_200k", split="validation[:16]")
    with pytest.raises(StageError) as e:
        quantize(inp(tmp_path, GPTQ_W4A16, calibration))
    assert e.value.reason == "CalibrationDatasetFailed", str(e.value)
    assert "spec.calibration.split 'validation[:16]'" in str(e.value)
    assert "refused the recipe" not in str(e.value)
    assert not (tmp_path / "out").exists()
