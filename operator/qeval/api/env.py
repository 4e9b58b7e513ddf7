"""Extra environment of the evaluation pods, in Kubernetes' own shapes (a subset of a
container's ``env`` and ``envFrom``): literal values, or references to the keys of a Secret
or ConfigMap in the EvalRun's namespace. Nothing here holds a Secret's value."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from qeval.api.common import ApiModel, Rule, cel_rules, enforce

# A portable variable name (POSIX shells, Python, Kubernetes): letters, digits, underscores.
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
OBJECT_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"  # a Secret's or ConfigMap's (DNS subdomain)
OBJECT_KEY = r"^[-._a-zA-Z0-9]+$"
# Variables qeval sets itself in a stage's container (its input, result, cache, GPUs, the hub
# token): an entry would replace them. The hub token comes from spec.hfTokenSecret, code
# execution from spec.allowCodeExecution.
RESERVED_ENV_PREFIX = "QEVAL_"
RESERVED_ENV = (
    "HF_HOME",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_ALLOW_CODE_EVAL",
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_VISIBLE_DEVICES",
)
# Names of credentials: their value belongs in a Secret, never in the spec (anyone who may
# read the EvalRun would read it). CEL's matches() searches, as Python's re.search does.
SECRET_LIKE = r"(?i)(^|_)(TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIALS?)$"


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


class KeyRef(ApiModel):
    """One key of a Secret or ConfigMap in the EvalRun's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=OBJECT_NAME, description="Its name.")
    key: str = Field(min_length=1, max_length=253, pattern=OBJECT_KEY, description="The key.")
    optional: bool | None = Field(
        default=None,
        description="true: the variable is left unset where the object or the key is missing "
        "(default: the pod does not start).",
    )


class ObjectRef(ApiModel):
    """A Secret or ConfigMap in the EvalRun's namespace, every key of it."""

    name: str = Field(min_length=1, max_length=253, pattern=OBJECT_NAME, description="Its name.")
    optional: bool | None = Field(
        default=None, description="true: nothing is set where the object is missing."
    )


ONE_SOURCE = Rule(
    cel="has(self.secretKeyRef) != has(self.configMapKeyRef)",
    message="valueFrom names exactly one of secretKeyRef or configMapKeyRef",
    check=lambda v: (v.secret_key_ref is None) != (v.config_map_key_ref is None),
)


class EnvVarSource(ApiModel):
    """Where a variable's value comes from: a key of a Secret or of a ConfigMap."""

    secret_key_ref: KeyRef | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A key of a ConfigMap.")

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(ONE_SOURCE)}

    @model_validator(mode="after")
    def _rules(self) -> EnvVarSource:
        enforce(self, (ONE_SOURCE,))
        return self

    @property
    def ref(self) -> KeyRef:
        ref = self.secret_key_ref or self.config_map_key_ref
        assert ref is not None  # guaranteed by ONE_SOURCE
        return ref

    @property
    def kind(self) -> str:
        return "Secret" if self.secret_key_ref is not None else "ConfigMap"


# On the name itself (CEL's self is the string), so both refusals name spec.env[i].name.
RESERVED_NAME_RULE = Rule(
    cel=f"!self.startsWith('{RESERVED_ENV_PREFIX}') && !(self in {_cel_list(RESERVED_ENV)})",
    message=f"qeval sets {RESERVED_ENV_PREFIX}*, " + ", ".join(RESERVED_ENV) + " itself (the "
    "hub token comes from spec.hfTokenSecret, code execution from spec.allowCodeExecution, the "
    "GPUs from spec.scheduling.gpus); rename the variable",
    check=lambda name: not name.startswith(RESERVED_ENV_PREFIX) and name not in RESERVED_ENV,
)

ENV_RULES = (
    Rule(
        cel="has(self.value) != has(self.valueFrom)",
        message="an env entry sets exactly one of value (a literal) or valueFrom "
        "(secretKeyRef or configMapKeyRef)",
        check=lambda e: (e.value is None) != (e.value_from is None),
    ),
    Rule(
        cel=f"!has(self.value) || !self.name.matches('{SECRET_LIKE}')",
        message="this variable's name says it holds a credential (…_TOKEN, …_KEY, …_SECRET, "
        "…_PASSWORD): put the value in a Secret and use valueFrom: {secretKeyRef: {name, key}} "
        "(a literal would be readable by anyone who may read the EvalRun)",
        check=lambda e: e.value is None or re.search(SECRET_LIKE, e.name) is None,
    ),
)


class EnvVar(ApiModel):
    """One environment variable: a literal value, or a key of a Secret or ConfigMap."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=ENV_NAME,
        description="The variable's name.",
        json_schema_extra=cel_rules(RESERVED_NAME_RULE),
    )
    value: str | None = Field(
        default=None,
        max_length=4096,
        description="A literal value, passed as written (no $(VAR) expansion).",
    )
    value_from: EnvVarSource | None = Field(
        default=None, description="The value of a Secret's or ConfigMap's key."
    )

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(*ENV_RULES)}

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        enforce(name, (RESERVED_NAME_RULE,))
        return name

    @model_validator(mode="after")
    def _rules(self) -> EnvVar:
        enforce(self, ENV_RULES)
        return self


ONE_OBJECT = Rule(
    cel="has(self.secretRef) != has(self.configMapRef)",
    message="an envFrom entry names exactly one of secretRef or configMapRef",
    check=lambda e: (e.secret_ref is None) != (e.config_map_ref is None),
)


class EnvFromSource(ApiModel):
    """Every key of a Secret or ConfigMap as a variable (Kubernetes' envFrom)."""

    prefix: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=ENV_NAME,
        description="Put before each key's name (e.g. EVAL_).",
    )
    secret_ref: ObjectRef | None = Field(default=None, description="A Secret.")
    config_map_ref: ObjectRef | None = Field(default=None, description="A ConfigMap.")

    model_config = ApiModel.model_config | {"json_schema_extra": cel_rules(ONE_OBJECT)}

    @model_validator(mode="after")
    def _rules(self) -> EnvFromSource:
        enforce(self, (ONE_OBJECT,))
        return self

    @property
    def ref(self) -> ObjectRef:
        ref = self.secret_ref or self.config_map_ref
        assert ref is not None  # guaranteed by ONE_OBJECT
        return ref

    @property
    def kind(self) -> str:
        return "Secret" if self.secret_ref is not None else "ConfigMap"
