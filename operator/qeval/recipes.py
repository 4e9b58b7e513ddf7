"""llm-compressor recipes from a QuantizedModel spec (pure; llm-compressor is not imported).

A recipe is data: this module turns a preset (scheme + algorithm knobs) into the YAML
recipe llm-compressor 0.14 reads, and that same YAML is what the quantize stage applies
and what ``status.appliedRecipe`` reports. A spec with a raw ``recipe`` is used as written.
"""

from __future__ import annotations

from typing import Any

import yaml

from qeval.api.quantizedmodel import Algorithm, QuantizedModelSpec, Scheme

DEFAULT_GROUP_SIZE = 128
DEFAULT_DAMPENING = 0.01
DEFAULT_SMOOTHQUANT = 0.8
WEIGHT_BITS = {Scheme.W4A16: 4, Scheme.W3A16: 3, Scheme.W2A16: 2}


def _weight_only_group(bits: int, group_size: int, symmetric: bool, observer: str | None):
    weights: dict[str, Any] = {
        "num_bits": bits,
        "type": "int",
        "symmetric": symmetric,
        "strategy": "group",
        "group_size": group_size,
    }
    if observer:
        weights["observer"] = observer
    return {"group_0": {"targets": ["Linear"], "weights": weights}}


def build_modifiers(spec: QuantizedModelSpec) -> dict[str, dict[str, Any]]:
    """The ordered modifiers (name -> arguments) for a preset spec."""
    assert spec.scheme is not None, "a raw recipe has no preset modifiers"
    scheme, algorithm = Scheme(spec.scheme), spec.effective_algorithm
    observer = spec.observer  # None = the scheme's default (minmax)
    common: dict[str, Any] = {"targets": ["Linear"], "ignore": list(spec.ignore)}
    gptq_args = {"dampening_frac": spec.dampening_frac or DEFAULT_DAMPENING}
    observer_args = {"weight_observer": observer} if observer else {}

    if scheme == Scheme.W8A8_FP8:
        return {"QuantizationModifier": {**common, "scheme": "FP8_DYNAMIC", **observer_args}}

    if scheme == Scheme.W8A8_INT8:
        smooth = spec.smoothquant_strength
        quantizer = "GPTQModifier" if algorithm == Algorithm.GPTQ else "QuantizationModifier"
        extra = gptq_args if algorithm == Algorithm.GPTQ else {}
        return {
            "SmoothQuantModifier": {
                "smoothing_strength": DEFAULT_SMOOTHQUANT if smooth is None else smooth
            },
            quantizer: {**common, "scheme": "W8A8", **extra, **observer_args},
        }

    # Weight-only integer schemes, group-wise. AWQ is a transform that must be followed by
    # a quantization modifier, and is used with asymmetric weights as upstream does.
    bits, group = WEIGHT_BITS[scheme], spec.group_size or DEFAULT_GROUP_SIZE
    groups = _weight_only_group(bits, group, algorithm != Algorithm.AWQ, observer)
    base = {"ignore": list(spec.ignore), "config_groups": groups}
    if algorithm == Algorithm.GPTQ:
        return {"GPTQModifier": {**base, **gptq_args}}
    if algorithm == Algorithm.AWQ:
        return {"AWQModifier": {}, "QuantizationModifier": base}  # it takes no ignore list
    return {"QuantizationModifier": base}


def build_recipe(spec: QuantizedModelSpec) -> str:
    """The recipe YAML llm-compressor applies for this spec."""
    if spec.recipe is not None:
        return spec.recipe
    recipe = {"quant_stage": {"quant_modifiers": build_modifiers(spec)}}
    return yaml.safe_dump(recipe, sort_keys=False)


def needs_calibration(spec: QuantizedModelSpec) -> bool:
    """Whether the recipe needs calibration data (everything but data-free RTN and FP8)."""
    if spec.scheme is None:  # raw recipe: assume the worst, data is cheap to provide
        return True
    return spec.effective_algorithm != Algorithm.RTN or spec.scheme == Scheme.W8A8_INT8


def scheme_label(spec: QuantizedModelSpec) -> str:
    """A short label for tables: the scheme with a non-default algorithm, or 'recipe'."""
    if spec.scheme is None:
        return "recipe"
    algo = spec.effective_algorithm
    default = Algorithm.RTN if spec.scheme == Scheme.W8A8_FP8 else Algorithm.GPTQ
    return str(spec.scheme) if algo == default else f"{spec.scheme}-{algo}"
