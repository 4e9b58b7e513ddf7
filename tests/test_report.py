"""The report: files written (Markdown, HTML with embedded PNGs), the recommendation follows
the numbers, ``qeval report`` on a run folder, and the aggregate stage building the status
and the report from result documents alone."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from qeval.api.evalrun import EvalRun
from qeval.api.evalrun_status import (
    CandidateSummary,
    EvalRunStatus,
    JudgedResult,
    JudgedScore,
    Recovery,
    Score,
)
from qeval.cli import main
from qeval.local.console import judged_lines, print_summary
from qeval.report import PerfPoint, Run, load_run, write_report
from qeval.report.plots import judged_chart
from qeval.report.recommend import latency_pick, recommend, throughput_pick
from qeval.results.summary import ModelOutcome, summarize
from qeval.stages import aggregate
from qeval.stages.envelope import StageResult, StageStatus

PNG = b"\x89PNG\r\n\x1a\n"
MIB = 2**20
# name, scheme, size (MiB), score on t1 and t2, recovery, ci half-width, verdict
MODELS = [
    ("fp8", "W8A8-FP8", 8, 0.80, 0.60, 1.00, 0.01, "Pass"),
    ("int8", "W8A8-INT8", 8, 0.79, 0.60, 0.99, 0.01, "Pass"),
    ("w4a16", "W4A16", 4.5, 0.70, 0.50, 0.86, 0.02, "Degraded"),
    ("w2a16", "W2A16", 2.5, 0.40, 0.30, 0.50, 0.03, "Degraded"),
]


def status(verdicts: dict[str, str] | None = None) -> EvalRunStatus:
    scores = [
        Score(model="bf16", task=t, metric="acc", value=v, stderr=0.01, primary=True)
        for t, v in (("t1", 0.80), ("t2", 0.60))
    ]
    recovery, candidates = [], []
    for name, scheme, mib, s1, s2, rec, half, verdict in MODELS:
        verdict = (verdicts or {}).get(name, verdict)
        for task, value in (("t1", s1), ("t2", s2)):
            scores.append(
                Score(model=name, task=task, metric="acc", value=value, stderr=0.01, primary=True)
            )
            recovery.append(
                Recovery(
                    model=name,
                    task=task,
                    metric="acc",
                    value=rec,
                    stderr=half / 2,
                    ci_low=rec - half,
                    ci_high=rec + half,
                    test="mcnemar",
                    p_value=0.5 if rec > 0.95 else 1e-5,
                    significant=rec < 0.95,
                )
            )
        candidates.append(
            CandidateSummary(
                name=name,
                scheme=scheme,
                size_bytes=int(mib * MIB),
                compression_ratio=16 / mib,
                mean_recovery=rec,
                mean_recovery_stderr=half / 2,
                mean_recovery_ci_low=rec - half,
                mean_recovery_ci_high=rec + half,
                verdict=verdict,
            )
        )
    return EvalRunStatus(
        phase="Succeeded",
        baseline_size_bytes=16 * MIB,
        scores=scores,
        recovery=recovery,
        candidates=candidates,
        cached=["bf16/t1", "fp8/t1"],
    )


def test_report_files_and_contents(tmp_path):
    run = Run(name="study", baseline="bf16", status=status())
    paths = write_report(run, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["recovery.png", "report.html", "report.md", "size.png"]
    for png in ("recovery.png", "size.png"):
        assert (tmp_path / png).read_bytes().startswith(PNG)
    md = (tmp_path / "report.md").read_text()
    assert "| fp8 | W8A8-FP8 | 8.0 MiB (2.0x) |" in md and "![Recovery per task" in md
    assert (
        "p=1e-05\\*" in md and "Degraded" in md and "† reused from the result cache (2 of 10" in md
    )
    assert "The serving stage did not run" in md
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page


def test_recommendation_without_serving_measurements_says_where_it_disagrees():
    run = Run(name="study", baseline="bf16", status=status())
    latency = latency_pick(run)
    # W4A16 is Degraded here, so the smallest passing candidate is a W8A8 one.
    assert latency.basis == "size" and latency.model in ("fp8", "int8") and not latency.agrees
    assert "differs from the studies' advice (W4A16)" in latency.text
    assert "w4a16 (W4A16) is Degraded" in latency.text
    throughput = throughput_pick(run)
    assert throughput.model is None and "not measured" in throughput.text
    assert "fp8 (W8A8-FP8" in throughput.text
    notes = recommend(run)[2:]
    assert any("Unlike in the studies" in n and "w4a16" in n for n in notes)


def test_recommendation_follows_measured_latency_and_throughput():
    perf = (
        PerfPoint("bf16", "synchronous", 2.0, 100.0),
        PerfPoint("fp8", "synchronous", 1.4, 140.0),
        PerfPoint("w4a16", "synchronous", 1.0, 200.0),
        PerfPoint("bf16", "throughput", 30.0, 4000.0),
        PerfPoint("fp8", "throughput", 20.0, 7000.0),
        PerfPoint("w4a16", "throughput", 25.0, 5000.0),
    )
    run = Run(name="s", baseline="bf16", status=status({"w4a16": "Pass"}), performance=perf)
    latency, throughput = latency_pick(run), throughput_pick(run)
    assert (latency.model, latency.basis, latency.agrees) == ("w4a16", "measured", True)
    assert "2.00x the baseline's speed" in latency.text
    assert (throughput.model, throughput.agrees) == ("fp8", True)
    # The same numbers with W4A16 faster under load too: the measurements disagree.
    faster = perf[:-1] + (PerfPoint("w4a16", "throughput", 10.0, 9000.0),)
    run = Run(name="s", baseline="bf16", status=status({"w4a16": "Pass"}), performance=faster)
    assert throughput_pick(run).model == "w4a16" and not throughput_pick(run).agrees
    assert "differs from the studies' advice (W8A8)" in throughput_pick(run).text


def test_performance_figure_when_serving_ran(tmp_path):
    perf = (PerfPoint("bf16", "synchronous", 2.0, 100.0), PerfPoint("fp8", "throughput", 9, 999))
    paths = write_report(
        Run(name="s", baseline="bf16", status=status(), performance=perf), tmp_path
    )
    assert (tmp_path / "performance.png").read_bytes().startswith(PNG)
    assert tmp_path / "performance.png" in paths


def test_qeval_report_on_a_run_folder(tmp_path, capsys):
    obj = {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "study"},
        "spec": {"baseline": {"name": "bf16"}, "recoveryThreshold": 0.9},
        "status": {
            **status().dump(),
            "performance": [
                {
                    "model": "fp8",
                    "scenario": "synchronous",
                    "latencySeconds": 1.0,
                    "outputTokensPerSecond": 50.0,
                }
            ],
        },
    }
    (tmp_path / "objects.yaml").write_text(yaml.safe_dump_all([obj]))
    assert main(["report", str(tmp_path)]) == 0
    assert "report.html" in capsys.readouterr().out
    run = load_run(tmp_path)
    assert run.threshold == 0.9 and run.performance[0].model == "fp8"
    assert (tmp_path / "report" / "performance.png").is_file()
    (tmp_path / "objects.yaml").unlink()
    (tmp_path / "status.json").write_text(json.dumps(status().dump()))
    assert load_run(tmp_path).baseline == "bf16"  # inferred from the scores


# --- the aggregate stage: from result documents alone ---------------------------------


def _evaluation(root: Path, model: str, answers: list[int]) -> Path:
    """An evaluate stage's result document with lm-eval's results JSON and samples."""
    stage = root / f"evaluate-{model}"
    (stage / "samples").mkdir(parents=True)
    value = sum(answers) / len(answers)
    (stage / "results.json").write_text(
        json.dumps({"results": {"t": {"acc,none": value}}, "group_subtasks": {}})
    )
    with (stage / "samples" / "t.jsonl").open("w") as f:
        for i, a in enumerate(answers):
            f.write(json.dumps({"doc_id": i, "filter": "none", "acc": float(a)}) + "\n")
    result = {
        "modelName": model,
        "backend": "hf",
        "harnessVersion": "0.4.13",
        "scores": [
            Score(
                model=model, task="t", metric="acc", value=value, stderr=0.01, primary=True
            ).dump()
        ],
        "modelSizeBytes": 1000 if model == "base" else 250,
        "resultsPath": str(stage / "results.json"),
        "samplesDir": str(stage / "samples"),
        "cachedTasks": ["t"] if model == "base" else [],
    }
    doc = StageResult(
        stage=stage.name, kind="evaluate", status=StageStatus.SUCCEEDED, result=result
    )
    doc.write(stage / "result.json")
    return stage / "result.json"


def test_aggregate_from_documents_with_paired_samples_and_report(tmp_path):
    base = [1] * 180 + [0] * 20
    worse = [1] * 140 + [0] * 60  # loses 40 answers the baseline had
    inp = aggregate.AggregateInput(
        baseline=aggregate.ModelResults(
            name="base", evaluate=str(_evaluation(tmp_path, "base", base))
        ),
        candidates=[
            aggregate.ModelResults(
                name="q", scheme="W4A16", evaluate=str(_evaluation(tmp_path, "q", worse))
            ),
            aggregate.ModelResults(name="gone", evaluate=str(tmp_path / "nothing" / "result.json")),
        ],
        results_location=str(tmp_path),
        run_name="r",
        report_dir=str(tmp_path / "report"),
    )
    status = aggregate.run(inp)
    (rec,) = status.recovery
    assert rec.test == "mcnemar" and rec.significant and rec.p_value < 1e-9
    assert rec.value == 0.7 / 0.9 and rec.ci_high < 0.85
    assert status.candidates[0].verdict == "Degraded" and status.cached == ["base/t"]
    assert [f.reason for f in status.failures] == ["NoResult"]
    assert (tmp_path / "report" / "report.md").is_file()


# --- differences: task metrics without a recovery ratio, shown with their interval ------


def _signed_metric_run() -> tuple[EvalRun, EvalRunStatus]:
    """cola's Matthews correlation at chance for the baseline (no ratio: a difference) next
    to arc (a ratio), summarized as the aggregate stage does."""

    def score(model: str, task: str, metric: str, value: float, stderr: float) -> Score:
        return Score(
            model=model, task=task, metric=metric, value=value, stderr=stderr, primary=True
        )

    base = ModelOutcome(
        "base",
        scores=(
            score("base", "cola", "mcc", -0.00054, 0.031),
            score("base", "arc", "acc", 0.8, 0.01),
        ),
    )
    cand = ModelOutcome(
        "w4",
        scores=(score("w4", "cola", "mcc", 0.157, 0.03), score("w4", "arc", "acc", 0.79, 0.01)),
    )
    status = summarize(base, [cand])
    run = EvalRun.model_validate(
        {
            "apiVersion": "qeval.dev/v1alpha1",
            "kind": "EvalRun",
            "metadata": {"name": "study"},
            "spec": {
                "baseline": {"name": "base", "model": {"uri": "demo://tiny-llama"}},
                "candidates": [{"name": "w4", "model": {"uri": "demo://tiny-llama"}}],
                "tasks": [{"name": "cola"}, {"name": "arc"}],
            },
        }
    )
    return run, status


def _numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"[-+]?\d+\.\d+", text)]


def test_the_report_shows_a_difference_where_a_ratio_is_undefined(tmp_path):
    run, status = _signed_metric_run()
    (diff,) = status.differences
    write_report(Run(name="study", baseline="base", status=status), tmp_path)
    md = (tmp_path / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| w4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    headers = next(line for line in md.splitlines() if line.startswith("| model |"))
    cola = [h.strip() for h in headers.strip("|").split("|")].index("cola (mcc)")
    shown = _numbers(cells[cola + 1])  # the recovery column beside cola's score
    assert shown == pytest.approx([diff.value, diff.ci_low, diff.ci_high], abs=5e-4)
    assert diff.reason in md and diff.reason in (tmp_path / "report.html").read_text()


def test_the_console_table_shows_a_difference_where_a_ratio_is_undefined(tmp_path):
    run, status = _signed_metric_run()
    (diff,) = status.differences
    console = Console(record=True, width=250)
    print_summary(console, run, status, tmp_path)
    out = console.export_text()
    row = next(line for line in out.splitlines() if line.lstrip("│ ").startswith("w4 "))
    cells = [c.strip() for c in row.strip("│").split("│")]
    # model, scheme, size, then per task its score and the recovery column; cola first
    assert _numbers(cells[4]) == pytest.approx([diff.value, diff.ci_low, diff.ci_high], abs=5e-4)
    assert diff.reason in out.replace("\n", " ")


# --- judged evaluations: an LLM judge against the baseline --------------------------------


def judged() -> list[JudgedResult]:
    """A pairwise set judged in both orders (80 prompts, 160 judgements per candidate) and a
    single-answer set, with what each cost."""

    def pairwise(
        model: str, wlt: tuple[int, int, int], *numbers: float, **rest: Any
    ) -> JudgedScore:
        win, win_lo, win_hi, rec, rec_lo, rec_hi, bias = numbers
        wins, ties, losses = wlt
        return JudgedScore(
            model=model,
            judgements=wins + ties + losses,
            wins=wins,
            ties=ties,
            losses=losses,
            win_rate=win,
            win_rate_ci_low=win_lo,
            win_rate_ci_high=win_hi,
            recovery=rec,
            recovery_ci_low=rec_lo,
            recovery_ci_high=rec_hi,
            position_bias=bias,
            **rest,
        )

    mt_bench = JudgedResult(
        name="mt-bench",
        kind="pairwise",
        judge="Qwen/Qwen2.5-72B-Instruct",
        prompts=80,
        prompt_set="mt-bench",
        template="3f9a0c1d2e4b",
        swapped=True,
        judge_requests=648,
        judge_prompt_tokens=1_234_567,
        judge_completion_tokens=98_765,
        judge_seconds=754.2,
        answer_tokens=81_920,
        answer_seconds=185.0,
        reused_answers=80,
        scores=[
            pairwise(
                "fp8",
                (70, 26, 63),
                0.519,
                0.476,
                0.562,
                1.038,
                0.952,
                1.124,
                0.113,
                prompts=80,
                unparseable=1,
                verdict="Pass",
            ),
            pairwise(
                "w4a16",
                (57, 31, 70),
                0.459,
                0.401,
                0.517,
                0.918,
                0.802,
                1.034,
                0.138,
                prompts=80,
                unparseable=2,
                verdict="Inconclusive",
            ),
            pairwise(
                "w2a16",
                (21, 11, 121),
                0.166,
                0.124,
                0.211,
                0.332,
                0.248,
                0.422,
                0.2,
                prompts=79,
                unparseable=5,
                unjudged=1,
                verdict="Degraded",
            ),
        ],
    )
    helpful = JudgedResult(
        name="helpfulness",
        kind="single",
        judge="judge at http://judge.ml:8000/v1",
        prompts=80,
        prompt_set="prompts/helpfulness.jsonl",
        template="a1b2c3d4e5f6",
        judge_requests=400,
        judge_prompt_tokens=456_789,
        judge_completion_tokens=23_456,
        judge_seconds=212.5,
        answer_tokens=40_960,
        answer_seconds=95.0,
        scores=[
            JudgedScore(
                model="fp8",
                prompts=80,
                judgements=160,
                score=7.71,
                baseline_score=7.74,
                recovery=0.996,
                recovery_ci_low=0.962,
                recovery_ci_high=1.031,
                verdict="Pass",
                cached=True,
            ),
            JudgedScore(
                model="w4a16",
                prompts=80,
                judgements=157,
                unparseable=3,
                score=7.12,
                baseline_score=7.74,
                recovery=0.920,
                recovery_ci_low=0.871,
                recovery_ci_high=0.969,
                verdict="Inconclusive",
            ),
        ],
    )
    return [mt_bench, helpful]


def _section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables in ``text``: rows of cells (the header row first)."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append([c.strip() for c in line.strip("|").split(" | ")])
        previous = line
    return tables


def test_the_report_shows_judged_evaluations_their_figure_and_cost(tmp_path):
    judged_status = status().model_copy(update={"judged": judged()})
    paths = write_report(Run(name="study", baseline="bf16", status=judged_status), tmp_path)
    assert tmp_path / "judged.png" in paths
    assert (tmp_path / "judged.png").read_bytes().startswith(PNG)
    md = (tmp_path / "report.md").read_text()
    section = _section(md, "Judged evaluations")
    assert "recovery threshold 95.0 %" in section
    assert "![Judged recovery per set](judged.png)" in section
    assert "mt-bench: pairwise, judge Qwen/Qwen2.5-72B-Instruct, 80 prompts of mt-bench; " in (
        section
    )
    assert "helpfulness: single, judge judge at http://judge.ml:8000/v1, 80 prompts of " in (
        section
    )
    pairwise, single, cost = _tables(section)
    assert pairwise == [
        ["model", "prompts", "wins / ties / losses", "win rate [95 % CI]", "recovery [95 % CI]"]
        + ["position bias", "unparseable", "unjudged", "verdict"],
        ["fp8", "80", "70 / 26 / 63", "51.9 % [47.6, 56.2]", "103.8 % [95.2, 112.4]"]
        + ["11.3 %", "1", "0", "Pass"],
        ["w4a16", "80", "57 / 31 / 70", "45.9 % [40.1, 51.7]", "91.8 % [80.2, 103.4]"]
        + ["13.8 %", "2", "0", "Inconclusive"],
        ["w2a16", "79", "21 / 11 / 121", "16.6 % [12.4, 21.1]", "33.2 % [24.8, 42.2]"]
        + ["20.0 %", "5", "1", "Degraded"],
    ]
    assert single == [
        ["model", "prompts", "score / baseline (1-10)", "recovery [95 % CI]", "unparseable"]
        + ["unjudged", "verdict"],
        ["fp8†", "80", "7.71 / 7.74", "99.6 % [96.2, 103.1]", "0", "0", "Pass"],
        ["w4a16", "80", "7.12 / 7.74", "92.0 % [87.1, 96.9]", "3", "0", "Inconclusive"],
    ]
    assert cost[1:] == [
        ["mt-bench", "648", "1,234,567 + 98,765", "12 min 34 s", "81,920", "3 min 05 s", "80"],
        ["helpfulness", "400", "456,789 + 23,456", "3 min 32 s", "40,960", "1 min 35 s", "0"],
    ]
    # Summed over both sets: 754.2 + 212.5 s of judging, 185 + 95 s of answering.
    assert (
        "Cost: 1,048 judge requests (retries included) reading 1,691,356 prompt tokens and "
        "writing 122,221 completion tokens in 16 min 07 s of judging; the models wrote "
        "122,880 answer tokens in 4 min 40 s, and 80 answers were reused from the similarity "
        "stage's generations." in section
    )
    assert "† judgements taken from the result cache" in section
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<h2>Judged evaluations</h2>" in page
    assert "<td>91.8 % [80.2, 103.4]</td>" in page


def test_no_judged_evaluations_no_section_and_no_figure(tmp_path):
    run = Run(
        name="study", baseline="bf16", status=status().model_copy(update={"judged": judged()})
    )
    write_report(run, tmp_path)
    assert (tmp_path / "judged.png").is_file()
    paths = write_report(Run(name="study", baseline="bf16", status=status()), tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "Judged" not in md and "judged" not in md
    assert not (tmp_path / "judged.png").exists()  # the earlier report's, gone
    assert tmp_path / "judged.png" not in paths


def test_the_judged_figure_needs_a_recovery(tmp_path):
    (mt_bench, _) = judged()
    unscored = mt_bench.model_copy(
        update={"scores": [s.model_copy(update={"recovery": None}) for s in mt_bench.scores]}
    )
    run = Run(name="s", baseline="bf16", status=status().model_copy(update={"judged": [unscored]}))
    assert judged_chart(run, tmp_path / "judged.png") is None
    assert not (tmp_path / "judged.png").exists()


def test_the_console_prints_each_candidates_judged_recovery(tmp_path):
    run, signed = _signed_metric_run()
    signed.judged = judged()
    assert judged_lines(signed)[1:3] == [
        "judged mt-bench (pairwise, judge Qwen/Qwen2.5-72B-Instruct): w4a16 recovery 91.8 % "
        "[80.2, 103.4], Inconclusive",
        "judged mt-bench (pairwise, judge Qwen/Qwen2.5-72B-Instruct): w2a16 recovery 33.2 % "
        "[24.8, 42.2], Degraded",
    ]
    assert len(judged_lines(signed)) == 5
    console = Console(record=True, width=250)
    print_summary(console, run, signed, tmp_path)
    out = console.export_text()
    assert (
        "judged helpfulness (single, judge judge at http://judge.ml:8000/v1): fp8 recovery "
        "99.6 % [96.2, 103.1], Pass" in out
    )
    assert not judged_lines(status())
