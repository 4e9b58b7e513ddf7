"""The result cache: keys (stable, sensitive to every field, label-safe), content digests,
the store, and reuse by the evaluate and quantize stages and the local executor (all
without lm-eval or torch: lm-eval's output is played by fixtures)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath

import pytest

from qeval.api.evalrun import Task
from qeval.results import cache as c
from qeval.stages import evaluate, quantize

FIELDS = {
    "model": "sha256:abc",
    "task": "arc_challenge",
    "num_fewshot": 25,
    "limit": None,
    "task_config": "cfg",
    "harness_version": "0.4.13",
    "backend": "hf",
    "backend_config": {"batchSize": 16, "modelArgs": {}, "libraries": {"torch": "2.13.0"}},
    "seed": 1234,
}
CHANGES = {
    "model": "hf:org/m@0123",
    "task": "arc_easy",
    "num_fewshot": 0,
    "limit": 100,
    "task_config": "other",
    "harness_version": "0.4.14",
    "backend": "vllm",
    "backend_config": {"batchSize": 32, "modelArgs": {}, "libraries": {"torch": "2.13.0"}},
    "seed": 1,
}


def result_key(**fields):
    return c.key_of(c.evaluation_fields(**fields))


def test_result_key_is_stable():
    key = result_key(**FIELDS)
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert key == result_key(**dict(reversed(list(FIELDS.items()))))


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_result_key_changes_with_every_field(field):
    assert result_key(**{**FIELDS, field: CHANGES[field]}) != result_key(**FIELDS)


def test_model_args_and_library_versions_are_in_the_key():
    cfg = FIELDS["backend_config"]
    dtype = {**cfg, "modelArgs": {"dtype": "bfloat16"}}
    libs = {**cfg, "libraries": {"torch": "2.14.0"}}
    keys = {result_key(**{**FIELDS, "backend_config": b}) for b in (cfg, dtype, libs)}
    assert len(keys) == 3


def _model(root: Path, weights: bytes = b"\x01" * 64) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model.safetensors").write_bytes(weights)
    return root


def test_tree_digest_follows_contents_not_names_of_the_folder(tmp_path):
    a = _model(tmp_path / "a")
    b = _model(tmp_path / "b")
    assert c.tree_digest(a) == c.tree_digest(b)  # same contents, another place
    (b / "model.safetensors").write_bytes(b"\x02" * 64)
    assert c.tree_digest(a) != c.tree_digest(b)
    (tmp_path / "a" / "__pycache__").mkdir()
    (tmp_path / "a" / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (tmp_path / "a" / ".lock").write_text("")
    assert c.tree_digest(a) == c.tree_digest(_model(tmp_path / "c"))


def test_remembered_digest_sees_a_same_size_same_mtime_rewrite(tmp_path):
    model, memo = _model(tmp_path / "m"), tmp_path / "memo"
    first = c.tree_digest(model, memo)
    assert c.tree_digest(model, memo) == first and len(list(memo.iterdir())) == 1
    weights = model / "model.safetensors"
    st = weights.stat()
    weights.write_bytes(b"\x03" * 64)  # same size...
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and the old mtime back
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    assert c.tree_digest(model, memo) != first  # ctime moved: contents hashed again


def test_model_identity(tmp_path):
    snapshot = _model(tmp_path / "hub" / "snapshots" / "0123abcd")
    assert c.weights_identity("org/m", None, snapshot) == "hf:org/m@0123abcd"
    local = _model(tmp_path / "local")
    assert c.weights_identity(str(local), None, local) == f"sha256:{c.tree_digest(local)}"


GROUP_RESULTS = {
    "results": {
        "g": {"acc,none": 0.5},
        "g_a": {"acc,none": 0.4},
        "g_b": {"acc,none": 0.6},
        "t": {},
    },
    "group_subtasks": {"g": ["g_a", "g_b"], "t": []},
    "configs": {"g_a": {}, "g_b": {}, "t": {}},
    "n-shot": {"g_a": 0, "g_b": 0, "t": 5},
    "lm_eval_version": "0.4.13",
    "samples": {"g_a": [], "t": []},
}


def test_task_slice_keeps_a_group_with_its_subtasks():
    assert c.members(GROUP_RESULTS, "g") == ["g", "g_a", "g_b"]
    part = c.task_slice(GROUP_RESULTS, "g")
    assert set(part["results"]) == {"g", "g_a", "g_b"} and set(part["configs"]) == {"g_a", "g_b"}
    assert part["lm_eval_version"] == "0.4.13" and "samples" not in part
    assert set(c.task_slice(GROUP_RESULTS, "t")["results"]) == {"t"}


def test_store_round_trip_and_a_damaged_entry_is_a_miss(tmp_path):
    store = c.ResultCache(tmp_path / "cache")
    samples = tmp_path / "t.jsonl"
    samples.write_text('{"doc_id": 0}\n')
    key = result_key(**FIELDS)
    assert store.get_task(key) is None
    store.put_task(key, "t", {"f": 1}, {"results": {"t": {}}}, {"t": samples})
    hit = store.get_task(key)
    assert hit is not None and hit.results == {"results": {"t": {}}}
    assert hit.samples["t"].read_text() == samples.read_text()
    store.put_task(key, "t", {"f": 1}, {"results": {"t": {"x": 1}}}, {"t": samples})  # refresh
    assert store.get_task(key).results == {"results": {"t": {"x": 1}}}
    hit.samples["t"].unlink()
    assert store.get_task(key) is None


# --- the evaluate stage -------------------------------------------------------------------


def lm_eval_output(tasks: dict[str, float]) -> tuple[dict, dict]:
    """What lm-eval returns for ``tasks`` (task -> accuracy over 4 items), and the samples."""
    results = {
        "results": {
            t: {"alias": t, "acc,none": v, "acc_stderr,none": 0.1} for t, v in tasks.items()
        },
        "group_subtasks": {t: [] for t in tasks},
        "configs": {t: {"task": t} for t in tasks},
        "versions": {t: 1.0 for t in tasks},
        "n-shot": {t: 0 for t in tasks},
        "higher_is_better": {t: {"acc": True} for t in tasks},
        "n-samples": {t: {"original": 4, "effective": 4} for t in tasks},
        "lm_eval_version": "0.4.13",
    }
    samples = {
        t: [{"doc_id": i, "filter": "none", "acc": float(i < round(4 * v))} for i in range(4)]
        for t, v in tasks.items()
    }
    return results, samples


def evaluate_input(tmp_path: Path, model: Path, out: str, tasks=("ta", "tb"), **kw):
    return evaluate.EvaluateInput(
        model_name="m",
        model={"uri": str(model)},
        tasks=[Task(name=t) for t in tasks],
        cache_dir=str(tmp_path / "cache"),
        output_dir=str(tmp_path / out),
        **kw,
    )


def compute(inp: evaluate.EvaluateInput, values: dict[str, float]) -> evaluate.EvaluateResult:
    """The evaluate stage's run() with lm-eval played by ``lm_eval_output``."""
    path = evaluate.resolve(inp.model)
    found = evaluate.lookup(inp, path)
    todo = {t.name: values[t.name] for t in inp.tasks if t.name not in found.hits}
    fresh, samples = lm_eval_output(todo) if todo else ({}, {})
    return evaluate.finish(inp, path, found, fresh, samples)


def test_evaluation_is_reused_per_task(tmp_path):
    model = _model(tmp_path / "model")
    first = evaluate_input(tmp_path, model, "run1")
    assert evaluate.reuse(first) is None  # nothing cached yet
    done = compute(first, {"ta": 0.5, "tb": 0.75})
    assert done.cached_tasks == [] and set(done.cache_keys) == {"ta", "tb"}

    again = evaluate_input(tmp_path, model, "run2")
    reused = evaluate.reuse(again)
    assert reused is not None and reused.cached_tasks == ["ta", "tb"]
    assert [(s.task, s.value) for s in reused.scores] == [(s.task, s.value) for s in done.scores]
    run2 = tmp_path / "run2"
    assert (run2 / "samples" / "ta.jsonl").read_text() == (
        tmp_path / "run1" / "samples" / "ta.jsonl"
    ).read_text()
    assert set(json.loads((run2 / "results.json").read_text())["results"]) == {"ta", "tb"}

    # A third task: only it is computed, the two others come from the cache.
    more = evaluate_input(tmp_path, model, "run3", tasks=("ta", "tb", "tc"))
    assert evaluate.reuse(more) is None
    mixed = compute(more, {"ta": 0.0, "tb": 0.0, "tc": 0.25})
    assert mixed.cached_tasks == ["ta", "tb"]
    assert {s.task: s.value for s in mixed.scores} == {"ta": 0.5, "tb": 0.75, "tc": 0.25}


def test_a_changed_model_or_setting_or_no_cache_recomputes(tmp_path):
    model = _model(tmp_path / "model")
    compute(evaluate_input(tmp_path, model, "r1"), {"ta": 0.5, "tb": 0.5})
    assert evaluate.reuse(evaluate_input(tmp_path, model, "r2")) is not None
    assert evaluate.reuse(evaluate_input(tmp_path, model, "r2", seed=7)) is None
    assert evaluate.reuse(evaluate_input(tmp_path, model, "r2", batch_size=8)) is None
    assert evaluate.reuse(evaluate_input(tmp_path, model, "r2", reuse_cached=False)) is None
    (model / "model.safetensors").write_bytes(b"\x09" * 64)  # other weights
    assert evaluate.reuse(evaluate_input(tmp_path, model, "r2")) is None


# --- the quantize stage and the executor ------------------------------------------------


def quantize_input(tmp_path: Path, base: Path, **kw) -> quantize.QuantizeInput:
    return quantize.QuantizeInput(
        name="q",
        model={"uri": str(base)},
        scheme="W4A16",
        recipe="quant_stage: {}",
        output_dir=str(tmp_path / "models" / "q"),
        cache_dir=str(tmp_path / "cache"),
        **kw,
    )


def test_quantization_is_reused_while_its_output_is_intact(tmp_path):
    base = _model(tmp_path / "base", b"\x01" * 256)
    inp = quantize_input(tmp_path, base)
    assert quantize.reuse(inp) is None
    out = _model(Path(inp.output_dir), b"\x05" * 64)  # what quantize() would have written
    result = quantize.QuantizeResult(
        name="q",
        scheme="W4A16",
        recipe=inp.recipe,
        output_dir=str(out),
        size_bytes=64,
        base_size_bytes=256,
        compression_ratio=4.0,
        quantize_seconds=1.0,
    )
    store = c.ResultCache(Path(inp.cache_dir))
    key, fields = quantize.cache_key(inp, base, store)
    store.put_quantization(key, fields, result.dump(), c.tree_digest(out))
    reused = quantize.reuse(inp)
    assert reused is not None and reused.cached and reused.compression_ratio == 4.0
    assert quantize.reuse(quantize_input(tmp_path, base, reuse_cached=False)) is None
    assert quantize.reuse(quantize_input(tmp_path, base, seed=1)) is None
    (out / "model.safetensors").write_bytes(b"\x06" * 64)  # the output was overwritten
    assert quantize.reuse(inp) is None


def test_executor_reuses_without_starting_a_process(tmp_path):
    from qeval.local.executor import REUSED_MESSAGE, reuse_stage
    from qeval.plan import Layout, Stage

    model = _model(tmp_path / "model")
    compute(evaluate_input(tmp_path, model, "r1"), {"ta": 0.5, "tb": 0.5})
    layout = Layout(PurePosixPath(tmp_path / "run"), PurePosixPath(tmp_path / "models"))
    inp = evaluate_input(tmp_path, model, "run/stages/evaluate-m")
    stage = Stage("evaluate-m", "evaluate", inp.dump())
    doc = reuse_stage(stage, layout)
    assert doc is not None and doc.message == REUSED_MESSAGE and doc.status == "Succeeded"
    assert doc.result["cachedTasks"] == ["ta", "tb"]
    assert (tmp_path / "run/stages/evaluate-m/result.json").is_file()
    miss = Stage("evaluate-m", "evaluate", {**inp.dump(), "seed": 5})
    assert reuse_stage(miss, layout) is None


def test_the_plan_passes_the_cache_and_the_switch_to_the_stages():
    from qeval.api import EvalRun, QuantizedModel, load_documents
    from qeval.plan import Layout, build_plan
    from tests.conftest import EXAMPLES

    objs = load_documents(EXAMPLES / "evalrun.yaml")
    run = next(o for o in objs if isinstance(o, EvalRun))
    models = {o.name: o for o in objs if isinstance(o, QuantizedModel)}
    layout = Layout(PurePosixPath("/r"), PurePosixPath("/m"), PurePosixPath("/c"))
    for cache in (True, False):
        spec = run.spec.model_copy(update={"cache": cache})
        stages = build_plan(run.model_copy(update={"spec": spec}), models, layout)
        heavy = [s.input for s in stages if s.kind in ("quantize", "evaluate")]
        assert len(heavy) == 9
        assert all(i["cacheDir"] == "/c" and i["reuseCached"] is cache for i in heavy)
    no_cache = build_plan(run, models, Layout(PurePosixPath("/r"), PurePosixPath("/m")))
    assert not any("cacheDir" in s.input for s in no_cache)  # the operator's layout: none


def test_a_changed_limit_model_arg_or_task_folder_recomputes(tmp_path):
    """Each changes what lm-eval computes: none may be answered from the cache."""
    model = _model(tmp_path / "model")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "t.yaml").write_text("task: t\n")
    first = evaluate_input(tmp_path, model, "r1", task_paths=[str(tasks)])
    compute(first, {"ta": 0.5, "tb": 0.5})
    assert evaluate.reuse(evaluate_input(tmp_path, model, "r2", task_paths=[str(tasks)]))
    limited = first.model_copy(update={"tasks": [Task(name="ta", limit=2), Task(name="tb")]})
    assert evaluate.lookup(limited, model).hits.keys() == {"tb"}
    dtype = first.model_copy(update={"model_args": {"dtype": "float32"}})
    assert evaluate.reuse(dtype) is None
    (tasks / "t.yaml").write_text("task: t\nnum_fewshot: 5\n")  # the task defined anew
    assert evaluate.reuse(evaluate_input(tmp_path, model, "r2", task_paths=[str(tasks)])) is None
