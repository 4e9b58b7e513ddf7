"""What lm-eval and TrustyAI's LMEvalJob users can already say, as an EvalRun says it: one
model alone (no candidates), batchSize auto, a fraction as a task's limit, more environment
by reference, and the reasoning-mode model args spec.prompt owns. Each through the API (the
CEL rules and their Python twins agreeing), the plan, the cache key, and what qeval run, the
status and the report say."""

from __future__ import annotations

import itertools
import time
from pathlib import Path, PurePosixPath

import celpy
import pytest
from rich.console import Console

from qeval.api.documents import SpecError, parse
from qeval.api.env import ENV_RULES, ONE_OBJECT, ONE_SOURCE, RESERVED_NAME_RULE, EnvVar
from qeval.api.evalrun import (
    BATCH_SIZE_RULE,
    LIMIT_RULE,
    SPEC_RULES,
    Baseline,
    Candidate,
    EvalRun,
    EvalRunSpec,
    Similarity,
    Task,
)
from qeval.api.evalrun_status import EvalRunStatus, Score
from qeval.plan import Layout, build_plan
from qeval.results import cache as c
from qeval.stages import evaluate

CEL = celpy.Environment()
_PROGRAMS: dict[str, object] = {}


def cel(rule: str, value: object) -> bool:
    if rule not in _PROGRAMS:
        _PROGRAMS[rule] = CEL.program(CEL.compile(rule))
    return bool(_PROGRAMS[rule].evaluate({"self": celpy.json_to_cel(value)}))  # type: ignore[attr-defined]


def er(**spec) -> dict:
    base = {"baseline": {"model": {"uri": "org/model"}}, "tasks": [{"name": "arc_easy"}]}
    return {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r"},
        "spec": {k: v for k, v in {**base, **spec}.items() if v is not None},
    }


def run_of(**spec) -> EvalRun:
    run = parse(er(**spec), "f.yaml")
    assert isinstance(run, EvalRun)
    return run


LAYOUT = Layout(PurePosixPath("/w/runs/r"), PurePosixPath("/w/models"), PurePosixPath("/c"))


# --- the API: CEL and Python agree --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (1, True),
        (4096, True),
        (0, False),
        (4097, False),
        (-1, False),
        ("auto", True),
        ("auto:1", True),
        ("auto:999", True),
        ("auto:0", False),
        ("auto:1000", False),
        ("auto:01", False),
        ("auto:", False),
        ("Auto", False),
        ("fast", False),
        ("16", False),
        ("auto:4\n", False),
    ],
)
def test_batch_size_rule_in_cel_and_python(value, ok):
    assert cel(BATCH_SIZE_RULE.cel, value) is BATCH_SIZE_RULE.check(value) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (0.5, True),
        (0.001, True),
        (0.999, True),
        (1.0, True),  # the API server reads 1 and 1.0 alike: one document
        (5.0, True),
        (1e8, True),
        (0.0, False),
        (-0.5, False),
        (-1.0, False),
        (1.5, False),
        (10.25, False),
        (1e8 + 1, False),
    ],
)
def test_limit_rule_in_cel_and_python(value, ok):
    """A number field reaches CEL as a double, whole or not (the server converts 5 to 5.0)."""
    assert cel(LIMIT_RULE.cel, value) is LIMIT_RULE.check(value) is ok


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("HTTPS_PROXY", True),
        ("QEVALX", True),
        ("QEVAL_STAGE_INPUT", False),
        ("QEVAL_", False),
        ("HF_TOKEN", False),
        ("HF_HOME", False),
        ("HF_ALLOW_CODE_EVAL", False),
        ("CUDA_VISIBLE_DEVICES", False),
        ("NVIDIA_VISIBLE_DEVICES", False),
    ],
)
def test_reserved_env_names_in_cel_and_python(name, ok):
    assert cel(RESERVED_NAME_RULE.cel, name) is RESERVED_NAME_RULE.check(name) is ok


def test_env_entry_rules_in_cel_and_python():
    from qeval.api.env import EnvFromSource, EnvVarSource, KeyRef, ObjectRef

    ref = {"name": "s", "key": "k"}
    sources = [None, {}, {"secretKeyRef": ref}, {"configMapKeyRef": ref}]
    sources.append({"secretKeyRef": ref, "configMapKeyRef": ref})
    refused = set()
    for name, value, source in itertools.product(
        ["PROXY", "OPENAI_API_KEY", "my_token", "DB_PASSWORD", "TOKENIZERS_PARALLELISM", "KEYS"],
        [None, "", "x"],
        sources,
    ):
        wire = {"name": name}
        if value is not None:
            wire["value"] = value
        src = None
        if source is not None:
            wire["valueFrom"] = source
            refs = {k: KeyRef.model_construct(**v) for k, v in source.items()}
            src = EnvVarSource.model_construct(
                secret_key_ref=refs.get("secretKeyRef"),
                config_map_key_ref=refs.get("configMapKeyRef"),
            )
            assert cel(ONE_SOURCE.cel, source) == ONE_SOURCE.check(src), source
        obj = EnvVar.model_construct(name=name, value=value, value_from=src)
        for rule in ENV_RULES:
            ok = cel(rule.cel, wire)
            assert ok == rule.check(obj), (rule.cel, wire)
            if not ok:
                refused.add((name, rule.message[:20]))
    # A literal for a credential's name is refused; a tokenizer setting or KEYS is not.
    assert ("OPENAI_API_KEY", ENV_RULES[1].message[:20]) in refused
    assert ("my_token", ENV_RULES[1].message[:20]) in refused
    assert ("TOKENIZERS_PARALLELISM", ENV_RULES[1].message[:20]) not in refused
    assert ("KEYS", ENV_RULES[1].message[:20]) not in refused
    for source in [{}, {"secretRef": {"name": "s"}}, {"configMapRef": {"name": "c"}}]:
        refs = {k: ObjectRef.model_construct(**v) for k, v in source.items()}
        obj = EnvFromSource.model_construct(
            secret_ref=refs.get("secretRef"), config_map_ref=refs.get("configMapRef")
        )
        assert cel(ONE_OBJECT.cel, source) == ONE_OBJECT.check(obj) == (len(source) == 1)


def test_spec_rules_in_cel_and_python_agree_with_and_without_candidates():
    """Every spec rule, over candidates absent, empty or one, similarity, batch sizes,
    backends, env names and model args (CEL's has() of a field left out, Python's default)."""
    candidates = [None, [], [{"quantizedModel": "q"}]]
    similarity = [None, {}]
    batch = [None, 16, "auto", "auto:3"]
    backends = [None, "hf", "vllm-server"]
    envs = [None, [{"name": "A", "value": "1"}], [{"name": "A", "value": "1"}] * 2]
    model_args = [
        None,
        {"dtype": "bfloat16"},
        {"enable_thinking": "true"},
        {"think_end_token": "x"},
    ]
    outcomes: dict[str, set[bool]] = {r.cel: set() for r in SPEC_RULES}
    for i, (cands, sim, bs, backend) in enumerate(
        itertools.product(candidates, similarity, batch, backends)
    ):
        env, args = envs[i % len(envs)], model_args[i % len(model_args)]
        wire = {"baseline": {"name": "baseline", "model": {"uri": "o/m"}}, "tasks": [{"name": "t"}]}
        fields: dict = {
            "baseline": Baseline.model_construct(name="baseline"),
            "tasks": [Task.model_construct(name="t")],
        }
        for key, attr, value, obj in [
            ("candidates", "candidates", cands, [Candidate.model_construct(quantized_model="q")]),
            ("similarity", "similarity", sim, Similarity.model_construct()),
            ("batchSize", "batch_size", bs, bs),
            ("backend", "backend", backend, backend),
            ("env", "env", env, [EnvVar.model_construct(**e) for e in env or []]),
            ("modelArgs", "model_args", args, args),
        ]:
            if value is not None:
                wire[key] = value
                fields[attr] = obj if value else []
        spec = EvalRunSpec.model_construct(**fields)
        for rule in SPEC_RULES:
            ok = cel(rule.cel, wire)
            assert ok == rule.check(spec), (rule.cel, wire)
            outcomes[rule.cel].add(ok)
    words = ("similarity scores the", "batchSize auto is", "env sets a", "set enable_thinking")
    new = [r.cel for r in SPEC_RULES if any(w in r.message for w in words)]
    assert len(new) == 4 and all(outcomes[r] == {True, False} for r in new)


def test_one_model_alone_is_a_valid_evalrun():
    for candidates in (None, []):
        assert run_of(candidates=candidates).spec.candidates == []
    with pytest.raises(SpecError, match="two candidates have the same name"):
        run_of(candidates=[{"quantizedModel": "q"}, {"quantizedModel": "q"}])
    with pytest.raises(SpecError, match=r"spec: spec.similarity scores the candidates'"):
        run_of(similarity={})


# --- the plan, the cache key and the Job ---------------------------------------------------


def test_the_plan_of_one_model_evaluates_it_and_aggregates_its_scores_alone():
    run = run_of(performance={"scenarios": [{"name": "s", "kind": "synchronous"}]})
    stages = build_plan(run, {}, LAYOUT)
    assert [s.name for s in stages] == ["evaluate-baseline", "benchmark-baseline", "aggregate"]
    agg = stages[-1].input
    assert agg["candidates"] == [] and agg["baseline"]["name"] == "baseline"


def test_a_fraction_limit_is_its_own_cache_key_and_a_whole_number_a_count():
    spec = run_of(
        tasks=[
            {"name": "a", "limit": 0.5},
            {"name": "b", "limit": 5.0},
            {"name": "c", "limit": 5},
            {"name": "d", "limit": 1},
            {"name": "e"},
        ]
    ).spec
    limits = [t.limit for t in spec.tasks]
    assert limits == [0.5, 5, 5, 1, None] and type(limits[1]) is int

    def key(limit):
        fields = c.evaluation_fields(
            model="m",
            task="t",
            num_fewshot=None,
            limit=limit,
            task_config=None,
            harness_version="0.4.13",
            backend="hf",
            backend_config={},
            seed=1,
        )
        return c.key_of(fields)

    assert len({key(x) for x in (0.5, 0.1, 1, None)}) == 4
    assert key(limits[1]) == key(5)  # 5.0 as written is the count 5: the same result
    groups = evaluate.group_by_settings(spec.tasks)
    assert groups == {
        (None, 0.5): ["a"],
        (None, 5): ["b", "c"],
        (None, 1): ["d"],
        (None, None): ["e"],
    }
    # The plan hands the fraction to the stage as it is.
    (stage,) = [
        s
        for s in build_plan(run_of(tasks=[{"name": "a", "limit": 0.25}]), {}, LAYOUT)
        if s.kind == "evaluate"
    ]
    assert stage.input["tasks"] == [{"name": "a", "limit": 0.25}]


def test_batch_size_auto_enters_the_stage_and_the_cache_key_as_written():
    configs = []
    for bs in ("auto", "auto:4", 16):
        run = run_of(batchSize=bs)
        (stage,) = [s for s in build_plan(run, {}, LAYOUT) if s.kind == "evaluate"]
        assert stage.input["batchSize"] == bs
        config = evaluate.backend_config(evaluate.EvaluateInput.model_validate(stage.input))
        assert config["batchSize"] == bs
        configs.append(c.canonical(config))
    assert len(set(configs)) == 3


ENV = [
    {"name": "HTTPS_PROXY", "value": "http://proxy:3128/$(HOME)"},
    {"name": "DATASETS_API_KEY", "valueFrom": {"secretKeyRef": {"name": "ds", "key": "key"}}},
    {
        "name": "EVAL_REGION",
        "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "region", "optional": True}},
    },
]
ENV_FROM = [{"secretRef": {"name": "extra"}}, {"configMapRef": {"name": "more"}, "prefix": "X_"}]


def test_env_reaches_the_evaluate_stages_only_and_never_a_document_or_a_cache_key():
    with_env = run_of(
        env=ENV, envFrom=ENV_FROM, candidates=[{"name": "w4", "model": {"uri": "o/w4"}}]
    )
    plain = run_of(candidates=[{"name": "w4", "model": {"uri": "o/w4"}}])
    stages, bare = build_plan(with_env, {}, LAYOUT), build_plan(plain, {}, LAYOUT)
    for stage, same in zip(stages, bare, strict=True):
        assert stage.input == same.input  # nothing of the env in any stage's document
        evaluates = stage.kind == "evaluate"
        assert [e.dump() for e in stage.env] == (ENV if evaluates else [])
        assert [e.dump() for e in stage.env_from] == (ENV_FROM if evaluates else [])
    # Hence the same cache keys: lookup hashes the stage's input alone.
    inp = evaluate.EvaluateInput.model_validate(stages[0].input)
    assert evaluate.backend_config(inp) == evaluate.backend_config(
        evaluate.EvaluateInput.model_validate(bare[0].input)
    )


# --- what qeval run does with the environment ------------------------------------------------


def test_qeval_run_takes_a_valueFrom_variable_from_its_own_environment(monkeypatch):
    from qeval.local.preflight import env_notes, env_problems, local_env

    run = run_of(env=ENV, envFrom=ENV_FROM)
    monkeypatch.delenv("DATASETS_API_KEY", raising=False)
    (problem,) = env_problems(run)  # EVAL_REGION is optional: left unset
    assert "spec.env[1]: DATASETS_API_KEY takes its value from Secret ds (key key)" in problem
    assert "export DATASETS_API_KEY before qeval run" in problem
    monkeypatch.setenv("DATASETS_API_KEY", "k")
    assert list(env_problems(run)) == []
    notes = env_notes(run)
    assert len(notes) == 2 and "spec.envFrom[0]: qeval run cannot read Secret extra" in notes[0]
    stages = build_plan(run, {}, LAYOUT)
    assert local_env(stages) == {"evaluate": {"HTTPS_PROXY": "http://proxy:3128/$(HOME)"}}


def _environ(pid: int) -> list[bytes]:
    """A process's initial environment (Linux), once its exec has set it up (bounded)."""
    deadline = time.monotonic() + 20
    while not (data := Path(f"/proc/{pid}/environ").read_bytes()):
        assert time.monotonic() < deadline, f"process {pid} shows no environment"
        time.sleep(0.05)
    return data.split(b"\0")


def test_a_worker_starts_with_its_kinds_variables(tmp_path: Path):
    from qeval.local.worker import Workers

    workers = Workers(tmp_path, {"aggregate": {"HTTPS_PROXY": "http://p:1/$(X)"}})
    try:
        assert b"HTTPS_PROXY=http://p:1/$(X)" in _environ(workers.pid("aggregate"))
        other = _environ(workers.pid("similarity"))
        assert not any(v.startswith(b"HTTPS_PROXY=http://p:1") for v in other)
    finally:
        workers.stop_all()


# --- one model: status, console and report say there is no comparison ---------------------


def _scores_only() -> EvalRunStatus:
    from qeval.results.summary import ModelOutcome, summarize

    score = Score(model="baseline", task="t", metric="acc", value=0.8, stderr=0.02, primary=True)
    return summarize(ModelOutcome("baseline", scores=(score,), size_bytes=2**20), [])


def test_the_status_of_one_model_has_its_scores_and_claims_no_verdict():
    from qeval.stages.envelope import StageResult, StageStatus
    from qeval.status import SCORES_ONLY, finish_evalrun

    status = _scores_only()
    assert status.recovery == [] and status.candidates == [] and status.mean_recovery is None
    stages = build_plan(run_of(), {}, LAYOUT)
    docs = [StageResult(stage=s.name, kind=s.kind, status=StageStatus.SUCCEEDED) for s in stages]
    final = finish_evalrun(status, docs, stages, "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z")
    succeeded = next(c for c in final.conditions if c.type == "Succeeded")
    assert final.phase == "Succeeded" and succeeded.message == SCORES_ONLY
    assert "no verdict" in SCORES_ONLY and final.mean_recovery is None


def test_the_console_and_the_report_of_one_model_show_scores_without_recovery(tmp_path):
    from qeval.local.console import NO_CANDIDATES, print_summary
    from qeval.report import Run
    from qeval.report.render import markdown, outline

    status = _scores_only()
    console = Console(record=True, width=200)
    print_summary(console, run_of(), status, tmp_path)
    out = console.export_text()
    assert "0.800 ± 0.020" in out and NO_CANDIDATES in out.replace("\n", " ")
    table = out.split("no candidates:")[0]
    assert "recovery" not in table and "verdict" not in table
    md = markdown(*outline(Run(name="r", baseline="baseline", status=status), {}))
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert header == "| model | scheme | size | t (acc) |"
    assert "baseline evaluated alone (no candidates)" in md
    assert "nothing to recommend" in md and "keep the baseline" not in md


def test_the_operator_runs_one_model_and_ends_without_a_verdict():
    """decide_evalrun (the operator's rule) on a one-model run: the evaluation's Job first,
    and once the aggregate has published, Succeeded with the scores-only message."""
    from qeval.k8s.manifests import cluster_layout
    from qeval.k8s.reconcile import Observed, decide_evalrun
    from qeval.k8s.settings import OperatorSettings
    from qeval.stages.envelope import StageResult, StageStatus
    from qeval.status import SCORES_ONLY

    run = run_of()
    layout = cluster_layout(OperatorSettings(), "team-a", run.name)
    t = "2026-01-01T00:00:00Z"
    first = decide_evalrun(run, {}, Observed(), layout, t, 1)
    assert [s.name for s in first.create] == ["evaluate-baseline"]
    assert first.status["phase"] not in ("Failed", "Succeeded")
    docs = {
        "evaluate-baseline": StageResult(
            stage="evaluate-baseline", kind="evaluate", status=StageStatus.SUCCEEDED
        ),
        "aggregate": StageResult(
            stage="aggregate",
            kind="aggregate",
            status=StageStatus.SUCCEEDED,
            finished_at=t,
            result=_scores_only().dump(),
        ),
    }
    last = decide_evalrun(run, {}, Observed(results=docs), layout, t, 1)
    succeeded = next(c for c in last.status["conditions"] if c["type"] == "Succeeded")
    assert last.status["phase"] == "Succeeded" and succeeded["message"] == SCORES_ONLY
    assert "meanRecovery" not in last.status and last.status["candidates"] == []
