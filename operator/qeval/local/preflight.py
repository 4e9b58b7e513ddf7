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


def _is_path(path: str) -> bool:
    return not path.startswith("pvc://")


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
    update: dict[str, object] = {
        "baseline": baseline,
        "candidates": candidates,
        "task_paths": [_absolute(p, base) for p in spec.task_paths],
    }
    similarity = spec.similarity
    if similarity is not None and similarity.prompts_path and _is_path(similarity.prompts_path):
        update["similarity"] = similarity.model_copy(
            update={"prompts_path": _absolute(similarity.prompts_path, base)}
        )
    new = spec.model_copy(update=update)
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


def _model_problem(source: ModelSource, local: bool = True) -> str | None:
    kind = model_kind(source.uri)
    if kind in ("pvc", "s3") and not local:
        return None  # exists only in a cluster: the operator finds out there
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


def _dangling(folder: Path) -> list[Path]:
    """Links under ``folder`` that point nowhere (lm-eval would fail reading them)."""
    return [p for p in folder.rglob("*") if p.is_symlink() and not p.exists()][:3]


def problems(run: EvalRun, models: dict[str, QuantizedModel], local: bool = True) -> Iterator[str]:
    """Every problem found, as ``EvalRun x: field: what is wrong; the fix``.

    ``local=False`` (``qeval validate``) checks everything that does not depend on this
    machine being the one that runs the study: not the backends installed here, not
    whether pvc:// and s3:// models exist (only a cluster can tell).
    """
    where = f"EvalRun {run.name}"
    spec = run.spec
    sources = [("spec.baseline.model.uri", spec.baseline.model)] + [
        (f"spec.candidates[{i}].model.uri", c.model)
        for i, c in enumerate(spec.candidates)
        if c.model
    ]
    for field, source in sources:
        if problem := _model_problem(source, local):
            yield f"{where}: {field}: {problem}"
    for i, c in enumerate(spec.candidates):
        if c.quantized_model and c.quantized_model not in models:
            yield (
                f"{where}: spec.candidates[{i}].quantizedModel: QuantizedModel "
                f"{c.quantized_model!r} is not in the files given; add it (same file or "
                "folder) or fix the name"
            )
        if c.quantized_model and c.quantized_model in models:
            qm = models[c.quantized_model]
            if problem := _model_problem(qm.spec.model, local):
                yield f"QuantizedModel {qm.name}: spec.model.uri: {problem}"
            path = qm.spec.calibration.path
            if path and _is_path(path) and not Path(path).is_file():
                yield f"QuantizedModel {qm.name}: spec.calibration.path: {path}: no such file"
    for i, p in enumerate(spec.task_paths):
        if not _is_path(p):
            continue
        if not Path(p).is_dir():
            yield f"{where}: spec.taskPaths[{i}]: {p}: no such directory"
        elif broken := _dangling(Path(p)):
            yield f"{where}: spec.taskPaths[{i}]: {broken[0]}: a link to nothing; remove or fix it"
    prompts = spec.similarity.prompts_path if spec.similarity else None
    if prompts and _is_path(prompts) and not Path(prompts).is_file():
        yield f"{where}: spec.similarity.promptsPath: {prompts}: no such file"
    if local and spec.backend == Backend.VLLM_SERVER and shutil.which("vllm") is None:
        yield (
            f"{where}: spec.backend: vllm-server needs vLLM's `vllm` command (a GPU machine, "
            "or the evaluator image); use backend hf here"
        )
    if local and spec.backend == Backend.VLLM and importlib.util.find_spec("vllm") is None:
        yield f"{where}: spec.backend: vllm is not installed here; use backend hf"
    yield from task_problems(run, local)


def task_problems(run: EvalRun, local: bool = True) -> Iterator[str]:
    """What lm-eval's task index says is wrong with the tasks (listed or from a suite):
    unknown names, tags, lm-eval's unsafe_code marking without allowCodeExecution, a
    metric the task does not report, hub datasets while offline (``taskindex``)."""
    if importlib.util.find_spec("lm_eval") is None:
        if local:
            yield "lm-eval is not installed: pip install 'qeval[evaluate]' (or run `make demo`)"
        return
    from qeval.api.evalrun import Backend
    from qeval.demo.model import default_cache_root
    from qeval.stages.taskindex import name_problems, prompt_problems, task_index

    paths = [
        p
        for p in run.spec.task_paths
        if _is_path(p) and Path(p).is_dir() and not _dangling(Path(p))
    ]
    listed = [t.name for t in run.spec.tasks]
    index = task_index(paths, default_cache_root(), tuple(t.name for t in run.spec.all_tasks()))
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1"
    chat = run.spec.backend == Backend.VLLM_SERVER and run.spec.prompt.chat_template
    thinking = bool(run.spec.prompt.enable_thinking)
    for task in run.spec.all_tasks():
        i = listed.index(task.name) if task.name in listed else None
        where = f"spec.tasks[{i}]" if i is not None else "spec.suites"
        for problem in [
            *name_problems(index, task.name, task.metric, run.spec.allow_code_execution, offline),
            *(prompt_problems(index, task.name, chat, thinking) if task.name in index else []),
        ]:
            field = (
                f"{where}.metric"
                if "spec.tasks[].metric" in problem and i is not None
                else (f"{where}.name" if i is not None else where)
            )
            yield f"EvalRun {run.name}: {field}: {problem}"


def preflight(run: EvalRun, models: dict[str, QuantizedModel]) -> None:
    """Raise SpecError listing every problem, before anything heavy starts."""
    found = list(problems(run, models))
    if found:
        raise SpecError("\n".join(found))
