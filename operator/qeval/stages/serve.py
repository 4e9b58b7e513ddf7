"""The serve stage: one model behind vLLM's OpenAI-compatible server for as long as the
stages that use it need it (backend ``vllm-server``).

``qeval serve --input IN`` finds the model's directory as every stage does (a hub
snapshot, a volume, a QuantizedModel's output, the demo model), then replaces itself with
``vllm serve``. It writes no result document: whoever started it watches ``/health`` and
stops it when its consumers are done (the local executor; in a cluster the operator, which
runs it as a Deployment behind a Service).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from pydantic import Field

from qeval.api.common import ModelSource
from qeval.api.evalrun import Backend, Serving
from qeval.stages.envelope import Document, StageError

PORT = 8000  # where a server listens in its pod


class ServeInput(Document):
    """One model and how to serve it."""

    model_name: str = Field(description="The name requests use (baseline or candidate name).")
    model: ModelSource
    serving: Serving = Field(default_factory=Serving)
    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(default=PORT, ge=1, le=65535)


def command(inp: ServeInput) -> list[str]:
    """The server's command line, with the model resolved to a local directory."""
    from qeval.serving.launch import server_argv
    from qeval.stages.models import resolve

    path = resolve(inp.model)
    return server_argv(Backend.VLLM, str(path), inp.model_name, inp.port, inp.serving, inp.host)


def run(inp: ServeInput) -> NoReturn:
    """Become the server (exec), or exit 1 saying why it cannot start."""
    try:
        argv = command(inp)
    except StageError as e:
        print(f"serve {inp.model_name}: {e.reason}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"serve {inp.model_name}: {' '.join(argv)}", flush=True)
    os.execv(argv[0], argv)
