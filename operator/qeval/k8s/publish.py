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
from qeval.results.cache import key_of, label_value
from qeval.stages.envelope import StageResult


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


def content_key(doc: StageResult) -> str | None:
    """The label value that names what a result is: for an evaluation, a key over its tasks'
    result cache keys (model identity, task config, shots, harness, backend, seed)."""
    keys = (doc.result or {}).get("cacheKeys")
    if not keys:
        return None
    return label_value(key_of(sorted(keys.items())))


def publish(doc: StageResult, env: Mapping[str, str] | None = None, api: Any = None) -> str | None:
    """Write ``doc`` to its ConfigMap if this runs as a stage Job; return the name
    (``api``: the client to write with; default the pod's service account or $KUBECONFIG).

    The first document published for a stage is its outcome: if a pod of the same Job
    published one before (the Job retried the stage), that one is kept."""
    where = target(os.environ if env is None else env)
    if where is None:
        return None
    from qeval.k8s.kube import Kube, api_client

    manifest = build_result_configmap(
        document=doc.dump(),
        cache_key=content_key(doc),
        annotations={ANNOTATION_STAGE: doc.stage},
        **where,
    )
    if not Kube(api or api_client()).create_configmap(manifest):
        print(f"ConfigMap {where['name']} holds this stage's first result: kept", file=sys.stderr)
    return str(where["name"])
