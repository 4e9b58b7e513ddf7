"""spec.judged: the judged evaluations' API. Every rule is stated twice (CEL in the CRD,
Python in pydantic); here both are evaluated on the same objects and must agree, and each
rule is seen both passing and refusing. Then whole EvalRuns: what is refused names the
field and the fix."""

from __future__ import annotations

import itertools

import pytest

from qeval.api.common import ModelSource, Scheduling
from qeval.api.documents import SpecError, parse
from qeval.api.evalrun import (
    JUDGE_RULES,
    JUDGED_RULES,
    SPEC_RULES,
    Backend,
    Baseline,
    Candidate,
    Endpoint,
    EvalRunSpec,
    Judge,
    Judged,
    JudgedKind,
    Serving,
    Task,
)
from tests.test_api import cel, er

ENDPOINT = {"baseUrl": "http://judge.models.svc:8000/v1", "model": "judge"}


def _agree(rules, cases) -> None:
    """Each rule's CEL and Python agree on every (wire, object) case, and see both answers."""
    seen: dict[str, set[bool]] = {r.cel: set() for r in rules}
    for wire, obj in cases:
        for rule in rules:
            ok = cel(rule.cel, wire)
            assert ok == rule.check(obj), (rule.message, wire)
            seen[rule.cel].add(ok)
    assert all(v == {True, False} for v in seen.values()), seen


def test_judge_rules_in_cel_and_python_agree():
    cases = []
    for model, endpoint, serving, scheduling in itertools.product([0, 1], repeat=4):
        wire: dict = {}
        fields: dict = {}
        if model:
            wire["model"], fields["model"] = {"uri": "org/judge"}, ModelSource(uri="org/judge")
        if endpoint:
            wire["endpoint"], fields["endpoint"] = ENDPOINT, Endpoint.model_validate(ENDPOINT)
        if serving:
            wire["serving"], fields["serving"] = {}, Serving()
        if scheduling:
            wire["gpus"], fields["gpus"] = 2, 2
        cases.append((wire, Judge.model_construct(**fields)))
    _agree(JUDGE_RULES, cases)


def test_judged_rules_in_cel_and_python_agree():
    templates = [None, "{question} {answer_a} {answer_b}", "{question} {answer}", "{answer}"]
    cases = []
    for kind, prompts, path, swap, chat, turns, template in itertools.product(
        [None, "pairwise", "single"],
        [None, "mt-bench"],
        [None, "prompts.jsonl"],
        [None, False, True],
        [None, False, True],
        [None, 1, 2],
        templates,
    ):
        wire: dict = {"name": "j", "judge": {"endpoint": ENDPOINT}}
        fields: dict = {"name": "j"}
        for key, attr, value in (
            ("kind", "kind", kind),
            ("prompts", "prompts", prompts),
            ("promptsPath", "prompts_path", path),
            ("swapPositions", "swap_positions", swap),
            ("chatTemplate", "chat_template", chat),
            ("turns", "turns", turns),
            ("template", "template", template),
        ):
            if value is not None:
                wire[key], fields[attr] = value, value
        cases.append((wire, Judged.model_construct(**fields)))
    _agree(JUDGED_RULES, cases)


def test_spec_judged_rules_in_cel_and_python_agree():
    rules = [r for r in SPEC_RULES if "judged" in r.cel]
    assert len(rules) == 5
    judge_kinds = [
        {"endpoint": ENDPOINT},
        {"model": {"uri": "org/judge"}},
        {"model": {"uri": "org/judge"}, "serving": {"tensorParallelSize": 2}},
        {"model": {"uri": "org/judge"}, "gpus": 1},
        {
            "model": {"uri": "org/judge"},
            "gpus": 4,
            "serving": {"tensorParallelSize": 4},
        },
    ]
    cases = []
    for backend, candidates, judged, spec_gpus in itertools.product(
        [None, *Backend],
        [0, 1],
        [[], ["a"], ["a", "a"], ["a", "b"]],
        [None, 2],
    ):
        for judge in judge_kinds:
            wire: dict = {
                "baseline": {"name": "b", "model": {"uri": "o/m"}},
                "tasks": [{"name": "t"}],
            }
            fields: dict = {
                "baseline": Baseline.model_construct(name="b"),
                "tasks": [Task.model_construct(name="t")],
            }
            if backend is not None:
                wire["backend"], fields["backend"] = str(backend), backend
            if candidates:
                wire["candidates"] = [{"name": "q", "quantizedModel": "q"}]
                fields["candidates"] = [Candidate.model_construct(name="q", quantized_model="q")]
            if spec_gpus is not None:
                wire["scheduling"] = {"gpus": spec_gpus}
                fields["scheduling"] = Scheduling.model_construct(gpus=spec_gpus)
            if judged:
                wire["judged"] = [{"name": n, "judge": judge} for n in judged]
                j = Judge.model_construct(
                    model=ModelSource(uri="org/judge") if "model" in judge else None,
                    endpoint=Endpoint.model_validate(ENDPOINT) if "endpoint" in judge else None,
                    serving=Serving(
                        **{"tensor_parallel_size": judge["serving"]["tensorParallelSize"]}
                    )
                    if "serving" in judge
                    else None,
                    gpus=judge.get("gpus"),
                )
                fields["judged"] = [Judged.model_construct(name=n, judge=j) for n in judged]
            cases.append((wire, EvalRunSpec.model_construct(**fields)))
    _agree(rules, cases)


def _refusal(judged: list[dict], **spec) -> str:
    with pytest.raises(SpecError) as e:
        parse(er(judged=judged, **spec), "run.yaml")
    return str(e.value)


@pytest.mark.parametrize(
    ("judged", "spec", "words"),
    [
        ([{"name": "a", "judge": {}}], {}, "exactly one of model"),
        (
            [
                {
                    "name": "a",
                    "judge": {"endpoint": ENDPOINT},
                    "kind": "single",
                    "swapPositions": True,
                }
            ],
            {},
            "swapPositions",
        ),
        (
            [{"name": "a", "judge": {"endpoint": ENDPOINT}, "chatTemplate": False, "turns": 2}],
            {},
            "turns",
        ),
        (
            [{"name": "a", "judge": {"endpoint": ENDPOINT}, "template": "{question} {answer}"}],
            {},
            "{answer_a}",
        ),
        (
            [
                {
                    "name": "a",
                    "judge": {"endpoint": ENDPOINT},
                    "prompts": "mt-bench",
                    "promptsPath": "p.jsonl",
                }
            ],
            {},
            "not both",
        ),
        ([{"name": "a", "judge": {"endpoint": ENDPOINT}, "prompts": "alpaca"}], {}, "prompts"),
        ([{"name": "a", "judge": {"endpoint": {**ENDPOINT, "apiKey": "sk-1"}}}], {}, "apiKey"),
        (
            [
                {"name": "a", "judge": {"endpoint": ENDPOINT}},
                {"name": "a", "judge": {"endpoint": ENDPOINT}},
            ],
            {},
            "same name",
        ),
        (
            [{"name": "a", "judge": {"endpoint": ENDPOINT}}],
            {"candidates": []},
            "at least one candidate",
        ),
        (
            [{"name": "a", "judge": {"model": {"uri": "org/judge"}, "gpus": 8}}],
            {"backend": "hf"},
            "vllm-server",
        ),
        ([{"name": "A b", "judge": {"endpoint": ENDPOINT}}], {}, "name"),
    ],
)
def test_invalid_judged_evaluations_are_refused_naming_the_field(judged, spec, words):
    message = _refusal(judged, **spec)
    assert "judged" in message and words in message, message


def test_a_valid_judged_evaluation_has_the_published_defaults():
    run = parse(er(judged=[{"name": "arena", "judge": {"endpoint": ENDPOINT}}]), "run.yaml")
    j = run.spec.judged[0]
    assert j.kind == JudgedKind.PAIRWISE and j.swapped and j.prompt_set == "demo"
    assert j.judge.temperature == 0 and j.judge.retries == 2
    single = Judged.model_validate(
        {
            "name": "mt",
            "kind": "single",
            "prompts": "mt-bench",
            "turns": 2,
            "judge": {"endpoint": ENDPOINT},
        }
    )
    assert not single.swapped and single.prompt_set == "mt-bench"
    path = Judged.model_validate(
        {
            "name": "p",
            "promptsPath": "pvc://data/arena.jsonl",
            "judge": {"model": {"uri": "org/judge"}},
        }
    )
    assert path.prompt_set is None and path.judge.label() == "org/judge"
