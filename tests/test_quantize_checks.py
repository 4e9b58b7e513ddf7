"""A quantization that quantized nothing fails with the reason (it used to be saved
unquantized, 1.0x, and pass). Real llm-compressor on the demo model (seconds)."""

from __future__ import annotations

import json

import pytest

from qeval.api.common import ModelSource
from qeval.stages.envelope import StageError
from qeval.stages.quantize import QuantizeInput, quantization_problem, quantize

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


def inp(tmp_path, recipe: str) -> QuantizeInput:
    return QuantizeInput(
        name="q",
        model=ModelSource(uri="demo://tiny-llama"),
        scheme="recipe",
        recipe=recipe,
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
