"""The quantize stage: llm-compressor ``oneshot`` on a base model, saved as compressed-tensors.

With a result cache (``cache_dir``), a quantization already done under the same key (base
model contents, recipe, calibration, output folder, library versions) whose output folder
still holds exactly what was written is reused instead of redone (``reuse``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from qeval.api.common import ApiModel, ModelSource
from qeval.api.quantizedmodel import CALIBRATION_DATASETS, Calibration
from qeval.results.cache import (
    ResultCache,
    installed_version,
    key_of,
    quantization_fields,
    tree_digest,
    weights_identity,
)
from qeval.stages.envelope import Document, Phase, StageError, phase, read_part
from qeval.stages.models import resolve, size_on_disk


class QuantizeInput(Document):
    """Everything the quantize stage needs; made by the plan from a QuantizedModel."""

    name: str = Field(description="The QuantizedModel's name.")
    model: ModelSource
    scheme: str = Field(description="Label: the preset, or 'recipe' for a raw recipe.")
    recipe: str = Field(description="The llm-compressor recipe (YAML) to apply.")
    calibration: Calibration | None = Field(
        default=None, description="Calibration data; None when the recipe is data-free."
    )
    output_dir: str = Field(description="Directory the quantized model is written to.")
    seed: int = 0
    cache_dir: str | None = Field(default=None, description="The result cache; None: none.")
    reuse_cached: bool = Field(default=True, description="False: quantize again.")


class QuantizeResult(ApiModel):
    name: str
    scheme: str
    recipe: str = Field(description="The recipe applied, as written.")
    output_dir: str
    size_bytes: int
    base_size_bytes: int
    compression_ratio: float
    quantize_seconds: float = Field(description="Wall time of oneshot alone.")
    cached: bool = Field(default=False, description="Reused from the result cache.")


def load_texts(calibration: Calibration) -> list[str] | None:
    """Calibration texts for the offline sources (``demo``, a file); None for a hub dataset."""
    if calibration.path is not None:
        path = Path(calibration.path)
        try:
            lines = [line for line in path.read_text().splitlines() if line.strip()]
        except OSError as e:
            raise StageError(
                "CalibrationNotFound", f"calibration.path {path}: {e.strerror}; fix the path"
            ) from e
        if path.suffix == ".jsonl":
            try:
                return [json.loads(line)["text"] for line in lines][: calibration.num_samples]
            except (ValueError, KeyError) as e:
                raise StageError(
                    "InvalidCalibration", f"{path}: every line must be JSON with a 'text' field"
                ) from e
        return lines[: calibration.num_samples]
    if calibration.dataset == "demo":
        from qeval.demo.data import calibration_texts

        return calibration_texts(calibration.num_samples)
    return None


# A calibration dataset that cannot be had (unknown name, missing split, not on the hub, no
# access): a fault of spec.calibration, not of the recipe.
CALIBRATION_DATASET_FAILED = "CalibrationDatasetFailed"


def dataset_arguments(calibration: Calibration) -> dict[str, Any]:
    """llm-compressor ``DatasetArguments`` for a hub dataset it knows by name: the split
    always given (without one it tokenises every split, then wants one named ``train``)."""
    name = calibration.registry_name
    args: dict[str, Any] = {
        "dataset": name,
        "splits": calibration.effective_split,
        "num_calibration_samples": calibration.num_samples,
        "max_seq_length": calibration.max_seq_length,
    }
    known = CALIBRATION_DATASETS.get(name or "")
    if known is not None and known.config is not None:
        args["dataset_config_name"] = known.config
    return args


def dataset_failure(calibration: Calibration, error: BaseException) -> StageError:
    """The CalibrationDatasetFailed error for a hub dataset that could not be loaded,
    naming the field at fault and the fix."""
    name = calibration.registry_name or ""
    known = CALIBRATION_DATASETS.get(name)
    what = f"spec.calibration.dataset {calibration.dataset or name!r}"
    if known is not None:
        what += f" ({known.hub_id})"
    split = calibration.effective_split
    detail = " ".join(str(error).split())[:600].rstrip(".") or type(error).__name__
    if isinstance(error, KeyError):  # llm-compressor's registry has no such name
        fix = (
            f"llm-compressor has no dataset named {name!r}; use one of "
            + ", ".join(CALIBRATION_DATASETS)
            + ", or write the texts to a JSONL file and set spec.calibration.path"
        )
        return StageError(CALIBRATION_DATASET_FAILED, f"{what}: {fix}")
    if isinstance(error, ValueError) and "split" in str(error).lower():
        example = f"{known.split if known else 'train'}[:{calibration.num_samples}]"
        return StageError(
            CALIBRATION_DATASET_FAILED,
            f"{what}, spec.calibration.split {split!r}: {detail}; set spec.calibration.split "
            f"to one of the dataset's splits (e.g. {example})",
        )
    return StageError(
        CALIBRATION_DATASET_FAILED,
        f"{what}, split {split!r}, could not be loaded: {type(error).__name__}: {detail}; "
        "check the name, the pod's access to the Hugging Face hub and, for a gated dataset, "
        "the token (spec.hfTokenSecret), or set spec.calibration.path to a JSONL file",
    )


def calibration_dataset(calibration: Calibration, tokenizer: Any) -> Any:
    """The calibration data as a tokenized ``datasets.Dataset``: the offline sources
    (``demo``, a file) tokenized here, a hub dataset by llm-compressor's own loader (what
    ``oneshot`` would do with its name), so that a dataset that cannot be loaded fails as
    CalibrationDatasetFailed before the recipe runs."""
    texts = load_texts(calibration)
    if texts is None:
        from llmcompressor.args import DatasetArguments
        from llmcompressor.datasets import get_processed_dataset

        try:
            return get_processed_dataset(
                DatasetArguments(**dataset_arguments(calibration)), processor=tokenizer
            )
        except Exception as e:  # everything here is loading and tokenising the dataset
            raise dataset_failure(calibration, e) from e
    from datasets import Dataset

    enc = tokenizer(texts, truncation=True, max_length=calibration.max_seq_length)
    return Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    )


QUANTIZER_LIBRARIES = ("llmcompressor", "compressed-tensors", "transformers", "torch")
# What ``quantize`` imports: once per process (a warm worker imports them before its first
# stage: ``qeval.local.worker``).
WARM = ("torch", "transformers", "llmcompressor", "datasets")


def calibration_fields(calibration: Calibration | None) -> dict[str, Any] | None:
    """The calibration as the cache key covers it: as written, with the split read."""
    if calibration is None:
        return None
    fields = calibration.dump()
    if (split := calibration.effective_split) is not None:
        fields["split"] = split
    return fields


def cache_key(inp: QuantizeInput, base: Path, cache: ResultCache) -> tuple[str, dict[str, Any]]:
    """The quantization's cache key and the fields it covers."""
    fields = quantization_fields(
        model=weights_identity(inp.model.uri, inp.model.revision, base, cache.digests),
        recipe=inp.recipe,
        scheme=inp.scheme,
        calibration=calibration_fields(inp.calibration),
        output_dir=inp.output_dir,
        seed=inp.seed,
        libraries={p: installed_version(p) for p in QUANTIZER_LIBRARIES},
    )
    return key_of(fields), fields


def reuse(inp: QuantizeInput) -> QuantizeResult | None:
    """The cached result, if this quantization was done under the same key and its output
    folder still holds exactly what it wrote (without importing torch); else None."""
    if inp.cache_dir is None or not inp.reuse_cached:
        return None
    try:
        base = resolve(inp.model, local_only=True)
    except StageError:
        return None
    cache = ResultCache(Path(inp.cache_dir))
    key, _ = cache_key(inp, base, cache)
    entry = cache.get_quantization(key)
    out = Path(inp.output_dir)
    if entry is None or not (out / "config.json").is_file():
        return None
    if tree_digest(out, cache.digests) != entry["outputDigest"]:
        return None
    try:
        result = read_part(QuantizeResult, entry.get("result"))
    except ValidationError:  # a damaged entry is a miss
        return None
    return result.model_copy(update={"cached": True})


def run(inp: QuantizeInput) -> QuantizeResult:
    if (cached := reuse(inp)) is not None:
        return cached
    result = quantize(inp)
    if inp.cache_dir is not None:
        cache = ResultCache(Path(inp.cache_dir))
        key, fields = cache_key(inp, resolve(inp.model, local_only=True), cache)
        digest = tree_digest(Path(result.output_dir), cache.digests)
        cache.put_quantization(key, fields, result.dump(), digest)
    return result


def quantization_problem(config: dict[str, Any], size: int, base_size: int) -> str | None:
    """Why a saved checkpoint is not a quantized model, or None: its config.json names no
    quantization (the recipe applied no quantizing modifier), or it quantizes weights to 8
    bits or fewer and yet is not smaller than its base (nothing matched the targets)."""
    quant = config.get("quantization_config")
    groups = quant.get("config_groups") if isinstance(quant, dict) else None
    if not groups:
        return (
            "the recipe applied no quantization (config.json has no quantization_config "
            "config_groups): use a QuantizationModifier, GPTQModifier or AutoRoundModifier"
        )
    bits = [
        g["weights"].get("num_bits")
        for g in groups.values()
        if isinstance(g, dict) and isinstance(g.get("weights"), dict)
    ]
    if any(isinstance(b, int) and b <= 8 for b in bits) and size >= base_size:
        return (
            f"weights quantized to {min(b for b in bits if isinstance(b, int))} bits, yet the "
            f"model is not smaller than its base ({size:,} >= {base_size:,} bytes): the "
            "recipe's targets or ignore list matched no layer"
        )
    return None


def quantize(inp: QuantizeInput) -> QuantizeResult:
    """llm-compressor ``oneshot`` with the recipe; the compressed model saved to output_dir."""
    with phase(Phase.IMPORTS):
        import torch
        from llmcompressor import oneshot
        from transformers import AutoModelForCausalLM, AutoTokenizer

    with phase(Phase.MODEL_LOAD):
        torch.manual_seed(inp.seed)
        base = resolve(inp.model)
        revision = {"revision": inp.model.revision} if inp.model.revision else {}
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", **revision)
        tokenizer = AutoTokenizer.from_pretrained(base, **revision)
        kwargs = {}
        if inp.calibration is not None:
            kwargs = {
                "dataset": calibration_dataset(inp.calibration, tokenizer),
                "num_calibration_samples": inp.calibration.num_samples,
                "max_seq_length": inp.calibration.max_seq_length,
            }
    t0 = time.monotonic()
    with phase(Phase.MODEL_WORK):
        try:
            oneshot(model=model, recipe=inp.recipe, processor=tokenizer, **kwargs)  # type: ignore[arg-type]
        except (ValueError, TypeError, KeyError) as e:
            raise StageError("QuantizationFailed", f"llm-compressor refused the recipe: {e}") from e
    seconds = time.monotonic() - t0

    out = Path(inp.output_dir)
    tmp = out.with_name(out.name + ".partial")
    with phase(Phase.RESULT_WRITING):
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, save_compressed=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "recipe.yaml").write_text(inp.recipe)
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)  # a crash never leaves a half-written model that looks finished

    size, base_size = size_on_disk(out), size_on_disk(base)
    config = json.loads((out / "config.json").read_text())
    if (problem := quantization_problem(config, size, base_size)) is not None:
        raise StageError("NotQuantized", problem)
    return QuantizeResult(
        name=inp.name,
        scheme=inp.scheme,
        recipe=inp.recipe,
        output_dir=str(out),
        size_bytes=size,
        base_size_bytes=base_size,
        compression_ratio=round(base_size / size, 4) if size else 0.0,
        quantize_seconds=round(seconds, 3),
    )
