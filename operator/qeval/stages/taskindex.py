"""What lm-eval's own task index says about the names a spec uses: task, group or tag,
their members, lm-eval's ``unsafe_code`` marking, metrics and filters, and datasets.

lm-eval takes seconds to index its ~14,000 tasks; the summary is remembered in qeval's
cache folder under the lm-eval version and the contents of the task folders. The checks
are pure functions of that summary, shared by ``qeval run``'s preflight and ``qeval
validate``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Dataset builders that read local files (data_files), not the hub.
LOCAL_BUILDERS = frozenset({"json", "csv", "text", "parquet", "arrow", "generator", "pandas"})


@dataclass(frozen=True)
class TaskInfo:
    """One index entry. ``metrics`` is None where a metric is a function (its name in the
    results is not known up front); ``dataset`` is the hub id, None for local data."""

    kind: str  # task, group or tag
    members: tuple[str, ...] = ()
    unsafe: bool = False
    metrics: tuple[str, ...] | None = None
    filters: tuple[str, ...] = ()
    dataset: str | None = None
    output_type: str | None = None  # generate_until, loglikelihood, multiple_choice, ...


def _dicts(value: Any) -> list[dict[str, Any]]:
    """A config list that may be written as one mapping (or hold odd entries)."""
    items = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
    return [i for i in items if isinstance(i, dict)]


def _info(entry: Any) -> TaskInfo:
    cfg = entry.cfg or {}
    kind = entry.kind.name
    if kind == "TAG":
        return TaskInfo("tag", tuple(sorted(entry.tags)))
    if kind == "GROUP":
        listed = cfg.get("task")
        listed = listed if isinstance(listed, list) else [listed]
        members = tuple(
            m if isinstance(m, str) else str(m.get("task", ""))
            for m in _dicts(listed) + [m for m in listed if isinstance(m, str)]
        )
        agg = [m.get("metric") for m in _dicts(cfg.get("aggregate_metric_list"))]
        return TaskInfo("group", members, metrics=tuple(map(str, agg)) if agg else ())
    names = [m.get("metric") for m in _dicts(cfg.get("metric_list"))]
    plain = all(isinstance(n, str) and "/" not in n and "." not in n for n in names)
    dataset = cfg.get("dataset_path")
    hub = isinstance(dataset, str) and dataset not in LOCAL_BUILDERS and not dataset.startswith("/")
    return TaskInfo(
        "task",
        unsafe=bool(cfg.get("unsafe_code")),
        metrics=tuple(str(n) for n in names) if names and plain else None,
        filters=tuple(str(f.get("name")) for f in _dicts(cfg.get("filter_list"))),
        dataset=dataset if hub else None,
        output_type=str(cfg["output_type"]) if cfg.get("output_type") else None,
    )


def summary(manager: Any) -> dict[str, TaskInfo]:
    """A TaskManager's index, summarised."""
    return {name: _info(entry) for name, entry in manager.task_index.items()}


def complete(index: Mapping[str, TaskInfo], name: str, seen: frozenset[str] = frozenset()) -> bool:
    """Whether ``name`` and everything it stands for (a group's members, down to the
    tasks) are in the index."""
    info = index.get(name)
    if info is None or name in seen:
        return info is not None
    return all(complete(index, m, seen | {name}) for m in info.members)


def task_index(
    task_paths: list[str], cache_dir: Path | None = None, needs: tuple[str, ...] = ()
) -> dict[str, TaskInfo]:
    """Every task, group and tag lm-eval knows with these include paths, summarised.

    With ``needs``: the index of the include folders alone when it holds every name needed
    (``evaluate.task_manager``'s rule), so a spec of qeval's own or local tasks costs no
    index of lm-eval's built-ins. With ``cache_dir`` each index is remembered under the
    lm-eval version and the contents of its folders: a later run reads it back without
    importing lm-eval."""
    from qeval.stages.evaluate import builtin_task_dir, include_task_manager, task_manager

    include = [builtin_task_dir(), *map(Path, task_paths)]
    if needs:
        focused = _remembered(
            cache_dir, "focused-2", include, lambda: summary(include_task_manager(task_paths))
        )
        if all(complete(focused, name) for name in needs):
            return focused
    return _remembered(cache_dir, "index-2", include, lambda: summary(task_manager(task_paths)))


def _remembered(
    cache_dir: Path | None,
    kind: str,
    include: list[Path],
    build: Callable[[], dict[str, TaskInfo]],
) -> dict[str, TaskInfo]:
    """An index read back from ``cache_dir``, else built and saved there. Keyed by the
    include folders' contents and lm-eval's version (which covers its own task folders)."""
    if cache_dir is None:
        return build()
    from qeval.results.cache import installed_version, key_of, task_config_digest

    digest = key_of(
        [kind, installed_version("lm_eval"), task_config_digest(include, cache_dir / "digests")]
    )
    memo = cache_dir / "lm-eval-tasks" / f"{digest}.index.json"
    with suppress(OSError, ValueError, TypeError):
        saved = json.loads(memo.read_text())
        return {
            name: TaskInfo(
                **{
                    **v,
                    "members": tuple(v["members"]),
                    "metrics": None if v["metrics"] is None else tuple(v["metrics"]),
                    "filters": tuple(v["filters"]),
                }
            )
            for name, v in saved.items()
        }
    index = build()
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({n: asdict(i) for n, i in index.items()}))
    tmp.replace(memo)
    return index


def leaves(
    index: Mapping[str, TaskInfo], name: str, seen: frozenset[str] = frozenset()
) -> list[str]:
    """The tasks a name stands for (itself, or every task below a group or tag)."""
    info = index.get(name)
    if info is None or info.kind == "task" or name in seen:
        return [name] if info is not None and info.kind == "task" else []
    out: list[str] = []
    for member in info.members:
        out += leaves(index, member, seen | {name})
    return out


def metric_problem(index: Mapping[str, TaskInfo], name: str, wanted: str) -> str | None:
    """Why ``wanted`` (metric or metric,filter) is not a metric of ``name``, or None (also
    when lm-eval's config cannot tell: a metric computed by a function)."""
    metric, _, filt = wanted.partition(",")
    info = index[name]
    targets = (
        [info] if info.kind == "task" or info.metrics else [index[t] for t in leaves(index, name)]
    )
    have: set[str] = set()
    for t in targets:
        if t.metrics is None:
            return None
        have |= {f"{m},{f}" for m in t.metrics for f in (t.filters or ("none",))}
    ok = any(k.split(",")[0] == metric and (not filt or k.split(",", 1)[1] == filt) for k in have)
    return (
        None if ok or not have else f"{wanted!r} is not a metric of {name}; it has {sorted(have)}"
    )


def hub_dataset_cached(dataset: str) -> bool:
    """Whether a hub dataset is in the local caches (datasets' own or the hub's)."""
    from datasets import config
    from huggingface_hub import constants

    datasets_cache = Path(config.HF_DATASETS_CACHE) / dataset.replace("/", "___")
    hub_cache = Path(constants.HF_HUB_CACHE) / f"datasets--{dataset.replace('/', '--')}"
    return datasets_cache.is_dir() or hub_cache.is_dir()


GENERATIVE = frozenset({"generate_until"})


def scoring_tasks(index: Mapping[str, TaskInfo], name: str) -> list[str]:
    """The tasks ``name`` stands for that score log-likelihoods (loglikelihood,
    multiple_choice, loglikelihood_rolling: any output type but generation)."""
    kinds = {t: index[t].output_type for t in leaves(index, name)}
    return sorted(t for t, kind in kinds.items() if kind and kind not in GENERATIVE)


def prompt_problems(
    index: Mapping[str, TaskInfo], name: str, chat_server: bool, thinking: bool
) -> Iterator[str]:
    """What the prompt settings cannot do with one task, each as "what; the fix": a chat
    completions endpoint returns no prompt log-probabilities, and lm-eval runs a reasoning
    model's thinking mode on generative tasks only."""
    scored = scoring_tasks(index, name)
    if not scored:
        return
    what = f"{', '.join(scored[:4])}{' ...' if len(scored) > 4 else ''}"
    if chat_server:
        yield (
            f"{what} score log-likelihoods, which a chat completions endpoint cannot return: "
            "with spec.prompt.chatTemplate a model's server (backend vllm-server, or an "
            "endpoint) applies its chat template through /v1/chat/completions; use backend hf "
            "or vllm (lm-eval applies the template itself) and no endpoint, or drop the task"
        )
    if thinking:
        yield (
            f"{what} score log-likelihoods, and lm-eval runs spec.prompt.enableThinking on "
            "generative tasks only; set enableThinking: false or drop the task"
        )


def name_problems(
    index: Mapping[str, TaskInfo],
    name: str,
    metric: str | None,
    allow_code_execution: bool,
    offline: bool,
) -> Iterator[str]:
    """What is wrong with one requested task name, each as "what; the fix"."""
    info = index.get(name)
    if info is None:
        yield (
            f"lm-eval does not know task {name!r}; check the spelling (lm-eval ls tasks) or "
            "add its folder to spec.taskPaths"
        )
        return
    if info.kind == "tag":
        yield (
            f"{name!r} is an lm-eval tag, not a task: it has no score of its own; list its "
            f"tasks instead: {', '.join(info.members[:8])}{' ...' if len(info.members) > 8 else ''}"
        )
        return
    tasks = leaves(index, name)
    unsafe = [t for t in tasks if index[t].unsafe]
    if unsafe and not allow_code_execution:
        yield (
            f"lm-eval marks {', '.join(unsafe[:4])} unsafe_code: scoring runs the code the "
            "model writes; set spec.allowCodeExecution: true (in a sandboxed namespace)"
        )
    if metric and (problem := metric_problem(index, name, metric)):
        yield f"{problem}; fix spec.tasks[].metric"
    if offline:
        missing = sorted(
            {d for t in tasks if (d := index[t].dataset) and not hub_dataset_cached(d)}
        )
        if missing:
            yield (
                f"needs the hub dataset(s) {', '.join(missing[:4])}, not in the local cache "
                "while HF_DATASETS_OFFLINE=1; download them first or run online"
            )
