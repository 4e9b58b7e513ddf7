"""The operator against API faults: the real control plane behind toxiproxy (TCP faults) and
a fault-injecting HTTP proxy (429/500/503 answers, resets, lost answers, 409s on creates,
cut watch streams, 410 Gone), at 10 % of requests (``tests/cluster/faults.py``); the API
server and etcd restarted mid-run; a watch answered 410 Gone. Every run converges to the
status a run without faults reaches, with one Job per stage (the audit log says who created
what), and the operator's retries are counted in ``qeval_api_retries_total``.

The test plays the kubelet and the stage pods (``tests/kube/play.py``) through the direct
path; only the operator's traffic (and, in the lifecycle test, the stages' publishing) goes
through the faults.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import pytest

from qeval.k8s import manifests as m
from tests.cluster.chart import Identities, install_identities
from tests.cluster.controlplane import ControlPlane
from tests.cluster.faults import faulty_kubeconfig, faulty_path
from tests.kube.play import aggregate_result, evaluate_result, free_port, wait_for
from tests.kube.running import Operator
from tests.test_operator import Kube

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reliability.md"
SCORES = {"bf16": 0.80, "w4a16": 0.78}
# Faults on a request the kubernetes client made that a retry must follow (a 409 is an
# answer: "exists"; a cut watch or a 410 is kopf's).
RETRIED = ("429", "500", "503", "reset", "lost")
TIMESTAMPS = {"startedAt", "completedAt", "lastTransitionTime"}


def poll(check: Callable[[], T | None], what: str, timeout: float = 120.0) -> T:
    """``wait_for`` with a slower poll, for many lifecycles polling the API at once."""
    return wait_for(check, what, timeout, interval=0.25)


def study(name: str, revision: str) -> dict[str, Any]:
    """A small study: a baseline and a candidate (Hugging Face models at revisions of their
    own, so no run reuses another's evaluations), one task: 3 stages."""
    return {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": {
            "baseline": {
                "name": "bf16",
                "model": {"uri": "meta-llama/Llama-3.1-8B-Instruct", "revision": revision},
            },
            "candidates": [
                {
                    "name": "w4a16",
                    "scheme": "W4A16",
                    "model": {"uri": "RedHatAI/tiny-w4a16", "revision": revision},
                }
            ],
            "tasks": [{"name": "qeval_demo_facts"}],
        },
    }


def normalized(status: dict[str, Any], name: str) -> Any:
    """A run's status without what differs between runs of the same study: times, and its
    own name and revision in paths and messages."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in sorted(value.items()) if k not in TIMESTAMPS}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, str):
            return re.sub(r"rev\d+", "REV", value.replace(name, "RUN"))
        return value

    return clean(copy.deepcopy(status))


def lifecycle(kube: Kube, stages: Kube, name: str) -> dict[str, Any]:
    """One EvalRun from creation to Succeeded, its stages played (``stages``: the kube the
    stage pods publish through); returns its final status."""
    suffix = name.rsplit("-", 1)[-1]
    revision = "rev" + (suffix if suffix.isdigit() else "999")
    kube.create("evalruns", study(name, revision))
    run = {m.LABEL_RUN: name}
    evaluations: dict[str, dict[str, Any]] = {}
    for stage in ("evaluate-bf16", "evaluate-w4a16"):
        job = poll(lambda s=stage: kube.jobs(**run).get(s), f"{name}: {stage}")
        evaluations[stage.removeprefix("evaluate-")] = evaluate_result(job, SCORES)
        stages.complete(stage, evaluations[stage.removeprefix("evaluate-")], run=name)
    job = poll(lambda: kube.jobs(**run).get("aggregate"), f"{name}: aggregate")
    stages.complete("aggregate", aggregate_result(job, evaluations), run=name)
    return poll(lambda: kube.phase_is("evalruns", name, "Succeeded"), f"{name} Succeeded")


def created_jobs(cluster: ControlPlane, namespace: str, user: str) -> Counter[str]:
    """How often ``user`` created each Job of ``namespace`` (audit log: answered 201)."""
    return Counter(
        e["objectRef"].get("name", "?")
        for e in cluster.audit_events()
        if e.get("verb") == "create"
        and e.get("objectRef", {}).get("resource") == "jobs"
        and e.get("objectRef", {}).get("namespace") == namespace
        and e.get("user", {}).get("username") == user
        and e.get("responseStatus", {}).get("code") == 201
    )


def retries(metrics: str) -> dict[tuple[str, str, str], float]:
    """qeval_api_retries_total by (verb, resource, reason)."""
    found = {}
    pattern = r'qeval_api_retries_total\{reason="([^"]*)",resource="([^"]*)",verb="([^"]*)"\} (\S+)'
    for reason, resource, verb, value in re.findall(pattern, metrics):
        found[(verb, resource, reason)] = float(value)
    return found


def record(section: str, lines: list[str]) -> None:
    """Write one subsection of "## API faults" in benchmarks/results/reliability.md (other
    sections of the file are other benchmarks' and stay as they are), when the benchmark
    (``benchmarks/api_faults.py``) runs these tests: a plain test run writes nothing."""
    if not os.environ.get("QEVAL_RECORD_RELIABILITY"):
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    text = RESULTS.read_text() if RESULTS.exists() else "# Reliability\n"
    head = "## API faults"
    intro = (
        f"{head}\n\nWritten by `.venv/bin/python benchmarks/api_faults.py` (it runs"
        " `tests/test_faults.py`, the 100-lifecycle test with them). The operator reaches"
        " the real API server through toxiproxy (latency, reset_peer, timeout, slicer,"
        " limit_data, each on a share of the connections) and an HTTP proxy that answers"
        " 429/500/503, resets, loses answers, answers 409 to creates it forwarded, cuts watch"
        " streams and answers watches 410 Gone, at the rate below"
        " (`tests/cluster/faults.py`).\n"
    )
    if head not in text:
        text = text.rstrip("\n") + "\n\n" + intro
    start = text.index(head)
    after = text.find("\n## ", start + len(head))
    body = text[start : after + 1 if after >= 0 else len(text)]
    first = body.find("\n### ")
    subsections = {}
    for chunk in body[first + 1 :].split("\n### ") if first >= 0 else []:
        title, _, rest = chunk.removeprefix("### ").partition("\n")
        subsections[title] = rest.strip("\n")
    subsections[section] = "\n".join(lines)
    order = sorted(subsections, key=lambda t: (SECTION_ORDER.get(t.split(" ")[0], 9), t))
    body = intro.rstrip("\n") + "\n"
    for title in order:
        body += f"\n### {title}\n\n{subsections[title]}\n"
    rest = text[after + 1 :] if after >= 0 else ""
    RESULTS.write_text(text[:start] + body + ("\n" + rest if rest else ""))


SECTION_ORDER = {"100": 0, "10": 1, "kube-apiserver": 2, "etcd": 3, "410": 4}


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def identities(control_plane: ControlPlane, namespace: str) -> Identities:
    return install_identities(control_plane, namespace)


@pytest.fixture
def api(control_plane: ControlPlane) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    return client.ApiClient(configuration)


@pytest.fixture
def kube(control_plane: ControlPlane, namespace: str, api: Any, identities: Identities) -> Kube:
    return Kube(control_plane, namespace, api, identities)


def operator_env(namespace: str, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """The operator's environment, as test_operator's (its kubeconfig: ``kubeconfig``);
    returns its metrics port."""
    port = free_port()
    env = {
        "KUBECONFIG": str(kubeconfig),
        "QEVAL_NAMESPACES": namespace,
        "QEVAL_RESYNC_SECONDS": "2",
        "QEVAL_METRICS_PORT": str(port),
        "QEVAL_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
        "QEVAL_API_RETRIES": "6",
        "QEVAL_API_RETRY_BACKOFF_SECONDS": "0.2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return port


def stage_kube(kube: Kube, kubeconfig: Path) -> Kube:
    """``kube`` whose stage pods publish with ``kubeconfig`` (the stage account's, rerouted)."""
    from dataclasses import replace

    return Kube(kube.cluster, kube.ns, kube.api, replace(kube.identities, stage=kubeconfig))


# --- 100 (and 10) lifecycles through faults at 10 % -------------------------------------------


@pytest.mark.parametrize(
    "lifecycles", [10, pytest.param(100, marks=pytest.mark.pipeline)], ids=lambda n: f"{n}"
)
def test_lifecycles_converge_through_api_faults_at_ten_percent(
    kube: Kube, lifecycles: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, ns = kube.cluster, kube.ns
    began = time.monotonic()
    with ExitStack() as stack:
        faulty, proxy, toxi = stack.enter_context(
            faulty_path(cluster, kube.identities.operator, rate=0.0, seed=14)
        )
        stage_config = faulty_kubeconfig(
            kube.identities.stage,
            f"https://127.0.0.1:{toxi.listen_port}",
            cluster.dir / f"faulty-stage-{ns}.kubeconfig",
        )
        proxy.name(kube.identities.operator, "operator")
        proxy.name(kube.identities.stage, "stage")
        stages = stage_kube(kube, stage_config)
        operator = Operator(operator_env(ns, faulty, monkeypatch)).start()
        stack.callback(operator.stop_now)

        # The reference: one lifecycle without faults.
        reference = normalized(lifecycle(kube, stages, "run-ref"), "run-ref")
        clean = Counter(proxy.requests)

        # Then the lifecycles, concurrently, with every fault on at 10 %.
        proxy.rate = 0.1
        toxi.connections_toxics(0.1)
        faulty_began, connections = time.monotonic(), proxy.connections
        names = [f"run-{i:03d}" for i in range(lifecycles)]
        with ThreadPoolExecutor(max_workers=10) as pool:
            statuses = dict(
                zip(names, pool.map(lambda n: lifecycle(kube, stages, n), names), strict=True)
            )
        faulty_seconds = time.monotonic() - faulty_began
        connections = proxy.connections - connections
        proxy.rate = 0.0
        toxi.remove_toxics()

        # Every run converged to the reference's status.
        for name, status in statuses.items():
            assert normalized(status, name) == reference, name
        # One Job per stage: the operator created each exactly once (a create whose answer
        # was lost, retried, found it existed: 409, not a second Job).
        created = created_jobs(cluster, ns, kube.identities.operator_user)
        assert len(created) == 3 * (lifecycles + 1)
        assert set(created.values()) == {1}, [n for n, c in created.items() if c > 1]
        assert len(cluster.list("batch/v1/jobs", ns)) == 3 * (lifecycles + 1)

        # Faults of every kind were injected, and each one on the operator's own client that
        # a retry must follow was retried and counted.
        faults = +proxy.counts
        # (Watches start seldom, so few of them meet a fault: a cut or a 410 is not certain
        # here; the 410 test below cuts and expires every watch on purpose.)
        assert set(proxy.counts) >= {"429", "500", "503", "reset", "lost", "409"}
        owed = sum(proxy.by_client[("operator/client", kind)] for kind in RETRIED)
        # The stages' publishing retries too (Kube's default policy, no metrics): a fault it
        # did not survive would have failed ``complete`` above.
        stage_faults = sum(proxy.by_client[("stage/client", kind)] for kind in RETRIED)
        assert owed > 0
        text = poll(lambda: operator.metrics_with("qeval_api_retries_total{"), "retries metric")
        counted = retries(text)
        assert sum(counted.values()) >= owed, (counted, owed)
        reasons = {reason for _, _, reason in counted}
        assert reasons & {"429", "500", "503"}, reasons
        assert {verb for verb, _, _ in counted} <= {"create", "patch", "list", "delete", "read"}
    total = time.monotonic() - began
    requests = sum(proxy.requests.values()) - sum(clean.values())
    record(
        f"{lifecycles} lifecycles at 10 %",
        [
            "| what | figure |",
            "| --- | --- |",
            f"| lifecycles (EvalRun, 3 stages each, 10 at a time) | {lifecycles}, all"
            " Succeeded with the fault-free run's status |",
            f"| HTTP requests through the proxy while faulty | {requests} |",
            f"| faults injected, HTTP, by kind | {dict(sorted(faults.items()))} |",
            f"| TCP toxics (share of connections) | "
            f"{ {n: t['toxicity'] for n, t in sorted(toxi.toxics_used.items())} } |",
            f"| TCP connections while faulty | {connections} |",
            f"| faults a retry of the operator's client owed | {owed} |",
            f"| faults on the stages' publishing a retry owed (survived; not counted) |"
            f" {stage_faults} |",
            f"| qeval_api_retries_total (sum) | {sum(counted.values()):.0f} |",
            f"| retries by reason | {dict(Counter(_by_reason(counted)).most_common())} |",
            "| Jobs created twice | 0 |",
            f"| time: the faulty lifecycles / the whole test | {faulty_seconds:.0f} s /"
            f" {total:.0f} s |",
        ],
    )


def _by_reason(counted: dict[tuple[str, str, str], float]) -> Iterator[str]:
    for (_, _, reason), n in counted.items():
        yield from [reason] * int(n)


# --- restarts and 410 Gone ----------------------------------------------------------------------


def _half_run(kube: Kube, name: str) -> dict[str, dict[str, Any]]:
    """Create a run and finish its baseline's evaluation; returns the evaluations so far."""
    kube.create("evalruns", study(name, "rev1"))
    run = {m.LABEL_RUN: name}
    job = poll(lambda: kube.jobs(**run).get("evaluate-bf16"), "evaluate-bf16", timeout=30)
    evaluations = {"bf16": evaluate_result(job, SCORES)}
    kube.complete("evaluate-bf16", evaluations["bf16"], run=name)
    return evaluations


def _finish_run(kube: Kube, name: str, evaluations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    run = {m.LABEL_RUN: name}
    job = poll(lambda: kube.jobs(**run).get("evaluate-w4a16"), "evaluate-w4a16", timeout=60)
    evaluations["w4a16"] = evaluate_result(job, SCORES)
    kube.complete("evaluate-w4a16", evaluations["w4a16"], run=name)
    job = poll(lambda: kube.jobs(**run).get("aggregate"), "aggregate", timeout=60)
    kube.complete("aggregate", aggregate_result(job, evaluations), run=name)
    return poll(lambda: kube.phase_is("evalruns", name, "Succeeded"), "Succeeded", timeout=90)


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_a_run_carries_on_across_a_restart_of(
    kube: Kube, component: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's control plane restarted mid-run (and ready again before the test
    ends, for the tests after it): the operator's requests and watches fail meanwhile,
    are retried, and the run ends as it would have."""
    cluster, ns = kube.cluster, kube.ns
    operator = Operator(operator_env(ns, kube.identities.operator, monkeypatch)).start()
    try:
        evaluations = _half_run(kube, "restarted")
        # Restart while the candidate's Job is being created and the status patched.
        restart = (
            cluster.restart_apiserver if component == "kube-apiserver" else cluster.restart_etcd
        )
        seconds = restart()
        status = _finish_run(kube, "restarted", evaluations)
        assert status["progress"] == "3/3"
        created = created_jobs(cluster, ns, kube.identities.operator_user)
        jobs = cluster.list("batch/v1/jobs", ns)
        assert sorted(created) == sorted(j["metadata"]["name"] for j in jobs)
        assert len(jobs) == 3 and set(created.values()) == {1}
        counted = retries(operator.metrics())
        forbidden = Counter(
            "kopf" if e.get("userAgent", "").startswith("kopf") else "Kube"
            for e in cluster.audit_events()
            if e.get("user", {}).get("username") == kube.identities.operator_user
            and e.get("responseStatus", {}).get("code") == 403
        )
    finally:
        operator.stop_now()
    record(
        f"{component} restarted mid-run",
        [
            f"- {component} down and back (ready on /readyz) in {seconds:.1f} s; the run"
            " Succeeded, one Job per stage (audit log);",
            f"- qeval_api_retries_total meanwhile: {sum(counted.values()):.0f}"
            f" ({ {f'{v} {r} {why}': n for (v, r, why), n in counted.items()} });",
            f"- the operator's requests answered 403 meanwhile, by client: {dict(forbidden)}"
            " (a starting API server's RBAC cache is empty a moment; kopf retries a 403, Kube"
            " does not: the next resync does).",
        ],
    )


def test_a_watch_answered_410_gone_relists_and_the_run_carries_on(
    kube: Kube, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of the operator's watches is answered once with the ERROR event a real API
    server sends for a resourceVersion etcd compacted away (``Expired``, 410); etcd is
    compacted for real too, to the current revision. kopf lists again and goes on."""
    cluster, ns = kube.cluster, kube.ns
    with faulty_path(cluster, kube.identities.operator, rate=0.0) as (config, proxy, _):
        operator = Operator(operator_env(ns, config, monkeypatch)).start()
        try:
            evaluations = _half_run(kube, "gone")
            revision = compact_etcd(cluster)
            watched = ("evalruns", "jobs", "configmaps")
            lists = {r: proxy.lists[r] for r in watched}
            proxy.gone_once.update(watched)
            # The watches in progress end when their server timeout does; cut them now so
            # they reconnect at once (into the 410s).
            proxy.cut_watches()
            poll(lambda: not proxy.gone_once, "every watch to get its 410", timeout=60)
            poll(
                lambda: all(proxy.lists[r] > lists[r] for r in watched),
                "kopf to list each resource again",
                timeout=60,
            )
            status = _finish_run(kube, "gone", evaluations)
            assert status["progress"] == "3/3"
            created = created_jobs(cluster, ns, kube.identities.operator_user)
            assert set(created.values()) == {1}
        finally:
            operator.stop_now()
    record(
        "410 Gone",
        [
            f"- etcd compacted to revision {revision} (its v3 JSON gateway); each of the"
            f" operator's {len(watched)} watches (EvalRuns, Jobs, result ConfigMaps) answered"
            " once with the Expired/410 ERROR event: kopf listed each again"
            f" ({ {r: proxy.lists[r] - lists[r] for r in watched} } lists), the run Succeeded.",
        ],
    )


def compact_etcd(cluster: ControlPlane) -> int:
    """Compact etcd to its current revision (the v3 API's JSON gateway); returns it."""

    def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            cluster.etcd_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as response:
            return dict(json.loads(response.read()))

    revision = int(call("/v3/kv/range", {"key": "Lw==", "limit": 1})["header"]["revision"])
    call("/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision
