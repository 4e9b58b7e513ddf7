"""A study as large as the studies ran, without running a model: the stage documents the
aggregate reads, synthesized in the layout lm-eval 0.4.13 and qeval's stages write them.

For each model: lm-eval's results JSON (tasks, groups with ``group_subtasks``, ``configs``,
``n-shot``, ``higher_is_better``) and per-sample logs for every leaf task, from which the
evaluate stage's own parser (``qeval.results.lmeval``) makes the scores; a benchmark result
with one point per scenario; one similarity result. Used by tests/test_size.py and
benchmarks/size_benchmark.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qeval.api.evalrun import EvalRunSpec, Task
from qeval.api.evalrun_status import Percentiles, PerformancePoint, SimilarityScore
from qeval.api.suites import BBH_CHOICES, MUSR_CHOICES
from qeval.results.lmeval import parse_scores, primary_metrics
from qeval.stages.aggregate import AggregateInput, ModelResults
from qeval.stages.envelope import StageResult, StageStatus

# lm-eval 0.4.13's MMLU: the group, its four categories and their subjects.
MMLU = {
    "stem": "abstract_algebra anatomy astronomy college_biology college_chemistry "
    "college_computer_science college_mathematics college_physics computer_security "
    "conceptual_physics electrical_engineering elementary_mathematics high_school_biology "
    "high_school_chemistry high_school_computer_science high_school_mathematics "
    "high_school_physics high_school_statistics machine_learning",
    "other": "business_ethics clinical_knowledge college_medicine global_facts human_aging "
    "management marketing medical_genetics miscellaneous nutrition professional_accounting "
    "professional_medicine virology",
    "social_sciences": "econometrics high_school_geography high_school_government_and_politics "
    "high_school_macroeconomics high_school_microeconomics high_school_psychology "
    "human_sexuality professional_psychology public_relations security_studies sociology "
    "us_foreign_policy",
    "humanities": "formal_logic high_school_european_history high_school_us_history "
    "high_school_world_history international_law jurisprudence logical_fallacies "
    "moral_disputes moral_scenarios philosophy prehistory professional_law world_religions",
}
MATH_HARD = (
    "algebra counting_and_prob geometry intermediate_algebra num_theory prealgebra precalculus"
)


@dataclass(frozen=True)
class Leaf:
    """A task lm-eval scores item by item: its metrics (``metric,filter``)."""

    metrics: tuple[str, ...]


@dataclass(frozen=True)
class Group:
    """A group: its members and the metrics it aggregates (none: judged by its members)."""

    members: tuple[str, ...]
    metrics: tuple[str, ...] = ()


@dataclass
class Structure:
    """The tasks lm-eval reports for a list of requested tasks."""

    leaves: dict[str, Leaf] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)

    def group(self, name: str, members: dict[str, Leaf], metrics: tuple[str, ...]) -> None:
        self.leaves.update(members)
        self.groups[name] = Group(tuple(members), metrics)


def structure(tasks: list[Task]) -> Structure:
    """The lm-eval 0.4.13 layout of the openllm-v1 and v2 tasks (a task qeval has no table
    for is one leaf with an acc and an acc_norm)."""
    s = Structure()
    acc, norm = ("acc,none",), ("acc_norm,none",)
    for t in tasks:
        if t.name == "mmlu":
            for cat, subjects in MMLU.items():
                leaves = {f"mmlu_{n}": Leaf(acc) for n in subjects.split()}
                s.group(f"mmlu_{cat}", leaves, acc)
            s.groups["mmlu"] = Group(tuple(f"mmlu_{c}" for c in MMLU), acc)
        elif t.name == "gsm8k":
            s.leaves[t.name] = Leaf(("exact_match,strict-match", "exact_match,flexible-extract"))
        elif t.name == "leaderboard_bbh":
            s.group(t.name, {f"{t.name}_{n}": Leaf(norm) for n in BBH_CHOICES}, norm)
        elif t.name == "leaderboard_musr":
            s.group(t.name, {f"{t.name}_{n}": Leaf(norm) for n in MUSR_CHOICES}, norm)
        elif t.name == "leaderboard_gpqa":
            names = ("diamond", "extended", "main")
            s.group(t.name, {f"{t.name}_{n}": Leaf(norm) for n in names}, norm)
        elif t.name == "leaderboard_math_hard":
            leaves = {
                f"leaderboard_math_{n}_hard": Leaf(("exact_match,none",)) for n in MATH_HARD.split()
            }
            s.group(t.name, leaves, ("exact_match,none",))
        elif t.name == "leaderboard_ifeval":
            s.leaves[t.name] = Leaf(
                tuple(
                    f"{m},none"
                    for m in (
                        "prompt_level_strict_acc",
                        "inst_level_strict_acc",
                        "prompt_level_loose_acc",
                        "inst_level_loose_acc",
                    )
                )
            )
        elif t.name == "leaderboard_mmlu_pro":
            s.leaves[t.name] = Leaf(acc)
        elif t.name.startswith("humaneval"):
            s.leaves[t.name] = Leaf(("pass@1,create_test",))
        elif t.name in ("truthfulqa_mc2", "winogrande") or t.name.startswith("qeval_demo"):
            s.leaves[t.name] = Leaf(("exact_match,none",) if "recall" in t.name else acc)
        else:
            s.leaves[t.name] = Leaf(("acc,none", "acc_norm,none"))
    return s


def leaves_of(s: Structure, name: str) -> list[str]:
    if name not in s.groups:
        return [name]
    return [leaf for m in s.groups[name].members for leaf in leaves_of(s, m)]


def _stderr(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def model_results(
    s: Structure,
    tasks: list[Task],
    rng: np.random.Generator,
    truth: dict[str, np.ndarray],
    loss: float,
    items: int,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """One model's lm-eval results document and per-sample logs: each item's 0/1 answer is
    the baseline's (``truth``), flipped to wrong with probability ``loss``."""
    results: dict[str, Any] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    values: dict[tuple[str, str], np.ndarray] = {}
    for name, leaf in s.leaves.items():
        lines: list[dict[str, Any]] = []
        entry: dict[str, Any] = {"alias": name}
        for key in leaf.metrics:
            metric, filt = key.split(",")
            base = truth.setdefault(f"{name}/{key}", (rng.random(items) < 0.7).astype(float))
            v = np.where(rng.random(items) < loss, 0.0, base)
            values[(name, key)] = v
            entry[key] = float(v.mean())
            entry[f"{metric}_stderr,{filt}"] = _stderr(v)
            for i, x in enumerate(v):
                lines.append({"doc_id": i, "filter": filt, metric: float(x)})
        results[name] = entry
        samples[name] = lines
    for name in reversed(list(s.groups)):  # members before their group
        group = s.groups[name]
        entry = {"alias": name}
        for key in group.metrics:
            metric, filt = key.split(",")
            v = np.concatenate([values[(leaf, key)] for leaf in leaves_of(s, name)])
            values[(name, key)] = v
            entry[key], entry[f"{metric}_stderr,{filt}"] = float(v.mean()), _stderr(v)
        results[name] = entry
    shots = {t.name: t.num_fewshot or 0 for t in tasks}
    configs = {
        name: {"metric_list": [{"metric": k.split(",")[0]} for k in leaf.metrics]}
        for name, leaf in s.leaves.items()
    }
    doc = {
        "results": results,
        "groups": {n: results[n] for n in s.groups},
        "group_subtasks": {n: list(g.members) for n, g in s.groups.items()},
        "configs": configs,
        "n-shot": {n: shots.get(n, 0) for n in results},
        "n-samples": {n: {"original": items, "effective": items} for n in s.leaves},
        "higher_is_better": {
            n: {k.split(",")[0]: True for k in e if "," in k and "_stderr" not in k}
            for n, e in results.items()
        },
        "lm_eval_version": "0.4.13",
    }
    return doc, samples


def long_name(prefix: str, i: int, length: int = 40) -> str:
    """A DNS label of exactly ``length`` characters (the API's longest model name)."""
    tail = f"-{i:02d}"
    return (prefix + "-" + "x" * length)[: length - len(tail)] + tail


def point(model: str, scenario: str, rng: np.random.Generator) -> PerformancePoint:
    def pct() -> Percentiles:
        p50 = float(rng.uniform(0.01, 1))
        return Percentiles(p50=p50, p90=p50 * 1.7, p99=p50 * 2.9)

    return PerformancePoint(
        model=model,
        scenario=scenario,
        backend="vllm",
        requests=128,
        failed_requests=0,
        latency_seconds=float(rng.uniform(1, 10)),
        output_tokens_per_second=float(rng.uniform(100, 5000)),
        requests_per_second=float(rng.uniform(1, 50)),
        ttft_seconds=pct(),
        itl_seconds=pct(),
        e2e_seconds=pct(),
    )


def _write(path: Path, stage: str, kind: str, result: dict[str, Any]) -> str:
    StageResult(stage=stage, kind=kind, status=StageStatus.SUCCEEDED, result=result).write(path)
    return str(path)


def study_spec(
    candidates: int,
    suites: tuple[str, ...] = ("openllm-v1", "openllm-v2"),
    tasks: int = 0,
    scenarios: int = 16,
    similarity: bool = True,
) -> EvalRunSpec:
    """An EvalRun spec of this many candidates, suites, listed tasks (besides the suites')
    and load scenarios, every name as long as the API allows (40 characters)."""
    uri = {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"}
    spec: dict[str, Any] = {
        "baseline": {"name": long_name("baseline", 0), "model": uri},
        "candidates": [
            {"name": long_name("candidate", i), "model": uri, "scheme": SCHEMES[i % 3]}
            for i in range(1, candidates + 1)
        ],
        "suites": list(suites),
        "tasks": [{"name": long_name("task", i, 128).replace("-", "_")} for i in range(tasks)],
        "allowCodeExecution": "code" in suites,
        "backend": "vllm",
    }
    if scenarios:
        spec["performance"] = {
            "scenarios": [
                {"name": long_name("scenario", i), "kind": "synchronous"} for i in range(scenarios)
            ]
        }
    if similarity:
        spec["similarity"] = {}
    return EvalRunSpec.model_validate(spec)


SCHEMES = ("W4A16", "W8A8-INT8", "W8A8-FP8")
# The largest study the API allows: candidates, suites and listed tasks at their maxItems
# (32, every suite, 64), 16 load scenarios, similarity; names at their maxLength.
LARGEST = {
    "candidates": 32,
    "suites": ("openllm-v1", "openllm-v2", "code", "demo"),
    "tasks": 64,
    "scenarios": 16,
}


def write_study(root: Path, spec: EvalRunSpec, items: int = 20, seed: int = 0) -> AggregateInput:
    """Write a run's evaluate (and benchmark, similarity) result documents under ``root``
    as the stages would for ``spec``; return the aggregate stage's input (as ``qeval.plan``
    makes it)."""
    rng = np.random.default_rng(seed)
    todo = spec.all_tasks()
    s = structure(todo)
    requested = {t.name: t.metric for t in todo}
    models = [(spec.baseline.name, None)] + [(c.label, c.scheme) for c in spec.candidates]
    scenario_names = [sc.name for sc in spec.performance.scenarios] if spec.performance else []
    truth: dict[str, np.ndarray] = {}
    refs = []
    for i, (name, scheme) in enumerate(models):
        stage_dir = root / "stages" / f"evaluate-{name}"
        doc, samples = model_results(s, todo, rng, truth, 0.0 if i == 0 else 0.03, items)
        (stage_dir / "samples").mkdir(parents=True, exist_ok=True)
        (stage_dir / "results.json").write_text(json.dumps(doc))
        for task, lines in samples.items():
            text = "".join(json.dumps(line) + "\n" for line in lines)
            (stage_dir / "samples" / f"{task}.jsonl").write_text(text)
        primary = primary_metrics(doc, requested)
        result = {
            "modelName": name,
            "backend": "vllm",
            "harnessVersion": "0.4.13",
            "scores": [x.dump() for x in parse_scores(doc, name, primary)],
            "modelSizeBytes": 16_000_000_000 // (1 if i == 0 else 2 + i % 3),
            "resultsPath": str(stage_dir / "results.json"),
            "samplesDir": str(stage_dir / "samples"),
            "cachedTasks": [t.name for t in todo],  # every task reused: the longest list
            "cacheKeys": {t.name: f"{i:02d}{t.name}"[:64] for t in todo},
            "primary": primary,
        }
        evaluate = _write(stage_dir / "result.json", stage_dir.name, "evaluate", result)
        bench = None
        if scenario_names:
            stage = f"benchmark-{name}"
            points = [point(name, sc, rng).dump() for sc in scenario_names]
            doc = {"modelName": name, "backend": "vllm", "points": points, "requestsPath": "r"}
            bench = _write(root / "stages" / stage / "result.json", stage, "benchmark", doc)
        refs.append(ModelResults(name=name, scheme=scheme, evaluate=evaluate, benchmark=bench))
    sim = None
    if spec.similarity is not None:
        scores = [
            SimilarityScore(
                model=n,
                prompts=256,
                rouge1=0.9,
                rouge_l=0.8,
                bertscore_f1=0.95,
                sts=0.97,
                identical=0.4,
            ).dump()
            for n, _ in models[1:]
        ]
        doc = {"backend": "vllm", "scores": scores, "generationsPath": "g.jsonl"}
        sim = _write(
            root / "stages" / "similarity" / "result.json", "similarity", "similarity", doc
        )
    return AggregateInput(
        baseline=refs[0],
        candidates=refs[1:],
        results_location=str(root),
        run_name=root.name,
        suites=list(spec.suites),
        recovery_threshold=spec.recovery_threshold,
        similarity=sim,
    )
