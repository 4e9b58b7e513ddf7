"""Long context (issue 15, item 5): lm-eval metadata for every task (RULER's
max_seq_lengths), and the model's context agreeing between qeval, the server and lm-eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from qeval.api.evalrun import SPEC_RULES, Backend, EvalRunSpec, Serving, context_length
from tests.test_api import cel

BASE = {"baseline": {"name": "b", "model": {"uri": "demo://tiny-llama"}}, "tasks": [{"name": "t"}]}

# A task shaped as RULER's are: its documents are built by a function that reads the
# metadata (max_seq_lengths) lm-eval passes it, with the model's tokenizer beside them.
PROBE_YAML = """task: qeval_probe_lengths
custom_dataset: !function probe.load
output_type: generate_until
test_split: test
doc_to_text: "{{question}}"
doc_to_target: "{{answer}}"
generation_kwargs: {until: ["\\n"], max_gen_toks: 2, do_sample: false}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
PROBE_PY = """import datasets


def load(max_seq_lengths=(4096,), tokenizer=None, **kwargs):
    rows = [
        {"question": f"length {n} with {tokenizer}", "answer": str(n)}
        for n in max_seq_lengths
    ]
    return {"test": datasets.Dataset.from_list(rows)}
"""


def test_the_metadata_reaches_every_tasks_config_with_the_models_tokenizer(tmp_path):
    """Real lm-eval on the demo model: the probe task builds one document per length it is
    given (as RULER does) and finds the model's tokenizer beside them; the metadata enters
    the results' configs and the cache key, and without it lm-eval's default applies."""
    from qeval.demo.model import demo_model_path
    from qeval.stages import evaluate

    model = demo_model_path()
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "qeval_probe_lengths.yaml").write_text(PROBE_YAML)
    (tasks / "probe.py").write_text(PROBE_PY)

    def run(name, metadata):
        inp = evaluate.EvaluateInput(
            model_name=name,
            model={"uri": str(model)},
            tasks=[{"name": "qeval_probe_lengths"}],
            task_paths=[str(tasks)],
            batch_size=4,
            task_metadata=metadata,
            cache_dir=str(tmp_path / "cache"),
            output_dir=str(tmp_path / name),
        )
        result = evaluate.run(inp)
        samples = Path(result.samples_dir) / "qeval_probe_lengths.jsonl"
        docs = [json.loads(line)["doc"]["question"] for line in samples.open()]
        return result, docs

    ruler, docs = run("ruler", {"max_seq_lengths": [128, 256, 512]})
    assert sorted(docs) == sorted(f"length {n} with {model}" for n in (128, 256, 512))
    config = json.loads(Path(ruler.results_path).read_text())["configs"]["qeval_probe_lengths"]
    assert config["metadata"]["max_seq_lengths"] == [128, 256, 512]
    plain, docs = run("plain", None)
    assert docs == [f"length 4096 with {None}"]  # the task's own default, no tokenizer
    assert plain.cache_keys != ruler.cache_keys


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (
            {
                "taskMetadata": {"max_seq_lengths": [4096, 8192]},
                "modelArgs": {"max_length": "4096"},
            },
            "max_seq_lengths [8192] exceed the model's context of 4096",
        ),
        (
            {
                "taskMetadata": {"max_seq_lengths": [4096, 8192]},
                "backend": "vllm-server",
                "serving": {"maxModelLen": 4096},
            },
            "exceed the model's context of 4096",
        ),
        ({"taskMetadata": {"max_seq_lengths": "4096"}}, "a list of positive token counts"),
        ({"taskMetadata": {"max_seq_lengths": [0]}}, "a list of positive token counts"),
        (
            {
                "backend": "vllm-server",
                "serving": {"maxModelLen": 8192},
                "modelArgs": {"max_length": "4096"},
            },
            "max_length differs from spec.serving.maxModelLen",
        ),
    ],
)
def test_lengths_that_do_not_fit_the_context_are_refused(extra, words):
    with pytest.raises(ValidationError, match=words.replace("[", r"\[").replace("]", r"\]")):
        EvalRunSpec.model_validate(BASE | extra)


@pytest.mark.parametrize(
    ("extra", "context"),
    [
        ({"taskMetadata": {"max_seq_lengths": [4096, 8192]}}, None),  # the model decides
        (
            {
                "backend": "vllm-server",
                "serving": {"maxModelLen": 8192},
                "taskMetadata": {"max_seq_lengths": [8192]},
            },
            8192,
        ),
        (
            {
                "backend": "vllm-server",
                "serving": {"maxModelLen": "auto"},
                "modelArgs": {"max_length": "8192"},
            },
            8192,
        ),
        (
            {
                "backend": "vllm-server",
                "serving": {"maxModelLen": 8192},
                "modelArgs": {"max_length": "8192"},
            },
            8192,
        ),
    ],
)
def test_lengths_within_the_context_are_taken(extra, context):
    assert context_length(EvalRunSpec.model_validate(BASE | extra)) == context


def test_the_context_rule_in_cel_and_python_agree():
    """spec.modelArgs max_length against spec.serving.maxModelLen, over both's forms."""
    (rule,) = [r for r in SPEC_RULES if "max_length" in r.cel and "maxModelLen" in r.cel]
    outcomes = set()
    for serving in (None, {}, {"maxModelLen": 4096}, {"maxModelLen": "auto"}):
        for args in (None, {}, {"max_length": "4096"}, {"max_length": "2048"}, {"dtype": "x"}):
            wire = dict(BASE, backend="vllm-server")
            if serving is not None:
                wire["serving"] = serving
            if args is not None:
                wire["modelArgs"] = args
            obj = EvalRunSpec.model_construct(
                backend=Backend.VLLM_SERVER,
                serving=None if serving is None else Serving.model_validate(serving),
                model_args=args or {},
            )
            ok = cel(rule.cel, wire)
            assert ok == rule.check(obj), wire
            outcomes.add(ok)
    assert outcomes == {True, False}
