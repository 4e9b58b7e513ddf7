"""Types shared by both resources: the base model, rules, model sources, scheduling, conditions."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

GROUP = "qeval.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

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

    def schema(self) -> dict[str, str]:
        return {"rule": self.cel, "message": self.message}


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


# --- model sources -------------------------------------------------------------------

ModelKind = Literal["huggingface", "local", "pvc", "s3", "demo"]
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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
            "`demo://tiny-llama`, the small model qeval trains for itself."
        ),
    )
    revision: str | None = Field(
        default=None,
        max_length=256,
        description="Hugging Face revision (branch, tag or commit) to pin; ignored for paths.",
    )

    @field_validator("uri")
    @classmethod
    def _known_form(cls, uri: str) -> str:
        model_kind(uri)  # raises with the accepted forms
        return uri


DEMO_MODELS = ("tiny-llama",)


def model_kind(uri: str) -> ModelKind:
    """Classify a model URI; raise ValueError naming the accepted forms."""
    if uri.startswith("demo://"):
        if uri.removeprefix("demo://") not in DEMO_MODELS:
            raise ValueError(f"unknown demo model {uri!r}; the demo model is demo://tiny-llama")
        return "demo"
    if uri.startswith("pvc://"):
        if not re.match(r"^pvc://[a-z0-9][-a-z0-9.]*/.+", uri):
            raise ValueError(f"{uri!r}: write a volume path as pvc://<claim>/<path>")
        return "pvc"
    if uri.startswith("s3://"):
        return "s3"
    if uri.startswith("hf://"):
        return "huggingface"
    if uri.startswith(("/", "./", "../", "~")):
        return "local"
    if "://" in uri:
        raise ValueError(
            f"{uri!r}: unsupported scheme; use a Hugging Face id, a path, pvc://, s3:// or demo://"
        )
    if _HF_ID.match(uri):
        return "huggingface"
    raise ValueError(f"{uri!r} is neither a Hugging Face id (org/name) nor a path (/... or ./...)")


# Volumes named by pvc://<claim>/<path> are mounted at <VOLUMES_ROOT>/<claim> in stage pods.
VOLUMES_ROOT = PurePosixPath("/mnt/volumes")


def volume_path(uri: str, root: PurePosixPath = VOLUMES_ROOT) -> PurePosixPath:
    """The path inside a stage pod of ``pvc://<claim>/<path>``."""
    return root / uri.removeprefix("pvc://")


# --- scheduling ----------------------------------------------------------------------

Quantity = int | str


class ResourceRequirements(ApiModel):
    """Container resources, as in a Kubernetes pod spec."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict, description="Minimum resources, e.g. {cpu: '8', memory: 64Gi}."
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict, description="Maximum resources, e.g. {memory: 96Gi}."
    )


class Toleration(ApiModel):
    """A Kubernetes toleration, so stage pods can land on tainted GPU nodes."""

    key: str | None = Field(default=None, description="Taint key; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (default Equal)."
    )
    value: str | None = Field(default=None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated."
    )


class Scheduling(ApiModel):
    """Where and with what a stage's pods run."""

    gpus: int = Field(
        default=1, ge=0, le=64, description="GPUs per pod (nvidia.com/gpu); 0 runs on CPU."
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="CPU and memory requests and limits."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods require, e.g. a GPU product."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Taints the pods tolerate."
    )
    affinity: dict[str, Any] | None = Field(
        default=None, description="A Kubernetes affinity object, passed through unchanged."
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the pods."
    )
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        description="Kueue LocalQueue to submit the Jobs to (label kueue.x-k8s.io/queue-name).",
    )


class SecretKeyRef(ApiModel):
    """A reference to one key of a Secret in the object's namespace (never the value)."""

    name: str = Field(min_length=1, max_length=253, description="Secret name.")
    key: str = Field(default="token", min_length=1, max_length=253, description="Key in it.")


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
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class Resource(ApiModel):
    """Fields every top-level resource has."""

    api_version: Literal["qeval.dev/v1alpha1"] = "qeval.dev/v1alpha1"
    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name
