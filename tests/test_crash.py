"""Crash anywhere: EvalRun lifecycles while the operator is SIGKILLed at seeded moments.

The operator runs as a real process (``tests/kube/process.py``) under the chart's RBAC,
launched by ``tests/kube/crashing.py``, which kills it right after a real create returned:
between a Job's creation and the run's status write, between a server's creation and its
status, and between a server's outcome record and the server's deletion. A supervisor also
kills it from outside at seeded random moments and restarts it after every death. The test
plays the kubelet and the stage pods for whatever exists (level-driven, so a restart never
confuses it) and checks, from the API server and its audit log:

* no Job, Deployment, Service or operator-written ConfigMap is created twice;
* every stage's result is there (none lost), the first document published;
* every run and model ends in the status an uncrashed operator gave the same study
  (scores, recoveries, verdicts, conditions; times left out);
* no GPU pod is left behind, and every lifecycle saw at least one kill.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from qeval.api.common import GROUP, VERSION
from qeval.k8s import manifests as m
from tests.cluster.chart import Identities, install_identities
from tests.cluster.controlplane import ControlPlane
from tests.conftest import EXAMPLES
from tests.kube.play import (
    aggregate_result,
    evaluate_result,
    finish_job,
    play_pod,
    publish_result,
    quantize_result,
    wait_for,
)
from tests.kube.process import OperatorProcess, Supervisor
from tests.test_operator import benchmark_result, served_run

SCORES = {"fp32": 0.976, "fp8": 0.97, "int8": 0.96, "w4a16": 0.95, "w2a16-rtn": 0.90}
SCORES |= {"bf16": 0.80}
SUFFIX = re.compile(r"-k\d{2}\b")
TIMES = {"startedAt", "completedAt", "lastTransitionTime"}
GPU = "nvidia.com/gpu"
PLURALS = {"EvalRun": "evalruns", "QuantizedModel": "quantizedmodels"}


# --- the studies ------------------------------------------------------------------------------


def demo_study(i: int) -> list[dict[str, Any]]:
    """examples/evalrun.yaml (4 QuantizedModels, 5 evaluations, the aggregate), its names
    suffixed ``-kNN``; the cache off, so runs running side by side stay independent, and no
    CPU requests, so ten studies' pods fit the registered nodes."""
    docs = list(yaml.safe_load_all((EXAMPLES / "evalrun.yaml").read_text()))
    for doc in docs:
        doc["metadata"]["name"] += f"-k{i:02d}"
        doc["spec"]["scheduling"] = {"gpus": 0}
        if doc["kind"] == "EvalRun":
            doc["spec"]["cache"] = False
            for c in doc["spec"]["candidates"]:
                c["quantizedModel"] += f"-k{i:02d}"
    return docs


def served_study(i: int) -> list[dict[str, Any]]:
    """A vllm-server run: a GPU server per model, evaluations and benchmarks against them."""
    run = served_run(f"served-k{i:02d}")
    run["spec"]["cache"] = False
    return [run]


Study = Callable[[int], list[dict[str, Any]]]


# --- the kubelet and the stage pods, played for whatever exists -------------------------------


class Player:
    """Plays every pod of the namespace once: a Job's pod publishes its stage's result (as
    the stage ServiceAccount) and exits 0; a server's pod becomes ready; a deleted pod is
    confirmed gone, as a kubelet confirms it."""

    def __init__(self, cluster: ControlPlane, ns: str, identities: Identities):
        self.cluster, self.ns, self.identities = cluster, ns, identities
        self.evaluations: dict[str, dict[str, dict[str, Any]]] = {}  # run -> model -> result
        self.played: set[str] = set()
        self.pool = ThreadPoolExecutor(12, thread_name_prefix="player")
        self.futures: list[Future[None]] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="player")
        self.lock = threading.Lock()

    def __enter__(self) -> Player:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.check()

    def check(self) -> None:
        for f in [f for f in self.futures if f.done()]:
            f.result()  # a stage the player could not play fails the test, saying why

    def _run(self) -> None:
        while not self.stopped.wait(0.2):  # the poll interval, not the oracle
            try:
                self._step()
            except Exception as e:  # the API server is busy: next round
                print(f"player: {e}")

    def _step(self) -> None:
        for job in self.cluster.list("batch/v1/jobs", self.ns):
            uid = job["metadata"]["uid"]
            if uid not in self.played:
                self.played.add(uid)
                self.futures.append(self.pool.submit(self._play_job, job))
        for pod in self.cluster.list("v1/pods", self.ns):
            meta, status = pod["metadata"], pod.get("status", {})
            if meta.get("deletionTimestamp"):
                self.cluster.request(
                    "DELETE",
                    f"/api/v1/namespaces/{self.ns}/pods/{meta['name']}",
                    {"gracePeriodSeconds": 0},
                )
            elif (
                m.LABEL_RUN in meta.get("labels", {})
                and "batch.kubernetes.io/job-name" not in meta.get("labels", {})
                and pod["spec"].get("nodeName")
                and status.get("phase", "Pending") == "Pending"
                and meta["uid"] not in self.played
            ):
                self.played.add(meta["uid"])
                play_pod(self.cluster, pod, exit_code=None, ready=True)  # a server is up

    def _play_job(self, job: dict[str, Any]) -> None:
        labels = job["metadata"]["labels"]
        kind, run = labels[m.LABEL_STAGE_KIND], labels.get(m.LABEL_RUN, "")
        result: dict[str, Any]
        if kind == "quantize":
            result = quantize_result(job)
        elif kind == "demo-model":
            result = {"path": "/mnt/volumes/qeval-data/cache/demo-model"}
        elif kind == "evaluate":
            result = evaluate_result(job, SCORES)
            with self.lock:
                self.evaluations.setdefault(run, {})[result["modelName"]] = result
        elif kind == "benchmark":
            result = benchmark_result(job)
        elif kind == "aggregate":
            with self.lock:
                result = aggregate_result(job, dict(self.evaluations[run]))
        else:
            raise AssertionError(f"no play for a {kind} stage")
        publish_result(job, result, kubeconfig=self.identities.stage)
        finish_job(self.cluster, job)


# --- what the API server shows ---------------------------------------------------------------


def normalized(status: dict[str, Any]) -> Any:
    """A status without its times, and its resources' names without their -kNN suffix."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMES}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return SUFFIX.sub("", value) if isinstance(value, str) else value

    return strip(status)


def statuses(cluster: ControlPlane, ns: str, i: int, study: Study) -> dict[str, Any]:
    """The study's resources' normalized statuses, by kind and unsuffixed name."""
    out = {}
    for doc in study(i):
        plural = PLURALS[doc["kind"]]
        found = cluster.get(f"{GROUP}/{VERSION}/{plural}", ns, doc["metadata"]["name"])
        assert found is not None
        out[f"{doc['kind']}/{SUFFIX.sub('', doc['metadata']['name'])}"] = normalized(
            found.get("status") or {}
        )
    return out


def result_stages(cluster: ControlPlane, ns: str, i: int, study: Study) -> dict[str, str]:
    """Every result ConfigMap of the study's resources: stage -> its document's status."""
    names = {SUFFIX.sub("", d["metadata"]["name"]): d["metadata"]["name"] for d in study(i)}
    out = {}
    for short, name in names.items():
        for label in (m.LABEL_RUN, m.LABEL_QUANTIZED_MODEL):
            for cm in cluster.list("v1/configmaps", ns, {label: name, m.LABEL_RESULT: "true"}):
                doc = json.loads(cm["data"]["result.json"])
                out[f"{short}/{SUFFIX.sub('', m.stage_name(cm['metadata']))}"] = doc["status"]
    return out


def finished(cluster: ControlPlane, ns: str, run: str) -> bool:
    found = cluster.get(f"{GROUP}/{VERSION}/evalruns", ns, run) or {}
    st = found.get("status") or {}
    return st.get("phase") in ("Succeeded", "Failed") and bool(st.get("completedAt"))


def creates(cluster: ControlPlane, user: str) -> dict[tuple[str, str], int]:
    """Objects the operator created (201), by (resource, name): the audit log's count."""
    counts: dict[tuple[str, str], int] = {}
    for e in cluster.audit_events():
        ref = e.get("objectRef") or {}
        if (
            e.get("verb") == "create"
            and e.get("user", {}).get("username") == user
            and e.get("responseStatus", {}).get("code") == 201
            and ref.get("resource") in ("jobs", "deployments", "services", "configmaps")
            and not ref.get("subresource")
        ):
            key = (ref["resource"], ref.get("name", ""))
            counts[key] = counts.get(key, 0) + 1
    return counts


def gpu_pods_left(cluster: ControlPlane, ns: str) -> list[str]:
    """Pods asking for a GPU that still run or wait to (not ended, not being deleted)."""
    return [
        p["metadata"]["name"]
        for p in cluster.list("v1/pods", ns)
        if any(GPU in (c.get("resources", {}).get("limits") or {}) for c in p["spec"]["containers"])
        and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
    ]


# --- the lifecycles -------------------------------------------------------------------------


@pytest.fixture
def identities(control_plane: ControlPlane, namespace: str) -> Identities:
    return install_identities(control_plane, namespace)


@pytest.fixture
def env(identities: Identities, namespace: str, tmp_path: Path) -> dict[str, str]:
    return {
        "KUBECONFIG": str(identities.operator),
        "QEVAL_NAMESPACES": namespace,
        "QEVAL_RESYNC_SECONDS": "2",
        "QEVAL_EVALUATOR_IMAGE": "registry.local/qeval/evaluator:test",
        "QEVAL_CRASH_LOG": str(tmp_path / "crash-points.log"),
    }


def create(cluster: ControlPlane, ns: str, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURALS[doc['kind']]}"
        code, text = cluster.request("POST", path, doc)
        assert code == 201, f"{doc['metadata']['name']}: {code} {text}"


def run_name(docs: list[dict[str, Any]]) -> str:
    return next(d["metadata"]["name"] for d in docs if d["kind"] == "EvalRun")


@pytest.fixture
def lifecycles(
    control_plane: ControlPlane,
    namespace: str,
    identities: Identities,
    env: dict[str, str],
    tmp_path: Path,
) -> Iterator[Callable[..., None]]:
    cluster, ns = control_plane, namespace

    def drive(
        study: Study, n: int, at_once: int, kills: dict[str, float], seed: int, most: int = 0
    ) -> None:
        """At least ``n`` lifecycles across kills, ``at_once`` at a time; then more batches
        (up to ``most`` lifecycles) until every kill point was reached: where the operator
        dies first is timing, and each point must be shown survived."""
        with Player(cluster, ns, identities) as player:
            # The reference: one lifecycle, the operator never killed.
            plain = OperatorProcess(env, tmp_path / "reference.log")
            plain.start()
            try:
                create(cluster, ns, study(0))
                wait_for(
                    lambda: finished(cluster, ns, run_name(study(0))) or player.check(),
                    "the uncrashed run to finish",
                    timeout=180,
                )
            finally:
                plain.stop()
            expected = statuses(cluster, ns, 0, study)
            expected_results = result_stages(cluster, ns, 0, study)
            assert set(expected_results.values()) == {"Succeeded"}, expected_results

            crashing = OperatorProcess(
                {**env, "QEVAL_CRASH_POINTS": ",".join(f"{k}={p}" for k, p in kills.items())},
                tmp_path / "crashing.log",
                module="tests.kube.crashing",
            )
            supervisor = Supervisor(crashing, seed, crash_log=Path(env["QEVAL_CRASH_LOG"])).begin()
            windows: dict[int, tuple[float, float]] = {}

            def hit() -> set[str]:
                return {k.how.split()[0] for k in supervisor.kills}

            try:
                first = 1
                while first <= n or (not {*kills, "outside"} <= hit() and first <= most):
                    batch = range(first, first + at_once)
                    first += at_once
                    started = time.time()
                    for i in batch:
                        create(cluster, ns, study(i))
                    for i in batch:
                        wait_for(
                            lambda i=i: finished(cluster, ns, run_name(study(i))) or player.check(),
                            f"run {run_name(study(i))} to finish across kills",
                            timeout=600,
                        )
                        windows[i] = (started, time.time())
            finally:
                supervisor.end()
            print(f"{len(supervisor.kills)} kills: {[k.how for k in supervisor.kills]}")

            for i in windows:
                assert statuses(cluster, ns, i, study) == expected, f"lifecycle {i}"
                assert result_stages(cluster, ns, i, study) == expected_results, f"lifecycle {i}"
                lo, hi = windows[i]
                assert any(lo <= k.at <= hi for k in supervisor.kills), f"no kill in {i}"
            assert {*kills, "outside"} <= hit(), f"kill points reached: {hit()}, of {[*kills]}"
            duplicates = {
                k: c for k, c in creates(cluster, identities.operator_user).items() if c > 1
            }
            assert not duplicates, f"created more than once: {duplicates}"
            wait_for(lambda: not gpu_pods_left(cluster, ns), "no GPU pod left", timeout=60)

    yield drive


def test_five_demo_studies_end_as_uncrashed_across_sigkills(lifecycles: Any) -> None:
    lifecycles(demo_study, n=5, at_once=5, kills={"create_job": 0.05}, seed=5, most=15)


def test_vllm_server_studies_end_as_uncrashed_across_kills_between_record_and_delete(
    lifecycles: Any,
) -> None:
    lifecycles(
        served_study,
        n=6,
        at_once=3,
        kills={"create_job": 0.1, "create_server": 0.3, "create_configmap": 0.7},
        seed=7,
        most=15,
    )


@pytest.mark.pipeline
def test_fifty_demo_studies_end_as_uncrashed_across_sigkills(lifecycles: Any) -> None:
    lifecycles(demo_study, n=50, at_once=10, kills={"create_job": 0.03}, seed=50, most=70)
