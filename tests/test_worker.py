"""The warm stage workers of ``qeval run`` (``qeval.local.worker``), as real processes: a
worker runs its kind's stages one after another, each with its own result document and
log; a stage that takes its worker down fails alone and the next one gets a fresh worker;
what a stage changes in the process does not reach the next stage."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from qeval.local.worker import Workers, isolated
from qeval.reasons import INVALID_INPUT
from qeval.stages.envelope import StageResult, StageStatus


def stage_files(root: Path, name: str, document: object) -> tuple[Path, Path, Path]:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "input.json").write_text(json.dumps(document))
    return folder / "input.json", folder / "result.json", folder / "log.txt"


@pytest.fixture
def workers(tmp_path):
    pool = Workers(tmp_path / "workers")
    yield pool
    pool.stop_all()


def test_one_worker_runs_its_kinds_stages_each_with_its_own_document_and_log(tmp_path, workers):
    first = stage_files(tmp_path, "first", {"stage": "first"})  # not an AggregateInput
    second = stage_files(tmp_path, "second", {"stage": "second"})
    assert workers.run("aggregate", *first) is None
    pid = workers.pid("aggregate")
    assert workers.run("aggregate", *second) is None
    assert workers.pid("aggregate") == pid  # the same warm process
    for (_, result, log), name in ((first, "first"), (second, "second")):
        doc = StageResult.load(result)
        assert doc.stage == name and doc.status == StageStatus.FAILED
        assert doc.reason == INVALID_INPUT and doc.versions and doc.wall_seconds is not None
        text = log.read_text()
        assert f"{name}: Failed ({INVALID_INPUT})" in text  # the stage's own line, in its log
        assert ({"first", "second"} - {name}).pop() + ":" not in text


def test_a_stage_that_takes_its_worker_down_fails_alone(tmp_path, workers):
    """The worker is killed while the stage runs (as the OOM killer would): that stage has
    no document and its worker's exit status; the next stage gets a fresh worker."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    os.mkfifo(blocked / "input.json")  # the stage waits on its input until it is killed
    victim = workers.pid("aggregate")

    def kill() -> None:
        if workers.live["aggregate"].proc.poll() is None:
            os.kill(victim, signal.SIGKILL)

    died = workers.run(
        "aggregate", blocked / "input.json", blocked / "result.json", blocked / "log.txt", kill
    )
    assert died is not None and died.returncode == -signal.SIGKILL
    assert not (blocked / "result.json").exists()
    assert "aggregate" not in workers.live
    _, result, _ = nxt = stage_files(tmp_path, "next", {"stage": "next"})
    assert workers.run("aggregate", *nxt) is None
    assert workers.pid("aggregate") != victim
    assert StageResult.load(result).reason == INVALID_INPUT


def test_ctrl_c_while_a_stage_runs_ends_its_worker(tmp_path, workers):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    os.mkfifo(blocked / "input.json")

    def interrupt() -> None:
        raise KeyboardInterrupt

    worker_pid = workers.pid("aggregate")
    with pytest.raises(KeyboardInterrupt):
        workers.run(
            "aggregate",
            blocked / "input.json",
            blocked / "result.json",
            blocked / "log.txt",
            interrupt,
        )
    assert "aggregate" not in workers.live
    with pytest.raises(ProcessLookupError):  # gone, and reaped
        os.kill(worker_pid, 0)


def test_what_a_stage_changes_in_the_process_is_put_back(tmp_path):
    torch = pytest.importorskip("torch")  # installed with the project: never skipped here
    cwd, threads = os.getcwd(), torch.get_num_threads()
    os.environ.pop("QEVAL_TEST_LEAK", None)
    with isolated():
        os.environ["QEVAL_TEST_LEAK"] = "1"  # e.g. HF_ALLOW_CODE_EVAL
        os.chdir(tmp_path)
        torch.set_num_threads(1)  # e.g. the demo model's training
    assert "QEVAL_TEST_LEAK" not in os.environ
    assert os.getcwd() == cwd and torch.get_num_threads() == threads
