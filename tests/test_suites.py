"""Task suites: each preset's tasks and shots pinned, expansion, the code-execution gate
(CEL and Python agree), and the suite scores (v1 average, v2 normalisation)."""

from __future__ import annotations

import itertools
from pathlib import PurePosixPath

import pytest

from qeval.api import EvalRun, SpecError
from qeval.api.documents import parse
from qeval.api.evalrun import SPEC_RULES, Baseline, EvalRunSpec, Prompt, Task
from qeval.api.evalrun_status import Score
from qeval.api.suites import SUITES, SuiteName, expand_tasks, suite_tasks
from qeval.plan import Layout, build_plan
from qeval.results.suites import normalize, suite_score
from tests.test_api import cel, er

PINNED = {
    "openllm-v1": [
        ("arc_challenge", 25, "acc_norm"),
        ("gsm8k", 5, "exact_match,strict-match"),
        ("hellaswag", 10, "acc_norm"),
        ("mmlu", 5, "acc"),
        ("truthfulqa_mc2", 0, "acc"),
        ("winogrande", 5, "acc"),
    ],
    "openllm-v1-llama": [
        ("arc_challenge_llama", 0, "exact_match,strict_match"),
        ("gsm8k_llama", 8, "exact_match,strict_match"),
        ("hellaswag", 10, "acc_norm"),
        ("mmlu_llama", 5, "exact_match,strict_match"),
        ("mmlu_cot_llama", 0, "exact_match,strict_match"),
        ("truthfulqa_mc2", 0, "acc"),
        ("winogrande", 5, "acc"),
    ],
    "openllm-v2": [
        ("leaderboard_bbh", 3, "acc_norm"),
        ("leaderboard_gpqa", 0, "acc_norm"),
        ("leaderboard_ifeval", 0, "prompt_level_strict_acc"),
        ("leaderboard_math_hard", 4, "exact_match"),
        ("leaderboard_mmlu_pro", 5, "acc"),
        ("leaderboard_musr", 0, "acc_norm"),
    ],
    "code": [("humaneval", 0, "pass@1,create_test"), ("humaneval_plus", 0, "pass@1,create_test")],
    "openllm-v2-chat": [],  # the same tasks as openllm-v2 (below)
    "demo": [("qeval_demo_facts", None, "acc"), ("qeval_demo_recall", None, "exact_match")],
}


PINNED["openllm-v2-chat"] = PINNED["openllm-v2"]
PROMPTS = {"openllm-v1-llama", "openllm-v2-chat"}  # chat template and multi-turn few-shot


@pytest.mark.parametrize("suite", sorted(PINNED))
def test_each_preset_pins_its_tasks_and_shots(suite):
    assert [(t.name, t.num_fewshot, t.metric) for t in suite_tasks(suite)] == PINNED[suite]
    expected = {"chatTemplate": True, "fewshotAsMultiturn": True} if suite in PROMPTS else {}
    assert dict(SUITES[SuiteName(suite)].prompt) == expected


@pytest.mark.parametrize(
    ("suites", "prompt"),
    [
        (["openllm-v1-llama"], None),
        (["openllm-v1-llama"], {"chatTemplate": True}),
        (["openllm-v1-llama"], {"chatTemplate": True, "fewshotAsMultiturn": True}),
        (["openllm-v2-chat", "demo"], {"chatTemplate": True, "fewshotAsMultiturn": True}),
        (["openllm-v2-chat"], {"chatTemplate": False}),
        (["openllm-v1", "openllm-v2"], None),
        (["openllm-v1"], {"chatTemplate": True, "fewshotAsMultiturn": True}),
        (None, {"chatTemplate": True}),
    ],
)
def test_the_chat_suites_need_the_chat_settings_in_cel_and_python(suites, prompt):
    (rule,) = [r for r in SPEC_RULES if "fewshotAsMultiturn" in r.cel]
    wire = er(suites=suites, prompt=prompt, tasks=None if suites else [{"name": "t"}])["spec"]
    spec = EvalRunSpec.model_construct(
        suites=suites or [],
        prompt=Prompt.model_validate(prompt or {}),
        tasks=[],
    )
    wants = bool(set(suites or ()) & PROMPTS)
    ok = not wants or bool(
        prompt and prompt.get("chatTemplate") and prompt.get("fewshotAsMultiturn")
    )
    assert cel(rule.cel, wire) == rule.check(spec) == ok, (suites, prompt)


def test_scoring_rules_of_the_presets():
    assert {s.name: s.scoring for s in SUITES.values()} == {
        "openllm-v1": "mean",
        "openllm-v1-llama": "mean",
        "openllm-v2": "normalized-mean",
        "openllm-v2-chat": "normalized-mean",
        "code": "mean",
        "demo": "mean",
    }
    v2 = {t.name: t for t in SUITES[SuiteName.OPENLLM_V2].tasks}
    assert len(v2["leaderboard_bbh"].subtasks) == 24 and len(v2["leaderboard_musr"].subtasks) == 3
    assert v2["leaderboard_gpqa"].baseline == 0.25 and v2["leaderboard_mmlu_pro"].baseline == 0.1
    assert v2["leaderboard_bbh"].subtasks["leaderboard_bbh_object_counting"] == pytest.approx(
        1 / 19
    )
    assert [s.name for s in SUITES.values() if s.runs_code] == ["code"]


def test_suites_mix_with_tasks_and_a_listed_task_overrides():
    tasks = expand_tasks(
        ["demo", "openllm-v1"],
        [Task(name="gsm8k", num_fewshot=5, limit=50), Task(name="arc_easy")],
    )
    names = [t.name for t in tasks]
    assert names[:2] == ["qeval_demo_facts", "qeval_demo_recall"] and names[-1] == "arc_easy"
    assert len(names) == len(set(names)) == 9
    assert next(t for t in tasks if t.name == "gsm8k").limit == 50


def test_plan_expands_suites_for_every_model():
    run = EvalRun.model_validate(er(tasks=None, suites=["openllm-v1"]))
    layout = Layout(PurePosixPath("/r"), PurePosixPath("/m"))
    by = {s.name: s for s in build_plan(run, {"q": _qm()}, layout)}
    for stage in ("evaluate-baseline", "evaluate-q"):
        tasks = by[stage].input["tasks"]
        assert [(t["name"], t.get("numFewshot")) for t in tasks] == [
            (n, s) for n, s, _ in PINNED["openllm-v1"]
        ]
    assert by["aggregate"].input["suites"] == ["openllm-v1"]


def _qm():
    from qeval.api import QuantizedModel

    return QuantizedModel.model_validate(
        {"metadata": {"name": "q"}, "spec": {"model": {"uri": "org/m"}, "scheme": "W4A16"}}
    )


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"tasks": None}, "at least one task"),
        ({"suites": ["code"]}, "allowCodeExecution: true"),
        ({"tasks": [{"name": "humaneval"}]}, "allowCodeExecution: true"),
        ({"tasks": [{"name": "mbpp_plus"}]}, "allowCodeExecution: true"),
        (
            {"suites": ["openllm-v3"]},
            "'openllm-v1', 'openllm-v1-llama', 'openllm-v2', 'openllm-v2-chat', 'code' or 'demo'",
        ),
        ({"recoveryThreshold": 0}, "greater than 0"),
    ],
)
def test_invalid_suite_specs_are_refused(spec, words):
    with pytest.raises(SpecError, match=words):
        parse(er(**spec), "f.yaml")


def test_code_suites_need_the_explicit_switch():
    run = EvalRun.model_validate(er(tasks=None, suites=["code"], allowCodeExecution=True))
    assert run.spec.allow_code_execution and [t.name for t in run.spec.all_tasks()] == [
        "humaneval",
        "humaneval_plus",
    ]
    by = {
        s.name: s
        for s in build_plan(run, {"q": _qm()}, Layout(PurePosixPath("/r"), PurePosixPath("/m")))
    }
    assert by["evaluate-q"].input["allowCodeExecution"] is True


def test_suite_and_code_rules_agree_with_cel():
    """Every combination of suites, tasks and the switch: CEL (the CRD) == Python."""
    rules = [
        r
        for r in SPEC_RULES
        if ("suites" in r.cel or "allowCodeExecution" in r.cel) and r.field != "prompt"
    ]
    assert len(rules) == 2
    for suites, tasks, allow in itertools.product(
        [None, [], ["demo"], ["code"], ["openllm-v2", "code"]],
        [None, [], ["arc_easy"], ["humaneval_plus"], ["arc_easy", "mbpp"]],
        [None, False, True],
    ):
        wire = {"baseline": {"name": "baseline", "model": {"uri": "o/m"}}, "candidates": []}
        fields = {"suites": suites or [], "tasks": [], "allow_code_execution": bool(allow)}
        if suites is not None:
            wire["suites"] = suites
        if tasks is not None:
            wire["tasks"] = [{"name": n} for n in tasks]
            fields["tasks"] = [Task.model_construct(name=n) for n in tasks]
        if allow is not None:
            wire["allowCodeExecution"] = allow
        obj = EvalRunSpec.model_construct(
            baseline=Baseline.model_construct(name="baseline"), candidates=[], **fields
        )
        for rule in rules:
            assert cel(rule.cel, wire) == rule.check(obj), (rule.cel, wire)


# --- suite scores -----------------------------------------------------------------------


def s(task, metric, value, filt="none"):
    return Score(model="m", task=task, metric=metric, filter=filt, value=value)


def test_openllm_v1_is_the_plain_average():
    values = [0.6, 0.7, 0.8, 0.65, 0.5, 0.75]
    scores = [
        s(name, metric.split(",")[0], v, (metric.split(",") + ["none"])[1])
        for (name, _, metric), v in zip(PINNED["openllm-v1"], values, strict=True)
    ]
    scores.append(s("gsm8k", "exact_match", 0.99, "flexible-extract"))  # not the pinned filter
    assert suite_score("openllm-v1", scores) == pytest.approx(sum(values) / 6)
    assert suite_score("openllm-v1", scores[1:]) is None  # a task missing: no score


def test_openllm_v2_normalises_between_random_guessing_and_one():
    v2 = {t.name: t for t in SUITES[SuiteName.OPENLLM_V2].tasks}
    scores = [s(sub, "acc_norm", 1.0) for sub in v2["leaderboard_bbh"].subtasks]  # -> 1.0
    scores.append(s("leaderboard_gpqa", "acc_norm", 0.25))  # random guessing -> 0
    scores += [
        s("leaderboard_ifeval", "prompt_level_strict_acc", 0.6),
        s("leaderboard_ifeval", "inst_level_strict_acc", 0.8),  # mean 0.7, no rescaling
        s("leaderboard_math_hard", "exact_match", 0.1),  # generative: no rescaling
        s("leaderboard_mmlu_pro", "acc", 0.55),  # (0.55 - 0.1) / 0.9 = 0.5
    ]
    musr = v2["leaderboard_musr"].subtasks
    scores += [s(sub, "acc_norm", bound) for sub, bound in musr.items()]  # -> 0
    assert suite_score("openllm-v2", scores) == pytest.approx((1 + 0 + 0.7 + 0.1 + 0.5 + 0) / 6)
    assert normalize(0.2, 0.25) == 0.0  # below random guessing clips to 0
