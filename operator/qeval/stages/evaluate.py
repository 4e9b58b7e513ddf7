"""The evaluate stage: lm-eval on one model for a list of tasks.

The model is loaded once and every task runs in the same process (most of an lm-eval
run on a small model is import and load time). lm-eval's results JSON is written as it
is, per-sample logs beside it, and the scores are parsed from that JSON.
"""

from __future__ import annotations

import json
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field

from qeval.api.common import ApiModel, ModelSource
from qeval.api.evalrun import Backend, Score, Task
from qeval.results.lmeval import harness_version, parse_scores
from qeval.stages.envelope import StageError
from qeval.stages.models import resolve, size_on_disk

# lm-eval model classes per backend (vllm-server talks to the server qeval starts).
LM_EVAL_MODEL = {Backend.HF: "hf", Backend.VLLM: "vllm", Backend.VLLM_SERVER: "local-completions"}


def builtin_task_dir() -> Path:
    """The offline tasks shipped with qeval (always on lm-eval's include path)."""
    return Path(str(resources.files("qeval") / "tasks"))


class EvaluateInput(ApiModel):
    """One model, every task, identical settings for every model of the run."""

    model_name: str = Field(description="Baseline or candidate name.")
    model: ModelSource
    tasks: list[Task]
    task_paths: list[str] = Field(default_factory=list)
    backend: Backend = Backend.HF
    batch_size: int = 16
    seed: int = 1234
    model_args: dict[str, str] = Field(default_factory=dict)
    base_url: str | None = Field(default=None, description="Server URL for vllm-server.")
    output_dir: str


class EvaluateResult(ApiModel):
    model_name: str
    backend: str
    harness_version: str | None
    scores: list[Score]
    model_size_bytes: int | None = None
    results_path: str = Field(description="lm-eval's results JSON, as lm-eval wrote it.")
    samples_dir: str = Field(description="Per-sample logs, one JSONL per task.")


def task_manager(task_paths: list[str]) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(builtin_task_dir()), *task_paths])


def unknown_tasks(names: list[str], task_paths: list[str]) -> list[str]:
    """The names lm-eval does not know (tasks, groups and tags), given the include paths."""
    known = set(task_manager(task_paths).all_tasks)
    return [n for n in names if n not in known]


def group_by_settings(tasks: list[Task]) -> dict[tuple[int | None, int | None], list[str]]:
    """lm-eval takes one num_fewshot and one limit per call: group tasks that share them."""
    groups: dict[tuple[int | None, int | None], list[str]] = defaultdict(list)
    for t in tasks:
        groups[(t.num_fewshot, t.limit)].append(t.name)
    return dict(groups)


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the results documents of several lm-eval calls on the same model."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict):
                merged.setdefault(key, {}).update(value)
            else:
                merged.setdefault(key, value)
    return merged


def _model_args(inp: EvaluateInput, path: Path) -> dict[str, Any]:
    # The revision is already pinned: resolve() fetched exactly that snapshot.
    args: dict[str, Any] = {"pretrained": str(path)}
    if inp.backend == Backend.VLLM_SERVER:
        if not inp.base_url:
            raise StageError("NoServer", "backend vllm-server needs the server's base_url")
        args = {
            "model": str(path),
            "tokenizer": str(path),
            "base_url": f"{inp.base_url.rstrip('/')}/v1/completions",
            "num_concurrent": 8,
        }
    return args | dict(inp.model_args)


def run(inp: EvaluateInput) -> EvaluateResult:
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.utils import handle_non_serializable

    path = resolve(inp.model)
    tm = task_manager(inp.task_paths)
    missing = [t.name for t in inp.tasks if t.name not in set(tm.all_tasks)]
    if missing:
        raise StageError(
            "UnknownTask",
            f"lm-eval does not know {missing}; check spec.tasks "
            "names (lm-eval --tasks list) or add their folder to spec.taskPaths",
        )

    extra: dict[str, Any] = {"batch_size": inp.batch_size}
    if inp.backend == Backend.HF:
        extra["device"] = "cuda" if _has_gpu() else "cpu"
    lm = get_model(LM_EVAL_MODEL[Backend(inp.backend)]).create_from_arg_obj(
        _model_args(inp, path), extra
    )
    parts = []
    for (shots, limit), names in group_by_settings(inp.tasks).items():
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=shots,
            limit=limit,
            task_manager=tm,
            log_samples=True,
            random_seed=inp.seed,
            numpy_random_seed=inp.seed,
            torch_random_seed=inp.seed,
            fewshot_random_seed=inp.seed,
        )
        if out is None:  # only non-zero ranks of a distributed run return None
            raise StageError("EvaluationFailed", "lm-eval returned no results")
        parts.append(dict(out))
    results = merge_results(parts)

    out_dir = Path(inp.output_dir)
    samples_dir = out_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    for task, samples in results.pop("samples", {}).items():
        with (samples_dir / f"{task}.jsonl").open("w") as f:
            for sample in samples:
                f.write(json.dumps(sample, default=handle_non_serializable) + "\n")
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2, default=handle_non_serializable))

    primary = {t.name: t.metric for t in inp.tasks if t.metric}
    try:
        scores = parse_scores(json.loads(results_path.read_text()), inp.model_name, primary)
    except ValueError as e:
        raise StageError("UnknownMetric", f"{e}; fix spec.tasks[].metric") from e
    return EvaluateResult(
        model_name=inp.model_name,
        backend=str(inp.backend),
        harness_version=harness_version(results),
        scores=scores,
        model_size_bytes=size_on_disk(path),
        results_path=str(results_path),
        samples_dir=str(samples_dir),
    )


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())
