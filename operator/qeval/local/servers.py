"""Model servers under ``qeval run`` (backend ``vllm-server``).

A serve stage (backend ``vllm-server``) is a model's server rather than a command that
finishes: it is started in the background right before the first stage that needs it runs
as a process (an evaluation reused from the cache needs none), on 127.0.0.1 and a port of
its own (``LocalEndpoints``), used once ``/health`` answers, and stopped once every stage
that needs it is done; every server is stopped when the run ends, however it ends. Its
result document says what it served or why it failed (``ServerFailed``, with the log's
tail: the stages that need it are then skipped); the engine (``qeval.engine``) says when
its users are done, and writes the document of a server none of them needed started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from qeval.api.common import now
from qeval.local.process import stage_env, tail, write_input
from qeval.plan import Layout, Stage
from qeval.reasons import SERVER_FAILED
from qeval.serving.launch import STOP_SECONDS, free_port, wait_ready
from qeval.stages.envelope import (
    StageError,
    StageResult,
    StageStatus,
    failed,
    library_versions,
)


@dataclass(frozen=True)
class LocalEndpoints:
    """Model servers on this machine (``qeval run``): each listens on 127.0.0.1 at a free
    port of its own, picked the first time its serve stage is named and kept for the run."""

    bind: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def port(self, stage: str) -> int:
        if stage not in self.ports:
            port = free_port()
            while port in self.ports.values():
                port = free_port()
            self.ports[stage] = port
        return self.ports[stage]

    def url(self, stage: str) -> str:
        return f"http://{self.bind}:{self.port(stage)}"


@dataclass
class Server:
    """A serve stage's process, and the stages it has served so far."""

    stage: Stage
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    started_at: str
    t0: float
    served: list[str] = field(default_factory=list)


class Servers:
    """The run's model servers: started on demand, stopped when no longer needed."""

    def __init__(self, stages: list[Stage], layout: Layout):
        self.layout = layout
        self.stages = {s.name: s for s in stages if s.serves}
        self.running: dict[str, Server] = {}

    def start(self, stage: Stage, console: Console, label: str) -> StageResult | None:
        """Start the server and wait until ``/health`` answers: None once it does, else its
        Failed result document (written), the server stopped."""
        from qeval.stages.serve import ServeInput

        input_path = write_input(stage, self.layout)
        log_path = input_path.parent / "log.txt"
        Path(self.layout.result_path(stage.name)).unlink(missing_ok=True)
        argv = [sys.executable, "-m", "qeval", *stage.argv(str(input_path), "")[1:]]
        url = self.layout.endpoints.url(stage.name)
        timeout = ServeInput.model_validate(stage.input).serving.ready_timeout_seconds
        started, t0 = now(), time.monotonic()
        with log_path.open("w") as log:
            # A session of its own: Ctrl-C reaches the run, which stops the server itself,
            # and a server that will not stop is killed with whatever it started.
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=stage_env(),
                start_new_session=True,
            )
        server = Server(stage, proc, url, log_path, started, t0)
        self.running[stage.name] = server
        try:
            with console.status(f"{label} {stage.name}: starting {url}"):
                wait_ready(proc, url, float(timeout), log_path)
        except StageError as e:
            return self._failed(server, e.reason, str(e))
        return None

    def check(self, name: str) -> StageResult | None:
        """None while the server runs, else its Failed result document (written)."""
        server = self.running[name]
        code = server.proc.poll()
        if code is None:
            return None
        return self._failed(
            server,
            SERVER_FAILED,
            f"the server exited with code {code} while serving:\n{tail(server.log)}",
        )

    def stop(self, name: str) -> StageResult:
        """Stop a server its users are done with; its result document (written)."""
        server = self.running[name]
        if (died := self.check(name)) is not None:
            return died
        self._stop(self.running.pop(name))
        served = ", ".join(server.served) or "no stage"
        return self._write(
            StageResult(
                stage=name,
                kind=server.stage.kind,
                status=StageStatus.SUCCEEDED,
                message=f"served {served} at {server.url}; stopped",
                started_at=server.started_at,
                finished_at=now(),
                wall_seconds=round(time.monotonic() - server.t0, 3),
                versions=library_versions(),
                result={"baseUrl": server.url, "served": server.served},
            )
        )

    def stop_all(self) -> None:
        for name in list(self.running):
            self._stop(self.running.pop(name))

    def _failed(self, server: Server, reason: str, message: str) -> StageResult:
        self.running.pop(server.stage.name, None)
        self._stop(server)
        doc = failed(
            server.stage.name,
            server.stage.kind,
            reason,
            message,
            started_at=server.started_at,
            wall_seconds=round(time.monotonic() - server.t0, 3),
        )
        return self._write(doc)

    def _write(self, doc: StageResult) -> StageResult:
        doc.write(Path(self.layout.result_path(doc.stage)))
        return doc

    @staticmethod
    def _stop(server: Server) -> None:
        """SIGTERM, then after STOP_SECONDS SIGKILL to its whole session (vLLM's engine
        processes included)."""
        proc = server.proc
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM ends the run as Ctrl-C does, through its ``finally`` blocks: the servers
    run in sessions of their own, and nothing else would stop them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
