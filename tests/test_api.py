"""The API models: valid objects parse, invalid ones are refused with a message naming
the field and the fix, and the CEL rules in the CRD agree with the Python rules."""

from __future__ import annotations

import itertools

import celpy
import pytest

from qeval.api import EvalRun, QuantizedModel, SpecError, load_documents
from qeval.api.common import Scheduling, model_kind
from qeval.api.documents import parse
from qeval.api.evalrun import (
    CANDIDATE_RULES,
    RESERVED_VLLM_FLAGS,
    SERVING_RULES,
    SPEC_RULES,
    Backend,
    Baseline,
    Candidate,
    EvalRunSpec,
    Serving,
    Task,
)
from qeval.api.quantizedmodel import CALIBRATION_RULES, RULES, Calibration, QuantizedModelSpec
from tests.conftest import EXAMPLES

CEL = celpy.Environment()


def cel(rule: str, obj: dict, old: dict | None = None) -> bool:
    activation = {"self": celpy.json_to_cel(obj)}
    if old is not None:
        activation["oldSelf"] = celpy.json_to_cel(old)
    program = CEL.program(CEL.compile(rule))
    return bool(program.evaluate(activation))


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
    assert kinds.count("EvalRun") == 4 and kinds.count("QuantizedModel") == 7


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
            qm(scheme="W4A16", calibration={"dataset": "demo", "path": "/x.jsonl"}),
            "spec.calibration",
            "not both",
        ),
        (
            qm(scheme="W4A16", calibration={"dataset": "ultrachat_200k", "split": "train_sft[:x]"}),
            "spec.calibration.split",
            "not a datasets split expression",
        ),
        (
            qm(scheme="W4A16", calibration={"dataset": "someone/chats"}),
            "spec.calibration",
            "write its texts to a JSONL file and set calibration.path",
        ),
        (
            qm(scheme="W4A16", calibration={"path": "/c.jsonl", "split": "train"}),
            "spec.calibration",
            "calibration.split chooses rows of a hub dataset",
        ),
        (qm(scheme="W4A16", gruopSize=4), "spec.gruopSize", "did you mean 'groupSize'"),
        (er(baseline=None), "spec.baseline", "required"),
        (er(candidates=[], similarity={}), "spec", "spec.similarity scores the candidates'"),
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
        (er(batchSize=0), "spec.batchSize", "a number from 1 to 4096"),
        (er(batchSize="auto:0"), "spec.batchSize", "auto:N (found anew N times, N from 1"),
        (er(batchSize="fast"), "spec.batchSize", "(got 'fast')"),
        (er(batchSize=True), "spec.batchSize", "a valid integer or a valid string (got True)"),
        (
            er(backend="vllm-server", batchSize="auto", scheduling={"gpus": 1}),
            "spec",
            "spec.batchSize auto is for backends hf and vllm",
        ),
        *(
            (er(tasks=[{"name": "t", "limit": bad}]), "spec.tasks[0].limit", "between 0 and 1")
            for bad in (0, 0.0, -1, -0.5, 1.5, 100_000_001, 10.25)
        ),
        (
            er(tasks=[{"name": "t", "limit": "0.5"}]),
            "spec.tasks[0].limit",
            "a valid integer or a valid number (got '0.5')",
        ),
        *(
            (
                er(modelArgs={key: "true"}),
                "spec",
                "use spec.prompt.enableThinking and spec.prompt.thinkEndToken",
            )
            for key in ("enable_thinking", "think_end_token")
        ),
        (er(backend="tgi"), "spec.backend", "'hf', 'vllm' or 'vllm-server'"),
        (er(tasks=[{"name": "x", "numFewshot": -1}]), "spec.tasks[0].numFewshot", "greater"),
        (
            er(backend="vllm-server", serving={"extraArgs": ["--enforce-eager", "--port=9000"]}),
            "spec.serving",
            "extraArgs must not set --port",
        ),
        (
            er(backend="vllm-server", serving={"extraArgs": ["-tp", "2"]}),
            "spec.serving",
            "use tensorParallelSize",
        ),
        (er(serving={"numConcurrent": 4}), "spec", "needs backend vllm-server"),
        (er(backend="hf", serving={}), "spec", "remove it for backend hf"),
        (
            er(backend="vllm-server", serving={"tensorParallelSize": 2}),
            "spec",
            "tensorParallelSize is larger than spec.scheduling.gpus",
        ),
        (
            er(backend="vllm", serving={"tensorParallelSize": 4}, scheduling={"gpus": 2}),
            "spec",
            "raise gpus or lower tensorParallelSize",
        ),
        (
            er(backend="vllm-server", serving={"numConcurrent": 0}),
            "spec.serving.numConcurrent",
            "greater than or equal to 1",
        ),
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


def test_calibration_cel_rules_agree_with_python():
    datasets = [None, "demo", "ultrachat_200k", "HuggingFaceH4/ultrachat_200k", "x/y"]
    checked = 0
    for dataset, path, split in itertools.product(datasets, [None, "/c.jsonl"], [None, "train"]):
        obj = Calibration.model_construct(dataset=dataset, path=path, split=split)
        wire = {k: v for k, v in {"dataset": dataset, "path": path, "split": split}.items() if v}
        for rule in CALIBRATION_RULES:
            assert cel(rule.cel, wire) == rule.check(obj), (rule.cel, wire)
            checked += 1
    assert checked == 20 * len(CALIBRATION_RULES)


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


def test_serving_rules_in_cel_and_python_agree():
    """The spec rules on spec.serving, over backends, parallelism and GPUs. The API server
    applies the schema's defaults before it evaluates rules: the wire objects here are the
    models' own dumps, defaults filled in, as the server would see them."""
    base = {
        "baseline": Baseline.model_construct(name="baseline"),
        "candidates": [Candidate.model_construct(name="q", quantized_model="q")],
        "tasks": [Task.model_construct(name="t")],
    }
    backends = [None, *Backend]
    servings = [None, {}, {"tensor_parallel_size": 1}, {"tensor_parallel_size": 2}]
    servings += [{"extra_args": ["--trust-remote-code"]}, {"extra_args": ["--trust_remote_code=1"]}]
    schedulings = [None, {"gpus": 0}, {"gpus": 1}, {"gpus": 2}]
    outcomes: dict[str, set[bool]] = {rule.cel: set() for rule in SPEC_RULES}
    for backend, serving, scheduling, trust in itertools.product(
        backends, servings, schedulings, [None, False, True]
    ):
        fields: dict = dict(base)
        if trust is not None:
            fields["trust_remote_code"] = trust
        if backend is not None:
            fields["backend"] = backend
        if serving is not None:
            fields["serving"] = Serving.model_construct(**serving)
        if scheduling is not None:
            fields["scheduling"] = Scheduling.model_construct(**scheduling)
        obj = EvalRunSpec.model_construct(**fields)
        wire = {
            "baseline": {"name": "baseline", "model": {"uri": "o/m"}},
            "candidates": [{"name": "q", "quantizedModel": "q"}],
            "tasks": [{"name": "t"}],
        }
        if backend is not None:
            wire["backend"] = str(backend)
        if trust is not None:
            wire["trustRemoteCode"] = trust
        if serving is not None:
            wire["serving"] = fields["serving"].dump()
        if scheduling is not None:
            wire["scheduling"] = {"gpus": fields["scheduling"].gpus}
        for rule in SPEC_RULES:
            ok = cel(rule.cel, wire)
            assert ok == rule.check(obj), (rule.cel, wire)
            outcomes[rule.cel].add(ok)
    # (the rule on maxModelLen against modelArgs max_length: tests/test_long_context.py; the
    # judge's server: tests/test_judged_api.py)
    serving_rules = [
        r.cel
        for r in SPEC_RULES
        if "serving" in r.cel and "max_length" not in r.cel and "judged" not in r.cel
    ]
    assert len(serving_rules) == 3
    assert all(outcomes[r] == {True, False} for r in serving_rules)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--enforce-eager"],
        ["--kv-cache-dtype", "fp8"],
        ["--portable"],  # a flag that merely starts like a reserved one
        ["--port-offset=2"],
        *([flag] for flag in RESERVED_VLLM_FLAGS),
        *([flag, "2"] for flag in RESERVED_VLLM_FLAGS),
        *([f"{flag}=2"] for flag in RESERVED_VLLM_FLAGS),
        ["--tensor_parallel_size", "2"],  # vLLM reads it as --tensor-parallel-size
        ["--max_model_len=4096"],
        ["--port-range", "2"],  # a prefix of no reserved flag's name
        ["--enforce-eager", "--host=0.0.0.0"],
        ["=2"],
        ["a=b=c"],
    ],
)
def test_extra_args_rule_in_cel_and_python_agree(args):
    obj = Serving.model_construct(extra_args=args)
    wire = {"extraArgs": args} if args else {}
    reserved = any(a.split("=")[0].replace("_", "-") in RESERVED_VLLM_FLAGS for a in args)
    for rule in SERVING_RULES:
        assert cel(rule.cel, wire) == rule.check(obj) == (not reserved), (rule.cel, wire)


def test_immutable_fields_use_transition_rules(root):
    from qeval.api.crd import CRDS, build_crd

    schema = build_crd(CRDS[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    model_rules = schema["properties"]["spec"]["properties"]["model"]["x-kubernetes-validations"]
    (rule,) = [r["rule"] for r in model_rules]
    assert not cel(rule, {"uri": "a/b"}, {"uri": "a/c"})
    assert cel(rule, {"uri": "a/b"}, {"uri": "a/b"})


def test_serving_rules_reach_the_crd():
    from qeval.api.crd import CRDS, build_crd

    (info,) = [c for c in CRDS if c.model is EvalRun]
    schema = build_crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    serving = schema["properties"]["spec"]["properties"]["serving"]
    rules = [r["rule"] for r in serving["x-kubernetes-validations"]]
    assert "self == oldSelf" in rules
    assert all(r.cel in rules for r in SERVING_RULES)
