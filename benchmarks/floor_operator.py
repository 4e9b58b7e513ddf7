"""The floor for the operator benchmark: a minimal kopf operator that creates one Job per EvalRun.

Run with ``kopf run benchmarks/floor_operator.py --standalone -n NS``. It does nothing
qeval does (no plan, no status, no indexes, no result objects): whatever qeval costs above
this is the price of its features.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import kopf
from kubernetes import client, config


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False
    configuration = client.Configuration()
    config.load_kube_config(os.environ["KUBECONFIG"], client_configuration=configuration)
    memo.batch = client.BatchV1Api(client.ApiClient(configuration))


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.create("qeval.dev", "v1alpha1", "evalruns")
async def create_job(name: str, namespace: str, uid: str, memo: kopf.Memo, **_: Any) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{name}-job",
            "namespace": namespace,
            "labels": {"qeval.dev/run": name},
            "ownerReferences": [
                {"apiVersion": "qeval.dev/v1alpha1", "kind": "EvalRun", "name": name, "uid": uid}
            ],
        },
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "busybox", "command": ["true"]}],
                }
            }
        },
    }
    await asyncio.to_thread(memo.batch.create_namespaced_job, namespace, job)
