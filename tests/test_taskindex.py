"""Which lm-eval task index a stage builds (``evaluate.task_manager``) and the preflight
reads (``taskindex.task_index``): the include folders alone when they define every name
needed (same configs, milliseconds), lm-eval's full index otherwise; each built once per
process and folder contents. Real lm-eval, real task folders."""

from __future__ import annotations

import json
import time

import pytest

from qeval.stages import evaluate
from qeval.stages.taskindex import complete, summary, task_index

DEMO = ["qeval_demo_facts", "qeval_demo_recall"]
TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files: {{test: {data}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_target: 0
doc_to_choice: ["a", "b"]
metric_list: [{{metric: acc}}]
"""


@pytest.fixture(scope="module")
def full():
    return evaluate.task_manager([])


def test_qevals_own_tasks_need_no_index_of_lm_evals_builtins(full):
    t0 = time.monotonic()
    focused = evaluate.task_manager([], DEMO)
    assert time.monotonic() - t0 < 5  # lm-eval's full index takes ~6-15 s here
    assert set(DEMO) <= set(focused.all_tasks) and "arc_easy" not in focused.all_tasks
    for name in DEMO:  # exactly the configs the full index has for them
        assert focused.task_index[name].cfg == full.task_index[name].cfg
        assert focused.task_index[name].yaml_path == full.task_index[name].yaml_path


def test_a_builtin_task_gets_the_full_index(full):
    manager = evaluate.task_manager([], [*DEMO, "arc_easy"])
    assert manager is full  # built once in this process
    assert "arc_easy" in manager.all_tasks


def test_a_local_group_of_a_builtin_task_gets_the_full_index(tmp_path, full):
    (tmp_path / "g.yaml").write_text("group: my_group\ntask: [arc_easy]\n")
    index = summary(evaluate.include_task_manager([str(tmp_path)]))
    assert "my_group" in index and not complete(index, "my_group")  # arc_easy is built in
    manager = evaluate.task_manager([str(tmp_path)], ["my_group"])
    assert "arc_easy" in manager.all_tasks and "my_group" in manager.all_tasks


def test_a_changed_task_folder_is_indexed_again(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"q": "x"}) + "\n")
    task = tmp_path / "t.yaml"
    task.write_text(TASK.format(name="mine_a", data=data))
    first = evaluate.task_manager([str(tmp_path)], ["mine_a"])
    assert evaluate.task_manager([str(tmp_path)], ["mine_a"]) is first  # kept
    task.write_text(TASK.format(name="mine_b", data=data))
    second = evaluate.task_manager([str(tmp_path)], ["mine_b"])
    assert second is not first and "mine_b" in second.all_tasks
    assert "mine_a" not in second.all_tasks


def test_the_preflight_index_is_the_include_folders_or_the_full_one_remembered(
    tmp_path, monkeypatch
):
    focused = task_index([], tmp_path, tuple(DEMO))
    assert set(DEMO) <= set(focused) and "arc_easy" not in focused
    index = task_index([], tmp_path, ("arc_easy",))
    assert index["arc_easy"].kind == "task" and set(DEMO) <= set(index)
    assert len(list((tmp_path / "lm-eval-tasks").glob("*.index.json"))) == 2

    def no_index(*args, **kwargs):
        raise AssertionError("an index was built again")

    monkeypatch.setattr(evaluate, "_task_manager", no_index)
    # A later run reads both back from the cache, without building (or importing) lm-eval's.
    assert task_index([], tmp_path, tuple(DEMO)) == focused
    assert task_index([], tmp_path, ("arc_easy",)) == index
