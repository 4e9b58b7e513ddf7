"""The quantize stage: llm-compressor ``oneshot`` on a base model, saved as compressed-tensors."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from qeval.api.common import ApiModel, ModelSource
from qeval.api.quantizedmodel import Calibration
from qeval.stages.envelope import StageError
from qeval.stages.models import resolve, size_on_disk


class QuantizeInput(ApiModel):
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


class QuantizeResult(ApiModel):
    name: str
    scheme: str
    recipe: str = Field(description="The recipe applied, as written.")
    output_dir: str
    size_bytes: int
    base_size_bytes: int
    compression_ratio: float
    quantize_seconds: float = Field(description="Wall time of oneshot alone.")


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


def calibration_dataset(calibration: Calibration, tokenizer: Any) -> Any:
    """A tokenized ``datasets.Dataset`` (offline sources) or a registered dataset name."""
    texts = load_texts(calibration)
    if texts is None:
        return calibration.dataset or "open_platypus"
    from datasets import Dataset

    enc = tokenizer(texts, truncation=True, max_length=calibration.max_seq_length)
    return Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    )


def run(inp: QuantizeInput) -> QuantizeResult:
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    try:
        oneshot(model=model, recipe=inp.recipe, processor=tokenizer, **kwargs)  # type: ignore[arg-type]
    except (ValueError, TypeError, KeyError) as e:
        raise StageError("QuantizationFailed", f"llm-compressor refused the recipe: {e}") from e
    seconds = time.monotonic() - t0

    out = Path(inp.output_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, save_compressed=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "recipe.yaml").write_text(inp.recipe)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)  # a crash never leaves a half-written model that looks finished

    size, base_size = size_on_disk(out), size_on_disk(base)
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
