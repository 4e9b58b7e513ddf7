"""Warm stage workers under ``qeval run``: one process per stage kind runs that kind's
stages one after another.

A fresh process per stage spent most of a small stage on start-up: importing torch,
transformers, llm-compressor or lm-eval (~9 s) and, for an evaluation, building lm-eval's
task index (~15 s), against ~10 s of model work. A worker imports its kind's libraries
once (the stage module's ``WARM``), before its first stage, while another stage runs, and
keeps lm-eval's task managers (``evaluate.task_manager``). Each stage still runs through
``envelope.execute``, the code a stage Job runs (``qeval <kind>``), and writes its own
result document and its own ``log.txt``.

Isolation. A stage's exception is its own Failed document, as in a Job. A stage that takes
its worker down (a segfault, the OOM killer, ``os._exit``, ``sys.exit``) fails alone: the
executor writes its ProcessDied document with the log's tail, and the next stage of that
kind gets a fresh worker. After each stage a worker puts back the environment, the working
directory and torch's thread count, and collects garbage, so that no stage's settings
reach the next one: a stage's numbers are those it would compute in a process of its own.

Protocol: the executor writes one JSON line per stage to the worker's stdin (``kind``,
``input``, ``output``, ``log``); the worker answers on the descriptor that was its stdout
when it started, one JSON line once the stage's result document is written. Everything
the worker prints between stages goes to ``<run>/workers/<kind>.log``.
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import IO, Any

from qeval.local.process import stage_env

STOP_SECONDS = 10.0


# --- the worker process ----------------------------------------------------------------


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """The process's stdout and stderr (descriptors 1 and 2, so libraries' own output and
    child processes' too) into ``path`` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextmanager
def isolated() -> Iterator[None]:
    """Whatever a stage changes in the process's settings, put back after it."""
    env, cwd = dict(os.environ), os.getcwd()
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        torch = sys.modules.get("torch")
        if torch is not None and threads is not None:
            torch.set_num_threads(threads)
        gc.collect()


def warm(kind: str) -> None:
    """Import what the kind's stages import (a library that is missing is the stage's own
    failure to report, not the worker's)."""
    from qeval.stages import KINDS

    for module in KINDS[kind].warm():
        with suppress(ImportError):
            import_module(module)


def run_one(kind: str, input_path: Path, output_path: Path, log_path: Path) -> str:
    """One stage, exactly as ``qeval <kind>`` runs it; its status."""
    from qeval.stages import KINDS
    from qeval.stages.envelope import execute, outcome_line

    with isolated(), output_to(log_path):
        input_model, run = KINDS[kind].load()
        doc = execute(kind, input_model, run, input_path, output_path)
        print(outcome_line(doc))
    return str(doc.status)


def main(argv: list[str]) -> int:
    """``python -m qeval.local.worker KIND``: warm up, then run stages until stdin closes."""
    from qeval.stages import KINDS
    from qeval.stages.envelope import reproducible_math

    (kind,) = argv
    if kind not in KINDS:
        raise SystemExit(f"qeval.local.worker: no stage kind {kind!r}; the kinds: {sorted(KINDS)}")
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray output between stages: the worker's log, never the replies

    reproducible_math()  # before torch loads, as execute() does in a process of its own
    warm(kind)
    for line in sys.stdin:
        request = json.loads(line)
        status = run_one(
            request["kind"],
            Path(request["input"]),
            Path(request["output"]),
            Path(request["log"]),
        )
        replies.write(json.dumps({"output": request["output"], "status": status}) + "\n")
    return 0


# --- the executor's side ---------------------------------------------------------------


class WorkerDied(Exception):
    """The worker ended before it answered: the stage it was running died with it."""

    def __init__(self, returncode: int | None):
        super().__init__(f"exit code {returncode}")
        self.returncode = returncode


@dataclass(frozen=True)
class Died:
    """A stage's worker ended before the stage's result document was written."""

    returncode: int | None
    worker_log: Path  # where the worker's own output went (a crash outside any stage)


@dataclass
class Worker:
    kind: str
    proc: subprocess.Popen[bytes]
    replies: IO[bytes]
    log: Path

    @classmethod
    def start(cls, kind: str, log: Path, env: Mapping[str, str] | None = None) -> Worker:
        """A worker for ``kind``'s stages, with ``env`` (spec.env) in its environment from
        its start, as in a stage's container: libraries read some variables at import."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "qeval.local.worker", kind],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=stage_env() | dict(env or {}),
            )
        assert proc.stdout is not None
        return cls(kind, proc, proc.stdout, log)

    def run(
        self,
        input_path: Path,
        output_path: Path,
        log_path: Path,
        tick: Callable[[], None] = lambda: None,
        every: float = 0.5,
    ) -> None:
        """Run one stage; return once its result document is written (``tick`` is called
        every ``every`` seconds meanwhile). Raises WorkerDied if the worker ends first."""
        request = {
            "kind": self.kind,
            "input": str(input_path),
            "output": str(output_path),
            "log": str(log_path),
        }
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise WorkerDied(self.proc.wait()) from None
        with selectors.DefaultSelector() as sel:
            sel.register(self.replies, selectors.EVENT_READ)
            while not sel.select(timeout=every):
                tick()
        if not self.replies.readline():  # end of file: the worker is gone
            raise WorkerDied(self.proc.wait())

    def stop(self) -> None:
        """End the worker: it is idle (between stages), so nothing is lost."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.replies):
            with suppress(OSError):
                if pipe is not None:
                    pipe.close()


class Workers:
    """One warm worker per stage kind, started on demand and ended with the run."""

    def __init__(self, folder: Path, env: Mapping[str, Mapping[str, str]] | None = None):
        self.folder = folder
        self.env = dict(env or {})  # by kind: the variables its stages get (spec.env)
        self.live: dict[str, Worker] = {}

    def warm_up(self, kinds: Any) -> None:
        """Start a worker for each of these kinds that has none: it imports its libraries
        in the background, while the current stage runs."""
        for kind in kinds:
            if kind not in self.live:
                self.live[kind] = Worker.start(
                    kind, self.folder / f"{kind}.log", self.env.get(kind)
                )

    def pid(self, kind: str) -> int:
        """The process id of the kind's worker (started if there is none)."""
        self.warm_up([kind])
        return self.live[kind].proc.pid

    def run(
        self,
        kind: str,
        input_path: Path,
        output_path: Path,
        log_path: Path,
        tick: Callable[[], None] = lambda: None,
    ) -> Died | None:
        """Run one stage in its kind's worker: None once its result document is written,
        or how the worker ended if the stage took it down (the next stage of the kind then
        gets a fresh worker)."""
        if kind in self.live and self.live[kind].proc.poll() is not None:
            del self.live[kind]  # it ended between stages (while warming up): a fresh one
        self.warm_up([kind])
        worker = self.live[kind]
        try:
            worker.run(input_path, output_path, log_path, tick)
        except WorkerDied as e:
            del self.live[kind]
            return Died(e.returncode, worker.log)
        except BaseException:  # Ctrl-C, SIGTERM: the stage does not outlive the run
            del self.live[kind]
            worker.stop()
            raise
        return None

    def stop_all(self) -> None:
        for worker in self.live.values():
            worker.stop()
        self.live.clear()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
