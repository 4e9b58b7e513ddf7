"""Idle cost: with 1,000 finished runs and nothing happening, the operator makes no API
request beyond its watches, and its resync reconciles only the unfinished resources.

The operator runs as a real process under the chart's RBAC (``tests/kube/process.py``).
1,000 EvalRuns are created as the admin with a finished status written through the status
subresource (what the operator writes when a run's aggregate is done: Succeeded, its
completion time); one more run is left unfinished, its two evaluation pods running and
ready (played), so there is something for the resync to do. Once the operator has listed
them all, a window of ``IDLE_SECONDS`` is read from the audit log: the operator's user
made watch requests only. The resync's reconciles over the window (the operator's own
``qeval_reconcile_duration_seconds`` count) are those of the unfinished run, not of
1,000 finished ones. (The 10-minute window: benchmarks/reliability_benchmark.py.)
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from qeval.api.common import GROUP, VERSION
from qeval.api.evalrun_status import EvalRunStatus
from qeval.k8s import manifests as m
from qeval.k8s.reconcile import ACCEPTED, SPEC_VALID, SUCCEEDED
from qeval.status import condition
from tests.cluster.chart import Identities, install_identities
from tests.cluster.controlplane import ControlPlane
from tests.kube.play import job_pods, play_pod, wait_for
from tests.kube.process import OperatorProcess

FINISHED = 1000
IDLE_SECONDS = 60
RESYNC_SECONDS = 2
WATCH_SECONDS = 20
DONE_AT = "2026-11-23T10:30:00Z"


def evalrun(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": {
            "baseline": {"name": "bf16", "model": {"uri": "meta-llama/Llama-3.1-8B-Instruct"}},
            "candidates": [
                {
                    "name": "w4a16",
                    "model": {"uri": "RedHatAI/Meta-Llama-3.1-8B-Instruct-quantized.w4a16"},
                    "scheme": "W4A16",
                }
            ],
            "tasks": [{"name": "gsm8k", "numFewshot": 5}],
            "scheduling": {"gpus": 0},
        },
    }


def finished_status() -> dict[str, Any]:
    """A run's status once its aggregate is done, as the operator writes it."""
    status = EvalRunStatus(
        phase="Succeeded",
        observed_generation=1,
        progress="3/3",
        started_at="2026-11-23T10:00:00Z",
        completed_at=DONE_AT,
        conditions=[
            condition(ACCEPTED, True, SPEC_VALID, "spec is valid", DONE_AT, 1),
            condition(SUCCEEDED, True, "AllStagesSucceeded", "all stages succeeded", DONE_AT, 1),
        ],
    )
    return status.dump()


def make_finished(cluster: ControlPlane, ns: str, names: list[str]) -> None:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/evalruns"
    status = finished_status()

    def one(name: str) -> None:
        code, text = cluster.request("POST", base, evalrun(name))
        assert code == 201, f"{name}: {code} {text}"
        code, text = cluster.request(
            "PATCH", f"{base}/{name}/status", {"status": status}, "application/merge-patch+json"
        )
        assert code == 200, f"{name} status: {code} {text}"

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names))


def reconciles(text: str) -> float:
    found = re.search(
        r'^qeval_reconcile_duration_seconds_count\{kind="EvalRun"\} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


def requests_by(cluster: ControlPlane, user: str, since: float, until: float) -> list[Any]:
    """The user's requests received in [since, until] (one per request: ResponseComplete,
    or ResponseStarted for a watch still open)."""
    from datetime import datetime

    out = {}
    for e in cluster.audit_events():
        if e.get("user", {}).get("username") != user:
            continue
        at = datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00"))
        if since <= at.timestamp() <= until:
            out[e["auditID"]] = e
    return list(out.values())


@pytest.fixture
def identities(control_plane: ControlPlane, namespace: str) -> Identities:
    return install_identities(control_plane, namespace)


def test_a_thousand_finished_runs_cost_only_the_watches_and_resync_skips_them(
    control_plane: ControlPlane, namespace: str, identities: Identities, tmp_path: Path
) -> None:
    cluster, ns = control_plane, namespace
    names = [f"done-{i:04d}" for i in range(FINISHED)]
    make_finished(cluster, ns, names)
    env = {
        "KUBECONFIG": str(identities.operator),
        "QEVAL_NAMESPACES": ns,
        "QEVAL_RESYNC_SECONDS": str(RESYNC_SECONDS),
        "QEVAL_WATCH_TIMEOUT_SECONDS": str(WATCH_SECONDS),  # watches renewed in the window
        "QEVAL_EVALUATOR_IMAGE": "registry.local/qeval/evaluator:test",
    }
    operator = OperatorProcess(env, tmp_path / "operator.log")
    started = time.time()
    operator.start()
    try:
        # One run that is not finished: its evaluations run (their pods ready) and go on.
        code, text = cluster.request(
            "POST", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/evalruns", evalrun("busy")
        )
        assert code == 201, text
        jobs = wait_for(
            lambda: len(j := cluster.list("batch/v1/jobs", ns, {m.LABEL_RUN: "busy"})) == 2 and j,
            "the unfinished run's two Jobs",
            timeout=60,
        )
        for job in jobs:
            pod = wait_for(
                lambda job=job: [p for p in job_pods(cluster, job) if p["spec"].get("nodeName")],
                "a bound pod",
            )[0]
            play_pod(cluster, pod, exit_code=None, ready=True)
        # Listed: every run known, only the busy one unfinished.
        wait_for(
            lambda: (
                operator.probe().get("resources") == {"resources": FINISHED + 1, "unfinished": 1}
            ),
            "the operator to know every run",
            timeout=120,
        )
        wait_for(
            lambda: all(
                j.get("status", {}).get("ready") == 1
                for j in cluster.list("batch/v1/jobs", ns, {m.LABEL_RUN: "busy"})
            ),
            "the Jobs to report their pods ready",
        )
        # Two resyncs after that, so the window opens on a run already seen with ready pods.
        seen = reconciles(operator.metrics())
        wait_for(lambda: reconciles(operator.metrics()) >= seen + 2, "two resyncs", timeout=30)
        before, t0 = reconciles(operator.metrics()), time.time()
        time.sleep(IDLE_SECONDS)  # the window measured: nothing happens in it, by design
        after, t1 = reconciles(operator.metrics()), time.time()
    finally:
        operator.stop()

    window = requests_by(cluster, identities.operator_user, t0, t1)
    others = [(e["verb"], e["requestURI"]) for e in window if e["verb"] != "watch"]
    assert not others, f"the idle operator made requests beyond its watches: {others}"
    renewed = {(e.get("objectRef") or {}).get("resource") for e in window}
    assert {"jobs", "deployments", "configmaps", "evalruns"} <= renewed, renewed
    # Its children were listed and watched by label on the server, the lists in pages.
    for e in requests_by(cluster, identities.operator_user, started, t1):
        resource, uri = (e.get("objectRef") or {}).get("resource"), unquote(e["requestURI"])
        if e["verb"] in ("list", "watch") and resource in ("jobs", "deployments", "configmaps"):
            assert f"labelSelector={m.MANAGED_BY}={m.MANAGER}" in uri, uri
        if e["verb"] in ("list", "watch") and resource == "configmaps":
            assert f"{m.LABEL_RESULT}=true" in uri, uri
        if e["verb"] == "list" and resource in ("jobs", "deployments", "configmaps", "evalruns"):
            assert "limit=" in uri, uri
    # The finished runs' statuses were never written, at start or since.
    written = [
        (e.get("objectRef") or {}).get("name")
        for e in requests_by(cluster, identities.operator_user, started, t1)
        if e["verb"] == "patch" and (e.get("objectRef") or {}).get("resource") == "evalruns"
    ]
    assert set(written) <= {"busy"}, f"finished runs written: {sorted(set(written))[:5]}"
    # The resync reconciled the busy run every RESYNC_SECONDS, and not the 1,000 others.
    rounds = IDLE_SECONDS / RESYNC_SECONDS
    assert rounds / 2 <= after - before <= rounds + 5, (before, after)
