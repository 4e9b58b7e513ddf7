"""Every stage leaves a result document, whatever happens to it."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from rich.console import Console

from qeval.local.executor import run_stage
from qeval.local.worker import Workers
from qeval.plan import Layout, Stage
from qeval.stages.envelope import StageError, StageResult, execute
from qeval.stages.models import size_on_disk
from qeval.stages.quantize import QuantizeInput


def _input(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "in.json"
    path.write_text(json.dumps(doc))
    return path


def test_expected_failure_is_recorded(tmp_path):
    def run(_):
        raise StageError("ModelNotFound", "/nope: no such directory; fix spec.model.uri")

    inp = _input(
        tmp_path,
        {
            "stage": "quantize-x",
            "name": "x",
            "model": {"uri": "/nope"},
            "scheme": "W4A16",
            "recipe": "a: 1",
            "outputDir": "/o",
        },
    )
    doc = execute("quantize", QuantizeInput, run, inp, tmp_path / "s" / "result.json")
    assert (doc.status, doc.reason, doc.stage) == ("Failed", "ModelNotFound", "quantize-x")
    assert StageResult.load(tmp_path / "s" / "result.json") == doc
    assert doc.wall_seconds is not None and "qeval" in doc.versions


def test_crash_is_recorded_with_its_traceback(tmp_path):
    def run(_):
        return {}["missing"]

    inp = _input(
        tmp_path,
        {"name": "x", "model": {"uri": "/m"}, "scheme": "s", "recipe": "a: 1", "outputDir": "/o"},
    )
    doc = execute("quantize", QuantizeInput, run, inp, tmp_path / "result.json")
    assert doc.status == "Failed" and doc.reason == "Crashed" and "KeyError" in doc.message


def test_invalid_input_is_recorded(tmp_path):
    doc = execute(
        "quantize",
        QuantizeInput,
        lambda _: None,
        _input(tmp_path, {"name": 1}),
        tmp_path / "result.json",
    )
    assert doc.reason == "InvalidInput" and "model" in doc.message


def test_a_process_that_dies_still_gets_a_result(tmp_path):
    """A stage whose process exits without writing (here: a worker refusing an unknown
    stage kind, exit 1) is recorded by the executor as ProcessDied with the log's tail."""
    layout = Layout(PurePosixPath(tmp_path), PurePosixPath(tmp_path / "models"))
    workers = Workers(tmp_path / "workers")
    stage = Stage("broken", "no-such-kind", {})
    doc = run_stage(stage, layout, Console(quiet=True), "[1/1]", workers)
    assert doc.status == "Failed" and doc.reason == "ProcessDied"
    assert "exit code 1" in doc.message and "no stage kind 'no-such-kind'" in doc.message
    assert StageResult.load(tmp_path / "stages" / "broken" / "result.json").reason == "ProcessDied"


def test_size_on_disk_counts_weights_only(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "config.json").write_text("{}")
    assert size_on_disk(tmp_path) == 100


def test_a_stage_runs_with_reproducible_math_and_keeps_what_the_user_set(tmp_path, monkeypatch):
    monkeypatch.delenv("MKL_CBWR", raising=False)
    monkeypatch.setenv("MKL_DYNAMIC", "TRUE")  # the user's choice wins
    seen = {}

    def run(_):
        import os

        seen.update(cbwr=os.environ.get("MKL_CBWR"), dynamic=os.environ.get("MKL_DYNAMIC"))
        raise StageError("Done", "looked")

    inp = _input(tmp_path, {"name": "x", "model": {"uri": "/m"}, "scheme": "W4A16",
                            "recipe": "a: 1", "outputDir": "/o"})  # fmt: skip
    execute("quantize", QuantizeInput, run, inp, tmp_path / "s" / "result.json")
    assert seen == {"cbwr": "AUTO", "dynamic": "TRUE"}


QUANTIZE_INPUT = {"name": "x", "model": {"uri": "/m"}, "scheme": "s", "recipe": "a: 1",
                  "outputDir": "/o"}  # fmt: skip


def test_a_stage_reads_an_input_of_a_newer_minor_and_refuses_another_major(tmp_path):
    """The operator of the next release may write a field this stage image does not know:
    within the major it is ignored; another major is refused before any work, saying why."""
    seen = []

    def run(inp):
        seen.append(inp)
        raise StageError("Stop", "enough")

    newer = {**QUANTIZE_INPUT, "schemaVersion": "1.4", "kvCacheScheme": "fp8"}
    doc = execute("quantize", QuantizeInput, run, _input(tmp_path, newer), tmp_path / "r.json")
    assert doc.reason == "Stop" and seen[0].output_dir == "/o"
    other = {**QUANTIZE_INPUT, "schemaVersion": "2.0"}
    doc = execute("quantize", QuantizeInput, run, _input(tmp_path, other), tmp_path / "r.json")
    assert doc.reason == "InvalidInput" and "schemaVersion 2.0" in doc.message
    assert len(seen) == 1


def test_every_document_a_stage_writes_says_its_version(tmp_path):
    doc = execute(
        "quantize",
        QuantizeInput,
        lambda _: None,
        _input(tmp_path, {"name": 1}),
        tmp_path / "r.json",
    )
    assert json.loads((tmp_path / "r.json").read_text())["schemaVersion"] == doc.schema_version
    plan_input = QuantizeInput.model_validate(QUANTIZE_INPUT).dump()
    assert plan_input["schemaVersion"] == doc.schema_version  # what the executors write
