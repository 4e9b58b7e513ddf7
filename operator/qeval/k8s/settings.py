"""Every operator setting, read once from the environment (``QEVAL_*``; the chart sets them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A comma-separated environment variable, e.g. QEVAL_NAMESPACES=team-a,team-b.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_csv)]


class OperatorSettings(BaseSettings):
    """The operator's configuration. ``QEVAL_NAMESPACES=a,b`` or empty for cluster-wide."""

    model_config = SettingsConfigDict(env_prefix="QEVAL_", frozen=True)

    namespaces: CommaList = Field(
        default_factory=list, description="Namespaces to watch; empty: the whole cluster."
    )
    peering: str | None = Field(
        default=None,
        description="kopf peering name for several replicas (needs kopf's peering CRD); "
        "unset: standalone.",
    )
    annotation_prefix: str = Field(
        default="qeval.dev", description="Prefix of kopf's progress and diff-base annotations."
    )
    posting_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level of kopf's own log lines posted as Events."
    )
    api_timeout_seconds: float = Field(default=30.0, gt=0, description="Per API request.")
    api_retries: int = Field(
        default=8,
        ge=0,
        description="Retries of an API request that failed transiently (429, 500, 502, 503, "
        "504, a reset connection, a timeout) before the failure counts; other answers (400, "
        "403, 404, 409, 422) are not retried. 8 with the default backoff wait up to 91 s in "
        "all (kopf's own default: 54 s), so a restarting API server is waited out.",
    )
    api_retry_backoff_seconds: float = Field(
        default=0.5,
        gt=0,
        description="First retry's backoff; it doubles each retry, up to 30 s, with full "
        "jitter (a 429's Retry-After is honoured if longer).",
    )
    watch_timeout_seconds: int = Field(
        default=300, gt=0, description="Server-side timeout of each watch request."
    )
    resync_seconds: float = Field(
        default=60.0, gt=0, description="Re-check a resource at least this often."
    )
    quantizer_image: str = Field(
        default="ghcr.io/qeval/quantizer:0.1.0", description="Image of the quantize stage."
    )
    evaluator_image: str = Field(
        default="ghcr.io/qeval/evaluator:0.1.0",
        description="Image of the stages that use GPUs: model servers, and evaluate "
        "(backends hf and vllm) with GPUs (vLLM's image with lm-eval).",
    )
    client_image: str = Field(
        default="ghcr.io/qeval/client:0.1.0",
        description="Image of the stages without GPUs: evaluation clients of a server, "
        "benchmark, similarity, aggregate, demo-model (lm-eval and CPU PyTorch, no vLLM).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: CommaList = Field(default_factory=list)
    stage_service_account: str = Field(
        default="qeval-stage",
        description="ServiceAccount of stage pods (may only write their result ConfigMaps).",
    )
    storage_claim: str = Field(
        default="qeval-data",
        description="PVC (in each resource's namespace) holding runs, models and the cache.",
    )
    job_backoff_limit: int = Field(
        default=1,
        ge=0,
        description="Retries of a stage pod that crashed (not of one that recorded its "
        "failure, nor of one killed for memory: those fail the Job at once).",
    )
    job_active_deadline_seconds: int = Field(
        default=48 * 3600,
        ge=60,
        description="Default activeDeadlineSeconds of stage Jobs (spec.scheduling."
        "activeDeadlineSeconds overrides it): a hung stage releases its GPUs after it.",
    )
    image_pull_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How long a stage pod may fail to pull its image (ErrImagePull, "
        "ImagePullBackOff: a registry's rate limit is transient) before the stage fails.",
    )
    metrics_port: int = Field(default=8000, ge=0, description="/metrics port; 0 disables.")
    liveness_endpoint: str | None = Field(
        default="http://0.0.0.0:8080/healthz", description="kopf's liveness probe endpoint."
    )

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
