"""The qeval operator as a real process (``qeval operator``), started, SIGKILLed and
restarted by a test or a benchmark.

``OperatorProcess`` runs one operator process at a time with the environment it is given
(fresh metrics and liveness ports on every start, so a restart never waits on the port of
the process it replaces); ``module`` runs ``python -m <module>`` instead of the ``qeval``
entry point (``tests.kube.crashing``: the operator with seeded kill points). ``Supervisor``
restarts the operator whenever it dies and kills it from outside at seeded random moments,
recording every kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.kube.play import free_port

ROOT = Path(__file__).resolve().parents[2]
QEVAL = ROOT / ".venv" / "bin" / "qeval"


class OperatorProcess:
    """One ``qeval operator`` process at a time; ``start`` waits until it answers its liveness
    probe (kopf serves it once the operator runs)."""

    def __init__(self, env: Mapping[str, str], log: Path, module: str | None = None, *args: str):
        self.env, self.log, self.module, self.args = dict(env), log, module, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.liveness, self.metrics_port = "", 0

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the operator was never started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, extra: Mapping[str, str] | None = None, timeout: float = 60.0) -> None:
        assert not self.alive(), "the operator is already running"
        liveness = self.liveness = f"http://127.0.0.1:{free_port()}/healthz"
        self.metrics_port = free_port()
        env = {
            **os.environ,
            **self.env,
            "QEVAL_METRICS_PORT": str(self.metrics_port),
            "QEVAL_LIVENESS_ENDPOINT": liveness,
            **(extra or {}),
        }
        argv = (
            [sys.executable, "-m", self.module, *self.args]
            if self.module
            else [str(QEVAL), "operator"]
        )
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts}: {' '.join(argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return  # died while starting (a kill point can be reached that early)
            try:
                with urllib.request.urlopen(liveness, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)  # the poll interval, not the oracle
        raise AssertionError(
            f"the operator did not answer {liveness} in {timeout}s:\n{self.tail()}"
        )

    def kill(self) -> None:
        """SIGKILL: no cleanup handler, no last write, as an OOM kill or a lost node."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, as the kubelet stops a pod: kopf's cleanup runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def probe(self) -> dict[str, Any]:
        """What the liveness endpoint says (kopf's probes: ours is ``resources``)."""
        with urllib.request.urlopen(self.liveness, timeout=5) as response:
            return dict(json.loads(response.read()))

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def rss_kib(self) -> int:
        """The process's resident memory now (VmRSS, KiB)."""
        return _status_kib(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return _status_kib(self.pid, "VmHWM")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {key}")


@dataclass
class Kill:
    at: float  # time.time()
    how: str  # "outside" or what the crash launcher logged (the kill point)


@dataclass
class Supervisor:
    """Keeps the operator running: restarts it when it died (a kill point in
    ``tests.kube.crashing``) and SIGKILLs it from outside after a seeded random uptime
    between ``uptime`` seconds, recording every death. Every ``calm_every``-th start has no
    kill points, so it lives to be killed from outside."""

    operator: OperatorProcess
    seed: int
    uptime: tuple[float, float] = (0.5, 4.0)
    calm_every: int = 3
    kills: list[Kill] = field(default_factory=list)
    crash_log: Path | None = None  # where the crash launcher says which point it killed at

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="supervisor")
        self.error: BaseException | None = None

    def begin(self) -> Supervisor:
        self._start()
        self.thread.start()
        return self

    def end(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=60)
        self.operator.stop()
        assert self.error is None, self.error

    def _start(self) -> None:
        # Every start draws its own kill points: the same seed, a different stream.
        n = self.operator.starts + 1
        extra = {"QEVAL_CRASH_SEED": f"{self.seed}-{n}"}
        if n % self.calm_every == 0:
            extra["QEVAL_CRASH_POINTS"] = ""
        self.operator.start(extra)

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                deadline = time.monotonic() + self.random.uniform(*self.uptime)
                while time.monotonic() < deadline and self.operator.alive():
                    if self.stopped.wait(0.05):
                        return
                if self.operator.alive():
                    self.operator.kill()
                    self.kills.append(Kill(time.time(), "outside"))
                else:
                    assert self.operator.proc is not None
                    code = self.operator.proc.wait()
                    assert code == -signal.SIGKILL, (
                        f"the operator exited {code}, not by a kill:\n{self.operator.tail()}"
                    )
                    self.kills.append(Kill(time.time(), self._last_point()))
                if not self.stopped.is_set():
                    self._start()
        except BaseException as e:  # surfaced by end()
            self.error = e

    def _last_point(self) -> str:
        if self.crash_log is None or not self.crash_log.exists():
            return "inside"
        lines = self.crash_log.read_text().splitlines()
        return lines[-1] if lines else "inside"
