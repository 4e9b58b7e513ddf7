"""A local cluster for a person: ``make cluster-up`` / ``make cluster-down``.

    python -m tests.cluster up [--dir .cluster]     # start it in the background, print KUBECONFIG
    python -m tests.cluster down [--dir .cluster]   # stop it; nothing is left running

The real control plane (``controlplane.py``) with the repository's CRDs, and the kubelet
stand-in (``kubelet.py``) running a tainted 8-GPU H100 node and a CPU node, so that
``helm install charts/qeval-operator`` and ``kubectl apply -f examples/`` run for real.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def serve(folder: Path) -> None:
    """Run the cluster in this process until SIGTERM or SIGINT."""
    from tests.cluster.controlplane import ControlPlane
    from tests.cluster.kubelet import Kubelet, cpu_node, gpu_node

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with ControlPlane(root=folder / "control-plane") as cp:
        cp.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        nodes = [gpu_node("gpu-0"), cpu_node("cpu-0")]
        env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        with Kubelet(cp, nodes, folder / "kubelet", extra_env=env):
            (folder / "kubeconfig").write_text(cp.kubeconfig.read_text())
            stop.wait()
    (folder / "kubeconfig").unlink(missing_ok=True)


def up(folder: Path) -> int:
    pid_file = folder / "pid"
    if pid_file.exists():
        print(f"a cluster runs already (pid {pid_file.read_text().strip()}); make cluster-down")
        return 1
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "cluster.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster", "serve", "--dir", str(folder)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    pid_file.write_text(str(process.pid))
    deadline = time.monotonic() + 600  # the first start builds the binaries (minutes)
    while not (folder / "kubeconfig").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            pid_file.unlink(missing_ok=True)
            print(f"the cluster did not start; see {folder / 'cluster.log'}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print(f"export KUBECONFIG={(folder / 'kubeconfig').resolve()}")
    return 0


def down(folder: Path) -> int:
    pid_file = folder / "pid"
    if not pid_file.exists():
        print("no cluster runs here")
        return 0
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    print("the cluster is stopped")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster")
    parser.add_argument("command", choices=["up", "down", "serve"])
    parser.add_argument("--dir", type=Path, default=ROOT / ".cluster")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.dir)
        return 0
    return up(args.dir) if args.command == "up" else down(args.dir)


if __name__ == "__main__":
    sys.exit(main())
