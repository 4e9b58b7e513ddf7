"""The stage side of the results path: publish a result document as a ConfigMap.

A stage Job's environment says where (``QEVAL_RESULT_*``, set by ``manifests.build_job``);
outside a cluster nothing is set and nothing is published.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from qeval.k8s.manifests import ANNOTATION_STAGE, build_result_configmap
from qeval.reasons import RESULT_TOO_LARGE
from qeval.stages.envelope import StageResult, failed

# The API server refuses a ConfigMap whose data, keys and values together, exceed 1 MiB.
CONFIGMAP_LIMIT = 1024 * 1024


def data_bytes(manifest: Mapping[str, Any]) -> int:
    """A ConfigMap's size as the API server counts it against its limit."""
    data = manifest.get("data") or {}
    return sum(len(k.encode()) + len(v.encode()) for k, v in data.items())


def document_bytes(doc: StageResult) -> int:
    """``doc``'s size as its result ConfigMap holds it."""
    return data_bytes(build_result_configmap("n", "n", doc.dump(), {}, None))


def too_large(doc: StageResult, size: int) -> StageResult:
    """What a stage whose result cannot be published publishes instead: a Failed document
    saying so (the operator records it; a pod log alone would not be seen)."""
    message = (
        f"its result document is {size} bytes as a ConfigMap, over the API server's limit of "
        f"{CONFIGMAP_LIMIT} (1 MiB): not published; the document is in the stage's folder on "
        "the run's storage (result.json)"
    )
    out = failed(doc.stage, doc.kind, RESULT_TOO_LARGE, message)
    out.started_at, out.wall_seconds, out.versions = doc.started_at, doc.wall_seconds, doc.versions
    return out


def target(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The ConfigMap to publish to, from a stage pod's environment (None: not in a Job)."""
    name = env.get("QEVAL_RESULT_CONFIGMAP")
    if not name:
        return None
    return {
        "name": name,
        "namespace": env.get("QEVAL_RESULT_NAMESPACE") or "default",
        "labels": json.loads(env.get("QEVAL_RESULT_LABELS") or "{}"),
        "owner": json.loads(env.get("QEVAL_RESULT_OWNER") or "null"),
    }


def publish(doc: StageResult, env: Mapping[str, str] | None = None, api: Any = None) -> str | None:
    """Write ``doc`` to its ConfigMap if this runs as a stage Job; return the name
    (``api``: the client to write with; default the pod's service account or $KUBECONFIG).

    The first document published for a stage is its outcome: if a pod of the same Job
    published one before (the Job retried the stage), that one is kept. A document too large
    for a ConfigMap is replaced by a Failed one that says so (``too_large``)."""
    where = target(os.environ if env is None else env)
    if where is None:
        return None
    from qeval.k8s.kube import Kube, api_client

    def manifest_of(doc: StageResult) -> dict[str, Any]:
        return build_result_configmap(
            document=doc.dump(),
            annotations={ANNOTATION_STAGE: doc.stage},
            **where,
        )

    manifest = manifest_of(doc)
    if (size := data_bytes(manifest)) > CONFIGMAP_LIMIT:
        doc = too_large(doc, size)
        print(f"{doc.stage}: {doc.reason}: {doc.message}", file=sys.stderr)
        manifest = manifest_of(doc)
    if not Kube(api or api_client()).create_configmap(manifest):
        print(f"ConfigMap {where['name']} holds this stage's first result: kept", file=sys.stderr)
    return str(where["name"])
