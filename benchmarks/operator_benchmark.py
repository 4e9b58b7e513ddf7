"""Operator benchmark: N EvalRuns against the emulated API server, qeval against a floor.

For each N, two operators run in turn as processes against a fresh emulated API server
(tests/kube/emulator.py): a minimal kopf operator that only creates one Job per EvalRun
(benchmarks/floor_operator.py, the floor) and qeval's (``qeval operator``). The benchmark
creates N EvalRuns (a baseline and one candidate: two evaluate Jobs and an aggregate) and
plays the Job controller and the stage pods (tests/kube/play.py) until every run is
Succeeded (the floor's lifecycle ends at its Job). It reports, per operator:

* latency from create to the run's first Job (median, p99), seen through a watch;
* API requests per EvalRun lifecycle made by the operator (all requests the server saw,
  minus the benchmark's own);
* the operator process's peak RSS (VmHWM);

and qeval's figures as ratios to the floor's. Figures go to benchmarks/results/operator.json
and operator.md. Usage::

    .venv/bin/python benchmarks/operator_benchmark.py            # N = 100 and 1000
    .venv/bin/python benchmarks/operator_benchmark.py --sizes 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qeval.k8s import manifests as m  # noqa: E402
from tests.kube.emulator import Cluster  # noqa: E402
from tests.kube.play import (  # noqa: E402
    aggregate_result,
    evaluate_result,
    finish_job,
    free_port,
    publish_result,
)

NS = "default"
RESULTS = ROOT / "benchmarks" / "results"
SCORES = {"bf16": 0.80, "w4a16": 0.79}


def evalrun(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "qeval.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": name, "namespace": NS},
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
        },
    }


class Counted:
    """The benchmark's own API calls, counted so they can be told from the operator's."""

    def __init__(self, api: Any):
        self.api = api
        self.calls = 0
        self.lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self.lock:
            self.calls += n


class Player(threading.Thread):
    """Watches Jobs: records when each run's first Job appears, and plays the stages."""

    def __init__(self, counted: Counted, play: bool):
        super().__init__(daemon=True)
        self.counted, self.play = counted, play
        self.first_job: dict[str, float] = {}
        self.evaluations: dict[str, dict[str, dict[str, Any]]] = {}
        self.todo: queue.Queue[dict[str, Any]] = queue.Queue()
        self.handled: set[str] = set()
        self.stop = threading.Event()
        self.workers = [threading.Thread(target=self._work, daemon=True) for _ in range(4)]

    def run(self) -> None:
        from kubernetes import client, watch

        batch = client.BatchV1Api(self.counted.api)
        for w in self.workers:
            w.start()
        while not self.stop.is_set():
            self.counted.add()
            stream = watch.Watch().stream(batch.list_namespaced_job, NS, timeout_seconds=5)
            for event in stream:
                if event["type"] != "ADDED":
                    continue
                job = self.counted.api.sanitize_for_serialization(event["object"])
                run = job["metadata"]["labels"].get(m.LABEL_RUN)
                if run and run not in self.first_job:
                    self.first_job[run] = time.monotonic()
                if self.play and job["metadata"]["uid"] not in self.handled:
                    self.handled.add(job["metadata"]["uid"])  # a re-opened watch lists again
                    self.todo.put(job)

    def _work(self) -> None:
        while True:
            job = self.todo.get()
            for attempt in range(10):  # as a kubelet and the Job controller would, retry
                try:
                    self._play(job)
                    break
                except Exception as e:
                    print(f"retrying {job['metadata']['name']} ({attempt}): {e!r}", file=sys.stderr)
                    time.sleep(0.2 * 2**attempt)

    def _play(self, job: dict[str, Any]) -> None:
        labels = job["metadata"]["labels"]
        run, kind = labels[m.LABEL_RUN], labels[m.LABEL_STAGE_KIND]
        if kind == "evaluate":
            result = evaluate_result(job, SCORES)
            self.evaluations.setdefault(run, {})[result["modelName"]] = result
        else:
            result = aggregate_result(job, self.evaluations[run])
        self.counted.add()  # counted as sent, whether or not it succeeds
        publish_result(job, result)
        self.counted.add()
        finish_job(self.counted.api, job)


def operator_process(kind: str, cluster: Cluster, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    probe = f"http://127.0.0.1:{free_port()}/healthz"
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    if kind == "floor":
        argv = [sys.executable, "-m", "kopf", "run", str(ROOT / "benchmarks" / "floor_operator.py")]
        argv += ["--standalone", "-n", NS, f"--liveness={probe}", "--quiet"]
    else:
        argv = [sys.executable, "-m", "qeval", "operator"]
        env.update(
            QEVAL_NAMESPACES=NS,
            QEVAL_METRICS_PORT="0",
            QEVAL_LIVENESS_ENDPOINT=probe,
            QEVAL_POSTING_LEVEL="WARNING",
        )
    out = log.open("wb")
    return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT), probe


def wait_until(check: Any, what: str, timeout: float, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise TimeoutError(f"{what}: not done after {timeout:.0f} s")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_case(kind: str, n: int, log_dir: Path) -> dict[str, Any]:
    from kubernetes import client, config

    with Cluster(history_limit=max(20_000, 40 * n)) as cluster:
        cluster.apply_crds(ROOT / "crds")
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)  # for the stages played here
        proc, probe = operator_process(kind, cluster, log_dir / f"{kind}-{n}.log")
        try:
            wait_until(lambda: healthy(probe), f"{kind} operator ready", 60)
            configuration = client.Configuration()
            config.load_kube_config(str(cluster.kubeconfig), client_configuration=configuration)
            counted = Counted(client.ApiClient(configuration))
            custom = client.CustomObjectsApi(counted.api)
            player = Player(counted, play=kind == "qeval")
            player.start()
            wait_until(lambda: counted.calls > 0, "the Job watch", 10)
            cluster.reset_request_count()
            counted.calls = 0  # the Job watch opened before the reset

            created: dict[str, float] = {}
            t0 = time.monotonic()
            for i in range(n):
                name = f"run-{i:04d}"
                created[name] = time.monotonic()
                custom.create_namespaced_custom_object(
                    m.GROUP, m.VERSION, NS, "evalruns", evalrun(name)
                )
            counted.add(n)
            wait_until(lambda: len(player.first_job) >= n, "a Job for every run", 60 + n)
            if kind == "qeval":

                def succeeded() -> bool:
                    runs = cluster.list(f"{m.GROUP}/{m.VERSION}/evalruns", namespace=NS)
                    return (
                        sum((r.get("status") or {}).get("phase") == "Succeeded" for r in runs) >= n
                    )

                # Each check lists every run in the emulator: not too often.
                wait_until(succeeded, "every run Succeeded", 120 + 2 * n, every=2.0)
            wall = time.monotonic() - t0
            time.sleep(1.0)  # let trailing writes (events) land before counting
            player.stop.set()
            total = cluster.request_count
            operator_requests = total - counted.calls
            latencies = [1000 * (player.first_job[r] - created[r]) for r in created]
            rss = peak_rss_mib(proc.pid)
            by_kind = dict(cluster.request_counts.most_common(12))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {
        "operator": kind,
        "runs": n,
        "create_to_first_job_ms": {
            "median": round(statistics.median(latencies), 1),
            "p99": round(percentile(latencies, 0.99), 1),
        },
        "operator_requests_per_run": round(operator_requests / n, 2),
        "peak_rss_mib": round(rss, 1),
        "wall_seconds": round(wall, 1),
        "requests_by_kind": by_kind,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS / "logs"
    log_dir.mkdir(exist_ok=True)
    rows = []
    for n in args.sizes:
        floor = run_case("floor", n, log_dir)
        qeval = run_case("qeval", n, log_dir)
        ratios = {
            "median_latency": round(
                qeval["create_to_first_job_ms"]["median"]
                / floor["create_to_first_job_ms"]["median"],
                2,
            ),
            "p99_latency": round(
                qeval["create_to_first_job_ms"]["p99"] / floor["create_to_first_job_ms"]["p99"], 2
            ),
            "requests_per_run": round(
                qeval["operator_requests_per_run"] / floor["operator_requests_per_run"], 2
            ),
            "peak_rss": round(qeval["peak_rss_mib"] / floor["peak_rss_mib"], 2),
        }
        rows.append({"runs": n, "floor": floor, "qeval": qeval, "qeval_over_floor": ratios})
        print(json.dumps(rows[-1], indent=1))
    report = {
        "benchmark": "operator",
        "machine": f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cases": rows,
    }
    (RESULTS / "operator.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        "# Operator benchmark",
        "",
        f"{report['machine']}, {report['when']}. Emulated API server (tests/kube/emulator.py);",
        "the floor is a minimal kopf operator that creates one Job per EvalRun. qeval's lifecycle",
        "per run: two evaluate Jobs, an aggregate Job, status to Succeeded (stages played).",
        "",
        "| runs | operator | create→first Job median (ms) | p99 (ms) | API requests / run "
        "| peak RSS (MiB) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        for kind in ("floor", "qeval"):
            c = row[kind]
            lat = c["create_to_first_job_ms"]
            lines.append(
                f"| {row['runs']} | {kind} | {lat['median']} | {lat['p99']} | "
                f"{c['operator_requests_per_run']} | {c['peak_rss_mib']} |"
            )
        r = row["qeval_over_floor"]
        lines.append(
            f"| {row['runs']} | **qeval / floor** | {r['median_latency']}x | {r['p99_latency']}x | "
            f"{r['requests_per_run']}x | {r['peak_rss']}x |"
        )
    (RESULTS / "operator.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
