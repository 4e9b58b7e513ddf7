"""Recipes built from presets are accepted by llm-compressor itself (its Recipe parser)."""

from __future__ import annotations

import pytest
import yaml

from qeval.api.quantizedmodel import QuantizedModelSpec
from qeval.recipes import build_modifiers, build_recipe, needs_calibration, scheme_label


def spec(**kw) -> QuantizedModelSpec:
    return QuantizedModelSpec.model_validate({"model": {"uri": "org/m"}, **kw})


CASES = [
    ({"scheme": "W8A8-FP8"}, ["QuantizationModifier"], False),
    ({"scheme": "W8A8-INT8"}, ["SmoothQuantModifier", "GPTQModifier"], True),
    (
        {"scheme": "W8A8-INT8", "algorithm": "RTN"},
        ["SmoothQuantModifier", "QuantizationModifier"],
        True,
    ),
    ({"scheme": "W4A16"}, ["GPTQModifier"], True),
    ({"scheme": "W4A16", "algorithm": "AWQ"}, ["AWQModifier", "QuantizationModifier"], True),
    ({"scheme": "W3A16", "algorithm": "RTN", "groupSize": 64}, ["QuantizationModifier"], False),
    ({"scheme": "W2A16", "observer": "mse"}, ["GPTQModifier"], True),
]


@pytest.mark.parametrize(("fields", "modifiers", "calibrated"), CASES)
def test_preset_recipes(fields, modifiers, calibrated):
    s = spec(**fields)
    assert list(build_modifiers(s)) == modifiers
    assert needs_calibration(s) is calibrated


def test_knobs_reach_the_recipe():
    mods = build_modifiers(spec(scheme="W3A16", groupSize=64, dampeningFrac=0.05, observer="mse"))
    weights = mods["GPTQModifier"]["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["observer"]) == (3, 64, "mse")
    assert mods["GPTQModifier"]["dampening_frac"] == 0.05
    sq = build_modifiers(spec(scheme="W8A8-INT8", smoothquantStrength=0.5))
    assert sq["SmoothQuantModifier"]["smoothing_strength"] == 0.5


def test_raw_recipe_is_used_as_written():
    raw = "quant_stage:\n  quant_modifiers:\n    QuantizationModifier: {scheme: W8A16}\n"
    assert build_recipe(spec(recipe=raw)) == raw
    assert scheme_label(spec(recipe=raw)) == "recipe"


def test_labels():
    assert scheme_label(spec(scheme="W4A16")) == "W4A16"
    assert scheme_label(spec(scheme="W2A16", algorithm="RTN")) == "W2A16-RTN"


@pytest.mark.parametrize(("fields", "modifiers", "calibrated"), CASES)
def test_llmcompressor_parses_every_preset(fields, modifiers, calibrated):
    from llmcompressor.recipe import Recipe  # installed by `make install`: never skipped

    recipe = Recipe.create_instance(build_recipe(spec(**fields)))
    assert [type(m).__name__ for m in recipe.modifiers] == modifiers
    assert yaml.safe_load(build_recipe(spec(**fields)))["quant_stage"]
