"""Operator benchmark: N EvalRuns on a real control plane, qeval against a floor.

For each N, two operators run in turn as processes, each against a fresh real control plane
(tests/cluster/controlplane.py: kube-apiserver, controller-manager and scheduler v1.35 with
etcd 3.6): a minimal kopf operator that only creates one Job per EvalRun
(benchmarks/floor_operator.py, the floor) and qeval's (``qeval operator``). Both run as
the chart's operator ServiceAccount (tests/cluster/chart.py), watching one namespace with
Pod Security ``restricted``. Four CPU nodes are registered, so the real scheduler binds the
pods the real Job controller makes. The benchmark creates N EvalRuns (a baseline and one
candidate on CPU: two evaluate Jobs and an aggregate) as the admin and plays the kubelet and
the stage pods (tests/kube/play.py): for each pod the scheduler binds it publishes the
stage's result as the stage ServiceAccount, then reports the container exited 0, and the
real Job controller completes the Job. The floor's lifecycle ends at its Job (nobody plays
its pod); qeval's at Succeeded. Reported per operator:

* latency from create to the run's first Job (median, p99), seen through a watch;
* API requests per EvalRun lifecycle made by the operator, from the audit log: events of
  the operator's user at stage ResponseComplete, received after the first create;
* CPU seconds (utime + stime over the same window) and peak RSS (VmHWM) of the operator
  and of kube-apiserver (and the other components' CPU, for context);

and qeval's figures as ratios to the floor's. A fresh control plane per case, so each
kube-apiserver's peak RSS and CPU belong to one operator and one N, and neither inherits
the other's objects (the pods of finished Jobs pile up, as on a cluster). Figures go to
benchmarks/results/operator.json and operator.md. Usage::

    .venv/bin/python benchmarks/operator_benchmark.py            # N = 100 and 1000
    .venv/bin/python benchmarks/operator_benchmark.py --sizes 20 --no-write
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import queue
import resource
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qeval.api.common import GROUP, VERSION  # noqa: E402
from qeval.k8s import manifests as m  # noqa: E402
from tests.cluster.chart import Identities, install_identities  # noqa: E402
from tests.cluster.controlplane import ControlPlane, binaries_dir  # noqa: E402
from tests.cluster.kubelet import cpu_node  # noqa: E402
from tests.kube.play import (  # noqa: E402
    aggregate_result,
    evaluate_result,
    free_port,
    play_pod,
    publish_result,
)

NS = "bench"
RESULTS = ROOT / "benchmarks" / "results"
SCORES = {"bf16": 0.80, "w4a16": 0.79}
NODES = 4
JOB_NAME = "batch.kubernetes.io/job-name"
EMULATOR_ERA = (
    "Emulator era (tests/kube/emulator.py, 2026-11-23), create→first Job median/p99 and "
    "requests/run: 100 runs qeval 167/499 ms vs floor 19/41 ms, 12.2 vs 2.0 requests; "
    "1,000 runs 1,129/2,933 vs 65/369 ms, 12.1 vs 2.0 requests, peak RSS 181 vs 91 MiB."
)


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
            "scheduling": {"gpus": 0},  # the nodes here are CPU nodes
        },
    }


# --- watching, as a client of the real API server ---------------------------------------------


def admin_ssl(cp: ControlPlane) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cp.ca_file))
    context.load_cert_chain(cp.dir / "pki" / "admin.crt", cp.dir / "pki" / "admin.key")
    return context


class Watch(threading.Thread):
    """List then watch a collection as the admin (JSON lines, bookmarks, relist on 410),
    calling ``on_event(type, object)`` for each change."""

    def __init__(self, cp: ControlPlane, path: str, on_event: Callable[[str, Any], None]):
        super().__init__(daemon=True, name=f"watch {path}")
        self.cp, self.path, self.on_event = cp, path, on_event
        self.context = admin_ssl(cp)
        self.stopped = threading.Event()
        self.opened = threading.Event()
        self.errors = 0

    def run(self) -> None:
        rv: str | None = None
        while not self.stopped.is_set():
            try:
                if rv is None:
                    status, text = self.cp.request("GET", self.path)
                    if status != 200:
                        raise OSError(f"list {self.path}: {status}")
                    doc = json.loads(text)
                    rv = doc["metadata"]["resourceVersion"]
                    for item in doc["items"]:
                        self.on_event("ADDED", item)
                url = (
                    f"{self.cp.server}{self.path}?watch=1&allowWatchBookmarks=true"
                    f"&resourceVersion={rv}&timeoutSeconds=300"
                )
                with urllib.request.urlopen(url, timeout=330, context=self.context) as r:
                    self.opened.set()
                    for line in r:
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            rv = None  # 410 Gone: too old, list again
                            break
                        rv = event["object"]["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self.on_event(event["type"], event["object"])
            except (OSError, ValueError, urllib.error.URLError):
                if self.stopped.is_set():
                    return
                self.errors += 1
                time.sleep(0.5)


class Player:
    """Records each run's first Job and every run's phase; plays the kubelet and the stages."""

    def __init__(self, cp: ControlPlane, identities: Identities, play: bool, workers: int = 6):
        self.cp, self.identities, self.play = cp, identities, play
        self.lock = threading.Lock()
        self.first_job: dict[str, float] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.phases: dict[str, str] = {}
        self.evaluations: dict[str, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
        self.handled: set[str] = set()
        self.played = 0
        self.retries = 0
        self.todo: queue.Queue[dict[str, Any]] = queue.Queue()
        base = f"/apis/batch/v1/namespaces/{NS}/jobs"
        self.watches = [Watch(cp, base, self._job)]
        if play:
            self.watches.append(Watch(cp, f"/api/v1/namespaces/{NS}/pods", self._pod))
            runs = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/evalruns"
            self.watches.append(Watch(cp, runs, self._run))
            for _ in range(workers):
                threading.Thread(target=self._work, daemon=True).start()

    def start(self) -> None:
        for w in self.watches:
            w.start()
        for w in self.watches:
            if not w.opened.wait(30):
                raise TimeoutError(f"{w.name} did not open")

    def stop(self) -> None:
        for w in self.watches:
            w.stopped.set()

    def _job(self, kind: str, job: dict[str, Any]) -> None:
        seen = time.monotonic()
        run = (job["metadata"].get("labels") or {}).get(m.LABEL_RUN)
        with self.lock:
            if run and run not in self.first_job:
                self.first_job[run] = seen
            self.jobs[job["metadata"]["name"]] = job

    def _pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if kind == "DELETED" or meta.get("deletionTimestamp") or not pod["spec"].get("nodeName"):
            return
        if (pod.get("status") or {}).get("phase", "Pending") != "Pending":
            return
        with self.lock:
            if meta["uid"] in self.handled:
                return
            self.handled.add(meta["uid"])
        self.todo.put(pod)

    def _run(self, kind: str, run: dict[str, Any]) -> None:
        phase = (run.get("status") or {}).get("phase", "")
        with self.lock:
            self.phases[run["metadata"]["name"]] = phase

    def count(self, phase: str) -> int:
        with self.lock:
            return sum(p == phase for p in self.phases.values())

    def _work(self) -> None:
        while True:
            pod = self.todo.get()
            for attempt in range(8):  # as a kubelet would, retry
                try:
                    self._play(pod)
                    break
                except Exception as e:
                    self.retries += 1
                    name = pod["metadata"]["name"]
                    print(f"retrying {name} ({attempt}): {e!r}", file=sys.stderr)
                    time.sleep(0.2 * 2**attempt)

    def _play(self, pod: dict[str, Any]) -> None:
        """A stage pod's life: publish the result as the stage account, then exit 0."""
        job_name = pod["metadata"]["labels"][JOB_NAME]
        deadline = time.monotonic() + 30
        while (job := self.jobs.get(job_name)) is None:  # the Job watch may lag the pods'
            if time.monotonic() > deadline:
                raise TimeoutError(f"Job {job_name} never seen")
            time.sleep(0.05)
        labels = job["metadata"]["labels"]
        run, kind = labels[m.LABEL_RUN], labels[m.LABEL_STAGE_KIND]
        if kind == "evaluate":
            result = evaluate_result(job, SCORES)
            self.evaluations[run][result["modelName"]] = result
        else:
            result = aggregate_result(job, self.evaluations[run])
        publish_result(job, result, kubeconfig=self.identities.stage)
        play_pod(self.cp, pod, exit_code=0)
        with self.lock:
            self.played += 1


# --- the operators -----------------------------------------------------------------------------


def operator_process(
    kind: str, identities: Identities, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    probe = f"http://127.0.0.1:{free_port()}/healthz"
    env = dict(os.environ, KUBECONFIG=str(identities.operator))  # the chart's RBAC only
    if kind == "floor":
        argv = [sys.executable, "-m", "kopf", "run", str(ROOT / "benchmarks" / "floor_operator.py")]
        argv += ["--standalone", "-n", NS, f"--liveness={probe}", "--quiet"]
    else:
        argv = [sys.executable, "-m", "qeval", "operator"]
        env.update(
            QEVAL_NAMESPACES=NS,
            QEVAL_METRICS_PORT="0",
            QEVAL_LIVENESS_ENDPOINT=probe,
            QEVAL_POSTING_LEVEL="WARNING",  # as in the emulator era, for comparison
        )
    out = log.open("wb")
    return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT), probe


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return False


# --- measuring ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (/proc/<pid>/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def audit_counts(cp: ControlPlane, operator_user: str, since: float) -> dict[str, Any]:
    """Requests from the audit log: the operator's (before and after ``since``, a wall-clock
    time) by verb and resource, its refusals, and everyone's after ``since`` by user."""
    startup, window = 0, 0
    by_kind: collections.Counter[str] = collections.Counter()
    by_user: collections.Counter[str] = collections.Counter()
    refused: collections.Counter[str] = collections.Counter()
    for event in cp.audit_events():
        if event.get("stage") != "ResponseComplete":
            continue
        user = event["user"]["username"]
        received = event["requestReceivedTimestamp"].replace("Z", "+00:00")
        after = datetime.datetime.fromisoformat(received).timestamp() >= since
        if after:
            by_user[user] += 1
        if user != operator_user:
            continue
        ref = event.get("objectRef") or {}
        what = "/".join(
            x for x in (ref.get("apiGroup"), ref.get("resource"), ref.get("subresource")) if x
        )
        code = (event.get("responseStatus") or {}).get("code")
        if code in (401, 403):
            refused[f"{event['verb']} {what} {code}"] += 1
        if not after:
            startup += 1
            continue
        window += 1
        by_kind[f"{event['verb']} {what or event.get('requestURI', '')}"] += 1
    return {
        "startup": startup,
        "window": window,
        "by_kind": dict(by_kind.most_common(16)),
        "refused": dict(refused),
        "by_user": dict(by_user.most_common(10)),
    }


def run_case(kind: str, n: int, log_dir: Path, timeout: float) -> dict[str, Any]:
    from kubernetes import client, config

    load_before = os.getloadavg()
    with ControlPlane() as cp:
        started = cp.started_seconds
        cp.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        for i in range(NODES):
            cp.register_node(cpu_node(f"cpu-{i}", cpu="2000", memory="8000Gi", pods=5000))
        cp.create_namespace(NS)
        identities = install_identities(cp, NS)
        proc, probe = operator_process(kind, identities, log_dir / f"{kind}-{n}.log")
        try:
            if not wait_until(lambda: healthy(probe) or proc.poll() is not None, 120):
                raise TimeoutError(f"the {kind} operator was not ready in 120 s")
            if proc.poll() is not None:
                raise RuntimeError(f"the {kind} operator exited: see {log_dir}/{kind}-{n}.log")
            time.sleep(1.0)  # its initial lists and watches settle before the window opens
            player = Player(cp, identities, play=kind == "qeval")
            player.start()
            configuration = client.Configuration()
            config.load_kube_config(str(cp.kubeconfig), client_configuration=configuration)
            custom = client.CustomObjectsApi(client.ApiClient(configuration))
            pids = {name: p.pid for name, p in cp.processes.items()} | {"operator": proc.pid}
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            self_before = resource.getrusage(resource.RUSAGE_SELF)

            created: dict[str, float] = {}
            since = time.time()
            t0 = time.monotonic()
            for i in range(n):
                name = f"run-{i:04d}"
                created[name] = time.monotonic()
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, NS, "evalruns", evalrun(name), field_validation="Strict"
                )
            create_seconds = time.monotonic() - t0

            def done() -> bool:
                if kind == "floor":
                    return len(player.first_job) >= n
                return player.count("Succeeded") + player.count("Failed") >= n

            deadline, finished = t0 + timeout, False
            next_note = time.monotonic() + 30
            while time.monotonic() < deadline:
                if done():
                    finished = True
                    break
                if proc.poll() is not None:
                    break
                if time.monotonic() > next_note:
                    next_note += 30
                    print(
                        f"  {kind} {n}: {time.monotonic() - t0:.0f} s, {len(player.first_job)} "
                        f"with a Job, {len(player.jobs)} Jobs, {player.played} pods played, "
                        f"{player.count('Succeeded')} Succeeded, load {os.getloadavg()[0]:.1f}",
                        file=sys.stderr,
                    )
                time.sleep(0.2)
            wall = time.monotonic() - t0
            time.sleep(2.0)  # let trailing writes (status, events) land before counting
            cpu = {k: round(cpu_seconds(pid) - cpu_before[k], 1) for k, pid in pids.items()}
            rss = {name: round(peak_rss_mib(pid), 1) for name, pid in pids.items()}
            self_after = resource.getrusage(resource.RUSAGE_SELF)
            bench_cpu = (self_after.ru_utime + self_after.ru_stime) - (
                self_before.ru_utime + self_before.ru_stime
            )
            player.stop()
            succeeded, failed = player.count("Succeeded"), player.count("Failed")
            first_job = dict(player.first_job)
            jobs, played, retries = len(player.jobs), player.played, player.retries
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        audit = audit_counts(cp, identities.operator_user, since)
        pods = len(cp.list("v1/pods", NS))
    latencies = [1000 * (first_job[r] - created[r]) for r in created if r in first_job]
    lifecycles = n if kind == "floor" else max(1, succeeded + failed)
    return {
        "operator": kind,
        "runs": n,
        "finished": finished,
        "runs_with_a_job": len(first_job),
        "runs_succeeded": succeeded if kind == "qeval" else None,
        "runs_failed": failed if kind == "qeval" else None,
        "create_to_first_job_ms": {
            "median": round(statistics.median(latencies), 1) if latencies else None,
            "p99": round(percentile(latencies, 0.99), 1) if latencies else None,
        },
        "operator_requests_per_run": round(audit["window"] / lifecycles, 2),
        "operator_requests": audit["window"],
        "operator_startup_requests": audit["startup"],
        "operator_refused": audit["refused"],
        "operator_requests_by_kind": audit["by_kind"],
        "requests_by_user": audit["by_user"],
        "cpu_seconds": cpu,
        "peak_rss_mib": rss,
        "benchmark_cpu_seconds": round(bench_cpu, 1),
        "wall_seconds": round(wall, 1),
        "create_seconds": round(create_seconds, 1),
        "jobs": jobs,
        "pods_at_end": pods,
        "pods_played": played,
        "play_retries": retries,
        "control_plane_start_seconds": round(started, 2),
        "load_average_before": [round(x, 1) for x in load_before],
        "load_average_after": [round(x, 1) for x in os.getloadavg()],
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def compare(floor: dict[str, Any], qeval: dict[str, Any]) -> dict[str, Any]:
    fl, qe = floor["create_to_first_job_ms"], qeval["create_to_first_job_ms"]
    return {
        "median_latency": ratio(qe["median"], fl["median"]),
        "p99_latency": ratio(qe["p99"], fl["p99"]),
        "requests_per_run": ratio(
            qeval["operator_requests_per_run"], floor["operator_requests_per_run"]
        ),
        "operator_cpu": ratio(qeval["cpu_seconds"]["operator"], floor["cpu_seconds"]["operator"]),
        "operator_peak_rss": ratio(
            qeval["peak_rss_mib"]["operator"], floor["peak_rss_mib"]["operator"]
        ),
        "apiserver_cpu": ratio(
            qeval["cpu_seconds"]["kube-apiserver"], floor["cpu_seconds"]["kube-apiserver"]
        ),
        "apiserver_peak_rss": ratio(
            qeval["peak_rss_mib"]["kube-apiserver"], floor["peak_rss_mib"]["kube-apiserver"]
        ),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Operator benchmark",
        "",
        f"{report['machine']}, {report['when']}, `benchmarks/operator_benchmark.py`.",
        "",
        f"Real control plane: {report['control_plane']}.",
        f"Cold build of the binaries: {report['build_seconds']} s (`tests/cluster/build.sh`, "
        "its `build-seconds` file);",
        f"control plane start: {report['control_plane_start_seconds']} s (median of the "
        "cases' `started_seconds`).",
        "A fresh control plane per operator and N, four CPU nodes registered. Both operators",
        "run as processes under the chart's operator ServiceAccount, watching one namespace",
        "(Pod Security restricted). The floor is a minimal kopf operator that creates one Job",
        "per EvalRun; qeval's lifecycle per run is two evaluate Jobs, an aggregate Job and",
        "status to Succeeded. The benchmark plays the kubelet and the stages (results published",
        "as the stage ServiceAccount); the real scheduler and Job controller do the rest.",
        "",
        "Latency: create (as the admin) to the run's first Job seen through a watch. Requests:",
        "the operator's audit events (stage ResponseComplete) received after the first create,",
        "per run. CPU: utime + stime (/proc/PID/stat) over that window; RSS: VmHWM. The",
        "machine's 2 cores are shared with other work: the load average (1 min) before and",
        "after each case is in the last column, and absolute times are noisy.",
        "",
        "| runs | operator | done | first Job median (ms) | p99 (ms) | requests / run "
        "| operator CPU s | operator RSS MiB | apiserver CPU s | apiserver RSS MiB | wall s "
        "| load |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["cases"]:
        for kind in ("floor", "qeval"):
            c = row[kind]
            lat = c["create_to_first_job_ms"]
            done = (
                f"{c['runs_with_a_job']} Jobs"
                if kind == "floor"
                else f"{c['runs_succeeded']} Succeeded"
            )
            lines.append(
                f"| {row['runs']} | {kind} | {done} | {lat['median']} | {lat['p99']} | "
                f"{c['operator_requests_per_run']} | {c['cpu_seconds']['operator']} | "
                f"{c['peak_rss_mib']['operator']} | {c['cpu_seconds']['kube-apiserver']} | "
                f"{c['peak_rss_mib']['kube-apiserver']} | {c['wall_seconds']} | "
                f"{c['load_average_before'][0]} → {c['load_average_after'][0]} |"
            )
        r = row["qeval_over_floor"]
        lines.append(
            f"| {row['runs']} | **qeval / floor** | | {r['median_latency']}x | "
            f"{r['p99_latency']}x | {r['requests_per_run']}x | {r['operator_cpu']}x | "
            f"{r['operator_peak_rss']}x | {r['apiserver_cpu']}x | {r['apiserver_peak_rss']}x "
            "| | |"
        )
    lines += ["", "The operators' requests by kind (all runs of a case):", ""]
    for row in report["cases"]:
        for kind in ("floor", "qeval"):
            c = row[kind]
            kinds = ", ".join(f"{k} {v}" for k, v in c["operator_requests_by_kind"].items())
            refused = f"; refused: {c['operator_refused']}" if c["operator_refused"] else ""
            lines.append(f"* {row['runs']} runs, {kind}: {kinds}{refused}")
    lines += ["", EMULATOR_ERA]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument(
        "--timeout", type=float, default=1200, help="most seconds a case may run (default 1200)"
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not write results")
    args = parser.parse_args()
    bins = binaries_dir()
    build = bins / "build-seconds"
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        cases = {}
        for kind in ("floor", "qeval"):
            print(f"{kind}, {n} runs", file=sys.stderr)
            cases[kind] = run_case(kind, n, log_dir, args.timeout)
        row = {"runs": n, **cases, "qeval_over_floor": compare(cases["floor"], cases["qeval"])}
        rows.append(row)
        print(json.dumps(row, indent=1))
    starts = [row[k]["control_plane_start_seconds"] for row in rows for k in ("floor", "qeval")]
    report = {
        "benchmark": "operator",
        "machine": f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "control_plane": f"Kubernetes v1.35.4, etcd v3.6.5 ({bins.name})",
        "build_seconds": int(build.read_text()) if build.exists() else None,
        "control_plane_start_seconds": round(statistics.median(starts), 2),
        "emulator_era": EMULATOR_ERA,
        "cases": rows,
    }
    text = markdown(report)
    print(text)
    if not args.no_write:
        (RESULTS / "operator.json").write_text(json.dumps(report, indent=1) + "\n")
        (RESULTS / "operator.md").write_text(text)


if __name__ == "__main__":
    main()
