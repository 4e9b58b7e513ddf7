"""Hostile input at the door: paths that leave their root, duplicate keys and objects,
alias bombs, coerced types, reserved modelArgs, recipes that quantize nothing, oversized
values. Each rule that lives in pydantic and in CEL is evaluated both ways here."""

from __future__ import annotations

import time
from pathlib import Path

import celpy
import pytest

from qeval.api import SpecError, load_documents
from qeval.api.common import PATH_RULE, URI_RULE, data_file_rule
from qeval.api.documents import parse
from qeval.api.evalrun import MODEL_ARGS_RULES, EvalRunSpec
from qeval.api.quantizedmodel import (
    CALIBRATION_RULES,
    RECIPE_RULE,
    Calibration,
    QuantizedModelSpec,
)
from qeval.api.yamldocs import YamlError, load_all

CEL = celpy.Environment()


def cel(rule: str, value: object) -> bool:
    program = CEL.program(CEL.compile(rule))
    return bool(program.evaluate({"self": celpy.json_to_cel(value)}))


URIS = {
    # accepted
    "org/model": True,
    "hf://org/model": True,
    "gpt2": True,
    "./models/m": True,
    "/models/llama-3.1-8b": True,
    "~/.cache/qeval/m": True,
    "pvc://models/llama/w4a16": True,
    "s3://bucket/key/m": True,
    "demo://tiny-llama": True,
    # refused: leaving the root
    "pvc://claim/../..": False,
    "pvc://x/../qeval-data/cache": False,
    "pvc://x/a/../../b": False,
    "hf://../../etc/passwd": False,
    "../m": False,
    "./a/../../b": False,
    "/models/./m": False,
    "/models//m": False,
    "s3://b/../k": False,
    # refused: characters a shell or YAML reads
    "org/m;rm -rf": False,
    "./m$(id)": False,
    "./m`id`": False,
    "org/m name": False,
    "./m\nx": False,
    "demo://other": False,
    "ftp://host/m": False,
}


@pytest.mark.parametrize("uri", sorted(URIS))
def test_uri_rule_in_cel_and_python_agree(uri):
    assert URI_RULE.check(uri) == URIS[uri]
    assert cel(URI_RULE.cel, uri) == URIS[uri]


PATHS = {
    "./tasks": True,
    "tasks/mine": True,
    "/data/calib.jsonl": True,
    "pvc://data/calib.jsonl": True,
    "../tasks": False,
    "./a/../../b": False,
    "/a/./b": False,
    "pvc://data/../other/x.jsonl": False,
    "/a//b": False,
    "a b": False,
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_path_rule_in_cel_and_python_agree(path):
    assert PATH_RULE.check(path) == PATHS[path]
    assert cel(PATH_RULE.cel, path) == PATHS[path]


@pytest.mark.parametrize(
    ("path", "ok"),
    [("/etc/passwd", False), ("./c.jsonl", True), ("./c.txt", True), ("./c.jsonl.sh", False)],
)
def test_a_data_file_names_its_kind(path, ok):
    rule = data_file_rule((".jsonl", ".txt"))
    assert rule.check(path) == ok == cel(rule.cel, path)


def wire_er(**spec) -> dict:
    base = {
        "baseline": {"model": {"uri": "org/model"}},
        "candidates": [{"name": "c", "model": {"uri": "org/q"}}],
        "tasks": [{"name": "arc_easy"}],
    }
    return {**base, **spec}


@pytest.mark.parametrize(
    ("spec", "ok"),
    [
        ({"modelArgs": {"dtype": "bfloat16"}}, True),
        ({"modelArgs": {"pretrained": "/other"}}, False),
        ({"modelArgs": {"trust_remote_code": "False"}}, False),
        ({"modelArgs": {"batch_size": "64"}}, False),
        ({"modelArgs": {"device": "cuda:1"}}, False),
        ({"modelArgs": {"model": "x"}}, False),
        ({"modelArgs": {"base_url": "http://evil"}}, False),
        ({"modelArgs": {"tokenizer": "org/tok"}}, True),  # hf: qeval passes none
        ({"backend": "vllm-server", "modelArgs": {"tokenizer": "org/tok"}}, False),
        ({"backend": "vllm-server", "modelArgs": {"num_concurrent": "64"}}, False),
        ({"backend": "vllm-server", "modelArgs": {"max_retries": "3"}}, True),
    ],
)
def test_model_args_rules_in_cel_and_python_agree(spec, ok):
    wire = wire_er(**spec)
    obj = EvalRunSpec.model_construct(
        backend=wire.get("backend", "hf"), model_args=wire.get("modelArgs", {})
    )
    results = {(cel(r.cel, wire), r.check(obj)) for r in MODEL_ARGS_RULES}
    assert all(a == b for a, b in results), (spec, results)
    assert all(a for a, _ in results) == ok


@pytest.mark.parametrize(
    ("recipe", "ok"),
    [
        ("quant_stage:\n  quant_modifiers:\n    GPTQModifier: {scheme: W4A16}\n", True),
        ("stage:\n  mods:\n    QuantizationModifier:\n      scheme: FP8_DYNAMIC\n", True),
        ("a:\n  AutoRoundModifier: {}\n", True),
        ("quant_stage:\n  quant_modifiers:\n    SmoothQuantModifier: {}\n", False),
        ("foo: bar\n", False),
        ("x:\n  MyGPTQModifierX: {}\n", False),
    ],
)
def test_a_recipe_must_name_a_quantizing_modifier_in_cel_and_python(recipe, ok):
    rule = RECIPE_RULE
    obj = QuantizedModelSpec.model_construct(recipe=recipe)
    assert rule.check(obj) == ok == cel(rule.cel, {"model": {"uri": "a/b"}, "recipe": recipe})
    doc = {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": "m"},
        "spec": {"model": {"uri": "org/m"}, "recipe": recipe},
    }
    if ok:
        parse(doc, "f.yaml")
    else:
        with pytest.raises(SpecError, match="applies no quantization"):
            parse(doc, "f.yaml")


@pytest.mark.parametrize(
    ("calibration", "ok"),
    [({"dataset": "demo"}, True), ({"path": "./c.jsonl"}, True), ({}, True)]
    + [({"dataset": "demo", "path": "./c.jsonl"}, False)],
)
def test_calibration_rule_in_cel_and_python_agree(calibration, ok):
    (rule,) = [r for r in CALIBRATION_RULES if "not both" in r.message]
    obj = Calibration.model_construct(
        dataset=calibration.get("dataset"), path=calibration.get("path")
    )
    assert rule.check(obj) == ok == cel(rule.cel, calibration)


def er_doc(**spec) -> dict:
    return {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r"},
        "spec": wire_er(**spec),
    }


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"batchSize": "5"}, "spec.batchSize"),
        ({"seed": "7"}, "spec.seed"),
        ({"cache": "no"}, "spec.cache"),
        ({"allowCodeExecution": "true"}, "spec.allowCodeExecution"),
        ({"recoveryThreshold": "0.99"}, "spec.recoveryThreshold"),
        ({"batchSize": True}, "spec.batchSize"),
        ({"modelArgs": {"max_length": 2048}}, "spec.modelArgs.max_length"),
        ({"tasks": [{"name": 5}]}, "spec.tasks[0].name"),
    ],
)
def test_types_are_strict_as_on_the_api_server(spec, field):
    with pytest.raises(SpecError) as e:
        parse(er_doc(**spec), "f.yaml")
    assert f": {field}: " in str(e.value)


def test_a_float_field_takes_an_integer_as_json_schema_does():
    assert parse(er_doc(recoveryThreshold=1), "f.yaml").spec.recovery_threshold == 1.0


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"seed": 2**32}, "spec.seed"),
        ({"modelArgs": {f"k{i}": "v" for i in range(33)}}, "spec.modelArgs"),
        ({"modelArgs": {"dtype": "x" * 1025}}, "spec.modelArgs.dtype"),
        ({"modelArgs": {"bad key": "x"}}, "spec.modelArgs"),
        ({"scheduling": {"nodeSelector": {"k": "v" * 64}}}, "spec.scheduling.nodeSelector.k"),
        ({"scheduling": {"affinity": {"evil": {}}}}, "spec.scheduling.affinity"),
        ({"taskPaths": ["./t/../../etc"]}, "spec.taskPaths[0]"),
        ({"tasks": [{"name": "a", "limit": 10**9}]}, "spec.tasks[0].limit"),
    ],
)
def test_bounds_refuse_oversized_and_out_of_range_values(spec, field):
    with pytest.raises(SpecError) as e:
        parse(er_doc(**spec), "f.yaml")
    assert f": {field}" in str(e.value)


def test_the_seed_bound_is_numpys():
    assert parse(er_doc(seed=2**32 - 1), "f.yaml").spec.seed == 4294967295


def test_an_echoed_value_is_capped():
    recipe = "GPTQModifier: {}\n" + "#" * 70_000
    doc = {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": "m"},
        "spec": {"model": {"uri": "org/m"}, "recipe": recipe},
    }
    with pytest.raises(SpecError) as e:
        parse(doc, "f.yaml")
    assert "spec.recipe" in str(e.value) and len(str(e.value)) < 1000


# --- YAML -------------------------------------------------------------------------------


def test_a_duplicate_key_is_refused_naming_both_lines():
    with pytest.raises(YamlError, match=r"line 4: duplicate key 'seed' \(first on line 2\)"):
        load_all("spec:\n  seed: 1\n  batchSize: 2\n  seed: 3\n")


def test_merge_keys_still_override():
    assert load_all("a: &a {x: 1}\nb:\n  <<: *a\n  x: 2\n") == [(1, {"a": {"x": 1}, "b": {"x": 2}})]


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


def test_a_billion_laughs_is_refused_at_once():
    t0 = time.monotonic()
    with pytest.raises(YamlError, match="excessive aliasing"):
        load_all(BOMB)
    assert time.monotonic() - t0 < 0.5


def test_a_few_aliases_are_fine():
    assert load_all("a: &a [1, 2]\nb: *a\n") == [(1, {"a": [1, 2], "b": [1, 2]})]


def test_a_recursive_alias_is_refused():
    with pytest.raises(YamlError, match="contains it"):
        load_all("a: &a [*a]\n")


EVALRUN = """apiVersion: qeval.dev/v1alpha1
kind: EvalRun
metadata:
  name: r
spec:
  baseline: {model: {uri: org/model}}
  candidates: [{name: c, model: {uri: org/q}}]
  tasks: [{name: arc_easy}]
"""


def test_two_objects_of_one_kind_and_name_are_refused(tmp_path: Path):
    path = tmp_path / "runs.yaml"
    path.write_text(EVALRUN + "---\n" + EVALRUN)
    with pytest.raises(SpecError, match=r"runs.yaml:10: EvalRun r: a second object .*runs.yaml:1"):
        load_documents(path)


def test_the_same_name_in_two_files_of_a_folder_is_refused(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(EVALRUN)
    (tmp_path / "b.yaml").write_text(EVALRUN)
    with pytest.raises(SpecError, match=r"b.yaml:1: EvalRun r: a second object .*a.yaml:1"):
        load_documents(tmp_path)


def test_a_duplicate_key_in_a_file_names_file_and_line(tmp_path: Path):
    path = tmp_path / "r.yaml"
    path.write_text(EVALRUN + "  seed: 1\n  seed: 2\n")
    with pytest.raises(SpecError, match=r"r.yaml: line 10: duplicate key 'seed'"):
        load_documents(path)
