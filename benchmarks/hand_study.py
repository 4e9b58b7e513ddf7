"""The demo study written by hand: one Python process making the library calls ``qeval run
examples/evalrun.yaml`` makes, with no orchestration around them.

What a researcher would write without qeval: load the base model, run llm-compressor's
``oneshot`` with each of the four recipes and the same calibration data, save each model
compressed; then lm-eval's ``simple_evaluate`` on the baseline and the four models with
the same tasks, batch size, seeds and model arguments, writing each results file. The
recipes are the YAML qeval applies (``qeval.recipes.build_recipe``: data a person would
write out), so that both sides do exactly the same model work. Torch, llm-compressor and
lm-eval are imported once and lm-eval's task index is built once, as one script does. The
math library runs as in qeval's stages (``envelope.REPRODUCIBLE_MATH``): without it MKL may
sum GPTQ's Hessian in another order, and W4A16's recall differs in the third digit (0.952
against 0.953, measured here).

Usage: ``python benchmarks/hand_study.py OUT_DIR``; writes ``OUT_DIR/hand.json``: every score
(model -> task -> "metric,filter" -> value) and the seconds of each phase.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

T0 = time.monotonic()
from qeval.stages.envelope import REPRODUCIBLE_MATH, Phase  # noqa: E402 (pydantic only)

os.environ.update(REPRODUCIBLE_MATH)  # before torch loads
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "evalrun.yaml"
SEED, FIT_SEED = 1234, 0  # lm-eval's seeds as qeval passes them; torch's for oneshot


def main(out: Path) -> dict:
    phases: dict[str, float] = {}  # as the result documents' timings

    def lap(name: Phase, since: float) -> float:
        now = time.monotonic()
        phases[name] = round(phases.get(name, 0.0) + now - since, 3)
        return now

    t = T0
    import lm_eval
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qeval.api.documents import load_documents
    from qeval.demo.data import calibration_texts
    from qeval.demo.model import demo_model_path
    from qeval.recipes import build_recipe, needs_calibration
    from qeval.stages.evaluate import builtin_task_dir

    t = lap(Phase.IMPORTS, t)

    specs = load_documents(EXAMPLE)
    run = next(d for d in specs if d.kind == "EvalRun")
    quantized = {d.name: d for d in specs if d.kind == "QuantizedModel"}
    base = demo_model_path(build=False)
    models = {run.spec.baseline.name: base}
    for candidate in run.spec.candidates:
        spec = quantized[candidate.quantized_model].spec
        torch.manual_seed(FIT_SEED)
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
        tokenizer = AutoTokenizer.from_pretrained(base)
        t = lap(Phase.MODEL_LOAD, t)
        kwargs = {}
        if needs_calibration(spec):
            cal = spec.calibration
            enc = tokenizer(
                calibration_texts(cal.num_samples), truncation=True, max_length=cal.max_seq_length
            )
            kwargs = {
                "dataset": Dataset.from_dict(
                    {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
                ),
                "num_calibration_samples": cal.num_samples,
                "max_seq_length": cal.max_seq_length,
            }
        oneshot(model=model, recipe=build_recipe(spec), processor=tokenizer, **kwargs)
        t = lap(Phase.MODEL_WORK, t)
        path = out / "models" / candidate.name
        model.save_pretrained(path, save_compressed=True)
        tokenizer.save_pretrained(path)
        models[candidate.name] = path
        t = lap(Phase.RESULT_WRITING, t)

    manager = TaskManager(include_path=[str(builtin_task_dir())])
    t = lap(Phase.TASK_INDEX, t)
    tasks = [task.name for task in run.spec.tasks]
    scores: dict[str, dict] = {}
    for name, path in models.items():
        lm = HFLM(
            pretrained=str(path),
            trust_remote_code=False,
            batch_size=run.spec.batch_size,
            device="cpu",
        )
        t = lap(Phase.MODEL_LOAD, t)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=manager,
            log_samples=True,
            random_seed=SEED,
            numpy_random_seed=SEED,
            torch_random_seed=SEED,
            fewshot_random_seed=SEED,
        )
        t = lap(Phase.MODEL_WORK, t)
        text = json.dumps(results, default=handle_non_serializable)
        (out / "results").mkdir(parents=True, exist_ok=True)
        (out / "results" / f"{name}.json").write_text(text)
        scores[name] = {
            task: {k: v for k, v in values.items() if "," in k and "_stderr" not in k}
            for task, values in json.loads(text)["results"].items()
        }
        t = lap(Phase.RESULT_WRITING, t)
    return {"scores": scores, "phases": phases, "seconds": round(time.monotonic() - T0, 3)}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    figures = main(out)
    (out / "hand.json").write_text(json.dumps(figures, indent=2))
