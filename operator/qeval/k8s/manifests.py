"""Pure builders of the objects the operator creates: stage Jobs, model servers (a
Deployment and a Service), and their names and labels.

Nothing here talks to the API. A stage's Job runs the same ``qeval <kind>`` command the
local executor runs, with its input document in an environment variable and its result
published as a ConfigMap (see ``publish``) that the operator watches. A serve stage runs
``qeval serve``, which becomes ``vllm serve``, in a Deployment's pod behind a Service.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from qeval.api.common import API_VERSION, VOLUMES_ROOT, ApiModel, SecretKeyRef, secret_env
from qeval.k8s.settings import OperatorSettings
from qeval.plan import Layout, PodEndpoints, Stage
from qeval.stages.accelerators import GPUS_ENV
from qeval.stages.envelope import EXIT_RECORDED_FAILURE, StageResult
from qeval.stages.serve import PORT, ServeInput

# Labels and annotations (one place; the chart's RBAC and the dashboards rely on them)
MANAGED_BY, MANAGER = "app.kubernetes.io/managed-by", "qeval"
LABEL_RUN = "qeval.dev/run"  # children of an EvalRun
LABEL_QUANTIZED_MODEL = "qeval.dev/quantizedmodel"  # children of a QuantizedModel
LABEL_STAGE = "qeval.dev/stage"
LABEL_STAGE_KIND = "qeval.dev/stage-kind"
LABEL_OWNER_UID = "qeval.dev/owner-uid"
LABEL_RESULT = "qeval.dev/result"  # on result ConfigMaps only
ANNOTATION_SPEC_DIGEST = "qeval.dev/spec-digest"  # of the owner's immutable spec fields
ANNOTATION_RESULT_PATH = "qeval.dev/result-path"  # a reused result's files, on the claim
ANNOTATION_STAGE = "qeval.dev/stage-name"  # the stage's full name: its label may be shortened
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
GPU = "nvidia.com/gpu"

RESULT_KEY = "result.json"  # the ConfigMap data key holding the StageResult document
INPUT_ENV = "QEVAL_STAGE_INPUT"
NAME_LIMIT = 63  # a label value's limit (a Job's name becomes its pods' job-name label)
# A child's name: a Job's pods are named <job>-<5 characters> with the Job's name cut to 58
# characters, so at 57 the stage account's admission policy binds a pod to its whole name.
CHILD_NAME_LIMIT = 57
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
DIGEST_LENGTH = 8

# Stage pods that are not given a spec's scheduling (aggregate, demo-model) run small.
LIGHT_RESOURCES = {"requests": {"cpu": "500m", "memory": "2Gi"}, "limits": {"memory": "8Gi"}}
# The stages that download from the Hugging Face hub (models, tokenizers, datasets): their
# pods get the resource's token Secret, if it names one. Aggregate and demo-model never do.
DOWNLOADING_KINDS = frozenset({"quantize", "evaluate", "serve", "benchmark", "similarity", "judge"})
OOM_EXIT_CODE = 137  # SIGKILL: what a container killed by the kernel's OOM killer exits with


@dataclass(frozen=True)
class Owner:
    """The QuantizedModel or EvalRun a child belongs to."""

    kind: str
    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(body["kind"], meta["name"], meta["namespace"], meta["uid"])

    @property
    def label(self) -> str:
        return LABEL_RUN if self.kind == "EvalRun" else LABEL_QUANTIZED_MODEL

    def reference(self, block_owner_deletion: bool = True) -> dict[str, Any]:
        """An owner reference to the resource. Blocking its foreground deletion needs
        ``update`` on its ``finalizers`` where OwnerReferencesPermissionEnforcement is on:
        the operator's children block it; stage pods' results (their account may only
        write ConfigMaps) do not."""
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": block_owner_deletion,
        }


def digest(value: Any, length: int = 64) -> str:
    """A stable hex digest of a JSON-able value."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def spec_digest(spec: ApiModel) -> str:
    """A digest of the fields of ``spec`` that must not change (those with a CEL
    ``self == oldSelf`` rule): a Job created under another value means the spec changed."""
    fixed = {}
    for name, info in type(spec).model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and "x-kubernetes-validations" in extra:
            fixed[info.alias or name] = getattr(spec, name)
    return digest(_jsonable(fixed), 16)


def _jsonable(value: Any) -> Any:
    if isinstance(value, ApiModel):
        return value.dump()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def child_name(owner: str, stage: str) -> str:
    """A deterministic, valid name of at most 57 characters for ``owner``'s ``stage``.

    Readable prefix, then a hash of the full pair so truncation never makes two equal.
    """
    suffix = digest([owner, stage], DIGEST_LENGTH)
    budget = CHILD_NAME_LIMIT - len(suffix) - 1
    base = re.sub(r"[^a-z0-9-]", "-", f"{owner}-{stage}".lower())[:budget].strip("-")
    return f"{base}-{suffix}" if base else suffix


def label_value(text: str) -> str:
    """``text`` as a valid label value: itself if it is one, else a readable prefix and a
    hash of the whole (a resource's name may have 253 characters, a label value 63)."""
    if len(text) <= NAME_LIMIT and LABEL_VALUE.fullmatch(text):
        return text
    suffix = digest(text, DIGEST_LENGTH)
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[: NAME_LIMIT - DIGEST_LENGTH - 1]
    base = base.strip("-_.")
    return f"{base}-{suffix}" if base else suffix


def stage_name(meta: Mapping[str, Any]) -> str:
    """The stage a child (a Job, a Deployment, a pod) runs, from its metadata."""
    annotations, found = meta.get("annotations") or {}, meta.get("labels") or {}
    return str(annotations.get(ANNOTATION_STAGE) or found.get(LABEL_STAGE, ""))


def labels(owner: Owner, stage: Stage) -> dict[str, str]:
    """A child's labels: for selectors, bounded (``stage_name`` reads the stage back)."""
    return {
        MANAGED_BY: MANAGER,
        owner.label: label_value(owner.name),
        LABEL_STAGE: label_value(stage.name),
        LABEL_STAGE_KIND: stage.kind,
        LABEL_OWNER_UID: owner.uid,
    }


def cluster_layout(settings: OperatorSettings, namespace: str, run: str) -> Layout:
    """Where runs, models and the result cache live on the storage claim, as stage pods see
    it. The claim is per namespace: every run of a namespace shares its cached results."""
    root = storage_root(settings)
    return Layout(
        run_root=root / "runs" / namespace / run,
        models_root=root / "models" / namespace,
        cache_root=root / "cache" / "results",
        endpoints=ServiceEndpoints(owner=run, namespace=namespace),
    )


@dataclass(frozen=True)
class ServiceEndpoints(PodEndpoints):
    """A run's servers in a cluster: each behind the Service named like its Deployment."""

    owner: str = ""
    namespace: str = ""

    def host(self, stage: str) -> str:
        return f"{child_name(self.owner, stage)}.{self.namespace}.svc"


def storage_root(settings: OperatorSettings) -> PurePosixPath:
    return VOLUMES_ROOT / settings.storage_claim


def claims(doc: Any) -> set[str]:
    """Every PVC a stage input refers to (``pvc://claim/...`` or a path under the volumes)."""
    found: set[str] = set()
    if isinstance(doc, dict):
        for value in doc.values():
            found |= claims(value)
    elif isinstance(doc, list):
        for value in doc:
            found |= claims(value)
    elif isinstance(doc, str):
        if doc.startswith("pvc://"):
            found.add(doc.removeprefix("pvc://").split("/")[0])
        elif doc.startswith(f"{VOLUMES_ROOT}/"):
            found.add(PurePosixPath(doc).relative_to(VOLUMES_ROOT).parts[0])
    return found


def _volume_name(claim: str) -> str:
    """A claim name as a volume name (a DNS label: no dots, at most 63 characters)."""
    if re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", claim):
        return claim
    return child_name("pvc", claim)


def gpus(stage: Stage) -> int:
    """The GPUs a stage's pod asks for (stages without a spec's scheduling ask for none)."""
    return stage.scheduling.gpus if stage.scheduling is not None else 0


def image(stage: Stage, settings: OperatorSettings) -> str:
    """The image a stage runs: llm-compressor's, vLLM's (servers and GPU work), or the small
    CPU client image (evaluation clients of a server, benchmark, similarity, aggregate)."""
    if stage.kind == "quantize":
        return settings.quantizer_image
    if stage.serves or gpus(stage) > 0:
        return settings.evaluator_image
    return settings.client_image


def _resources(stage: Stage) -> dict[str, Any]:
    if stage.scheduling is None:
        return LIGHT_RESOURCES
    spec = stage.scheduling.resources
    requests, limits = dict(spec.requests), dict(spec.limits)
    if stage.scheduling.gpus:
        requests[GPU] = limits[GPU] = str(stage.scheduling.gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = {k: str(v) for k, v in requests.items()}
    if limits:
        out["limits"] = {k: str(v) for k, v in limits.items()}
    return out


def literal(value: str) -> str:
    """An env value the kubelet passes as written: it expands ``$(VAR)`` in values (the
    Service variables, earlier entries) and reads ``$$`` as ``$``, so every ``$`` is doubled."""
    return value.replace("$", "$$")


def _env(
    stage: Stage,
    owner: Owner,
    name: str,
    settings: OperatorSettings,
    token: SecretKeyRef | None,
    result_labels: dict[str, str],
) -> list[dict[str, Any]]:
    root = storage_root(settings)
    env: list[dict[str, Any]] = [
        {"name": INPUT_ENV, "value": literal(json.dumps(stage.input, sort_keys=True))},
        {"name": "QEVAL_CACHE", "value": str(root / "cache")},
        {"name": "HF_HOME", "value": str(root / "cache" / "huggingface")},
        {"name": "QEVAL_RESULT_CONFIGMAP", "value": name},
        {"name": "QEVAL_RESULT_LABELS", "value": json.dumps(result_labels, sort_keys=True)},
        {
            "name": "QEVAL_RESULT_OWNER",
            "value": json.dumps(owner.reference(block_owner_deletion=False), sort_keys=True),
        },
        {
            "name": "QEVAL_RESULT_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
    ]
    return env + _device_env(stage, token) + endpoint_env(stage)


def _endpoints(stage: Stage) -> list[Any]:
    """The endpoints a stage talks to: an evaluation's; a judge stage's models' and judge's."""
    inp = stage.input
    if stage.kind == "evaluate":
        return [inp.get("endpoint")]
    if stage.kind == "judge":
        models = [inp.get("baseline") or {}, *(inp.get("candidates") or [])]
        judge = (inp.get("judged") or {}).get("judge") or {}
        return [m.get("endpoint") for m in models] + [judge.get("endpoint")]
    return []


def endpoint_env(stage: Stage) -> list[dict[str, Any]]:
    """A stage that talks to endpoints (models behind an OpenAI-compatible API): each API
    key from its Secret, by reference, in the variable the stage reads it from
    (``secret_env``); the input holds the Secrets' names and keys only."""
    env: dict[str, dict[str, Any]] = {}
    for endpoint in _endpoints(stage):
        ref = endpoint.get("apiKeySecret") if isinstance(endpoint, dict) else None
        if ref:
            secret = SecretKeyRef.model_validate(ref)
            key_ref = {"name": secret.name, "key": secret.key}
            env[secret_env(secret)] = {"secretKeyRef": key_ref}
    return [{"name": name, "valueFrom": ref} for name, ref in env.items()]


def _device_env(stage: Stage, token: SecretKeyRef | None) -> list[dict[str, Any]]:
    """What every stage and server pod gets besides its input: the number of GPUs it was
    given (a stage that finds fewer fails at once), no GPU at all for a pod that asked for
    none (vLLM's image sets NVIDIA_VISIBLE_DEVICES=all, which the NVIDIA runtime would
    honour on a GPU node), and the hub token where the stage downloads."""
    env: list[dict[str, Any]] = []
    if (n := gpus(stage)) > 0:
        env.append({"name": GPUS_ENV, "value": str(n)})
    else:
        env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"})
    if token is not None and stage.kind in DOWNLOADING_KINDS:
        ref = {"name": token.name, "key": token.key}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    return env


def spec_env(stage: Stage) -> list[dict[str, Any]]:
    """The stage's own variables (spec.env), after qeval's: literal values as written (the
    kubelet expands no ``$(VAR)`` in them), the rest by reference to their Secret or ConfigMap
    keys. The API refuses the names qeval sets, so none replaces one of qeval's."""
    env: list[dict[str, Any]] = []
    for var in stage.env:
        if var.value_from is None:
            env.append({"name": var.name, "value": literal(var.value or "")})
        else:
            source = "secretKeyRef" if var.value_from.secret_key_ref else "configMapKeyRef"
            env.append({"name": var.name, "valueFrom": {source: var.value_from.ref.dump()}})
    return env


STAGE_UID = 10001  # the user every qeval image runs as (images/*/Dockerfile)
SHM_VOLUME = "dshm"


def _container(
    stage: Stage, settings: OperatorSettings, env: list[dict[str, Any]], volumes: list[str]
) -> dict[str, Any]:
    """The stage's container: its command, image, environment, resources and volumes."""
    return {
        "name": stage.kind,
        "image": image(stage, settings),
        "imagePullPolicy": settings.image_pull_policy,
        "command": stage.argv(f"env:{INPUT_ENV}", ""),
        "env": env,
        "resources": _resources(stage),
        "volumeMounts": [
            {"name": _volume_name(c), "mountPath": str(VOLUMES_ROOT / c)} for c in volumes
        ]
        # PyTorch's and vLLM's workers share tensors through /dev/shm (64 MiB by default).
        + [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}],
        # A stage that fails before writing its result leaves its last log lines.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _pod(
    stage: Stage, settings: OperatorSettings, container: dict[str, Any], volumes: list[str]
) -> dict[str, Any]:
    """The stage's pod spec: service account, claims, and the spec's scheduling."""
    pod: dict[str, Any] = {
        "serviceAccountName": settings.stage_service_account,
        # Pod Security "restricted", as the images run: uid 10001, and the claim writable by
        # it (fsGroup: a fresh volume's root is root-owned).
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": STAGE_UID,
            "runAsGroup": STAGE_UID,
            "fsGroup": STAGE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": _volume_name(c), "persistentVolumeClaim": {"claimName": c}} for c in volumes
        ]
        + [{"name": SHM_VOLUME, "emptyDir": {"medium": "Memory"}}],
    }
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    scheduling = stage.scheduling
    if scheduling is not None:
        if scheduling.node_selector:
            pod["nodeSelector"] = dict(scheduling.node_selector)
        if scheduling.tolerations:
            pod["tolerations"] = [t.dump() for t in scheduling.tolerations]
        if scheduling.affinity:
            pod["affinity"] = scheduling.affinity
        if scheduling.priority_class_name:
            pod["priorityClassName"] = scheduling.priority_class_name
        if scheduling.runtime_class_name:
            pod["runtimeClassName"] = scheduling.runtime_class_name
    return pod


def _metadata(
    name: str,
    owner: Owner,
    stage: Stage,
    labels: dict[str, str],
    owner_spec: str | None,
) -> dict[str, Any]:
    if stage.scheduling and stage.scheduling.queue_name:
        labels = {**labels, KUEUE_QUEUE: stage.scheduling.queue_name}
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "annotations": {ANNOTATION_STAGE: stage.name}
        | ({ANNOTATION_SPEC_DIGEST: owner_spec} if owner_spec else {}),
        "ownerReferences": [owner.reference()],
    }


def _pod_metadata(stage: Stage, pod_labels: dict[str, str]) -> dict[str, Any]:
    return {"labels": pod_labels, "annotations": {ANNOTATION_STAGE: stage.name}}


def build_job(
    stage: Stage,
    owner: Owner,
    layout: Layout,
    settings: OperatorSettings,
    token: SecretKeyRef | None = None,
    owner_spec: str | None = None,
    extra_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job that runs ``stage`` for ``owner`` (``owner_spec``: its spec_digest;
    ``extra_labels`` go on the Job, its pods and its result ConfigMap)."""
    name = child_name(owner.name, stage.name)
    volumes = sorted(claims(stage.input) | {settings.storage_claim})
    pod_labels = labels(owner, stage) | dict(extra_labels or {})
    container = _container(stage, settings, [], volumes)
    container["command"] = stage.argv(f"env:{INPUT_ENV}", str(layout.result_path(stage.name)))
    container["env"] = _env(stage, owner, name, settings, token, pod_labels) + spec_env(stage)
    if stage.env_from:  # below every env entry: Kubernetes gives env the precedence
        container["envFrom"] = [source.dump() for source in stage.env_from]
    pod = {"restartPolicy": "Never", **_pod(stage, settings, container, volumes)}
    deadline = stage.scheduling.active_deadline_seconds if stage.scheduling else None
    spec: dict[str, Any] = {
        "backoffLimit": settings.job_backoff_limit,
        "activeDeadlineSeconds": deadline or settings.job_active_deadline_seconds,
        "podFailurePolicy": pod_failure_policy(stage.kind),
        "template": {"metadata": _pod_metadata(stage, pod_labels), "spec": pod},
    }
    if stage.scheduling and stage.scheduling.queue_name:
        spec["suspend"] = True  # Kueue admits (unsuspends) it
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(name, owner, stage, pod_labels, owner_spec),
        "spec": spec,
    }


def pod_failure_policy(container: str) -> dict[str, Any]:
    """Which failed pods are retried: a pod the cluster disrupted (preemption, eviction, node
    drain) does not count against backoffLimit; a stage that recorded its failure (a Failed
    result document: retrying it on a GPU gives the same answer) or was killed for memory
    (the same limit kills it again) fails the Job at once; any other crash is retried."""

    def fail_on(code: int) -> dict[str, Any]:
        exits = {"containerName": container, "operator": "In", "values": [code]}
        return {"action": "FailJob", "onExitCodes": exits}

    return {
        "rules": [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            fail_on(EXIT_RECORDED_FAILURE),
            fail_on(OOM_EXIT_CODE),
        ]
    }


def server_selector(owner: Owner, stage: Stage) -> dict[str, str]:
    """The labels that pick a server's pods (for its Deployment and its Service)."""
    return {LABEL_OWNER_UID: owner.uid, LABEL_STAGE: label_value(stage.name)}


def build_server(
    stage: Stage,
    owner: Owner,
    settings: OperatorSettings,
    owner_spec: str | None = None,
    token: SecretKeyRef | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The apps/v1 Deployment and v1 Service of a serve stage: one vLLM server on the GPUs
    of the spec's scheduling, ready when ``/health`` answers. Its startup probe allows
    serving.readyTimeoutSeconds from the container's start (not from the Deployment's: a
    queue, a node scale-up or an image pull does not count); a server that is not ready by
    then is restarted by the kubelet, which the operator reports as a failure."""
    assert stage.serves, stage.name
    serving = ServeInput.model_validate(stage.input).serving
    name = child_name(owner.name, stage.name)
    volumes = sorted(claims(stage.input) | {settings.storage_claim})
    pod_labels = labels(owner, stage)
    root = storage_root(settings)
    env = [
        {"name": INPUT_ENV, "value": literal(json.dumps(stage.input, sort_keys=True))},
        {"name": "QEVAL_CACHE", "value": str(root / "cache")},
        {"name": "HF_HOME", "value": str(root / "cache" / "huggingface")},
        *_device_env(stage, token),
    ]
    container = _container(stage, settings, env, volumes)
    # A server busy with a long batch may answer /health slowly: not the 1 s default.
    health = {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 10}
    container |= {
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        # Loading weights takes minutes: liveness and readiness wait for the startup probe,
        # which allows the whole ready timeout (after it the Deployment reports failure).
        "startupProbe": health
        | {"periodSeconds": 10, "failureThreshold": math.ceil(serving.ready_timeout_seconds / 10)},
        "readinessProbe": health | {"periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": health | {"periodSeconds": 15, "failureThreshold": 4},
    }
    pod = _pod(stage, settings, container, volumes)
    pod["automountServiceAccountToken"] = False  # it serves HTTP and never calls the API
    selector = server_selector(owner, stage)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, owner, stage, pod_labels, owner_spec),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "Recreate"},  # never two copies on the GPUs
            "revisionHistoryLimit": 0,
            "template": {"metadata": _pod_metadata(stage, pod_labels), "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": pod_labels,
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return deployment, service


def build_result_configmap(
    name: str,
    namespace: str,
    document: dict[str, Any],
    labels: dict[str, str],
    owner: dict[str, Any] | None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ConfigMap a stage publishes its result document in: immutable, so the first
    document of a stage is its outcome (a retried pod cannot replace it)."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {**labels, LABEL_RESULT: "true"},
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "immutable": True,
        "data": {RESULT_KEY: json.dumps(document, separators=(",", ":"), sort_keys=True)},
    }


def build_operator_result(
    owner: Owner, doc: StageResult, path: str | None = None
) -> dict[str, Any]:
    """The result ConfigMap of a stage whose outcome the operator decides, like those stages
    publish: a model server's (no qeval process is left in it to publish one), or the run's
    own copy of an evaluation it reused from another run (``path``: where that run wrote
    its files, which the aggregate reads)."""
    stage = Stage(doc.stage, doc.kind, {})
    name = child_name(owner.name, doc.stage)
    return build_result_configmap(
        name,
        owner.namespace,
        doc.dump(),
        labels(owner, stage),
        owner.reference(),
        annotations={ANNOTATION_RESULT_PATH: path} if path else None,
    )
