"""Reliability benchmark: the operator's memory at 0 / 1,000 finished runs / 10,000 result
ConfigMaps, before and after its own store (kopf's indexes before), and its idle cost.

One real control plane (tests/cluster/controlplane.py), the chart's RBAC, one namespace.
The operator runs as a process (tests/kube/process.py) under its ServiceAccount, in two
builds measured at each size in turn:

* ``before``: the operator package of the commit before its own store (``git archive
  <--baseline>``, run with ``python -m qeval operator`` and PYTHONPATH on it; its children's
  state in kopf's indexes);
* ``after``: this working tree's.

Sizes: no resource; 1,000 finished EvalRuns (created as the admin, their finished status
written through the status subresource); then 10,000 result ConfigMaps of those runs (ten
evaluations each, a document of ~6 KB like an evaluate stage's: 20 task scores and library
versions, with reuse keys). At each size the operator is started, waits until its probe
knows every run and its RSS is steady (two readings 3 s apart within 1 %), and its RSS
(VmRSS) and peak (VmHWM, which holds the initial list's spike) are read from
/proc/<pid>/status; a measurement ends at ``--limit`` seconds (default 240) if the operator
has not known every run by then, and says how many it knew. Between the two last sizes,
with 1,000 finished runs and nothing happening, the ``after`` operator runs for
``--idle-seconds`` (default 600) and the audit log counts its requests in that window.
Writes benchmarks/results/reliability.json and the "## Idle cost" and "## Memory" sections
of reliability.md. Usage::

    .venv/bin/python benchmarks/reliability_benchmark.py                 # the 10-minute window
    .venv/bin/python benchmarks/reliability_benchmark.py --idle-seconds 60 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qeval.api.common import GROUP, VERSION  # noqa: E402
from qeval.k8s import manifests as m  # noqa: E402
from qeval.k8s.reuse import LABEL_REUSE_KEY  # noqa: E402
from tests.cluster.chart import install_identities  # noqa: E402
from tests.cluster.controlplane import ControlPlane  # noqa: E402
from tests.kube.process import OperatorProcess  # noqa: E402
from tests.test_idle import evalrun, finished_status, requests_by  # noqa: E402

NS = "bench"
RESULTS = ROOT / "benchmarks" / "results"
RUNS, PER_RUN = 1000, 10  # --runs changes RUNS (a quick check)
BASELINE = "6a8c4d7~1"  # the commit before the operator's own store (kopf's indexes)


def create_all(cp: ControlPlane, requests: list[tuple[str, str, Any, str | None]]) -> None:
    def one(req: tuple[str, str, Any, str | None]) -> None:
        method, path, body, content = req
        code, text = cp.request(method, path, body, content)
        assert code in (200, 201), f"{method} {path}: {code} {text[:300]}"

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, requests))


def make_runs(cp: ControlPlane) -> dict[str, str]:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/evalruns"
    names = [f"done-{i:04d}" for i in range(RUNS)]
    create_all(cp, [("POST", base, evalrun(n), None) for n in names])
    patch = {"status": finished_status()}
    merge = "application/merge-patch+json"
    create_all(cp, [("PATCH", f"{base}/{n}/status", patch, merge) for n in names])
    items = cp.list(f"{GROUP}/{VERSION}/evalruns", NS)
    return {o["metadata"]["name"]: o["metadata"]["uid"] for o in items}


def evaluate_document(run: str, k: int) -> dict[str, Any]:
    out = f"/mnt/volumes/qeval-data/runs/{NS}/{run}/evaluate-model-{k}"
    scores = [
        {
            "model": f"model-{k}",
            "task": f"task_{t:02d}",
            "metric": "acc",
            "value": 0.5 + t / 100,
            "stderr": 0.01,
            "samples": 1000,
            "primary": True,
        }
        for t in range(20)
    ]
    return {
        "schemaVersion": 1,
        "stage": f"evaluate-model-{k}",
        "kind": "evaluate",
        "status": "Succeeded",
        "startedAt": "2026-11-23T10:00:00Z",
        "finishedAt": "2026-11-23T10:05:00Z",
        "wallSeconds": 300.0,
        "versions": {f"library-{i}": "1.2.3" for i in range(12)},
        "result": {
            "modelName": f"model-{k}",
            "backend": "hf",
            "harnessVersion": "0.4.13",
            "scores": scores,
            "modelSizeBytes": 1_500_000,
            "resultsPath": f"{out}/results.json",
            "samplesDir": f"{out}/samples",
        },
    }


def make_results(cp: ControlPlane, runs: dict[str, str]) -> None:
    path = f"/api/v1/namespaces/{NS}/configmaps"
    reqs = []
    for run, uid in runs.items():
        owner = {"apiVersion": "qeval.dev/v1alpha1", "kind": "EvalRun", "name": run, "uid": uid}
        for k in range(PER_RUN):
            doc = evaluate_document(run, k)
            labels = {
                m.MANAGED_BY: m.MANAGER,
                m.LABEL_OWNER_UID: uid,
                m.LABEL_RUN: run,
                m.LABEL_STAGE: f"evaluate-model-{k}",
                m.LABEL_STAGE_KIND: "evaluate",
                LABEL_REUSE_KEY: f"{k:02d}{uid[:20]}",
            }
            name = m.child_name(run, f"evaluate-model-{k}")
            body = m.build_result_configmap(name, NS, doc, labels, owner)
            reqs.append(("POST", path, body, None))
    create_all(cp, reqs)


def baseline_tree(commit: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "operator/qeval"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "operator"


def measure(operator: OperatorProcess, resources: int, limit: float = 600) -> dict[str, Any]:
    """RSS once the operator knows every resource and its RSS is steady, or at ``limit``
    seconds after its start, whichever comes first (then it says how many it knew)."""
    t0 = time.monotonic()
    operator.start(timeout=300)
    try:
        deadline = t0 + limit
        known = 0
        while (known := operator.probe().get("resources", {}).get("resources", 0)) != resources:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        listed = time.monotonic() - t0
        last = operator.rss_kib()
        while time.monotonic() < deadline:  # steady: the indexes are filled
            time.sleep(3)
            now = operator.rss_kib()
            if abs(now - last) <= 0.01 * last:
                break
            last = now
        now = operator.rss_kib()
        return {
            "rss_mib": round(now / 1024, 1),
            "peak_rss_mib": round(operator.peak_rss_kib() / 1024, 1),
            "seconds_to_know_all": round(listed, 1) if known == resources else None,
            "known": known,
            "seconds": round(time.monotonic() - t0, 1),
        }
    finally:
        operator.stop()


def idle(cp: ControlPlane, operator: OperatorProcess, user: str, seconds: float) -> dict[str, Any]:
    operator.start(timeout=300)
    try:
        deadline = time.monotonic() + 600
        while operator.probe().get("resources", {}).get("resources") != RUNS:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        time.sleep(10)  # the initial lists and indexing end
        t0 = time.time()
        time.sleep(seconds)  # the idle window measured
        t1 = time.time()
    finally:
        operator.stop()
    by_verb: dict[str, int] = {}
    for e in requests_by(cp, user, t0, t1):
        by_verb[e["verb"]] = by_verb.get(e["verb"], 0) + 1
    return {
        "window_seconds": round(t1 - t0),
        "requests_by_verb": by_verb,
        "non_watch": sum(c for v, c in by_verb.items() if v != "watch"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--idle-seconds", type=float, default=600)
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--limit", type=float, default=240, help="seconds per measurement")
    parser.add_argument("--runs", type=int, default=RUNS, help="finished runs (10 results each)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    globals()["RUNS"] = args.runs
    started = datetime.datetime.now(datetime.UTC)
    work = Path(tempfile.mkdtemp(prefix="qeval-reliability-"))
    old = baseline_tree(args.baseline, work)
    report: dict[str, Any] = {"memory": {}}
    with ControlPlane() as cp:
        cp.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cp.create_namespace(NS)
        ids = install_identities(cp, NS)
        env = {
            "KUBECONFIG": str(ids.operator),
            "QEVAL_NAMESPACES": NS,
            "QEVAL_RESYNC_SECONDS": "60",
        }
        builds = {
            "before": OperatorProcess(
                {**env, "PYTHONPATH": str(old)}, work / "before.log", "qeval", "operator"
            ),
            "after": OperatorProcess(env, work / "after.log"),
        }

        def at(size: str, resources: int, limit: float = 600) -> None:
            for build, operator in builds.items():
                row = measure(operator, resources, limit)
                report["memory"].setdefault(size, {})[build] = row
                print(size, build, row, flush=True)

        at("no resource", 0)
        runs = make_runs(cp)
        at("1,000 finished runs", RUNS)
        report["idle"] = idle(cp, builds["after"], ids.operator_user, args.idle_seconds)
        print("idle", report["idle"], flush=True)
        make_results(cp, runs)
        at("1,000 finished runs + 10,000 result ConfigMaps", RUNS, args.limit)
    report["meta"] = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "baseline": args.baseline,
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "reliability.json").write_text(json.dumps(report, indent=1) + "\n")
        write_sections(report)


def write_sections(report: dict[str, Any]) -> None:
    """Replace this benchmark's sections of reliability.md, leaving the others as they are."""
    mem = ["## Memory", ""]
    mem += [
        f"`benchmarks/reliability_benchmark.py`, {report['meta']['date']}: the operator's RSS "
        "(VmRSS once steady; peak VmHWM) as a process on a real control plane, and when its "
        "probe first knew every run (a measurement ends at the limit). `before` = the operator "
        f"package of {report['meta']['baseline']} (its children's state in kopf's indexes), "
        "`after` = its own store, primed by one label-selected list of each kind in pages of "
        "500 before the watches start, then kept by their events.",
        "",
        "| in the namespace | before RSS / peak (MiB) | knew all runs | "
        "after RSS / peak (MiB) | knew all runs |",
        "|---|---|---|---|---|",
    ]

    def knew(row: dict[str, Any]) -> str:
        s = row["seconds_to_know_all"]
        return f"after {s} s" if s is not None else f"{row['known']} at {row['seconds']} s"

    for size, row in report["memory"].items():
        b, a = row["before"], row["after"]
        mem.append(
            f"| {size} | {b['rss_mib']} / {b['peak_rss_mib']} | {knew(b)} "
            f"| {a['rss_mib']} / {a['peak_rss_mib']} | {knew(a)} |"
        )
    i = report["idle"]
    verbs = ", ".join(f"{v} {c}" for v, c in sorted(i["requests_by_verb"].items()))
    idle_text = [
        "## Idle cost",
        "",
        f"1,000 finished runs, nothing happening, "
        f"{i['window_seconds']} s (audit log, the operator's ServiceAccount): "
        f"{verbs or 'no request'}; {i['non_watch']} requests other than watches. "
        "tests/test_idle.py checks the same over 60 s (watches renewed every 20 s) and that "
        "the resync reconciles only the unfinished run.",
    ]
    path = RESULTS / "reliability.md"
    text = path.read_text() if path.exists() else "# Reliability\n"
    for section in (idle_text, mem):
        text = replace_section(text, section[0], "\n".join(section) + "\n")
    path.write_text(text)


def replace_section(text: str, heading: str, body: str) -> str:
    """``body`` in place of the section ``heading`` (up to the next ``## ``), or appended."""
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip() == heading)
    except StopIteration:
        return text.rstrip("\n") + "\n\n" + body
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "".join(lines[:start]) + body + "\n" + "".join(lines[end:])


if __name__ == "__main__":
    main()
