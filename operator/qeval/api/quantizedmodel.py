"""QuantizedModel: one quantized artifact, made by llm-compressor from a base model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from qeval.api.common import (
    ECHO_LIMIT,
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
    shorten,
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


@dataclass(frozen=True)
class CalibrationDataset:
    """A text dataset llm-compressor 0.14 knows by name: the hub dataset its registry entry
    loads, the split calibration reads by default and the hub config it needs, if any."""

    hub_id: str
    split: str
    config: str | None = None


# llm-compressor 0.14's registered text datasets (llmcompressor/transformers/data), by their
# registry names. Without a split, llm-compressor tokenises every split and then wants one
# named `train`: ultrachat_200k has none (train_sft, test_sft, train_gen, test_gen). gsm8k and
# wikitext need a hub config their registry entries do not set. Left out: c4 (a split is
# hundreds of GB) and the image and audio sets (flickr, peoples_speech).
CALIBRATION_DATASETS: dict[str, CalibrationDataset] = {
    "open_platypus": CalibrationDataset("garage-bAInd/Open-Platypus", "train"),
    "ultrachat_200k": CalibrationDataset("HuggingFaceH4/ultrachat_200k", "train_sft"),
    "gsm8k": CalibrationDataset("openai/gsm8k", "train", config="main"),
    "wikitext": CalibrationDataset("Salesforce/wikitext", "train", config="wikitext-2-raw-v1"),
    "cnn_dailymail": CalibrationDataset("cnn_dailymail", "train"),
    "evolcodealpaca": CalibrationDataset("theblackcat102/evol-codealpaca-v1", "train"),
    "perfectblend": CalibrationDataset("mlabonne/open-perfectblend", "train"),
}
# Other names a calibration may use for them: llm-compressor's alias, and the hub ids (its
# registry knows no name with a `/`), each mapped to the registry name.
CALIBRATION_HUB_IDS = {d.hub_id: n for n, d in CALIBRATION_DATASETS.items() if "/" in d.hub_id}
CALIBRATION_ALIASES = {"ultrachat": "ultrachat_200k"} | CALIBRATION_HUB_IDS
# The dataset of a calibration that names none (the demo model's is `demo`, set by the plan).
DEFAULT_DATASET = "open_platypus"
# The split of a dataset that has no entry above.
DEFAULT_SPLIT = "train"

# A `datasets` split expression: split names joined by `+`, each with an optional slice in
# rows or percent (train_sft, train_sft[:512], train[10%:20%]+test).
_SPLIT_PART = r"\w+(\.\w+)*(\[(-?[0-9]+%?)?:(-?[0-9]+%?)?\])?"
SPLIT_PATTERN = rf"^{_SPLIT_PART}(\+{_SPLIT_PART})*$"

_HUB_IDS = ", ".join(f"'{h}'" for h in sorted(CALIBRATION_HUB_IDS))
CALIBRATION_RULES = (
    Rule(
        cel="!has(self.dataset) || !has(self.path)",
        message="set calibration.dataset or calibration.path, not both",
        check=lambda c: c.dataset is None or c.path is None,
    ),
    Rule(
        cel=f"!has(self.dataset) || !self.dataset.contains('/') || self.dataset in [{_HUB_IDS}]",
        message="calibration.dataset: llm-compressor loads no hub dataset id other than "
        + ", ".join(sorted(CALIBRATION_HUB_IDS))
        + " (or their names: "
        + ", ".join(CALIBRATION_DATASETS)
        + "); for another dataset, write its texts to a JSONL file and set calibration.path",
        check=lambda c: (
            c.dataset is None or "/" not in c.dataset or c.dataset in CALIBRATION_HUB_IDS
        ),
        field="dataset",
    ),
    Rule(
        cel="!has(self.split) || "
        "(!has(self.path) && (!has(self.dataset) || self.dataset != 'demo'))",
        message="calibration.split chooses rows of a hub dataset; calibration.path and the demo "
        "dataset have none: remove it",
        check=lambda c: c.split is None or (c.path is None and c.dataset != "demo"),
        field="split",
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
            "llm-compressor knows by name (`open_platypus`, `ultrachat_200k`, `gsm8k`, "
            "`wikitext`, `cnn_dailymail`, `evolcodealpaca`, `perfectblend`, or the hub id of "
            "one of them; needs the hub). Default `open_platypus`, or `demo` for the demo model."
        ),
    )
    split: str | None = Field(
        default=None,
        max_length=256,
        description=(
            "The split of the named dataset to calibrate on, as a `datasets` split expression "
            "(`train_sft`, `train_sft[:512]`, `train[:10%]`). Default: the dataset's training "
            "split cut to numSamples rows (`train_sft[:N]` for ultrachat_200k, `train[:N]` "
            "for the others), the first rows, as llm-compressor's own examples take them."
        ),
        json_schema_extra={"pattern": SPLIT_PATTERN},
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

    @field_validator("split")
    @classmethod
    def _split_expression(cls, split: str | None) -> str | None:
        if split is not None and re.fullmatch(SPLIT_PATTERN, split) is None:
            raise ValueError(
                f"{shorten(split, ECHO_LIMIT)!r} is not a datasets split expression: write a "
                "split name with an optional slice of rows or percent, e.g. train_sft, "
                "train_sft[:512] or train[:10%]"
            )
        return split

    @model_validator(mode="after")
    def _rules(self) -> Calibration:
        enforce(self, CALIBRATION_RULES)
        return self

    @property
    def registry_name(self) -> str | None:
        """The llm-compressor registry name of the hub dataset calibration reads (an alias
        or a known hub id mapped to its name, the default for none); None for `demo` or a
        file."""
        if self.dataset == "demo" or self.path is not None:
            return None
        name = self.dataset or DEFAULT_DATASET
        return CALIBRATION_ALIASES.get(name, name)

    @property
    def effective_split(self) -> str | None:
        """The split expression calibration reads (the default filled in); None when the
        data is not a named hub dataset."""
        name = self.registry_name
        if name is None:
            return None
        if self.split is not None:
            return self.split
        known = CALIBRATION_DATASETS.get(name)
        return f"{known.split if known else DEFAULT_SPLIT}[:{self.num_samples}]"


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
