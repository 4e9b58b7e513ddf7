"""Types shared by both resources: the base model, rules, model sources, scheduling, conditions."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

GROUP = "qeval.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


def now() -> str:
    """The current time as the API writes times (RFC 3339, UTC, seconds): conditions'
    ``lastTransitionTime``, a run's ``startedAt``, a stage document's ``finishedAt``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# A DNS-1123 label: what Kubernetes accepts as a name fragment of a child object.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        use_enum_values=True,
    )

    def dump(self) -> dict[str, Any]:
        """The object as it appears in YAML: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, stated once and enforced twice.

    ``cel`` goes into the CRD as an ``x-kubernetes-validations`` entry, so the API
    server refuses a bad object at ``kubectl apply``; ``check`` is the same rule in
    Python, run by pydantic, so ``qeval run`` refuses it too. A unit test evaluates
    both on the same objects and requires them to agree.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    # The field a refusal names (CEL ``fieldPath``) when the rule, set on its parent to
    # read a sibling too, is about that one field: kubectl then says ``spec.modelArgs``.
    field: str | None = None

    def schema(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field:
            out["fieldPath"] = f".{self.field}"
        return out


def cel_rules(*rules: Rule) -> dict[str, Any]:
    """The ``json_schema_extra`` that carries rules into the generated CRD."""
    return {"x-kubernetes-validations": [r.schema() for r in rules]}


def immutable(what: str) -> dict[str, Any]:
    """Schema extra that makes a field immutable once set (a CEL transition rule)."""
    return {
        "x-kubernetes-validations": [
            {
                "rule": "self == oldSelf",
                "message": f"{what} is immutable; create a new object instead",
            }
        ]
    }


def enforce(obj: Any, rules: tuple[Rule, ...]) -> None:
    """Raise ValueError naming the first rule ``obj`` breaks."""
    for rule in rules:
        if not rule.check(obj):
            raise ValueError(rule.message)


ECHO_LIMIT = 120  # characters of a user's value echoed back in an error


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text):,} characters)"


def clip(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters (a 70 KB recipe is not echoed whole)."""
    return shorten(repr(value), limit)


# --- paths and URIs --------------------------------------------------------------------
#
# Each form is one regular expression, used by pydantic (``re``) and by the API server
# (CEL ``matches``, RE2): both engines read these simple patterns the same way, and a
# test evaluates both on the same strings. A segment never is "." or ".." (a path that
# leaves its root: its folder, its volume, its bucket) and there is no empty one ("//"),
# so a path is already normalised; characters a shell, YAML or a URL read specially are
# not allowed.

_SEGMENT = r"\.?[A-Za-z0-9_][-A-Za-z0-9_.+=@~]*"
_PATH = rf"{_SEGMENT}(/{_SEGMENT})*/?"
URI_FORMS: dict[str, str] = {
    "demo": r"^demo://tiny-llama$",
    "pvc": rf"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/{_PATH}$",
    "s3": rf"^s3://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/{_PATH})?$",
    "huggingface": r"^(hf://)?[A-Za-z0-9][-A-Za-z0-9_.]*(/[A-Za-z0-9_][-A-Za-z0-9_.]*)?$",
    "local": rf"^(/|\./|~/)({_PATH})?$",
}
# A path: absolute, relative to the spec file's folder (``./x`` or ``x``), or a volume path.
PATH_FORM = rf"^(/|\./)?{_PATH}$|{URI_FORMS['pvc']}"


def cel_string(value: str) -> str:
    """``value`` as a CEL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


URI_RULE = Rule(
    cel=" || ".join(f"self.matches({cel_string(f)})" for f in URI_FORMS.values()),
    message="a model is a Hugging Face id (org/name or hf://org/name), a path (/... or ./...), "
    "pvc://<claim>/<path>, s3://<bucket>/<key> or demo://tiny-llama: letters, digits and "
    "-_.+=@~ only, no '.' or '..' segments and no '//'",
    # fullmatch: Python's ``$`` also matches before a final newline, RE2's (CEL's) does not.
    check=lambda uri: any(re.fullmatch(f, uri) for f in URI_FORMS.values()),
)
PATH_RULE = Rule(
    cel=f"self.matches({cel_string(PATH_FORM)})",
    message="a path is absolute (/...), relative to the spec's folder (./...) or a volume path "
    "(pvc://<claim>/<path>): letters, digits and -_.+=@~ only, no '.' or '..' segments and "
    "no '//'",
    check=lambda path: re.fullmatch(PATH_FORM, path) is not None,
)


def _checked(rule: Rule) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not rule.check(value):
            raise ValueError(f"{rule.message} (got {clip(value)})")
        return value

    return check


def ruled(rule: Rule, max_length: int) -> Any:
    """A string type carrying ``rule`` twice: pydantic runs ``rule.check``, the CRD its CEL."""
    return Annotated[
        str,
        Field(min_length=1, max_length=max_length, json_schema_extra=cel_rules(rule)),
        AfterValidator(_checked(rule)),
    ]


def data_file_rule(suffixes: tuple[str, ...]) -> Rule:
    """A data file: a path (see PATH_RULE) whose name ends in one of ``suffixes``."""
    ends = "|".join(re.escape(x) for x in suffixes)
    return Rule(
        cel=f"{PATH_RULE.cel} && self.matches({cel_string(f'({ends})$')})",
        message=f"{PATH_RULE.message}; the file's name ends in {' or '.join(suffixes)}",
        check=lambda path: PATH_RULE.check(path) and re.search(f"({ends})$", path) is not None,
    )


if TYPE_CHECKING:
    ModelUri: TypeAlias = str
    PathStr: TypeAlias = str
    JsonlPath: TypeAlias = str
    DataPath: TypeAlias = str
else:
    ModelUri = ruled(URI_RULE, 1024)
    PathStr = ruled(PATH_RULE, 1024)
    JsonlPath = ruled(data_file_rule((".jsonl",)), 1024)
    DataPath = ruled(data_file_rule((".jsonl", ".txt")), 1024)


# --- model sources -------------------------------------------------------------------

ModelKind = Literal["huggingface", "local", "pvc", "s3", "demo"]


class ModelSource(ApiModel):
    """Where a model's weights come from."""

    uri: str = Field(
        min_length=1,
        max_length=512,
        description=(
            "The model: a Hugging Face id (`meta-llama/Llama-3.1-8B-Instruct` or "
            "`hf://meta-llama/Llama-3.1-8B-Instruct`), a local path (absolute, or starting "
            "with `./`; relative to the spec file when run locally), a volume path "
            "`pvc://<claim>/<path>`, an object-store URI `s3://<bucket>/<key>`, or "
            "`demo://tiny-llama`, the small model qeval trains for itself. No `.` or `..` segments."
        ),
        json_schema_extra=cel_rules(URI_RULE),
    )
    revision: str | None = Field(
        default=None,
        max_length=256,
        # Segments as a path's: none is "." or ".." (the hub's cache keeps refs as files).
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*(/[A-Za-z0-9_][-A-Za-z0-9_.]*)*$",
        description="Hugging Face revision (branch, tag or commit) to pin; ignored for paths.",
    )

    @field_validator("uri")
    @classmethod
    def _known_form(cls, uri: str) -> str:
        model_kind(uri)  # raises with the accepted forms
        return _checked(URI_RULE)(uri)


DEMO_MODELS = ("tiny-llama",)


def model_kind(uri: str) -> ModelKind:
    """Classify a model URI; raise ValueError naming the accepted forms."""
    if uri.startswith("demo://"):
        if uri.removeprefix("demo://") not in DEMO_MODELS:
            raise ValueError(f"unknown demo model {clip(uri)}; the demo model is demo://tiny-llama")
        return "demo"
    if uri.startswith("pvc://"):
        if not re.match(r"^pvc://[a-z0-9][-a-z0-9.]*/.+", uri):
            raise ValueError(f"{clip(uri)}: write a volume path as pvc://<claim>/<path>")
        return "pvc"
    if uri.startswith("s3://"):
        return "s3"
    if uri.startswith("hf://"):
        return "huggingface"
    if uri.startswith(("/", "./", "../", "~")):
        return "local"
    if "://" in uri:
        raise ValueError(
            f"{clip(uri)}: unsupported scheme; use a Hugging Face id, a path, pvc://, s3:// "
            "or demo://"
        )
    if re.fullmatch(URI_FORMS["huggingface"], uri):
        return "huggingface"
    raise ValueError(
        f"{clip(uri)} is neither a Hugging Face id (org/name) nor a path (/... or ./...)"
    )


# Volumes named by pvc://<claim>/<path> are mounted at <VOLUMES_ROOT>/<claim> in stage pods.
VOLUMES_ROOT = PurePosixPath("/mnt/volumes")


def volume_path(uri: str, root: PurePosixPath = VOLUMES_ROOT) -> PurePosixPath:
    """The path inside a stage pod of ``pvc://<claim>/<path>``."""
    return root / uri.removeprefix("pvc://")


# --- scheduling ----------------------------------------------------------------------

# A Kubernetes quantity (resource.Quantity's own expression, without a sign: requests and
# limits are never negative): 8, 0.5, 500m, 64Gi, 1e3. Anything else makes the API server
# refuse the Job the operator builds, long after the spec was accepted.
QUANTITY = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE][-+]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
QUANTITY_RULE = Rule(
    cel="type(self) != int || self >= 0",
    message="a quantity is a non-negative number with an optional suffix (8, 0.5, 500m, 64Gi)",
    check=lambda q: q >= 0 if isinstance(q, int) else re.fullmatch(QUANTITY, q) is not None,
)
# The string form as a schema pattern (as controller-gen writes resource.Quantity), which costs
# no CEL budget; the CEL rule only bounds the integer form.
Quantity = Annotated[
    int | Annotated[str, Field(min_length=1, max_length=64)],
    Field(json_schema_extra={"pattern": QUANTITY, **cel_rules(QUANTITY_RULE)}),
    AfterValidator(_checked(QUANTITY_RULE)),
]
# A qualified name (a label key, a resource name): an optional DNS prefix and a name.
QUALIFIED_NAME = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"
LabelKey = Annotated[str, Field(min_length=1, max_length=317, pattern=QUALIFIED_NAME)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
ResourceName = Annotated[str, Field(min_length=1, max_length=253, pattern=QUALIFIED_NAME)]


class ResourceRequirements(ApiModel):
    """Container resources, as in a Kubernetes pod spec."""

    requests: dict[ResourceName, Quantity] = Field(
        default_factory=dict,
        max_length=16,
        description="Minimum resources, e.g. {cpu: '8', memory: 64Gi}.",
    )
    limits: dict[ResourceName, Quantity] = Field(
        default_factory=dict, max_length=16, description="Maximum resources, e.g. {memory: 96Gi}."
    )


class Toleration(ApiModel):
    """A Kubernetes toleration, so stage pods can land on tainted GPU nodes."""

    # As the API server checks a pod's tolerations (else it refuses the Job, not the spec).
    key: str | None = Field(
        default=None,
        max_length=317,
        pattern=QUALIFIED_NAME,
        description="Taint key; empty matches all keys.",
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: str | None = Field(
        default=None,
        max_length=63,
        pattern=LABEL_VALUE,
        description="Taint value for operator Equal.",
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=2**63 - 1,
        description="How long a NoExecute taint is tolerated.",
    )


class Scheduling(ApiModel):
    """Where and with what a stage's pods run."""

    gpus: int = Field(
        default=1, ge=0, le=64, description="GPUs per pod (nvidia.com/gpu); 0 runs on CPU."
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="CPU and memory requests and limits."
    )
    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict,
        max_length=64,
        description="Node labels the pods require, e.g. a GPU product.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Taints the pods tolerate."
    )
    affinity: (
        dict[
            Annotated[str, Field(pattern=r"^(nodeAffinity|podAffinity|podAntiAffinity)$")],
            dict[str, Any],
        ]
        | None
    ) = Field(
        default=None,
        max_length=3,
        description="A Kubernetes affinity object (nodeAffinity, podAffinity, "
        "podAntiAffinity), passed through unchanged.",
    )
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="PriorityClass of the pods.",
    )
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Kueue LocalQueue to submit the Jobs to (label kueue.x-k8s.io/queue-name).",
    )
    runtime_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="RuntimeClass of the pods (e.g. nvidia, where the GPU runtime is not the "
        "node's default).",
    )
    active_deadline_seconds: int | None = Field(
        default=None,
        ge=60,
        le=30 * 24 * 3600,
        description="Longest a stage Job may run, queueing and image pull included, before "
        "Kubernetes stops it (DeadlineExceeded), so a hung stage never holds its GPUs for "
        "good; unset: the operator's default (QEVAL_JOB_ACTIVE_DEADLINE_SECONDS, 48 h).",
    )


class SecretKeyRef(ApiModel):
    """A reference to one key of a Secret in the object's namespace (never the value)."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Secret name.",
    )
    key: str = Field(
        default="token",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key in it.",
    )


def secret_env(ref: SecretKeyRef, prefix: str = "QEVAL_SECRET") -> str:
    """The environment variable a stage reads the value of Secret key ``ref`` from: the
    operator sets it from the Secret (``secretKeyRef``); under ``qeval run``, which has no
    cluster to read Secrets from, the person running it exports it (``my-key``/``token`` is
    ``QEVAL_SECRET_MY_KEY_TOKEN``)."""
    return f"{prefix}_{re.sub(r'[^A-Z0-9]', '_', f'{ref.name}_{ref.key}'.upper())}"


# --- status --------------------------------------------------------------------------


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A Kubernetes condition (see the API conventions)."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready or Succeeded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="", max_length=1024, description="One CamelCase word: why it is in this state."
    )
    message: str = Field(default="", max_length=32768, description="Details for a person.")
    last_transition_time: str | None = Field(
        default=None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation this condition was computed for."
    )


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata qeval reads; other keys are kept as they are."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    namespace: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    annotations: dict[LabelKey, str] = Field(default_factory=dict)

    @field_validator("annotations")
    @classmethod
    def _annotations_size(cls, annotations: dict[str, str]) -> dict[str, str]:
        # The API server's own limit on the total size of an object's annotations.
        size = sum(len(k) + len(v) for k, v in annotations.items())
        if size > ANNOTATIONS_BYTES:
            raise ValueError(f"annotations total {size:,} bytes; at most {ANNOTATIONS_BYTES:,}")
        return annotations


ANNOTATIONS_BYTES = 256 * 1024


class Resource(ApiModel):
    """Fields every top-level resource has."""

    api_version: Literal["qeval.dev/v1alpha1"] = "qeval.dev/v1alpha1"
    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name
