"""Checks before any heavy work under ``qeval run``: paths, backends, task names.

The API models already refuse malformed specs; this adds what only this machine can
tell (does the path exist, does lm-eval know the task), and names the field and the fix.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from qeval.api.common import ModelSource, model_kind, secret_env
from qeval.api.documents import SpecError
from qeval.api.evalrun import Backend, Baseline, Candidate, EvalRun
from qeval.api.quantizedmodel import QuantizedModel
from qeval.plan import Stage
from qeval.stages.envelope import StageError
from qeval.stages.models import check_model_dir


def _is_path(path: str) -> bool:
    return not path.startswith("pvc://")


def _absolute(path: str, base: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _local_source(source: ModelSource | None, base: Path) -> ModelSource | None:
    if source is None or model_kind(source.uri) != "local":
        return source
    return source.model_copy(update={"uri": _absolute(source.uri, base)})


_M = TypeVar("_M", Baseline, Candidate)


def _local_model(target: _M, base: Path) -> _M:
    """A baseline's or candidate's model, or its endpoint's tokenizer, as an absolute path."""
    update: dict[str, object] = {"model": _local_source(target.model, base)}
    if target.endpoint is not None:
        tokenizer = _local_source(target.endpoint.tokenizer, base)
        update["endpoint"] = target.endpoint.model_copy(update={"tokenizer": tokenizer})
    return target.model_copy(update=update)


def localize_evalrun(run: EvalRun, base: Path) -> EvalRun:
    """Relative paths in the spec, made absolute against the spec file's folder."""
    spec = run.spec
    baseline = _local_model(spec.baseline, base)
    candidates = [_local_model(c, base) for c in spec.candidates]
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
    judged = []
    for j in spec.judged:
        if j.prompts_path and _is_path(j.prompts_path):
            j = j.model_copy(update={"prompts_path": _absolute(j.prompts_path, base)})
        if j.judge.model is not None:
            judge = j.judge.model_copy(update={"model": _local_source(j.judge.model, base)})
            j = j.model_copy(update={"judge": judge})
        judged.append(j)
    update["judged"] = judged
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
    sources = [
        (f"{field}.model.uri", target.model)
        for field, target in _targets(run)
        if target.model is not None
    ] + [
        (f"{field}.endpoint.tokenizer.uri", target.endpoint.tokenizer)
        for field, target in _targets(run)
        if target.endpoint is not None and target.endpoint.tokenizer is not None
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
    for i, j in enumerate(spec.judged):
        if j.prompts_path and _is_path(j.prompts_path) and not Path(j.prompts_path).is_file():
            yield f"{where}: spec.judged[{i}].promptsPath: {j.prompts_path}: no such file"
        if j.judge.model is not None and (problem := _model_problem(j.judge.model, local)):
            yield f"{where}: spec.judged[{i}].judge.model.uri: {problem}"
    if local and spec.backend == Backend.VLLM_SERVER and shutil.which("vllm") is None:
        yield (
            f"{where}: spec.backend: vllm-server needs vLLM's `vllm` command (a GPU machine, "
            "or the evaluator image); use backend hf here"
        )
    if local and spec.backend == Backend.VLLM and importlib.util.find_spec("vllm") is None:
        yield f"{where}: spec.backend: vllm is not installed here; use backend hf"
    if local:
        yield from env_problems(run)
    yield from task_problems(run, local)


def env_problems(run: EvalRun) -> Iterator[str]:
    """spec.env entries qeval run cannot satisfy. With no cluster there is no Secret or
    ConfigMap to read: a valueFrom variable is taken from qeval run's own environment, which
    its stages inherit, and refused where it is not set there (unless optional)."""
    for i, var in enumerate(run.spec.env):
        source = var.value_from
        if source is None or var.name in os.environ or source.ref.optional:
            continue
        yield (
            f"EvalRun {run.name}: spec.env[{i}]: {var.name} takes its value from "
            f"{source.kind} {source.ref.name} (key {source.ref.key}), which qeval run cannot "
            f"read (there is no cluster): export {var.name} before qeval run (its stages get "
            "its environment), or mark the reference optional: true"
        )


def env_notes(run: EvalRun) -> list[str]:
    """What qeval run says about spec.envFrom, which it cannot read (no refusal: the stages
    get its own environment, where a person exports what the objects hold)."""
    return [
        f"EvalRun {run.name}: spec.envFrom[{i}]: qeval run cannot read {source.kind} "
        f"{source.ref.name}; the evaluate stages get qeval run's own environment instead "
        "(export the variables it holds)"
        for i, source in enumerate(run.spec.env_from)
    ]


def local_env(stages: Sequence[Stage]) -> dict[str, dict[str, str]]:
    """By stage kind, the literal spec.env values its stages get under qeval run (the
    valueFrom ones come from qeval run's own environment: see ``env_problems``)."""
    out: dict[str, dict[str, str]] = {}
    for stage in stages:
        for var in stage.env:
            if var.value is not None:
                out.setdefault(stage.kind, {})[var.name] = var.value
    return out


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
    from qeval.stages.taskindex import name_problems, prompt_problems, scoring_tasks, task_index

    paths = [
        p
        for p in run.spec.task_paths
        if _is_path(p) and Path(p).is_dir() and not _dangling(Path(p))
    ]
    listed = [t.name for t in run.spec.tasks]
    index = task_index(paths, default_cache_root(), tuple(t.name for t in run.spec.all_tasks()))
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1"
    endpoints = [(f, t.endpoint) for f, t in _targets(run) if t.endpoint is not None]
    served = run.spec.backend == Backend.VLLM_SERVER or bool(endpoints)
    chat = served and run.spec.prompt.chat_template
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
    if endpoints:
        known = [t.name for t in run.spec.all_tasks() if t.name in index]
        scored = sorted({x for name in known for x in scoring_tasks(index, name)})
        yield from endpoint_problems(run, scored, local)


def _targets(run: EvalRun) -> list[tuple[str, Baseline | Candidate]]:
    """The baseline and the candidates, each with its field in the spec."""
    spec = run.spec
    return [("spec.baseline", spec.baseline)] + [
        (f"spec.candidates[{i}]", c) for i, c in enumerate(spec.candidates)
    ]


def endpoint_problems(run: EvalRun, scored: list[str], local: bool = True) -> Iterator[str]:
    """What the run's endpoints cannot do, asked of them before any work (``local``: not
    under ``qeval validate``, which is not the machine that runs the study), with the
    evaluate stage's own checks (``qeval.serving.endpoint``). ``scored``: the run's tasks
    that score log-likelihoods (through chat completions ``task_problems`` refuses them)."""
    from qeval.serving.endpoint import Connection, check_scoring, connect

    chat = run.spec.prompt.chat_template
    envs: dict[str, tuple[str, str]] = {}
    for field, target in _targets(run):
        endpoint = target.endpoint
        if endpoint is None:
            continue
        where = f"EvalRun {run.name}: {field}.endpoint"
        ref = endpoint.api_key_secret
        if ref is not None:
            name = secret_env(ref)
            if envs.setdefault(name, (ref.name, ref.key)) != (ref.name, ref.key):
                other = envs[name]
                yield (
                    f"{where}.apiKeySecret: Secret {ref.name} key {ref.key} and Secret "
                    f"{other[0]} key {other[1]} are read from the same variable {name}; "
                    "rename one"
                )
        try:
            if not local:
                check_scoring(Connection(endpoint), [] if chat else scored, False, probe=False)
                continue
            conn = connect(endpoint)
            check_scoring(conn, [] if chat else scored, False)
        except StageError as e:
            yield f"{where}: {e}"


def preflight(run: EvalRun, models: dict[str, QuantizedModel]) -> None:
    """Raise SpecError listing every problem, before anything heavy starts."""
    found = list(problems(run, models))
    if found:
        raise SpecError("\n".join(found))
