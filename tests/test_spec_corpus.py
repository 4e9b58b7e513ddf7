"""A corpus of invalid, hostile and boundary specs, each run through `qeval validate`,
`qeval run` (in-process, as the CLI runs them) and the real kube-apiserver with the
generated CRDs (``kubectl apply --dry-run=server --validate=strict`` on the session's
control plane, tests/cluster): all three refuse or accept it alike and name the same field;
a refused spec writes nothing, prints no traceback and is answered within a bound.

Where the API server cannot know (YAML-level refusals the loader makes before any schema,
what only lm-eval's task index or this machine's files can tell, objects beyond the one
applied) the case says so (``api=None``) and only the two local paths are compared.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import time
from dataclasses import dataclass
from dataclasses import field as default
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from qeval.cli import main

if TYPE_CHECKING:
    from tests.cluster.controlplane import ControlPlane

QM: dict[str, Any] = {
    "apiVersion": "qeval.dev/v1alpha1",
    "kind": "QuantizedModel",
    "metadata": {"name": "q"},
    "spec": {"model": {"uri": "demo://tiny-llama"}, "scheme": "W4A16", "scheduling": {"gpus": 0}},
}
ER: dict[str, Any] = {
    "apiVersion": "qeval.dev/v1alpha1",
    "kind": "EvalRun",
    "metadata": {"name": "r"},
    "spec": {
        "baseline": {"model": {"uri": "demo://tiny-llama"}},
        "candidates": [{"quantizedModel": "q"}],
        "tasks": [{"name": "qeval_demo_facts", "limit": 10}],
        "scheduling": {"gpus": 0},
    },
}


@dataclass
class Case:
    id: str
    ok: bool  # accepted by qeval validate and qeval run
    field: str | None = None  # named in the refusal
    er: dict[str, Any] = default(default_factory=dict)  # dotted path -> value (None: delete)
    qm: dict[str, Any] = default(default_factory=dict)
    text: str | None = None  # raw YAML instead of the two objects
    api: bool | None = True  # the API server's verdict equals ok; None: it cannot know
    files: dict[str, str] = default(default_factory=dict)  # created beside the spec


def _set(doc: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc.setdefault(p, {})
    last = parts[-1]
    if isinstance(doc, list):
        doc[int(last)] = value
    elif value is None:
        doc.pop(last, None)
    else:
        doc[last] = value


def bad(id: str, field: str, er=None, qm=None, **kw) -> Case:
    return Case(id, False, field, er or {}, qm or {}, **kw)


def good(id: str, er=None, qm=None, **kw) -> Case:
    return Case(id, True, None, er or {}, qm or {}, **kw)


BOMB = (
    "apiVersion: qeval.dev/v1alpha1\nkind: EvalRun\nmetadata:\n  name: r\n  annotations:\n"
    "    a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"    {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n"
        for i in range(8)
    )
)
S = "spec."
# A marker no case may ever create: each string below runs `touch MARK` wherever a shell reads
# it (command substitution, backticks, after ; | && or a newline). tests/test_hostile.py
# checks the file is never there.
MARK = f"/tmp/qeval-pwned-{secrets.token_hex(4)}"
SHELL = f"x$(touch {MARK})`touch {MARK}`;touch {MARK}|touch {MARK}&&touch {MARK}\ntouch {MARK}"
SHELL_SHORT = f"$(touch {MARK})"  # for fields of at most 64 characters
# What a kubelet would expand in a container's command or env ($(VAR), $$): passed verbatim.
KUBELET = "$(KUBERNETES_SERVICE_HOST) $$ $(HF_TOKEN)"
VLLM = {S + "backend": "vllm-server", S + "scheduling.gpus": 1}
CASES: list[Case] = [
    # --- types, exactly as strict as the API server ---------------------------------------
    bad("seed-string", "spec.seed", {S + "seed": "7"}),
    bad("batch-string", "spec.batchSize", {S + "batchSize": "16"}),
    bad("batch-bool", "spec.batchSize", {S + "batchSize": True}),
    bad("batch-float", "spec.batchSize", {S + "batchSize": 1.5}),
    bad("cache-no-string", "spec.cache", {S + "cache": "no"}),
    bad("code-exec-string", "spec.allowCodeExecution", {S + "allowCodeExecution": "true"}),
    bad("threshold-string", "spec.recoveryThreshold", {S + "recoveryThreshold": "0.99"}),
    bad("task-name-int", "spec.tasks[0].name", {S + "tasks.0": {"name": 5}}),
    bad("model-arg-int", "spec.modelArgs.max_length", {S + "modelArgs": {"max_length": 2048}}),
    bad("gpus-string", "spec.scheduling.gpus", {S + "scheduling.gpus": "1"}),
    bad("qm-samples-string", "spec.calibration.numSamples", qm={S + "calibration.numSamples": "8"}),
    # --- ranges --------------------------------------------------------------------------
    bad("seed-2^32", "spec.seed", {S + "seed": 2**32}),
    bad("seed-negative", "spec.seed", {S + "seed": -1}),
    bad("batch-0", "spec.batchSize", {S + "batchSize": 0}),
    bad("batch-4097", "spec.batchSize", {S + "batchSize": 4097}),
    bad("batch-auto-0", "spec.batchSize", {S + "batchSize": "auto:0"}),
    bad("batch-fast", "spec.batchSize", {S + "batchSize": "fast"}),
    bad("batch-auto-server", "spec.batchSize", {**VLLM, S + "batchSize": "auto"}),
    bad("limit-1.5", "spec.tasks[0].limit", {S + "tasks.0.limit": 1.5}),
    bad("limit-negative-fraction", "spec.tasks[0].limit", {S + "tasks.0.limit": -0.5}),
    bad("limit-fraction-0", "spec.tasks[0].limit", {S + "tasks.0.limit": 0.0}),
    bad("threshold-0", "spec.recoveryThreshold", {S + "recoveryThreshold": 0}),
    bad("threshold-2.5", "spec.recoveryThreshold", {S + "recoveryThreshold": 2.5}),
    bad("shots-negative", "spec.tasks[0].numFewshot", {S + "tasks.0.numFewshot": -1}),
    bad("shots-65", "spec.tasks[0].numFewshot", {S + "tasks.0.numFewshot": 65}),
    bad("limit-0", "spec.tasks[0].limit", {S + "tasks.0.limit": 0}),
    bad("limit-1e9", "spec.tasks[0].limit", {S + "tasks.0.limit": 10**9}),
    bad("gpus-negative", "spec.scheduling.gpus", {S + "scheduling.gpus": -1}),
    bad("gpus-65", "spec.scheduling.gpus", {S + "scheduling.gpus": 65}),
    bad("similarity-prompts-0", "spec.similarity.prompts", {S + "similarity": {"prompts": 0}}),
    bad("dampening-1", "spec.dampeningFrac", qm={S + "scheme": "W4A16", S + "dampeningFrac": 1.0}),
    bad("calib-samples-0", "spec.calibration.numSamples", qm={S + "calibration.numSamples": 0}),
    bad("calib-seq-7", "spec.calibration.maxSeqLength", qm={S + "calibration.maxSeqLength": 7}),
    # --- enums and names -----------------------------------------------------------------
    bad("backend-tgi", "spec.backend", {S + "backend": "tgi"}),
    bad("suite-unknown", "spec.suites[0]", {S + "suites": ["nope"]}),
    bad("scheme-w5", "spec.scheme", qm={S + "scheme": "W5A16"}),
    bad(
        "toleration-op",
        "spec.scheduling.tolerations[0].operator",
        {S + "scheduling.tolerations": [{"operator": "Maybe"}]},
    ),
    bad("name-upper", "metadata.name", {"metadata.name": "Bad_Name"}),
    bad("name-254", "metadata.name", {"metadata.name": "a" * 254}),
    bad("api-version", "apiVersion", {"apiVersion": "qeval.dev/v2"}),
    bad("kind-unknown", "kind", {"kind": "EvalRuns"}),
    bad(
        "candidate-upper",
        "spec.candidates[0].name",
        {S + "candidates": [{"name": "W4", "model": {"uri": "demo://tiny-llama"}}]},
    ),
    bad(
        "candidate-41",
        "spec.candidates[0].name",
        {S + "candidates": [{"name": "a" * 41, "model": {"uri": "demo://tiny-llama"}}]},
    ),
    bad("task-name-space", "spec.tasks[0].name", {S + "tasks.0.name": "a b"}),
    bad("task-name-129", "spec.tasks[0].name", {S + "tasks.0.name": "a" * 129}),
    bad("metric-space", "spec.tasks[0].metric", {S + "tasks.0.metric": "acc norm"}),
    bad("metric-65", "spec.tasks[0].metric", {S + "tasks.0.metric": "a" * 65}),
    bad("queue-name", "spec.scheduling.queueName", {S + "scheduling.queueName": "Bad_Q"}),
    bad("secret-name", "spec.hfTokenSecret.name", qm={S + "hfTokenSecret": {"name": "Bad"}}),
    bad(
        "revision-shell",
        "spec.baseline.model.revision",
        {S + "baseline.model.revision": "main; rm -rf /"},
    ),
    # --- unknown fields ------------------------------------------------------------------
    bad("unknown-spec-field", "spec.seeds", {S + "seeds": 1}),
    bad("unknown-task-field", "spec.tasks[0].shots", {S + "tasks.0.shots": 5}),
    bad("unknown-qm-field", "spec.bits", qm={S + "bits": 4}),
    bad("lm-eval-log-samples", "spec.logSamples", {S + "logSamples": True}),
    bad("trustyai-gen-args", "spec.genArgs", {S + "genArgs": [{"name": "t", "value": "0"}]}),
    # --- spec.env / spec.envFrom: Kubernetes' shapes, by reference ---------------------------
    bad(
        "env-reserved",
        "spec.env[0].name",
        {S + "env": [{"name": "QEVAL_STAGE_INPUT", "value": "{}"}]},
    ),
    bad("env-hf-token", "spec.env[0].name", {S + "env": [{"name": "HF_TOKEN", "value": "x"}]}),
    bad("env-literal-key", "spec.env[0]", {S + "env": [{"name": "OPENAI_API_KEY", "value": "sk"}]}),
    bad(
        "env-value-and-ref",
        "spec.env[0]",
        {
            S + "env": [
                {
                    "name": "A",
                    "value": "1",
                    "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                }
            ]
        },
    ),
    bad("env-neither", "spec.env[0]", {S + "env": [{"name": "A"}]}),
    bad(
        "env-two-sources",
        "spec.env[0].valueFrom",
        {
            S + "env": [
                {
                    "name": "A",
                    "valueFrom": {
                        "secretKeyRef": {"name": "s", "key": "k"},
                        "configMapKeyRef": {"name": "c", "key": "k"},
                    },
                }
            ]
        },
    ),
    bad("env-twice", "spec.env", {S + "env": [{"name": "A", "value": "1"}] * 2}),
    bad("env-name-shell", "spec.env[0].name", {S + "env": [{"name": "A;id", "value": "1"}]}),
    bad("env-from-neither", "spec.envFrom[0]", {S + "envFrom": [{"prefix": "X_"}]}),
    bad(
        "env-secret-name",
        "spec.env[0].valueFrom.secretKeyRef.name",
        {
            S + "env": [
                {"name": "A_KEY", "valueFrom": {"secretKeyRef": {"name": "Bad", "key": "k"}}}
            ]
        },
    ),
    # --- cross-field rules (CEL twins) ---------------------------------------------------
    bad("no-tasks", "spec", {S + "tasks": []}),
    bad("task-twice", "spec", {S + "tasks": [{"name": "qeval_demo_facts"}] * 2}),
    good("no-candidates", {S + "candidates": []}),  # one model alone: its scores
    bad(
        "candidate-both",
        "spec.candidates[0]",
        {S + "candidates": [{"quantizedModel": "q", "model": {"uri": "demo://tiny-llama"}}]},
    ),
    bad(
        "candidate-unnamed",
        "spec.candidates[0]",
        {S + "candidates": [{"model": {"uri": "demo://tiny-llama"}}]},
    ),
    bad(
        "candidate-is-baseline",
        "spec",
        {S + "candidates": [{"quantizedModel": "baseline"}]},
        api=True,
    ),
    bad("candidates-same-name", "spec", {S + "candidates": [{"quantizedModel": "q"}] * 2}),
    bad("code-task-pattern", "spec", {S + "tasks.0.name": "humaneval"}),
    bad("code-suite", "spec", {S + "suites": ["code"]}),
    bad("serving-with-hf", "spec", {S + "serving": {}}),
    bad(
        "extra-args-port",
        "spec.serving",
        {S + "backend": "vllm-server", S + "serving": {"extraArgs": ["--port=1"]}},
    ),
    bad(
        "max-model-len-8k",
        "spec.serving.maxModelLen",
        {
            S + "backend": "vllm-server",
            S + "serving": {"maxModelLen": "8k"},
            S + "scheduling.gpus": 1,
        },
    ),
    bad(
        "max-model-len-15",
        "spec.serving.maxModelLen",
        {
            S + "backend": "vllm-server",
            S + "serving": {"maxModelLen": 15},
            S + "scheduling.gpus": 1,
        },
    ),
    bad(
        "tp-over-gpus",
        "spec",
        {
            S + "backend": "vllm-server",
            S + "serving": {"tensorParallelSize": 2},
            S + "scheduling.gpus": 1,
        },
    ),
    bad(
        "scenario-concurrency",
        "spec.performance.scenarios[0]",
        {S + "performance": {"scenarios": [{"name": "c", "kind": "concurrent"}]}},
    ),
    bad(
        "scenario-twice",
        "spec.performance",
        {S + "performance": {"scenarios": [{"name": "s", "kind": "synchronous"}] * 2}},
    ),
    bad("scheme-and-recipe", "spec", qm={S + "recipe": "GPTQModifier: {}\n"}),
    bad("neither-scheme-nor-recipe", "spec", qm={S + "scheme": None}),
    bad("group-size-fp8", "spec", qm={S + "scheme": "W8A8-FP8", S + "groupSize": 64}),
    bad("smoothquant-w4", "spec", qm={S + "smoothquantStrength": 0.5}),
    bad("awq-int8", "spec", qm={S + "scheme": "W8A8-INT8", S + "algorithm": "AWQ"}),
    bad(
        "calibration-both",
        "spec.calibration",
        qm={S + "calibration": {"dataset": "demo", "path": "./c.jsonl"}},
    ),
    # --- modelArgs: qeval's own keys, bounds ------------------------------------------------
    *[
        bad(f"model-arg-{k}", "spec.modelArgs", {S + "modelArgs": {k: v}})
        for k, v in [
            ("pretrained", "/elsewhere"),
            ("trust_remote_code", "False"),
            ("batch_size", "64"),
            ("device", "cuda:1"),
            ("base_url", "http://evil"),
            ("model", "other"),
            ("revision", "main"),
            ("enable_thinking", "true"),
            ("think_end_token", "</think>"),
        ]
    ],
    bad(
        "model-arg-tokenizer-server",
        "spec.modelArgs",
        {S + "backend": "vllm-server", S + "modelArgs": {"tokenizer": "org/t"}},
    ),
    bad("model-args-33", "spec.modelArgs", {S + "modelArgs": {f"k{i}": "v" for i in range(33)}}),
    bad("model-arg-1025", "spec.modelArgs.dtype", {S + "modelArgs": {"dtype": "x" * 1025}}),
    bad("model-arg-200k", "spec.modelArgs.x", {S + "modelArgs": {"x": "y" * 200_000}}),
    bad("model-arg-key", "spec.modelArgs", {S + "modelArgs": {"bad key": "x"}}),
    bad(
        "node-selector-value",
        "spec.scheduling.nodeSelector.k",
        {S + "scheduling.nodeSelector": {"k": "v" * 64}},
    ),
    bad(
        "node-selector-65",
        "spec.scheduling.nodeSelector",
        {S + "scheduling.nodeSelector": {f"k{i}": "v" for i in range(65)}},
    ),
    bad("affinity-key", "spec.scheduling.affinity", {S + "scheduling.affinity": {"evil": {}}}),
    bad(
        "resource-value",
        "spec.scheduling.resources.requests.cpu",
        {S + "scheduling.resources": {"requests": {"cpu": "1" * 65}}},
    ),
    bad("ignore-513", "spec.ignore[0]", qm={S + "ignore": ["x" * 513]}),
    bad(
        "recipe-65537",
        "spec.recipe",
        qm={S + "scheme": None, S + "recipe": "GPTQModifier: {}\n#" + "x" * 65537},
    ),
    # --- paths and URIs that leave their root, shell characters --------------------------
    *[
        bad(f"uri-{i}", "spec.baseline.model.uri", {S + "baseline.model.uri": uri})
        for i, uri in enumerate(
            [
                "pvc://claim/../..",
                "pvc://x/../qeval-data/cache",
                "hf://../../etc/passwd",
                "../model",
                "./a/../../b",
                "/models//m",
                "s3://b/../k",
                "org/m;rm -rf /",
                "./m$(id)",
                "ftp://host/m",
                "demo://other",
                "",
                "a" * 513,
            ]
        )
    ],
    bad("task-path-up", "spec.taskPaths[0]", {S + "taskPaths": ["../tasks"]}),
    bad("task-path-inner-up", "spec.taskPaths[0]", {S + "taskPaths": ["./t/../../etc"]}),
    bad("task-path-markup", "spec.taskPaths[0]", {S + "taskPaths": ["./[red]x[/red]"]}),
    bad("task-paths-17", "spec.taskPaths", {S + "taskPaths": [f"./t{i}" for i in range(17)]}),
    bad(
        "prompts-passwd",
        "spec.similarity.promptsPath",
        {S + "similarity": {"promptsPath": "/etc/passwd"}},
    ),
    bad(
        "prompts-up",
        "spec.similarity.promptsPath",
        {S + "similarity": {"promptsPath": "../p.jsonl"}},
    ),
    bad(
        "embedding-up",
        "spec.similarity.embeddingModel",
        {S + "similarity": {"embeddingModel": "hf://../x"}},
    ),
    bad("calib-passwd", "spec.calibration.path", qm={S + "calibration": {"path": "/etc/passwd"}}),
    bad("calib-up", "spec.calibration.path", qm={S + "calibration": {"path": "../c.jsonl"}}),
    bad("output-up", "spec.output.uri", qm={S + "output": {"uri": "pvc://x/../qeval-data/m"}}),
    bad("output-relative-up", "spec.output.uri", qm={S + "output": {"uri": "../out"}}),
    bad("qm-uri-s3-up", "spec.model.uri", qm={S + "model.uri": "s3://b/../k"}),
    # --- recipes that quantize nothing ----------------------------------------------------
    bad("recipe-no-modifier", "spec", qm={S + "scheme": None, S + "recipe": "foo: bar\n"}),
    bad(
        "recipe-smoothquant-only",
        "spec",
        qm={
            S + "scheme": None,
            S + "recipe": "quant_stage:\n  quant_modifiers:\n    SmoothQuantModifier: {}\n",
        },
    ),
    bad(
        "recipe-not-yaml",
        "spec.recipe",
        qm={S + "scheme": None, S + "recipe": "GPTQModifier: [\n"},
        api=None,
    ),
    # --- YAML itself: refused before any schema (kubectl's decoder refuses these too) ----
    bad(
        "duplicate-key",
        "line 17: duplicate key 'seed' (first on line 16)",
        text=yaml.safe_dump(ER, sort_keys=False) + "  seed: 1\n  seed: 2\n",
        api=None,
    ),
    bad("billion-laughs", "excessive aliasing", text=BOMB, api=None),
    bad("recursive-alias", "contains it", text="a: &a [*a]\n", api=None),
    bad("deep-nesting", "nested too deeply", text="a: " + "[" * 3000 + "]" * 3000, api=None),
    bad("not-a-mapping", "expected a mapping", text="- 1\n- 2\n", api=None),
    bad(
        "same-name-twice",
        "a second object",
        text=yaml.safe_dump_all([ER, ER], sort_keys=False),
        api=None,
    ),
    # --- what only lm-eval's task index or this machine can tell ---------------------------
    bad("tag-as-task", "spec.tasks[0].name", {S + "tasks.0.name": "qeval_demo"}, api=None),
    bad(
        "unsafe-code-task", "spec.tasks[0].name", {S + "tasks.0.name": "cruxeval_output"}, api=None
    ),
    bad("metric-typo", "spec.tasks[0].metric", {S + "tasks.0.metric": "acc_nrom"}, api=None),
    bad("unknown-task", "spec.tasks[0].name", {S + "tasks.0.name": "no_such_task_xyz"}, api=None),
    bad("hub-dataset-offline", "spec.tasks[0].name", {S + "tasks.0.name": "gsm8k"}, api=None),
    bad(
        "missing-quantized-model",
        "spec.candidates[0].quantizedModel",
        {S + "candidates": [{"quantizedModel": "nope"}]},
        api=None,
    ),
    bad(
        "missing-prompts",
        "spec.similarity.promptsPath",
        {S + "similarity": {"promptsPath": "./missing.jsonl"}},
        api=None,
    ),
    bad("missing-task-dir", "spec.taskPaths[0]", {S + "taskPaths": ["./missing"]}, api=None),
    bad(
        "missing-calibration",
        "spec.calibration.path",
        qm={S + "calibration": {"path": "./missing.jsonl"}},
        api=None,
    ),
    bad(
        "missing-model-dir",
        "spec.baseline.model.uri",
        {S + "baseline.model.uri": "./no-model"},
        api=None,
    ),
    bad(
        "dangling-link",
        "spec.taskPaths[0]",
        {S + "taskPaths": ["./tasks"]},
        api=None,
        files={"tasks/broken.yaml": "->nowhere"},
    ),
    # --- hostile strings where a value reaches a command line, a path or a label -----------
    *[
        bad(f"shell-{where.replace('.', '-').replace('[0]', '')}", field, er=er, qm=qm)
        for where, field, er, qm in [
            ("uri", "spec.baseline.model.uri", {S + "baseline.model.uri": "org/m" + SHELL}, {}),
            ("uri-newline", "spec.baseline.model.uri", {S + "baseline.model.uri": "org/m\n"}, {}),
            (
                "candidate.uri",
                "spec.candidates[0].model.uri",
                {S + "candidates": [{"name": "c", "model": {"uri": "./m\n--trust-remote-code"}}]},
                {},
            ),
            (
                "revision",
                "spec.baseline.model.revision",
                {S + "baseline.model.revision": "main" + SHELL_SHORT},
                {},
            ),
            (
                "revision-newline",
                "spec.baseline.model.revision",
                {S + "baseline.model.revision": "main\n"},
                {},
            ),
            ("task", "spec.tasks[0].name", {S + "tasks.0.name": "x" + SHELL_SHORT}, {}),
            ("task-backtick", "spec.tasks[0].name", {S + "tasks.0.name": "`id`"}, {}),
            ("metric", "spec.tasks[0].metric", {S + "tasks.0.metric": "acc|id"}, {}),
            ("task-path", "spec.taskPaths[0]", {S + "taskPaths": ["./t" + SHELL]}, {}),
            ("task-path-newline", "spec.taskPaths[0]", {S + "taskPaths": ["./t\n"]}, {}),
            (
                "prompts-newline",
                "spec.similarity.promptsPath",
                {S + "similarity": {"promptsPath": "./p.jsonl\n"}},
                {},
            ),
            (
                "scheme-label",
                "spec.candidates[0].scheme",
                {
                    S + "candidates": [
                        {"name": "c", "model": {"uri": "demo://tiny-llama"}, "scheme": SHELL_SHORT}
                    ]
                },
                {},
            ),
            (
                "candidate-name",
                "spec.candidates[0].name",
                {S + "candidates": [{"name": "c;id", "model": {"uri": "demo://tiny-llama"}}]},
                {},
            ),
            ("model-arg-key", "spec.modelArgs", {S + "modelArgs": {"x;id": "1"}}, {}),
            (
                "toleration-key",
                "spec.scheduling.tolerations[0].key",
                {S + "scheduling.tolerations": [{"key": SHELL_SHORT, "operator": "Exists"}]},
                {},
            ),
            (
                "toleration-value",
                "spec.scheduling.tolerations[0].value",
                {S + "scheduling.tolerations": [{"key": "k", "value": "v\nx"}]},
                {},
            ),
            (
                "quantity",
                "spec.scheduling.resources.limits.memory",
                {S + "scheduling.resources": {"limits": {"memory": SHELL_SHORT}}},
                {},
            ),
            (
                "quantity-negative",
                "spec.scheduling.resources.requests.cpu",
                {S + "scheduling.resources": {"requests": {"cpu": -1}}},
                {},
            ),
            (
                "node-selector",
                "spec.scheduling.nodeSelector.k",
                {S + "scheduling.nodeSelector": {"k": "v;id"}},
                {},
            ),
            (
                "trust-remote-code-flag",
                "spec.serving",
                {**VLLM, S + "serving": {"extraArgs": ["--trust-remote-code"]}},
                {},
            ),
            ("qm-uri", "spec.model.uri", {}, {S + "model.uri": "./m" + SHELL}),
            (
                "calibration-dataset",
                "spec.calibration.dataset",
                {},
                {S + "calibration": {"dataset": "d" + SHELL_SHORT}},
            ),
            (
                "calibration-split",
                "spec.calibration.split",
                {},
                {S + "calibration": {"dataset": "gsm8k", "split": "train;id"}},
            ),
            (
                "secret-key",
                "spec.hfTokenSecret.key",
                {},
                {S + "hfTokenSecret": {"name": "s", "key": SHELL_SHORT}},
            ),
        ]
    ],
    # --- more paths that leave their root -------------------------------------------------
    bad(
        "revision-up", "spec.baseline.model.revision", {S + "baseline.model.revision": "a/../../b"}
    ),
    bad(
        "candidate-uri-up",
        "spec.candidates[0].model.uri",
        {S + "candidates": [{"name": "c", "model": {"uri": "./m/../../x"}}]},
    ),
    bad(
        "bertscore-up",
        "spec.similarity.bertscoreModel",
        {S + "similarity": {"bertscoreModel": "pvc://x/../y"}},
    ),
    bad("qm-uri-up", "spec.model.uri", qm={S + "model.uri": "../base"}),
    bad("qm-output-hf-up", "spec.output.uri", qm={S + "output": {"uri": "hf://../x"}}),
    bad(
        "calib-pvc-up",
        "spec.calibration.path",
        qm={S + "calibration": {"path": "pvc://c/../d.jsonl"}},
    ),
    # --- typos, wrong types, missing fields, names, long lists ----------------------------
    bad(
        "typo-candidate-field",
        "spec.candidates[0].quantizedmodel",
        {S + "candidates": [{"quantizedmodel": "q"}]},
    ),
    bad("typo-qm-scheme-field", "spec.schema", qm={S + "schema": "W4A16"}),
    bad("tasks-a-string", "spec.tasks", {S + "tasks": "qeval_demo_facts"}),
    bad("scheduling-a-list", "spec.scheduling", {S + "scheduling": [0]}),
    bad("recipe-a-number", "spec.recipe", qm={S + "scheme": None, S + "recipe": 7}),
    bad("no-baseline", "spec.baseline", {S + "baseline": None}),
    good("no-candidate-list", {S + "candidates": None}),
    bad(
        "similarity-without-candidates",
        "spec.similarity",
        {S + "candidates": None, S + "similarity": {}},
    ),
    bad("no-model", "spec.model", qm={S + "model": None}),
    bad("task-without-name", "spec.tasks[0].name", {S + "tasks.0": {"limit": 5}}),
    bad("baseline-name-upper", "spec.baseline.name", {S + "baseline.name": "Base"}),
    bad(
        "qm-ref-upper",
        "spec.candidates[0].quantizedModel",
        {S + "candidates": [{"quantizedModel": "Q_1"}]},
    ),
    bad(
        "scenario-name-dot",
        "spec.performance.scenarios[0].name",
        {S + "performance": {"scenarios": [{"name": "a.b", "kind": "synchronous"}]}},
    ),
    bad("tasks-65", "spec.tasks", {S + "tasks": [{"name": f"t{i}"} for i in range(65)]}),
    bad(
        "candidates-33",
        "spec.candidates",
        {
            S + "candidates": [
                {"name": f"c{i}", "model": {"uri": "demo://tiny-llama"}} for i in range(33)
            ]
        },
    ),
    bad(
        "extra-args-65",
        "spec.serving.extraArgs",
        {**VLLM, S + "serving": {"extraArgs": ["--enforce-eager"] * 65}},
    ),
    bad(
        "tolerations-33",
        "spec.scheduling.tolerations",
        {S + "scheduling.tolerations": [{"operator": "Exists"}] * 33},
    ),
    bad("ignore-257", "spec.ignore", qm={S + "ignore": [f"l{i}" for i in range(257)]}),
    bad("revision-257", "spec.baseline.model.revision", {S + "baseline.model.revision": "a" * 257}),
    # --- recipes that are not llm-compressor YAML (the API server cannot parse YAML) --------
    bad(
        "recipe-a-list",
        "spec.recipe",
        qm={S + "scheme": None, S + "recipe": "- GPTQModifier\n- x\n"},
        api=None,
    ),
    bad(
        "recipe-a-string",
        "spec.recipe",
        qm={S + "scheme": None, S + "recipe": "GPTQModifier"},
        api=None,
    ),
    # --- hostile strings in fields free by design: accepted, and passed on verbatim ---------
    good(
        "shell-strings-verbatim-evalrun",
        {S + "modelArgs": {"dtype": SHELL + KUBELET}},
    ),
    good(
        "shell-strings-verbatim-recipe",
        qm={
            S + "scheme": None,
            S + "recipe": f"# {SHELL_SHORT}\n"
            + yaml.safe_dump(
                {"GPTQModifier": {"targets": ["Linear"], "ignore": [SHELL + KUBELET]}}
            ),
            S + "ignore": [SHELL + KUBELET],
        },
    ),
    # --- boundaries the schema allows: accepted by all three -------------------------------
    good("seed-max", {S + "seed": 2**32 - 1}),
    good("seed-0", {S + "seed": 0}),
    good("batch-4096", {S + "batchSize": 4096}),
    good("limit-1", {S + "tasks.0.limit": 1}),
    good("limit-fraction", {S + "tasks.0.limit": 0.25}),
    good("limit-whole-float", {S + "tasks.0.limit": 10.0}),
    good("batch-auto", {S + "batchSize": "auto"}),
    good("batch-auto-8", {S + "batchSize": "auto:8"}),
    good(
        "env-by-reference",
        {
            S + "env": [
                {"name": "HTTPS_PROXY", "value": "http://proxy:3128/" + KUBELET},
                {
                    "name": "DATASETS_API_KEY",
                    "valueFrom": {"secretKeyRef": {"name": "ds", "key": "api", "optional": True}},
                },
                {
                    "name": "REGION",
                    "valueFrom": {"configMapKeyRef": {"name": "c", "key": "r", "optional": True}},
                },
            ],
            S + "envFrom": [
                {"secretRef": {"name": "extra"}},
                {"prefix": "X_", "configMapRef": {"name": "m"}},
            ],
        },
    ),
    good("shots-64", {S + "tasks.0.numFewshot": 64}),
    good("threshold-2", {S + "recoveryThreshold": 2}),
    good("threshold-int-1", {S + "recoveryThreshold": 1}),
    good("metric-ok", {S + "tasks.0.metric": "acc"}),
    good("model-args-strings", {S + "modelArgs": {"dtype": "float32", "max_length": "2048"}}),
    good("model-args-32", {S + "modelArgs": {f"k{i}": "v" for i in range(32)}}),
    good(
        "candidate-40",
        {S + "candidates": [{"name": "a" * 40, "model": {"uri": "demo://tiny-llama"}}]},
    ),
    good("name-253", {"metadata.name": "a" * 253}),
    good("trust-remote-code", {S + "trustRemoteCode": True}),
    good("task-path-ok", {S + "taskPaths": ["./tasks"]}, files={"tasks/README": "x"}),
    good(
        "calib-path-ok",
        qm={S + "calibration": {"path": "./c.jsonl"}},
        files={"c.jsonl": '{"text": "a"}\n'},
    ),
    good("output-ok", qm={S + "output": {"uri": "./out/q"}}),
    good("suite-demo", {S + "tasks": [], S + "suites": ["demo"]}),
    good(
        "small-alias",
        text=yaml.safe_dump_all([QM], sort_keys=False)
        + "---\n"
        + yaml.safe_dump(ER, sort_keys=False)
        .replace("  scheduling:\n    gpus: 0\n", "")
        .replace("spec:\n", "spec:\n  scheduling: &s {gpus: 0}\n"),
    ),
]


def write(case: Case, folder: Path) -> Path:
    folder.mkdir()
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "->nowhere":
            path.symlink_to(folder / "nowhere")
        else:
            path.write_text(content)
    spec = folder / "spec.yaml"
    if case.text is not None:
        spec.write_text(case.text)
        return spec
    er, qm = copy.deepcopy(ER), copy.deepcopy(QM)
    for k, v in case.er.items():
        _set(er, k, v)
    for k, v in case.qm.items():
        _set(qm, k, v)
    spec.write_text(yaml.safe_dump_all([qm, er], sort_keys=False))
    return spec


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_the_corpus_is_large_and_named_uniquely():
    assert len(CASES) >= 80 and len({c.id for c in CASES}) == len(CASES)


# --- the API server's verdicts: one kubectl apply of the whole corpus ----------------------

_DEFAULT_NAME = re.compile(r"^(metadata:\n  name: )([rq])$", re.M)
_CREATED = re.compile(r"^(\w+)\.qeval\.dev/(\S+) created(?: \(server dry run\))?$", re.M)
_UNMAPPED = re.compile(
    r'resource mapping not found for name: "([^"]+)" .*?no matches for kind "([^"]+)" '
    r'in version "([^"]+)"'
)
_NAMED = re.compile(r'^(\w+)\.qeval\.dev "([^"]+)" is invalid: ')
_CAUSE = re.compile(
    r"(?:^|\[|, )([A-Za-z][\w-]*(?:\.[\w-]+|\[[^\]]*\])*): "
    r"(?:Invalid value|Unsupported value|Required value|Too many|Too long|Duplicate value)"
)
_UNKNOWN = re.compile(r'unknown field "([^"]+)"')


@dataclass
class Verdict:
    """What the real API server answered for one document, as kubectl printed it."""

    accepted: bool
    paths: set[str]
    message: str = ""
    kind: str = ""  # the document's kind and (renamed) name
    name: str = ""


def _paths(message: str) -> set[str]:
    """The field paths an API server error names; a map's keys as dotted fields."""
    causes = message.split(" is invalid: ", 1)[-1]
    found = _CAUSE.findall(causes) + _UNKNOWN.findall(causes)
    return {re.sub(r"\[([^\]0-9][^\]]*)\]", r".\1", p) for p in found}


def real_server_verdicts(
    cp: ControlPlane, namespace: str, texts: dict[str, str], dry_run: bool = True
) -> dict:
    """Every case's documents in one ``kubectl apply --dry-run=server --validate=strict``
    (``dry_run=False``: applied for real): each default-named object is renamed after its
    case (``c<n>-r``, ``c<n>-q``) so that kubectl's answers (printed in document order,
    successes on stdout and refusals on stderr) map back to it."""
    order: list[tuple[str, str, str]] = []  # (case id, kind, name)
    stream = []
    for n, (case_id, text) in enumerate(texts.items()):
        text = _DEFAULT_NAME.sub(lambda m, n=n: f"{m[1]}c{n:03d}-{m[2]}", text)
        for doc in yaml.safe_load_all(text):
            order.append((case_id, str(doc.get("kind", "")), str(doc["metadata"]["name"])))
        stream.append(text)
    done = cp.kubectl(
        "apply", *(["--dry-run=server"] if dry_run else []), "--validate=strict",
        "-n", namespace, "-f", "-", input="\n---\n".join(stream), check=False, timeout=300,
    )  # fmt: skip
    created = {(k, n) for k, n in _CREATED.findall(done.stdout)}
    unmapped = {n: k for n, k, _ in _UNMAPPED.findall(done.stderr)}
    served = {k for k, _ in created}
    refusals = [
        line.split('error when creating "STDIN": ', 1)[-1]
        for line in done.stderr.splitlines()
        if line.startswith("Error from server")
    ]
    verdicts: dict[str, list[Verdict]] = {case_id: [] for case_id in texts}
    for case_id, kind, name in order:
        if (kind.lower(), name) in created:
            verdicts[case_id].append(Verdict(True, set(), kind=kind, name=name))
        elif name in unmapped:  # the server's discovery lists no such kind in that version
            wrong = "apiVersion" if unmapped[name].lower() in served else "kind"
            message = f"{kind} {name}: not served"
            verdicts[case_id].append(Verdict(False, {wrong}, message, kind, name))
        else:  # the next refusal, in document order: check it names this object
            assert refusals, (case_id, done.stdout, done.stderr)
            message = refusals.pop(0)
            named = _NAMED.match(message)
            assert named is None or named.groups() == (kind, name), (case_id, kind, name, message)
            assert named is not None or message.startswith(kind), (case_id, kind, message)
            verdicts[case_id].append(Verdict(False, _paths(message), message, kind, name))
    assert not refusals, refusals
    return verdicts


@pytest.fixture(scope="module")
def real_verdicts(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("corpus")
    texts = {
        c.id: write(c, folder / f"case-{n}").read_text()
        for n, c in enumerate(CASES)
        if c.api is not None
    }
    namespace = control_plane.create_namespace("spec-corpus", pod_security=None)
    return real_server_verdicts(control_plane, namespace, texts)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validate_run_and_the_api_server_agree(
    case: Case, tmp_path: Path, capsys, request: pytest.FixtureRequest
):
    spec = write(case, tmp_path / "spec")
    before = files_under(tmp_path)

    t0 = time.monotonic()
    validate_rc = main(["validate", str(spec)])
    validated = capsys.readouterr()
    validate_seconds = time.monotonic() - t0

    workdir = tmp_path / "work"
    t0 = time.monotonic()
    if case.ok:  # everything qeval run does before its first stage, nothing after
        from qeval.local.executor import load, prepare

        runs, models = load(spec)
        stages = [prepare(run, models, workdir)[1] for run in runs]
        assert stages and all(stages)
        run_rc, ran = 0, capsys.readouterr()
    else:
        run_rc = main(["run", str(spec), "--workdir", str(workdir)])
        ran = capsys.readouterr()
    run_seconds = time.monotonic() - t0

    out = validated.out + validated.err + ran.out + ran.err
    assert "Traceback" not in out
    assert validate_seconds < 20 and run_seconds < 20, (validate_seconds, run_seconds)
    assert files_under(tmp_path) == before, "nothing is written"
    if case.ok:
        assert validate_rc == 0, validated.err
        assert "valid" in validated.out
    else:
        assert validate_rc == 2 and run_rc == 2, out
        assert case.field in validated.err, validated.err
        assert case.field in ran.out, ran.out
        assert len(validated.err) < 4000 and len(ran.out) < 4000  # values echoed capped
    if case.api is not None:  # one batch for the whole corpus, made the first time
        verdicts = request.getfixturevalue("real_verdicts")[case.id]
        messages = [v.message for v in verdicts if not v.accepted]
        assert all(v.accepted for v in verdicts) == case.ok, messages
        if not case.ok:
            paths = set().union(*(v.paths for v in verdicts))
            assert case.field in paths, (case.field, paths, messages)
            assert not any("evaluating rule" in m for m in messages), messages  # a rule's bug


def test_markup_in_a_value_is_printed_as_written(tmp_path, capsys):
    case = next(c for c in CASES if c.id == "task-path-markup")
    spec = write(case, tmp_path / "spec")
    main(["run", str(spec), "--workdir", str(tmp_path / "w")])
    assert "./[red]x[/red]" in capsys.readouterr().out


def test_the_corpus_summary(capsys):
    """Figures for the record: how many cases each path refuses."""
    refused = sum(not c.ok for c in CASES)
    blind = sum(c.api is None for c in CASES)
    print(json.dumps({"cases": len(CASES), "refused": refused, "apiBlind": blind}))
    assert refused > 60 and len(CASES) - refused >= 15
