"""Fast checks of the demo's synthetic data and lm-eval task files (no torch)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qeval.demo import data

TASKS_DIR = Path(data.__file__).resolve().parent.parent / "tasks" / "demo"


def _fresh(fn):
    for f in (data.people, data.facts):
        f.cache_clear()
    return fn()


def test_facts_are_deterministic():
    a = [dict(f) for f in _fresh(data.facts)]
    b = [dict(f) for f in _fresh(data.facts)]
    assert a == b
    assert len(a) == data.N_PEOPLE * len(data.RELATIONS)


def test_facts_are_deterministic_across_processes():
    code = (
        "import json, hashlib; from qeval.demo import data; "
        "print(hashlib.sha256(json.dumps(data.task_files(), sort_keys=True).encode()).hexdigest())"
    )
    src = str(Path(data.__file__).resolve().parents[2])
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONPATH": src, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("0", "12345")
    }
    assert len(outs) == 1


def test_people_unique_and_distinct_from_answers():
    names = data.people()
    assert len(set(names)) == len(names) == data.N_PEOPLE
    values = {v for _, _, vals in data.RELATIONS for v in vals}
    for name in names:
        assert all(part not in values for part in name.split())


def test_multiple_choice_items_are_well_formed():
    docs = data.facts_docs()
    assert len(docs) >= 500
    for d in docs:
        assert len(d["choices"]) == data.N_CHOICES == len(set(d["choices"]))
        assert d["choices"][d["label"]] == d["answer"]
        assert d["answer"] in data.JOBS
    # labels spread over all positions (no trivial "always A")
    counts = [sum(d["label"] == i for d in docs) for i in range(data.N_CHOICES)]
    assert min(counts) > len(docs) / data.N_CHOICES / 2


def test_recall_items_are_well_formed():
    docs = data.recall_docs()
    assert len(docs) >= 500
    assert all(d["answer"] in data.CITIES for d in docs)
    assert len({d["question"] for d in docs}) == len(docs)


def test_every_evaluated_fact_is_trained_on():
    trained = {(p, c) for p, c in data.training_examples(2 * len(data.facts()))}
    for d in data.facts_docs() + data.recall_docs():
        assert (d["question"], f" {d['answer']}\n") in trained


def test_training_examples_deterministic_and_balanced():
    n = len(data.facts())
    a = data.training_examples(3 * n, seed=7)
    assert a == data.training_examples(3 * n, seed=7)
    assert a != data.training_examples(3 * n, seed=8)
    # shuffled epochs: every fact exactly three times
    counts: dict[tuple[str, str], int] = {}
    for ex in a:
        counts[ex] = counts.get(ex, 0) + 1
    assert set(counts.values()) == {3}
    for prompt, completion in a:
        assert not prompt.startswith("<s>") and "<s>" not in completion
        assert completion.startswith(" ") and completion.endswith("\n")


def test_calibration_texts():
    a = data.calibration_texts(64)
    assert len(a) == 64 and all(isinstance(t, str) and t for t in a)
    assert a == data.calibration_texts(64)
    assert a != data.calibration_texts(64, seed=1)
    assert data.calibration_texts(0) == []
    prompts = {f["prompt"] for f in data.facts()}
    for t in a:
        prompt, _, answer = t.rstrip("\n").rpartition(" ")
        assert prompt in prompts and t.endswith("\n")


def test_task_files_regenerate_identically(tmp_path):
    written = data.write_tasks(tmp_path)
    assert sorted(p.name for p in written) == sorted(data.task_files())
    for path in written:
        committed = TASKS_DIR / path.name
        assert committed.is_file(), f"missing committed task file {committed}"
        assert committed.read_bytes() == path.read_bytes(), path.name
    # and twice in a row gives the same bytes
    again = tmp_path / "again"
    data.write_tasks(again)
    for path in written:
        assert (again / path.name).read_bytes() == path.read_bytes()


def test_task_yaml_content():
    files = data.task_files()
    facts_yaml = files[f"{data.FACTS_TASK}.yaml"]
    recall_yaml = files[f"{data.RECALL_TASK}.yaml"]
    for y in (facts_yaml, recall_yaml):
        assert f"  - {data.GROUP}\n" in y
        assert "dataset_path: json" in y and "custom_dataset: !function utils.load" in y
        assert "num_fewshot: 0" in y
    assert "output_type: multiple_choice" in facts_yaml
    assert "output_type: generate_until" in recall_yaml and '- "\\n"' in recall_yaml
    assert re.search(r"max_gen_toks: \d+", recall_yaml)
    for name in ("facts.jsonl", "recall.jsonl"):
        rows = [json.loads(line) for line in files[name].splitlines()]
        assert len(rows) >= 500
        assert len(files[name]) < 300_000


def test_task_loader_resolves_paths_next_to_itself(tmp_path, monkeypatch):
    import datasets  # noqa: F401  (lm-eval's loader; installed by `make install`, never skipped)

    data.write_tasks(tmp_path / "tasks")
    monkeypatch.chdir(tmp_path)  # not the task directory
    ns: dict = {"__file__": str(tmp_path / "tasks" / "utils.py")}
    exec(compile(data.task_files()["utils.py"], ns["__file__"], "exec"), ns)
    ds = ns["load"](data_files={"test": "recall.jsonl"}, version=1.0)
    assert len(ds["test"]) == len(data.recall_docs())
    assert ds["test"][0]["question"] == data.recall_docs()[0]["question"]


def test_recipe_hash_is_stable_and_short(tmp_path):
    from qeval.demo import model

    h = model.recipe_hash()
    assert re.fullmatch(r"[0-9a-f]{12}", h)
    assert h == model.recipe_hash(dict(model.RECIPE))
    assert h != model.recipe_hash({**model.RECIPE, "steps": model.RECIPE["steps"] + 1})
    assert model.RECIPE["hidden_size"] % 128 == 0
    with pytest.raises(FileNotFoundError):
        model.demo_model_path(tmp_path, build=False)
