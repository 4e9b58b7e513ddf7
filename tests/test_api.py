"""The API models: valid objects parse, invalid ones are refused with a message naming
the field and the fix, and the CEL rules in the CRD agree with the Python rules."""

from __future__ import annotations

import itertools

import celpy
import pytest

from qeval.api import EvalRun, QuantizedModel, SpecError, load_documents
from qeval.api.common import model_kind
from qeval.api.documents import parse
from qeval.api.evalrun import (
    CANDIDATE_RULES,
    SPEC_RULES,
    Baseline,
    Candidate,
    EvalRunSpec,
    Task,
)
from qeval.api.quantizedmodel import RULES, QuantizedModelSpec
from tests.conftest import EXAMPLES

CEL = celpy.Environment()


def cel(rule: str, obj: dict, old: dict | None = None) -> bool:
    activation = {"self": celpy.json_to_cel(obj)}
    if old is not None:
        activation["oldSelf"] = celpy.json_to_cel(old)
    return bool(CEL.program(CEL.compile(rule)).evaluate(activation))


def qm(**spec) -> dict:
    return {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": "m"},
        "spec": {"model": {"uri": "org/model"}, **spec},
    }


def er(**spec) -> dict:
    base = {
        "baseline": {"model": {"uri": "org/model"}},
        "candidates": [{"quantizedModel": "q"}],
        "tasks": [{"name": "arc_easy"}],
    }
    merged = {k: v for k, v in {**base, **spec}.items() if v is not None}
    return {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r"},
        "spec": merged,
    }


def test_examples_parse():
    objects = load_documents(EXAMPLES / "evalrun.yaml") + load_documents(EXAMPLES / "llama-3.1-8b")
    kinds = sorted(type(o).__name__ for o in objects)
    assert kinds.count("EvalRun") == 2 and kinds.count("QuantizedModel") == 7


@pytest.mark.parametrize(
    ("doc", "field", "words"),
    [
        (qm(scheme="W5A16"), "spec.scheme", "W4A16"),
        (qm(scheme="W4A16", groupSize=-5), "spec.groupSize", "greater than or equal to 1"),
        (qm(), "spec", "exactly one of spec.scheme"),
        (qm(scheme="W4A16", recipe="a: 1"), "spec", "exactly one of spec.scheme"),
        (qm(recipe="[1, 2]"), "spec.recipe", "YAML mapping"),
        (qm(scheme="W8A8-FP8", algorithm="GPTQ"), "spec", "set algorithm RTN"),
        (qm(scheme="W4A16", smoothquantStrength=0.5), "spec", "only to scheme W8A8-INT8"),
        (qm(scheme="W8A8-INT8", groupSize=64), "spec", "weight-only"),
        (qm(scheme="W8A8-INT8", algorithm="AWQ"), "spec", "AWQ needs a weight-only"),
        (qm(scheme="W4A16", algorithm="RTN", dampeningFrac=0.1), "spec", "only to GPTQ"),
        (qm(scheme="W4A16", model={"uri": "ftp://x"}), "spec.model.uri", "unsupported scheme"),
        (
            qm(scheme="W4A16", calibration={"dataset": "demo", "path": "/x"}),
            "spec.calibration",
            "not both",
        ),
        (qm(scheme="W4A16", gruopSize=4), "spec.gruopSize", "did you mean 'groupSize'"),
        (er(baseline=None), "spec.baseline", "required"),
        (er(candidates=[]), "spec.candidates", "at least 1"),
        (er(candidates=[{"model": {"uri": "a/b"}}]), "spec.candidates[0]", "needs a name"),
        (
            er(candidates=[{"quantizedModel": "q", "model": {"uri": "a/b"}}]),
            "spec.candidates[0]",
            "exactly one of model",
        ),
        (
            er(candidates=[{"quantizedModel": "q"}, {"quantizedModel": "q"}]),
            "spec",
            "two candidates have the same name",
        ),
        (er(candidates=[{"quantizedModel": "baseline"}]), "spec", "same name as the baseline"),
        (er(tasks=[{"name": "a"}, {"name": "a"}]), "spec", "listed twice"),
        (er(batchSize=0), "spec.batchSize", "greater than or equal to 1"),
        (er(backend="tgi"), "spec.backend", "'hf', 'vllm' or 'vllm-server'"),
        (er(tasks=[{"name": "x", "numFewshot": -1}]), "spec.tasks[0].numFewshot", "greater"),
    ],
)
def test_invalid_specs_name_the_field_and_the_fix(doc, field, words):
    with pytest.raises(SpecError) as e:
        parse(doc, "f.yaml")
    assert f": {field}: " in str(e.value)
    assert words in str(e.value)


def test_wrong_kind_is_named():
    with pytest.raises(SpecError, match="kind 'Job' is not a qeval kind"):
        parse({"kind": "Job"}, "f.yaml")


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("meta-llama/Llama-3.1-8B", "huggingface"),
        ("hf://org/m", "huggingface"),
        ("gpt2", "huggingface"),
        ("/models/x", "local"),
        ("./m", "local"),
        ("pvc://models/a/b", "pvc"),
        ("s3://b/k", "s3"),
        ("demo://tiny-llama", "demo"),
    ],
)
def test_model_uri_forms(uri, kind):
    assert model_kind(uri) == kind


def test_defaults_fill_in():
    spec = QuantizedModel.model_validate(qm(scheme="W8A8-FP8")).spec
    assert spec.effective_algorithm == "RTN" and spec.ignore == ["lm_head"]
    run = EvalRun.model_validate(er())
    assert run.spec.backend == "hf" and run.spec.baseline.name == "baseline"
    assert run.spec.candidates[0].label == "q"


# --- the CEL rules (the CRD) and the Python rules (pydantic) must agree ---------------

QM_KNOBS = {
    "scheme": [None, "W8A8-FP8", "W8A8-INT8", "W4A16", "W2A16"],
    "algorithm": [None, "GPTQ", "AWQ", "RTN"],
    "recipe": [None, "quant_stage: {}"],
    "group_size": [None, 64],
    "smoothquant_strength": [None, 0.5],
    "dampening_frac": [None, 0.02],
    "observer": [None, "mse"],
}
CAMEL = {
    "group_size": "groupSize",
    "smoothquant_strength": "smoothquantStrength",
    "dampening_frac": "dampeningFrac",
}


def test_quantizedmodel_cel_rules_agree_with_python():
    programs = [(r, CEL.program(CEL.compile(r.cel))) for r in RULES]
    checked = 0
    for values in itertools.product(*QM_KNOBS.values()):
        fields = dict(zip(QM_KNOBS, values, strict=True))
        obj = QuantizedModelSpec.model_construct(**fields)
        wire = {CAMEL.get(k, k): v for k, v in fields.items() if v is not None}
        activation = {"self": celpy.json_to_cel({"model": {"uri": "org/m"}, **wire})}
        for rule, program in programs:
            assert bool(program.evaluate(activation)) == rule.check(obj), (rule.cel, wire)
            checked += 1
    assert checked == 640 * len(RULES)


def test_evalrun_cel_rules_agree_with_python():
    names = [None, "a", "b", "baseline"]
    qms = [None, "a", "q"]
    for c1n, c1q, c2n, c2q in itertools.product(names, qms, names, qms):
        cands = []
        for n, q in ((c1n, c1q), (c2n, c2q)):
            wire = {"name": n, "quantizedModel": q, "model": None if q else {"uri": "o/m"}}
            cands.append({k: v for k, v in wire.items() if v is not None})
        objs = [
            Candidate.model_construct(
                name=c.get("name"), quantized_model=c.get("quantizedModel"), model=c.get("model")
            )
            for c in cands
        ]
        for rule in CANDIDATE_RULES:
            for wire, obj in zip(cands, objs, strict=True):
                assert cel(rule.cel, wire) == rule.check(obj), (rule.cel, wire)
        if not all(r.check(o) for r in CANDIDATE_RULES for o in objs):
            continue  # the spec rules assume valid candidates, as the API server does
        spec = {
            "baseline": {"name": "baseline", "model": {"uri": "o/m"}},
            "candidates": cands,
            "tasks": [{"name": "t"}],
        }
        obj = EvalRunSpec.model_construct(
            baseline=Baseline.model_construct(name="baseline"),
            candidates=objs,
            tasks=[Task.model_construct(name="t")],
        )
        for rule in SPEC_RULES:
            assert cel(rule.cel, spec) == rule.check(obj), (rule.cel, spec)


def test_immutable_fields_use_transition_rules(root):
    from qeval.api.crd import CRDS, build_crd

    schema = build_crd(CRDS[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    model_rules = schema["properties"]["spec"]["properties"]["model"]["x-kubernetes-validations"]
    (rule,) = [r["rule"] for r in model_rules]
    assert not cel(rule, {"uri": "a/b"}, {"uri": "a/c"})
    assert cel(rule, {"uri": "a/b"}, {"uri": "a/b"})
