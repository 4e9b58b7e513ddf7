"""The evaluate stage: lm-eval on one model for a list of tasks.

The model is loaded once and every task runs in the same process (most of an lm-eval
run on a small model is import and load time). lm-eval's results JSON is written as it
is, per-sample logs beside it, and the scores are parsed from that JSON.

With a result cache (``cache_dir``), each task's result is stored under its key (see
``qeval.results.cache``) and a task already computed under the same key is reused: only
the missing tasks reach lm-eval, and a model whose every task is cached is not even
loaded (``reuse``, which the local executor calls without starting a process).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from functools import cache
from importlib import import_module, resources
from pathlib import Path
from typing import Any

from pydantic import Field

from qeval.api.common import ApiModel, ModelSource
from qeval.api.evalrun import Backend, Endpoint, Prompt, Serving, Task
from qeval.api.evalrun_status import Score
from qeval.reasons import SERVER_FAILED
from qeval.results.cache import (
    CachedTask,
    ResultCache,
    evaluation_fields,
    installed_version,
    key_of,
    task_config_digest,
    task_slice,
    weights_identity,
)
from qeval.results.lmeval import (
    LayoutError,
    harness_version,
    judged_tasks,
    parse_scores,
    primary_metrics,
)
from qeval.results.samples import leaf_tasks
from qeval.serving.endpoint import Connection, check_scoring, connect, keyed
from qeval.stages.envelope import Document, Phase, StageError, phase
from qeval.stages.models import resolve, size_on_disk

# lm-eval model classes per backend (vllm-server talks to the server qeval starts).
LM_EVAL_MODEL = {Backend.HF: "hf", Backend.VLLM: "vllm", Backend.VLLM_SERVER: "local-completions"}
# With spec.prompt.chatTemplate a server applies its own chat template: chat completions.
CHAT_SERVER_MODEL = "local-chat-completions"
# An endpoint (a model behind an existing OpenAI-compatible API), whatever the backend.
ENDPOINT_MODEL = "local-completions"
# What ``evaluate`` imports: once per process (a warm worker imports them before its first
# stage: ``qeval.local.worker``). vLLM is imported by its backend only.
WARM = ("torch", "transformers", "lm_eval", "lm_eval.models.huggingface", "lm_eval.evaluator")
# Libraries whose version can change a backend's scores (part of the cache key).
BACKEND_LIBRARIES = {
    Backend.HF: ("torch", "transformers", "compressed-tensors"),
    Backend.VLLM: ("vllm",),
    Backend.VLLM_SERVER: (),
}


def builtin_task_dir() -> Path:
    """The offline tasks shipped with qeval (always on lm-eval's include path)."""
    return Path(str(resources.files("qeval") / "tasks"))


class EvaluateInput(Document):
    """One model, every task, identical settings for every model of the run."""

    model_name: str = Field(description="Baseline or candidate name.")
    model: ModelSource | None = Field(default=None, description="The weights (or endpoint).")
    endpoint: Endpoint | None = Field(
        default=None,
        description="A model behind an existing OpenAI-compatible API: evaluated there with "
        "lm-eval's local-completions (local-chat-completions with the chat template), whatever "
        "the backend; its API key from the environment (``secret_env``), never here.",
    )
    tasks: list[Task]
    task_paths: list[str] = Field(default_factory=list)
    backend: Backend = Backend.HF
    batch_size: int | str = Field(
        default=16, description="A number, auto or auto:N (lm-eval's batch_size, as given)."
    )
    seed: int = 1234
    model_args: dict[str, str] = Field(default_factory=dict)
    base_url: str | None = Field(
        default=None,
        description="vllm-server: the run's server for this model (serving it under model_name).",
    )
    serving: Serving | None = Field(
        default=None, description="vllm-server: the server's settings (part of the cache key)."
    )
    prompt: Prompt | None = Field(
        default=None,
        description="Chat template, few-shot turns, system instruction, generation settings "
        "(None: lm-eval's defaults, plain text). Part of the cache key when set.",
    )
    task_metadata: dict[str, Any] | None = Field(
        default=None,
        description="lm-eval's --metadata for every task (e.g. RULER's max_seq_lengths), "
        "over the model's arguments as lm-eval's CLI merges them. Part of the cache key "
        "when set.",
    )
    allow_code_execution: bool = Field(
        default=False, description="Let lm-eval run tasks that execute model-written code."
    )
    trust_remote_code: bool = Field(
        default=False, description="Let transformers run the model repository's own code."
    )
    cache_dir: str | None = Field(default=None, description="The result cache; None: none.")
    reuse_cached: bool = Field(
        default=True, description="False: recompute every task (and refresh the cache)."
    )
    output_dir: str


class EvaluateResult(ApiModel):
    model_name: str
    backend: str
    harness_version: str | None
    scores: list[Score]
    model_size_bytes: int | None = None
    results_path: str = Field(description="lm-eval's results JSON, as lm-eval wrote it.")
    samples_dir: str = Field(description="Per-sample logs, one JSONL per task.")
    cached_tasks: list[str] = Field(
        default_factory=list, description="Tasks whose results were reused from the cache."
    )
    cache_keys: dict[str, str] = Field(
        default_factory=dict, description="Each task's result cache key."
    )
    primary: dict[str, str] = Field(
        default_factory=dict,
        description="The metric,filter each judged task is scored on: chosen once, when the "
        "task was evaluated, and kept with its cached result.",
    )


def task_manager(
    task_paths: Sequence[str], needs: Sequence[str] = (), metadata: Mapping[str, Any] | None = None
) -> Any:
    """lm-eval's TaskManager with qeval's tasks and ``task_paths`` on its include path.

    With ``needs`` (the names a stage runs), one that indexes only those folders when every
    name, with a group's members, is defined there: milliseconds instead of the ~15 s lm-eval
    takes to index its ~14,000 built-in tasks, and the same configs, since lm-eval lets its
    include path override its built-ins. Otherwise (a built-in task) the full index. Each is
    built once per process, folder contents and ``metadata`` (a warm worker keeps it
    between stages). ``metadata`` goes into every task's config as lm-eval's --metadata
    does (simple_evaluate ignores its own ``metadata`` once it is given a TaskManager).
    """
    from qeval.stages.taskindex import complete, summary

    meta = json.dumps(dict(metadata), sort_keys=True) if metadata else ""
    if needs:
        focused = include_task_manager(task_paths)
        index = summary(focused)
        if all(complete(index, name) for name in needs):
            return include_task_manager(task_paths, meta) if meta else focused
    paths = (str(builtin_task_dir()), *task_paths)
    return _task_manager(paths, True, _stamp(paths), meta)


def include_task_manager(task_paths: Sequence[str], metadata: str = "") -> Any:
    """lm-eval's TaskManager of qeval's tasks and ``task_paths`` alone (no built-ins)."""
    paths = (str(builtin_task_dir()), *task_paths)
    return _task_manager(paths, False, _stamp(paths), metadata)


@cache
def _task_manager(
    paths: tuple[str, ...], defaults: bool, stamp: tuple[Any, ...], metadata: str = ""
) -> Any:
    from lm_eval.tasks import TaskManager

    meta = json.loads(metadata) if metadata else None
    return TaskManager(include_path=list(paths), include_defaults=defaults, metadata=meta)


def _stamp(paths: Sequence[str]) -> tuple[Any, ...]:
    """What the include folders hold (name, size, mtime of each file): a changed task file
    is a new TaskManager. lm-eval's own folder is left out: an installed package."""
    out = []
    for folder in map(Path, paths):
        for f in sorted(folder.rglob("*")) if folder.is_dir() else ():
            with suppress(OSError):
                st = f.stat()
                out.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(out)


def group_by_settings(
    tasks: list[Task],
) -> dict[tuple[int | None, int | float | None], list[str]]:
    """lm-eval takes one num_fewshot and one limit per call: group tasks that share them (a
    limit of 0.5, half the documents, is not one of 1)."""
    groups: dict[tuple[int | None, int | float | None], list[str]] = defaultdict(list)
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


def parse_model_args(model_args: Mapping[str, str]) -> dict[str, Any]:
    """spec.modelArgs read as lm-eval's own ``--model_args`` reads its values ("False" is
    False, "8" is 8, "'8'" is the string 8): with lm-eval's own helper."""
    from lm_eval.utils import handle_arg_string

    return {key: handle_arg_string(value) for key, value in model_args.items()}


def adds_special_tokens(path: Path, trust_remote_code: bool = False) -> bool:
    """Whether the model's tokenizer adds special tokens (a BOS) to a text by default.

    Backend hf (lm-eval's HFLM) encodes with the tokenizer's defaults, so it sends the BOS
    such a tokenizer adds; lm-eval's local-completions encodes with ``add_special_tokens=
    add_bos_token``, False unless told. Asked of the tokenizer itself, this is what to tell
    it for the server to score the same tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    probe = "1 a"
    return bool(tok(probe)["input_ids"] != tok(probe, add_special_tokens=False)["input_ids"])


def reported_max_model_len(models: Any, name: str) -> int:
    """The context length vLLM's ``GET /v1/models`` answer reports for the model served as
    ``name`` (its ``max_model_len``: the resolved one, after ``auto``)."""
    cards = models.get("data") if isinstance(models, dict) else None
    cards = [c for c in cards if isinstance(c, dict)] if isinstance(cards, list) else []
    for card in cards:
        if card.get("id") == name:
            value = card.get("max_model_len")
            if type(value) is int and value > 0:
                return value
            raise StageError(
                "UnknownContextLength",
                f"the server of {name!r} reports no max_model_len in GET /v1/models (got "
                f"{value!r}); set spec.serving.maxModelLen to a number of tokens",
            )
    served = [c.get("id") for c in cards]
    raise StageError("NoServer", f"the server does not serve {name!r} (it serves {served})")


def server_max_length(base_url: str, name: str, serving: Serving, timeout: float = 30.0) -> int:
    """The tokens of context the server takes: spec.serving.maxModelLen where it is a number,
    else (auto, or the model's own) what the running server reports."""
    if isinstance(serving.max_model_len, int):
        return serving.max_model_len
    import httpx

    url = f"{base_url.rstrip('/')}/v1/models"
    try:
        answer = httpx.get(url, timeout=timeout)
        answer.raise_for_status()
        models = answer.json()
    except (httpx.HTTPError, ValueError) as e:
        raise StageError(SERVER_FAILED, f"GET {url}: {e}") from e
    return reported_max_model_len(models, name)


# How the vllm-server client encodes and truncates (part of its results' cache key: results
# computed before it sent the tokenizer's BOS and the server's length are not reused).
SERVER_CLIENT = {
    "tokenizerBackend": "huggingface",
    "specialTokens": "tokenizer",
    "maxLength": "server",
}


def chat_server(inp: EvaluateInput) -> bool:
    """Whether lm-eval talks to the model's server (the run's own, or an endpoint) through
    chat completions."""
    served = inp.backend == Backend.VLLM_SERVER or inp.endpoint is not None
    return served and bool(inp.prompt and inp.prompt.chat_template)


def _endpoint_model_args(
    inp: EvaluateInput, tokenizer: Path | None, conn: Connection
) -> dict[str, Any]:
    """An endpoint's model_args: its model at its base URL, with the model's tokenizer where
    endpoint.tokenizer names one (token ids are sent, the BOS as the tokenizer adds it, as
    for vllm-server), else prompts as text (generative tasks only). max_length (unless
    spec.modelArgs sets it): the context GET /models reports, else lm-eval's default."""
    endpoint = conn.endpoint
    user = parse_model_args(inp.model_args)
    args: dict[str, Any] = {
        "model": endpoint.model,
        "num_concurrent": endpoint.num_concurrent,
        "tokenizer": None,
        "tokenizer_backend": None,
    }
    prompt = inp.prompt.model_args() if inp.prompt else {}
    if chat_server(inp):
        assert inp.prompt is not None
        end = inp.prompt.think_end_token
        url = conn.url("chat/completions")
        return user | {**args, "base_url": url, **({"think_end_token": end} if end else {})}
    derived: dict[str, Any] = {}
    if (length := conn.max_model_len()) is not None:
        derived["max_length"] = length
    if tokenizer is not None:
        args |= {"tokenizer": str(tokenizer), "tokenizer_backend": "huggingface"}
        if "add_bos_token" not in user:
            derived["add_bos_token"] = adds_special_tokens(tokenizer, inp.trust_remote_code)
    args["base_url"] = conn.url("completions")
    return derived | user | prompt | args | {"trust_remote_code": inp.trust_remote_code}


def _model_args(inp: EvaluateInput, path: Path) -> dict[str, Any]:
    """The model_args lm-eval gets. The API refuses the keys set here in spec.modelArgs;
    remote code runs only with spec.trustRemoteCode (False is passed explicitly).

    With vllm-server, spec.modelArgs may still set what qeval otherwise derives: max_length
    (default: the server's context), add_bos_token (default: whether the tokenizer adds
    special tokens, as backend hf encodes) and tokenizer_backend (default: huggingface, the
    model's own tokenizer; lm-eval would pick its remote one where a server offers
    /tokenizer_info, and that one never adds a BOS)."""
    user = parse_model_args(inp.model_args)
    # The revision is already pinned: resolve() fetched exactly that snapshot.
    args: dict[str, Any] = {"pretrained": str(path)}
    derived: dict[str, Any] = {}
    if inp.backend == Backend.VLLM_SERVER:
        if not inp.base_url:
            raise StageError("NoServer", "backend vllm-server needs the server's base_url")
        serving = inp.serving or Serving()
        if chat_server(inp):  # the server's template; lm-eval sends messages, not tokens
            assert inp.prompt is not None
            end = inp.prompt.think_end_token
            return user | {
                "model": inp.model_name,
                "base_url": f"{inp.base_url.rstrip('/')}/v1/chat/completions",
                "num_concurrent": serving.num_concurrent,
                **({"think_end_token": end} if end else {}),
            }
        args = {
            "model": inp.model_name,  # the name the server serves it under
            "tokenizer": str(path),
            "base_url": f"{inp.base_url.rstrip('/')}/v1/completions",
            "num_concurrent": serving.num_concurrent,
        }
        derived = {"tokenizer_backend": SERVER_CLIENT["tokenizerBackend"]}
        if "add_bos_token" not in user:
            derived["add_bos_token"] = adds_special_tokens(path, inp.trust_remote_code)
        if "max_length" not in user:
            derived["max_length"] = server_max_length(inp.base_url, inp.model_name, serving)
    prompt = inp.prompt.model_args() if inp.prompt else {}
    return derived | user | prompt | args | {"trust_remote_code": inp.trust_remote_code}


def lm_eval_model(inp: EvaluateInput, path: Path | None, conn: Connection | None = None) -> Any:
    """The lm-eval model object every task of the stage runs on (``qeval run`` and the
    operator's Job both build it here). ``path``: the model's weights, or an endpoint's
    tokenizer (``conn``: the endpoint, connected)."""
    from lm_eval.api.registry import get_model

    extra: dict[str, Any] = {"batch_size": inp.batch_size}
    if conn is not None:
        name = CHAT_SERVER_MODEL if chat_server(inp) else ENDPOINT_MODEL
        return get_model(name).create_from_arg_obj(_endpoint_model_args(inp, path, conn), extra)
    assert path is not None
    if inp.backend == Backend.HF:
        extra["device"] = "cuda" if _has_gpu() else "cpu"
    name = CHAT_SERVER_MODEL if chat_server(inp) else LM_EVAL_MODEL[Backend(inp.backend)]
    return get_model(name).create_from_arg_obj(_model_args(inp, path), extra)


# --- the result cache ------------------------------------------------------------------


@dataclass
class CacheLookup:
    """Each task's cache key (and what it covers) and the tasks found in the cache."""

    cache: ResultCache | None = None
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    hits: dict[str, CachedTask] = field(default_factory=dict)


# How an endpoint is evaluated (its results' cache key): the backend does not matter.
ENDPOINT_BACKEND = "endpoint"


def backend_config(inp: EvaluateInput) -> dict[str, Any]:
    """The backend settings that can change scores (part of every task's cache key)."""
    if inp.endpoint is not None:
        return {
            "batchSize": inp.batch_size,
            "modelArgs": dict(inp.model_args),
            "trustRemoteCode": inp.trust_remote_code,
            "client": {"model": ENDPOINT_MODEL, "specialTokens": "tokenizer"},
        }
    backend = Backend(inp.backend)
    config: dict[str, Any] = {
        "batchSize": inp.batch_size,
        "modelArgs": dict(inp.model_args),
        "trustRemoteCode": inp.trust_remote_code,
        "libraries": {p: installed_version(p) for p in BACKEND_LIBRARIES[backend]},
    }
    if backend == Backend.VLLM_SERVER:  # what the server does can change scores too
        served = (inp.serving or Serving()).dump()
        ignored = {"numConcurrent", "readyTimeoutSeconds"}  # they cannot change a score
        config["serving"] = {k: v for k, v in served.items() if k not in ignored}
        config["client"] = SERVER_CLIENT
    return config


def identity_of(
    inp: EvaluateInput, path: Path | None, conn: Connection | None, memo: Path | None
) -> str:
    """What names the model in a cache key: its weights' identity; for an endpoint what it
    says it serves (``Connection.identity``) and the tokenizer's identity."""
    source = inp.endpoint.tokenizer if inp.endpoint is not None else inp.model
    weights = None
    if source is not None and path is not None:
        weights = weights_identity(source.uri, source.revision, path, memo)
    if conn is None:
        assert weights is not None
        return weights
    return f"endpoint:{key_of({**conn.identity(), 'tokenizer': weights})}"


def lookup(inp: EvaluateInput, path: Path | None, conn: Connection | None = None) -> CacheLookup:
    """Keys for every task of ``inp`` on the model at ``path`` (or the endpoint ``conn``),
    and the cached ones (an endpoint's only where endpoint.cache allows it)."""
    if inp.cache_dir is None:
        return CacheLookup()
    cache = ResultCache(Path(inp.cache_dir))
    identity = identity_of(inp, path, conn, cache.digests)
    folders = [builtin_task_dir(), *map(Path, inp.task_paths)]
    config = task_config_digest(folders, cache.digests)
    harness, settings = installed_version("lm_eval"), backend_config(inp)
    fields = {
        t.name: evaluation_fields(
            model=identity,
            task=t.name,
            num_fewshot=t.num_fewshot,
            limit=t.limit,
            task_config=config,
            harness_version=harness,
            backend=ENDPOINT_BACKEND if inp.endpoint is not None else str(inp.backend),
            backend_config=settings,
            seed=inp.seed,
            prompt=inp.prompt.dump() if inp.prompt else None,
            task_metadata=inp.task_metadata,
        )
        for t in inp.tasks
    }
    keys = {name: key_of(f) for name, f in fields.items()}
    hits = {}
    if reuses(inp):
        hits = {name: hit for name, key in keys.items() if (hit := cache.get_task(key))}
    return CacheLookup(cache, fields, keys, hits)


def reuses(inp: EvaluateInput) -> bool:
    """Whether cached results are taken: with spec.cache, and for an endpoint only with
    endpoint.cache too (what answers behind a URL can change without a trace)."""
    return inp.reuse_cached and (inp.endpoint is None or inp.endpoint.cache)


def reuse(inp: EvaluateInput) -> EvaluateResult | None:
    """The stage's result when every task is in the cache (without loading lm-eval or the
    model; a model that is not on this machine yet counts as not cached), else None."""
    if inp.cache_dir is None or not reuses(inp):
        return None
    try:
        conn = connect(inp.endpoint) if inp.endpoint is not None else None
        path = weights_path(inp, local_only=True)
    except StageError:
        return None
    found = lookup(inp, path, conn)
    if len(found.hits) != len(inp.tasks):
        return None
    try:
        return finish(inp, path, found, {}, {})
    except StageError:  # e.g. spec.tasks[].metric not in the results: the stage says why
        return None


def store(
    inp: EvaluateInput,
    found: CacheLookup,
    tasks: list[Task],
    results: dict[str, Any],
    samples: Path,
    primary: Mapping[str, str],
) -> None:
    """Put the freshly computed tasks into the cache, each with the metrics it is judged on
    (``finish`` has made sure every task has one: nothing empty is cached)."""
    if found.cache is None:
        return
    for task in tasks:
        files = {
            leaf: samples / f"{leaf}.jsonl"
            for leaf in leaf_tasks(results, task.name)
            if (samples / f"{leaf}.jsonl").is_file()
        }
        judged = {t: primary[t] for t in judged_tasks(results, task.name) if t in primary}
        found.cache.put_task(
            found.keys[task.name],
            task.name,
            found.fields[task.name],
            task_slice(results, task.name),
            files,
            source=f"{inp.output_dir} ({inp.model_name})",
            primary=judged,
        )


def choose_primary(
    inp: EvaluateInput, found: CacheLookup, fresh: Mapping[str, Any]
) -> dict[str, str]:
    """The metric,filter each judged task is scored on: chosen from lm-eval's fresh results
    by its task configs (``primary_metrics``), or as recorded with a cached result, so a
    re-run from the cache judges on exactly what the first run did. Raises StageError for a
    task that reports no score (a tag, a group of nothing) or not the metric asked for."""
    out: dict[str, str] = {}
    for task in inp.tasks:
        hit = found.hits.get(task.name)
        try:
            if hit is not None and hit.primary:
                chosen = dict(hit.primary)
            else:
                source = hit.results if hit is not None else fresh
                chosen = primary_metrics(source, {task.name: task.metric})
        except LayoutError as e:
            raise StageError("UnreadableResults", f"{task.name}: {e}") from e
        except ValueError as e:
            raise StageError("UnknownMetric", f"{e}; fix spec.tasks[].metric") from e
        if not chosen:
            raise StageError(
                "NoScore",
                f"lm-eval reported no score for {task.name!r} (a tag, or a group whose tasks "
                "report none): list the tasks it stands for in spec.tasks",
            )
        out |= chosen
    return out


def finish(
    inp: EvaluateInput,
    path: Path | None,
    found: CacheLookup,
    fresh: dict[str, Any],
    fresh_samples: dict[str, list[Any]],
) -> EvaluateResult:
    """Write results.json and samples/ from fresh and cached results; parse the scores."""
    primary = choose_primary(inp, found, fresh)  # before anything is written or cached
    out_dir = Path(inp.output_dir)
    samples_dir = out_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    for task, samples in fresh_samples.items():
        target = samples_dir / f"{task}.jsonl"
        target.unlink(missing_ok=True)  # never write through a link
        with target.open("w") as f:
            for sample in samples:
                f.write(json.dumps(sample, default=str) + "\n")
    for hit in found.hits.values():
        for leaf, cached in hit.samples.items():
            shutil.copyfile(cached, samples_dir / f"{leaf}.jsonl")
    results = merge_results(([fresh] if fresh else []) + [h.results for h in found.hits.values()])
    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=2, default=str))
    todo = [t for t in inp.tasks if t.name not in found.hits]
    store(inp, found, todo, fresh, samples_dir, primary)
    return EvaluateResult(
        model_name=inp.model_name,
        backend=ENDPOINT_BACKEND if inp.endpoint is not None else str(inp.backend),
        harness_version=harness_version(results),
        scores=parse_scores(results, inp.model_name, primary),
        # An endpoint's weights are not here (its tokenizer's folder may hold some).
        model_size_bytes=size_on_disk(path) if path and inp.endpoint is None else None,
        results_path=str(results_path),
        samples_dir=str(samples_dir),
        cached_tasks=[t.name for t in inp.tasks if t.name in found.hits],
        cache_keys=found.keys,
        primary=primary,
    )


# --- lm-eval ---------------------------------------------------------------------------


def task_metadata(inp: EvaluateInput, path: Path | None) -> dict[str, Any] | None:
    """What every task's config gets as metadata: spec.taskMetadata over the model's
    arguments, merged as lm-eval's CLI merges --metadata over --model_args (RULER, say,
    finds the tokenizer there); None without spec.taskMetadata (lm-eval's defaults)."""
    if not inp.task_metadata:
        return None
    model = {"pretrained": str(path), "tokenizer": str(path)} if path is not None else {}
    return model | parse_model_args(inp.model_args) | inp.task_metadata


def evaluate(
    inp: EvaluateInput, path: Path | None, tasks: list[Task], conn: Connection | None = None
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Run lm-eval on ``tasks``: its results document (without samples) and the samples.
    An endpoint (``conn``) is first checked for what the tasks need (``check_scoring``)."""
    with phase(Phase.IMPORTS):
        for module in WARM:
            import_module(module)
        import lm_eval
        from lm_eval.utils import handle_non_serializable
    with phase(Phase.TASK_INDEX):
        tm = task_manager(inp.task_paths, [t.name for t in tasks], task_metadata(inp, path))
    missing = [t.name for t in tasks if t.name not in set(tm.all_tasks)]
    if missing:
        raise StageError(
            "UnknownTask",
            f"lm-eval does not know {missing}; check spec.tasks "
            "names (lm-eval --tasks list) or add their folder to spec.taskPaths",
        )
    if conn is not None:  # before any request lm-eval sends
        from qeval.stages.taskindex import scoring_tasks, summary

        index = summary(tm)
        scored = sorted({x for t in tasks for x in scoring_tasks(index, t.name)})
        check_scoring(conn, scored, chat_server(inp))
    if inp.allow_code_execution:
        os.environ["HF_ALLOW_CODE_EVAL"] = "1"  # HF evaluate's code_eval asks for it too

    with phase(Phase.MODEL_LOAD):
        lm = lm_eval_model(inp, path, conn)
    parts = []
    for (shots, limit), names in group_by_settings(tasks).items():
        with phase(Phase.MODEL_WORK):
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
                confirm_run_unsafe_code=inp.allow_code_execution,
                **(inp.prompt.evaluate_args() if inp.prompt else {}),
            )
        if out is None:  # only non-zero ranks of a distributed run return None
            raise StageError("EvaluationFailed", "lm-eval returned no results")
        parts.append(dict(out))
    # One JSON round trip makes everything plain data (lm-eval's own serializer).
    results = json.loads(json.dumps(merge_results(parts), default=handle_non_serializable))
    return results, results.pop("samples", {})


def weights_path(inp: EvaluateInput, local_only: bool = False) -> Path | None:
    """The model's directory; for an endpoint its tokenizer's (None without one)."""
    if inp.endpoint is not None:
        source = inp.endpoint.tokenizer
        return resolve(source, local_only, weights=False) if source is not None else None
    if inp.model is None:
        raise StageError("InvalidInput", "an evaluation needs a model or an endpoint")
    return resolve(inp.model, local_only)


def run(inp: EvaluateInput) -> EvaluateResult:
    # An endpoint is reached (key, GET /models) before anything is fetched or loaded.
    conn = connect(inp.endpoint) if inp.endpoint is not None else None
    path = weights_path(inp)
    found = lookup(inp, path, conn)
    todo = [t for t in inp.tasks if t.name not in found.hits]
    with keyed(conn) if conn is not None else nullcontext():
        fresh, samples = evaluate(inp, path, todo, conn) if todo else ({}, {})
    with phase(Phase.RESULT_WRITING):
        return finish(inp, path, found, fresh, samples)


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())
