"""QuantizedModel: one quantized artifact, made by llm-compressor from a base model."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from qeval.api.common import (
    ApiModel,
    Condition,
    DataPath,
    ModelSource,
    ModelUri,
    Resource,
    Rule,
    Scheduling,
    SecretKeyRef,
    cel_rules,
    enforce,
    immutable,
)
from qeval.api.yamldocs import YamlError, load_one


class Scheme(StrEnum):
    """Quantization presets: weights (W) and activations (A) with their bit widths."""

    W8A8_FP8 = "W8A8-FP8"
    W8A8_INT8 = "W8A8-INT8"
    W4A16 = "W4A16"
    W3A16 = "W3A16"
    W2A16 = "W2A16"


WEIGHT_ONLY = (Scheme.W4A16, Scheme.W3A16, Scheme.W2A16)


class Algorithm(StrEnum):
    """How weights are rounded: GPTQ (second-order, calibrated), AWQ (activation-aware
    scaling, calibrated) or RTN (round to nearest, data-free)."""

    GPTQ = "GPTQ"
    AWQ = "AWQ"
    RTN = "RTN"


class Observer(StrEnum):
    """How quantization ranges are chosen: min/max, or MSE-optimal clipping."""

    MINMAX = "minmax"
    MSE = "mse"


CALIBRATION_RULES = (
    Rule(
        cel="!has(self.dataset) || !has(self.path)",
        message="set calibration.dataset or calibration.path, not both",
        check=lambda c: c.dataset is None or c.path is None,
    ),
)


class Calibration(ApiModel):
    """Calibration data for the algorithms that need it (GPTQ, AWQ, SmoothQuant)."""

    dataset: str | None = Field(
        default=None,
        max_length=256,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*(/[A-Za-z0-9_][-A-Za-z0-9_.]*)?$",
        description=(
            "A named dataset: `demo` (the demo model's own text, offline), or a dataset "
            "llm-compressor knows by name (e.g. `open_platypus`, `ultrachat_200k`; needs the "
            "hub). Default `open_platypus`, or `demo` for the demo model."
        ),
    )
    path: DataPath | None = Field(
        default=None,
        description="A JSONL file with a `text` field per line (or a plain `.txt` file, one "
        "sample per line), instead of a named dataset: a path relative to the spec's folder "
        "or absolute, or a volume path pvc://<claim>/<path>.",
    )
    num_samples: int = Field(
        default=512, ge=1, le=100_000, description="Number of calibration samples."
    )
    max_seq_length: int = Field(
        default=2048,
        ge=8,
        le=131_072,
        description="Calibration samples are cut to this many tokens.",
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*CALIBRATION_RULES)}

    @model_validator(mode="after")
    def _rules(self) -> Calibration:
        enforce(self, CALIBRATION_RULES)
        return self


class Output(ApiModel):
    """Where the quantized model is written."""

    uri: ModelUri = Field(
        description="`pvc://<claim>/<path>` or a local path (absolute, or `./` relative to the "
        "spec's folder). Default: the operator's model volume, or `<workdir>/models/<name>` "
        "under `qeval run`.",
    )


def _has(value: object) -> bool:
    return value is not None


# llm-compressor 0.14's modifiers that quantize (its QuantizationMixin): a recipe without one
# leaves the weights as they were. AWQ and SmoothQuant only rescale, ahead of one of these.
QUANTIZING_MODIFIERS = ("QuantizationModifier", "GPTQModifier", "AutoRoundModifier")
_QUANTIZING = "(^|[^A-Za-z0-9_])(" + "|".join(QUANTIZING_MODIFIERS) + ")([^A-Za-z0-9_]|$)"


RECIPE_RULE = Rule(
    cel=f"!has(self.recipe) || self.recipe.matches('{_QUANTIZING}')",
    message="spec.recipe applies no quantization: it names none of "
    + ", ".join(QUANTIZING_MODIFIERS)
    + " (AWQModifier and SmoothQuantModifier only rescale, ahead of one of them)",
    check=lambda s: not _has(s.recipe) or re.search(_QUANTIZING, s.recipe) is not None,
)

# Each rule is written once here; the CRD carries the CEL, pydantic runs the lambda.
RULES: tuple[Rule, ...] = (
    Rule(
        cel="has(self.scheme) != has(self.recipe)",
        message="set exactly one of spec.scheme (a preset such as W4A16) "
        "or spec.recipe (a raw llm-compressor recipe)",
        check=lambda s: _has(s.scheme) != _has(s.recipe),
    ),
    RECIPE_RULE,
    Rule(
        cel="!has(self.recipe) || (!has(self.algorithm) && !has(self.groupSize) && "
        "!has(self.dampeningFrac) && !has(self.smoothquantStrength) && !has(self.observer))",
        message="spec.recipe is used as written: remove algorithm, groupSize, dampeningFrac, "
        "smoothquantStrength and observer, or use spec.scheme instead of the recipe",
        check=lambda s: (
            not _has(s.recipe)
            or not any(
                _has(v)
                for v in (
                    s.algorithm,
                    s.group_size,
                    s.dampening_frac,
                    s.smoothquant_strength,
                    s.observer,
                )
            )
        ),
    ),
    Rule(
        cel="!has(self.smoothquantStrength) || (has(self.scheme) && self.scheme == 'W8A8-INT8')",
        message="spec.smoothquantStrength applies only to scheme W8A8-INT8; remove it",
        check=lambda s: not _has(s.smoothquant_strength) or s.scheme == Scheme.W8A8_INT8,
    ),
    Rule(
        cel="!has(self.groupSize) || "
        "(has(self.scheme) && self.scheme in ['W4A16', 'W3A16', 'W2A16'])",
        message="spec.groupSize applies only to the weight-only schemes W4A16, W3A16 and W2A16 "
        "(W8A8 schemes quantize per channel); remove it",
        check=lambda s: not _has(s.group_size) or s.scheme in WEIGHT_ONLY,
    ),
    Rule(
        cel="!has(self.algorithm) || self.algorithm != 'AWQ' || "
        "(has(self.scheme) && self.scheme in ['W4A16', 'W3A16', 'W2A16'])",
        message="algorithm AWQ needs a weight-only scheme (W4A16, W3A16 or W2A16)",
        check=lambda s: s.algorithm != Algorithm.AWQ or s.scheme in WEIGHT_ONLY,
    ),
    Rule(
        cel="!has(self.algorithm) || !has(self.scheme) || self.scheme != 'W8A8-FP8' || "
        "self.algorithm == 'RTN'",
        message="scheme W8A8-FP8 is data-free: set algorithm RTN or leave it out",
        check=lambda s: s.scheme != Scheme.W8A8_FP8 or s.algorithm in (None, Algorithm.RTN),
    ),
    Rule(
        cel="!has(self.dampeningFrac) || (has(self.scheme) && self.scheme != 'W8A8-FP8' && "
        "(!has(self.algorithm) || self.algorithm == 'GPTQ'))",
        message="spec.dampeningFrac applies only to GPTQ; remove it or set algorithm GPTQ",
        check=lambda s: (
            not _has(s.dampening_frac)
            or (
                _has(s.scheme)
                and s.scheme != Scheme.W8A8_FP8
                and s.algorithm in (None, Algorithm.GPTQ)
            )
        ),
    ),
)


class QuantizedModelSpec(ApiModel):
    """What to quantize, how, and where the result goes."""

    model: ModelSource = Field(
        description="The base model to quantize.",
        json_schema_extra=immutable("spec.model"),
    )
    scheme: Scheme | None = Field(
        default=None,
        description="A preset: W8A8-FP8, W8A8-INT8 (SmoothQuant + GPTQ), W4A16, W3A16 or "
        "W2A16 (weight-only integer, group-wise). Exactly one of scheme and recipe.",
        json_schema_extra=immutable("spec.scheme"),
    )
    algorithm: Algorithm | None = Field(
        default=None,
        description="GPTQ, AWQ or RTN. Default: RTN for W8A8-FP8, GPTQ otherwise.",
        json_schema_extra=immutable("spec.algorithm"),
    )
    group_size: int | None = Field(
        default=None,
        ge=1,
        le=8192,
        description="Weights per quantization group for weight-only schemes (default 128); "
        "must divide the model's hidden size.",
        json_schema_extra=immutable("spec.groupSize"),
    )
    dampening_frac: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="GPTQ dampening, as a fraction of the Hessian's mean diagonal (default 0.01).",
        json_schema_extra=immutable("spec.dampeningFrac"),
    )
    smoothquant_strength: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="SmoothQuant migration strength for W8A8-INT8 (default 0.8).",
        json_schema_extra=immutable("spec.smoothquantStrength"),
    )
    observer: Observer | None = Field(
        default=None,
        description="Range observer for weights: minmax (default) or mse (MSE-optimal clipping).",
        json_schema_extra=immutable("spec.observer"),
    )
    ignore: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        default_factory=lambda: ["lm_head"],
        max_length=256,
        description="Layers left unquantized (names or `re:` patterns).",
        json_schema_extra=immutable("spec.ignore"),
    )
    recipe: str | None = Field(
        default=None,
        max_length=65536,
        description="A raw llm-compressor recipe (YAML text), applied as written, instead of a "
        "scheme.",
        json_schema_extra=immutable("spec.recipe"),
    )
    calibration: Calibration = Field(
        default_factory=Calibration,
        description="Calibration data (unused by data-free RTN and FP8).",
        json_schema_extra=immutable("spec.calibration"),
    )
    output: Output | None = Field(
        default=None,
        description="Where the quantized model goes.",
        json_schema_extra=immutable("spec.output"),
    )
    hf_token_secret: SecretKeyRef | None = Field(
        default=None, description="Secret holding a Hugging Face token for gated base models."
    )
    scheduling: Scheduling = Field(
        default_factory=Scheduling, description="Resources and placement of the quantize Job."
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*RULES)}

    @field_validator("recipe")
    @classmethod
    def _recipe_is_yaml_mapping(cls, recipe: str | None) -> str | None:
        if recipe is None:
            return None
        try:
            parsed = load_one(recipe)
        except YamlError as e:
            raise ValueError(f"spec.recipe: {e}") from None
        if not isinstance(parsed, dict):
            raise ValueError("spec.recipe must be a YAML mapping (an llm-compressor recipe)")
        return recipe

    @model_validator(mode="after")
    def _rules(self) -> QuantizedModelSpec:
        enforce(self, RULES)
        return self

    @property
    def effective_algorithm(self) -> Algorithm | None:
        """The algorithm that will run (the default filled in); None for a raw recipe."""
        if self.scheme is None:
            return None
        if self.algorithm is not None:
            return Algorithm(self.algorithm)
        return Algorithm.RTN if self.scheme == Scheme.W8A8_FP8 else Algorithm.GPTQ


QuantizedModelPhase = Literal["Pending", "Quantizing", "Ready", "Failed"]


class QuantizedModelStatus(ApiModel):
    """What happened: conditions, the artifact, its size and the recipe applied."""

    phase: QuantizedModelPhase | None = Field(
        default=None, description="Pending, Quantizing, Ready or Failed."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Accepted, Quantizing, Ready.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(
        default=None, description="The metadata.generation the status describes."
    )
    output: str | None = Field(default=None, description="Where the quantized model is.")
    size_bytes: int | None = Field(default=None, description="Size of the quantized model on disk.")
    base_size_bytes: int | None = Field(default=None, description="Size of the base model on disk.")
    compression_ratio: float | None = Field(
        default=None, description="Base size divided by quantized size."
    )
    applied_recipe: str | None = Field(
        default=None, description="The llm-compressor recipe that was applied (YAML)."
    )
    started_at: str | None = Field(default=None, description="When quantization started.")
    completed_at: str | None = Field(default=None, description="When it finished.")
    wall_seconds: float | None = Field(default=None, description="Quantization wall time.")


class QuantizedModel(Resource):
    """A quantized artifact: base model + scheme (or recipe) -> compressed-tensors checkpoint."""

    kind: Literal["QuantizedModel"] = "QuantizedModel"
    spec: QuantizedModelSpec
    status: QuantizedModelStatus | None = None
