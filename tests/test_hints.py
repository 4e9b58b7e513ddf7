"""Unknown fields get a hint from what is valid at their place (not from every field of the
kind), lm-eval's and TrustyAI's names get qeval's answer, and a union's member tags never
show in a field's path."""

from __future__ import annotations

import pytest

from qeval.api.documents import SpecError, parse
from qeval.api.evalrun import EvalRun
from qeval.api.hints import field_paths, locate


def er(**spec) -> dict:
    base = {"baseline": {"model": {"uri": "org/model"}}, "tasks": [{"name": "arc_easy"}]}
    return {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r"},
        "spec": {**base, **spec},
    }


def refusal(doc: dict) -> str:
    with pytest.raises(SpecError) as e:
        parse(doc, "f.yaml")
    (line,) = str(e.value).splitlines()
    return line.removeprefix("f.yaml: EvalRun r: ")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # lm-eval's and TrustyAI's vocabulary (these used to suggest samples, modelArgs and
        # outputTokens: close spellings of fields elsewhere in the kind)
        (
            {"logSamples": True},
            "spec.logSamples: unknown field; lm-eval's log_samples is always on in qeval",
        ),
        (
            {"genArgs": {"temperature": 0}},
            "spec.genArgs: unknown field; did you mean spec.prompt.genKwargs",
        ),
        (
            {"outputs": {"pvcName": "x"}},
            "spec.outputs: unknown field; qeval keeps every result itself",
        ),
        ({"gen_kwargs": {}}, "spec.gen_kwargs: unknown field; did you mean spec.prompt.genKwargs"),
        ({"apply_chat_template": True}, "did you mean spec.prompt.chatTemplate"),
        ({"metadata": {"max_seq_lengths": [4096]}}, "did you mean spec.taskMetadata"),
        # genuine typos: the field of that place
        ({"batchSzie": 8}, "spec.batchSzie: unknown field; did you mean 'batchSize'?"),
        (
            {"tasks": [{"name": "t", "numFewsot": 5}]},
            "spec.tasks[0].numFewsot: unknown field; did you mean 'numFewshot'?",
        ),
        ({"candidates": [{"quantizedmodel": "q"}]}, "did you mean 'quantizedModel'?"),
        (
            {"performance": {"scenarios": [{"name": "s", "kind": "throughput", "outputs": 64}]}},
            "spec.performance.scenarios[0].outputs: unknown field; did you mean 'outputTokens'?",
        ),
        (
            {"prompt": {"genArgs": {}}},
            "spec.prompt.genArgs: unknown field; did you mean 'genKwargs'?",
        ),
        # a field of another place of the spec: that place
        (
            {"numFewshot": 5},
            "spec.numFewshot: unknown field; did you mean spec.tasks[].numFewshot?",
        ),
        (
            {"limit": 0.1},
            "spec.limit: unknown field; did you mean spec.tasks[].limit or spec.judged[].limit?",
        ),
        (
            {"prompt": {"temperature": 0}},
            "did you mean spec.prompt.genKwargs.temperature or spec.judged[].judge.temperature?",
        ),
        ({"scheduling": {"env": []}}, "spec.scheduling.env: unknown field; did you mean spec.env?"),
        ({"prompt": {"logSamples": True}}, "spec.prompt.logSamples: unknown field; remove it"),
    ],
)
def test_unknown_fields_get_the_hint_of_their_place(spec, expected):
    assert expected in refusal(er(**spec))


def test_a_quantizedmodel_typo_still_gets_its_field():
    doc = {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": "m"},
        "spec": {"model": {"uri": "org/m"}, "scheme": "W4A16", "gruopSize": 4},
    }
    with pytest.raises(
        SpecError, match=r"spec.gruopSize: unknown field; did you mean 'groupSize'\?"
    ):
        parse(doc, "f.yaml")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"batchSize": True},
            "spec.batchSize: Input should be a valid integer or a valid string (got True)",
        ),
        (
            {"tasks": [{"name": "t", "limit": "5"}]},
            "spec.tasks[0].limit: Input should be a valid integer or a valid number (got '5')",
        ),
        (
            {"scheduling": {"resources": {"requests": {"cpu": [1]}}}},
            "spec.scheduling.resources.requests.cpu: Input should be a valid integer or a "
            "valid string",
        ),
    ],
)
def test_a_union_is_one_line_at_the_fields_own_path(spec, expected):
    assert refusal(er(**spec)).startswith(expected)


def test_locate_keeps_fields_indices_and_map_keys_and_drops_tags():
    loc = ("spec", "serving", "maxModelLen", "constrained-str")
    assert locate(EvalRun, loc)[0] == ("spec", "serving", "maxModelLen")
    path, models = locate(EvalRun, ("spec", "tasks", 0))
    assert path == ("spec", "tasks", 0) and [m.__name__ for m in models] == ["Task"]
    assert locate(EvalRun, ("spec", "modelArgs", "dtype"))[0] == ("spec", "modelArgs", "dtype")
    assert "spec.prompt.genKwargs.temperature" in field_paths(EvalRun)["temperature"]
