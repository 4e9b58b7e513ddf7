"""Start an OpenAI-compatible server for one model and stop it afterwards.

Backend ``hf`` starts the hf backend's server (``qeval.serving.hf_server``, transformers,
not vLLM); ``vllm`` and ``vllm-server`` start ``vllm serve``. Either runs as a child
process with its log in a file, and is used only once ``/health`` answers.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qeval.api.evalrun import Backend, Serving
from qeval.reasons import SERVER_FAILED
from qeval.serving.client import wait_healthy
from qeval.stages.envelope import StageError

STOP_SECONDS = 10.0


@dataclass(frozen=True)
class Server:
    base_url: str
    model: str  # the served model name requests must carry
    backend: str  # what serves it: "hf" (transformers) or "vllm"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _endpoint(name: str, host: str, port: int) -> list[str]:
    """Where a server listens and the model name requests carry (both servers' flags)."""
    return ["--served-model-name", name, "--host", host, "--port", str(port)]


def vllm_arguments(
    model_path: str, name: str, host: str, port: int, serving: Serving | None = None
) -> list[str]:
    """The arguments of ``vllm serve`` for one model (the one place they are built)."""
    serving = serving or Serving()
    args = [
        "serve",
        model_path,
        *_endpoint(name, host, port),
        "--tensor-parallel-size",
        str(serving.tensor_parallel_size),
        "--gpu-memory-utilization",
        str(serving.gpu_memory_utilization),
    ]
    if serving.max_model_len is not None:
        args += ["--max-model-len", str(serving.max_model_len)]
    return args + list(serving.extra_args)


def server_argv(
    backend: str,
    model_path: str,
    name: str,
    port: int,
    serving: Serving | None = None,
    host: str = "127.0.0.1",
) -> list[str]:
    """The command of an OpenAI-compatible server for the model: ``vllm serve`` (backends
    vllm and vllm-server) or the hf backend's transformers server."""
    if backend == Backend.HF:
        return [
            sys.executable,
            "-m",
            "qeval.serving.hf_server",
            "--model",
            model_path,
            *_endpoint(name, host, port),
        ]
    vllm = shutil.which("vllm")
    if vllm is None:
        raise StageError(
            "NoServer",
            f"backend {backend} needs vLLM (the evaluator image has it; it needs a GPU); "
            "on a machine without one use backend hf",
        )
    return [vllm, *vllm_arguments(model_path, name, host, port, serving)]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def served(
    backend: str,
    model_path: str,
    name: str,
    log_path: Path,
    start_timeout: float = 900.0,
    serving: Serving | None = None,
) -> Iterator[Server]:
    """A running server for ``model_path``; StageError(ServerFailed) if it does not start."""
    port = free_port()
    argv = server_argv(backend, model_path, name, port, serving)
    base_url = f"http://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, base_url, start_timeout, log_path)
        yield Server(base_url, name, "hf" if backend == Backend.HF else "vllm")
    finally:
        proc.terminate()
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(proc: subprocess.Popen[bytes], base_url: str, timeout: float, log: Path) -> None:
    """Return once the server at ``base_url`` is healthy; StageError(ServerFailed) if its
    process exits first or the timeout passes (with the log's tail)."""

    async def watch() -> None:
        health = asyncio.ensure_future(wait_healthy(base_url, timeout))
        while not health.done():
            if proc.poll() is not None:
                health.cancel()
                raise StageError(
                    SERVER_FAILED,
                    f"the server exited with code {proc.returncode} before it was ready:\n"
                    + _tail(log),
                )
            await asyncio.sleep(0.2)
        health.result()

    try:
        asyncio.run(watch())
    except TimeoutError as e:
        raise StageError(SERVER_FAILED, f"{e}\n{_tail(log)}") from e
