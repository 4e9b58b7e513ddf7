"""Checks before any heavy work under ``qeval run``: paths, backends, task names.

The API models already refuse malformed specs; this adds what only this machine can
tell (does the path exist, does lm-eval know the task), and names the field and the fix.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from qeval.api.common import ModelSource, model_kind
from qeval.api.documents import SpecError
from qeval.api.evalrun import Backend, EvalRun
from qeval.api.quantizedmodel import QuantizedModel
from qeval.stages.envelope import StageError
from qeval.stages.models import check_model_dir


def _absolute(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _local_source(source: ModelSource, base: Path) -> ModelSource:
    if model_kind(source.uri) != "local":
        return source
    return source.model_copy(update={"uri": _absolute(source.uri, base)})


def localize_evalrun(run: EvalRun, base: Path) -> EvalRun:
    """Relative paths in the spec, made absolute against the spec file's folder."""
    spec = run.spec
    baseline = spec.baseline.model_copy(update={"model": _local_source(spec.baseline.model, base)})
    candidates = [
        c.model_copy(update={"model": _local_source(c.model, base)}) if c.model else c
        for c in spec.candidates
    ]
    new = spec.model_copy(
        update={
            "baseline": baseline,
            "candidates": candidates,
            "task_paths": [_absolute(p, base) for p in spec.task_paths],
        }
    )
    return run.model_copy(update={"spec": new})


def localize_quantized_model(qm: QuantizedModel, base: Path) -> QuantizedModel:
    spec = qm.spec
    update: dict[str, object] = {"model": _local_source(spec.model, base)}
    if spec.calibration.path:
        update["calibration"] = spec.calibration.model_copy(
            update={"path": _absolute(spec.calibration.path, base)}
        )
    if spec.output and model_kind(spec.output.uri) == "local":
        update["output"] = spec.output.model_copy(update={"uri": _absolute(spec.output.uri, base)})
    return qm.model_copy(update={"spec": spec.model_copy(update=update)})


def _model_problem(source: ModelSource) -> str | None:
    kind = model_kind(source.uri)
    if kind in ("pvc", "s3"):
        return f"{source.uri}: {kind} models exist only in a cluster; under qeval run use a path"
    if kind == "local":
        try:
            check_model_dir(Path(source.uri))
        except StageError as e:
            return str(e)
    if kind == "huggingface" and os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        repo = source.uri.removeprefix("hf://")
        if not isinstance(
            try_to_load_from_cache(repo, "config.json", revision=source.revision), str
        ):
            return f"{repo}: not in the local Hugging Face cache and HF_HUB_OFFLINE=1"
    return None


def problems(run: EvalRun, models: dict[str, QuantizedModel]) -> Iterator[str]:
    """Every problem found, as ``EvalRun x: field: what is wrong; the fix``."""
    where = f"EvalRun {run.name}"
    spec = run.spec
    sources = [("spec.baseline.model.uri", spec.baseline.model)] + [
        (f"spec.candidates[{i}].model.uri", c.model)
        for i, c in enumerate(spec.candidates)
        if c.model
    ]
    for field, source in sources:
        if problem := _model_problem(source):
            yield f"{where}: {field}: {problem}"
    for c in spec.candidates:
        if c.quantized_model and c.quantized_model in models:
            qm = models[c.quantized_model]
            if problem := _model_problem(qm.spec.model):
                yield f"QuantizedModel {qm.name}: spec.model.uri: {problem}"
            path = qm.spec.calibration.path
            if path and not Path(path).is_file():
                yield f"QuantizedModel {qm.name}: spec.calibration.path: {path}: no such file"
    for i, p in enumerate(spec.task_paths):
        if not Path(p).is_dir():
            yield f"{where}: spec.taskPaths[{i}]: {p}: no such directory"
    if spec.backend == Backend.VLLM_SERVER and shutil.which("vllm") is None:
        yield (
            f"{where}: spec.backend: vllm-server needs vLLM's `vllm` command (a GPU machine, "
            "or the evaluator image); use backend hf here"
        )
    if spec.backend == Backend.VLLM and importlib.util.find_spec("vllm") is None:
        yield f"{where}: spec.backend: vllm is not installed here; use backend hf"
    yield from task_problems(run)


def task_problems(run: EvalRun) -> Iterator[str]:
    """Tasks (listed or from a suite) lm-eval does not know. The list of known tasks is
    remembered in qeval's cache folder per lm-eval version and task folder contents
    (lm-eval takes seconds to index them)."""
    if importlib.util.find_spec("lm_eval") is None:
        yield "lm-eval is not installed: pip install 'qeval[evaluate]' (or run `make demo`)"
        return
    from qeval.demo.model import default_cache_root
    from qeval.stages.evaluate import unknown_tasks

    paths = [p for p in run.spec.task_paths if Path(p).is_dir()]
    listed = [t.name for t in run.spec.tasks]
    names = [t.name for t in run.spec.all_tasks()]
    for name in unknown_tasks(names, paths, default_cache_root()):
        where = f"spec.tasks[{listed.index(name)}].name" if name in listed else "spec.suites"
        yield (
            f"EvalRun {run.name}: {where}: lm-eval does not know task {name!r}; "
            "check the spelling (lm-eval ls tasks) or add its folder to spec.taskPaths"
        )


def preflight(run: EvalRun, models: dict[str, QuantizedModel]) -> None:
    """Raise SpecError listing every problem, before anything heavy starts."""
    found = list(problems(run, models))
    if found:
        raise SpecError("\n".join(found))
