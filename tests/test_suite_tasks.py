"""Every task of every shipped suite loads with lm-eval in the evaluator's dependency set.

The evaluate stage builds its tasks through ``qeval.stages.evaluate.task_manager``; a task
whose scoring module imports a package the image lacks (``langdetect`` for
``leaderboard_ifeval``, ``math_verify`` for ``leaderboard_math_hard``) crashes the whole
stage. Here each suite task is loaded leaf by leaf (a group stops at its first subtask's
failure, so its subtasks are loaded one by one) with lm-eval's real ``TaskManager``, offline:
a dataset or metric that cannot be fetched from the Hub is expected and accepted, an
``ImportError`` is the fault this test exists for, and any other error fails too.

The loading runs in a child process with the Hub switched off, so nothing is downloaded
whatever the caller's environment says (run it as ``python -m tests.test_suite_tasks``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qeval.api.suites import SUITES
from tests.conftest import ROOT
from tests.test_images import commands, dockerfile

# What an unreachable Hub looks like: datasets' ConnectionError (OfflineModeIsEnabled) and
# evaluate's FileNotFoundError for a metric script (``code_eval``) it would fetch.
HUB_UNREACHABLE = re.compile(r"on the Hub|Hugging Face Hub|OfflineModeIsEnabled")
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # lm-eval's ifeval module downloads nltk's punkt_tab on import, on rank 0 only.
    "LOCAL_RANK": "1",
}


def suite_task_names() -> list[str]:
    return sorted({task.name for suite in SUITES.values() for task in suite.tasks})


def leaves(manager: Any, name: str) -> list[str]:
    """The individual tasks behind a task, group or tag name, as lm-eval's index knows them."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = manager.task_index[name]
    if entry.kind is Kind.TAG:
        return sorted(t for member in entry.tags for t in leaves(manager, member))
    if entry.kind is not Kind.GROUP:
        return [name]
    config = load_yaml(entry.yaml_path, resolve_func=False) if entry.yaml_path else entry.cfg
    out: list[str] = []
    for member in config.get("task", []):
        ref = member if isinstance(member, str) else member.get("task") or member.get("group")
        # An inline member (defined in the group's YAML only) loads with its group.
        out += leaves(manager, ref) if ref in manager.task_index else [name]
    return list(dict.fromkeys(out))


def classify(error: BaseException | None) -> str:
    if error is None:
        return "ok"
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    if any(isinstance(e, ImportError) for e in chain):
        return "import-error"
    if any(HUB_UNREACHABLE.search(str(e)) for e in chain):
        return "hub-unreachable"
    return "other"


def probe(names: list[str]) -> dict[str, dict[str, str]]:
    """Load every leaf of ``names``; leaf -> {suite task, outcome, error}."""
    from qeval.stages.evaluate import task_manager

    manager = task_manager([])
    results: dict[str, dict[str, str]] = {}
    for name in names:
        if name not in manager.task_index:
            results[name] = {"task": name, "outcome": "unknown-task", "error": ""}
            continue
        for leaf in leaves(manager, name):
            error: BaseException | None = None
            try:
                manager.load([leaf])
            except Exception as exc:  # classified below: only the Hub's absence passes
                error = exc
            results[leaf] = {
                "task": name,
                "outcome": classify(error),
                "error": f"{type(error).__name__}: {error}" if error else "",
            }
    return results


def run_probe(names: list[str]) -> dict[str, dict[str, str]]:
    env = {**os.environ, **OFFLINE_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "tests.test_suite_tasks", *names],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def loaded() -> dict[str, dict[str, str]]:
    return run_probe(suite_task_names())


def test_every_suite_task_loads_without_a_missing_module(loaded: dict) -> None:
    broken = {
        leaf: r["error"]
        for leaf, r in loaded.items()
        if r["outcome"] not in ("ok", "hub-unreachable")
    }
    assert not broken, "suite tasks that cannot load in the evaluator's environment:\n" + (
        "\n".join(f"  {leaf}: {error}" for leaf, error in sorted(broken.items()))
    )


def test_each_suite_task_was_loaded_leaf_by_leaf(loaded: dict) -> None:
    by_task: dict[str, list[str]] = {}
    for leaf, r in loaded.items():
        by_task.setdefault(r["task"], []).append(leaf)
    assert set(by_task) == set(suite_task_names())
    # The groups were opened: each subtask of theirs was loaded on its own.
    assert len(by_task["leaderboard_math_hard"]) == 7
    assert len(by_task["leaderboard_bbh"]) == 24
    assert len(by_task["leaderboard_musr"]) == 3
    assert len(by_task["mmlu"]) == 57
    # The offline demo tasks load completely; the others stop at their Hub download.
    assert loaded["qeval_demo_facts"]["outcome"] == "ok"
    assert loaded["leaderboard_ifeval"]["outcome"] == "hub-unreachable"


def test_the_probe_tells_a_missing_module_from_an_unreachable_hub() -> None:
    try:
        import a_module_no_image_has  # type: ignore[import-not-found]  # noqa: F401
    except ImportError as exc:
        missing: BaseException = exc
    assert classify(missing) == "import-error"
    wrapped = ImportError("Cannot import module 'utils'")
    wrapped.__cause__ = ModuleNotFoundError("No module named 'langdetect'")
    assert classify(RuntimeError("building the task failed")) == "other"
    assert classify(ConnectionError("Couldn't reach 'x/y' on the Hub (OfflineModeIsEnabled)")) == (
        "hub-unreachable"
    )
    # An ImportError anywhere in the chain wins over the Hub message.
    outer = ConnectionError("on the Hub")
    outer.__context__ = wrapped
    assert classify(outer) == "import-error"


def test_the_backends_lm_eval_models_import() -> None:
    """Backend hf imports accelerate (lm-eval's `hf` extra), vllm-server lm-eval's API
    client (its `api` extra). Backend vllm comes with the evaluator's base image and cannot
    be installed beside llm-compressor here (TESTING.md)."""
    from lm_eval.api.registry import get_model

    from qeval.stages.evaluate import LM_EVAL_MODEL, Backend

    for backend, name in LM_EVAL_MODEL.items():
        if backend != Backend.VLLM:
            assert get_model(name).__name__, backend


def test_the_images_bake_the_nltk_data_ifevals_scoring_fetches() -> None:
    """lm-eval's ifeval downloads an nltk resource on import (from GitHub, at run time, in
    the pod) unless it is found: the images that evaluate fetch it at build time."""
    spec = importlib.util.find_spec("lm_eval.tasks.ifeval.instructions_util")
    assert spec and spec.origin, "lm-eval no longer ships tasks/ifeval/instructions_util.py"
    source = Path(spec.origin).read_text()
    resources = set(re.findall(r"nltk\.download\(\s*[\"'](\w+)[\"']", source))
    assert resources, "lm-eval's ifeval no longer downloads nltk data: update this test"
    for image in ("evaluator", "client"):
        fetched: set[str] = set()
        for run in dockerfile(image).all("RUN"):
            for words in commands(run):
                if "nltk.downloader" in words:
                    args = words[words.index("nltk.downloader") + 1 :]
                    # `-d DIR` names where the data goes; the rest are resources.
                    fetched |= {
                        w for i, w in enumerate(args) if w != "-d" and args[i - 1 : i] != ["-d"]
                    }
        assert resources <= fetched, (
            f"images/{image}/Dockerfile does not fetch {resources - fetched}"
        )


def main(argv: list[str]) -> None:
    print(json.dumps(probe(argv or suite_task_names())))


if __name__ == "__main__":
    main(sys.argv[1:])
