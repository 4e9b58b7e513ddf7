"""The floor for the operator benchmark: a minimal kopf operator that creates one Job per EvalRun.

Run with ``kopf run benchmarks/floor_operator.py --standalone -n NS``. It does nothing
qeval does (no plan, no status, no indexes, no result objects): whatever qeval costs above
this is the price of its features.

It runs under the chart's operator ServiceAccount, as qeval does, so it has only what qeval
has: no patch of an EvalRun itself. That is why it is an event handler (as qeval's are)
and not ``@kopf.on.create``, whose progress and last-handled annotations need that patch
(refused: kopf retries it four times per run). A Job already there (a restart's initial
listing) is left alone. Its pod passes Pod Security ``restricted`` (the benchmark's
namespace enforces it, as the chart's namespaces do), so the real Job controller makes
its pod as it does qeval's.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import kopf
from kubernetes import client, config

RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False
    configuration = client.Configuration()
    config.load_kube_config(os.environ["KUBECONFIG"], client_configuration=configuration)
    memo.batch = client.BatchV1Api(client.ApiClient(configuration))


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.event("qeval.dev", "v1alpha1", "evalruns")
async def create_job(
    type: str | None, name: str, namespace: str, uid: str, memo: kopf.Memo, **_: Any
) -> None:
    if type not in (None, "ADDED"):  # None: the initial listing
        return
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
                    "containers": [
                        {
                            "name": "c",
                            "image": "busybox",
                            "command": ["true"],
                            "securityContext": RESTRICTED,
                        }
                    ],
                }
            }
        },
    }
    try:
        await asyncio.to_thread(memo.batch.create_namespaced_job, namespace, job)
    except client.ApiException as e:
        if e.status != 409:  # already made
            raise
