"""The hf backend's OpenAI-compatible server: a model served through transformers.

This is not vLLM. It exists so that the serving benchmark and the similarity stage take
the same client path on a machine without a GPU (where vLLM cannot run) as they do
against vLLM, and its figures are labelled ``backend: hf``. It answers ``GET /health``,
``GET /v1/models`` and ``POST /v1/completions`` (``stream`` with server-sent events, one
chunk per generated token, and ``stream_options.include_usage``; ``max_tokens``,
``temperature`` 0 only, i.e. greedy, ``ignore_eos`` as vLLM has it). Requests are served
one at a time (a lock around the model: transformers does no continuous batching), so
concurrent scenarios measure queueing, as they would on any server without batching.

The tests use it as the test double of a vLLM server (``python -m qeval.serving.hf_server
--model PATH --port N``).
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class HfModel:
    """A causal LM and its tokenizer, generating greedily one token at a time."""

    def __init__(self, path: str | Path, name: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.name = name or str(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForCausalLM.from_pretrained(str(path))
        self.model.eval()
        self.max_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        self.lock = threading.Lock()

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            return [int(t) for t in prompt]
        return list(self.tokenizer(prompt)["input_ids"])

    def generate(self, ids: list[int], max_tokens: int, ignore_eos: bool) -> Iterator[int]:
        """Greedy token ids, one at a time (the KV cache carried between steps)."""
        torch = self.torch
        eos = self.tokenizer.eos_token_id
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
            for i in range(max_tokens):
                token = int(out.logits[0, -1].argmax())
                yield token
                if (token == eos and not ignore_eos) or i == max_tokens - 1:
                    return
                out = self.model(
                    input_ids=torch.tensor([[token]]),
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )


class BadRequest(ValueError):
    pass


def _request(model: HfModel, body: dict[str, Any]) -> tuple[list[int], int, bool]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, (str, list)):
        raise BadRequest("prompt must be a string or a list of token ids")
    if float(body.get("temperature", 0) or 0) != 0:
        raise BadRequest("this server generates greedily only: set temperature 0")
    max_tokens = int(body.get("max_tokens", 16))
    ids = model.prompt_ids(prompt)
    if model.max_length and len(ids) + max_tokens > model.max_length:
        raise BadRequest(
            f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
            f"context of {model.max_length} tokens"
        )
    return ids, max_tokens, bool(body.get("ignore_eos", False))


def make_handler(model: HfModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # One small write per token: without this, Nagle's algorithm and delayed ACKs
            # hold tokens back for tens of milliseconds (asyncio servers such as vLLM's set it).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _json(self, code: int, doc: dict[str, Any]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": model.name, "object": "model"}]})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self.path != "/v1/completions":
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                ids, max_tokens, ignore_eos = _request(model, body)
            except (ValueError, TypeError) as e:
                self._json(400, {"error": {"message": str(e), "type": "BadRequest"}})
                return
            rid = f"cmpl-{uuid.uuid4().hex[:16]}"
            with model.lock:
                if body.get("stream"):
                    self._stream(rid, ids, max_tokens, ignore_eos, body)
                else:
                    tokens = list(model.generate(ids, max_tokens, ignore_eos))
                    self._json(200, self._completion(rid, ids, tokens))

        def _completion(self, rid: str, ids: list[int], tokens: list[int]) -> dict[str, Any]:
            finish = "stop" if tokens and tokens[-1] == model.tokenizer.eos_token_id else "length"
            text = model.tokenizer.decode(tokens, skip_special_tokens=True)
            return {
                "id": rid,
                "object": "text_completion",
                "created": int(time.time()),
                "model": model.name,
                "choices": [{"index": 0, "text": text, "finish_reason": finish}],
                "usage": _usage(ids, tokens),
            }

        def _stream(
            self, rid: str, ids: list[int], max_tokens: int, ignore_eos: bool, body: dict[str, Any]
        ) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            tokens: list[int] = []
            sent = ""
            for token in model.generate(ids, max_tokens, ignore_eos):
                tokens.append(token)
                text = str(model.tokenizer.decode(tokens, skip_special_tokens=True))
                delta, sent = text[len(sent) :], text
                choice = {"index": 0, "text": delta, "finish_reason": None}
                self._event({"id": rid, "object": "text_completion", "choices": [choice]})
            if (body.get("stream_options") or {}).get("include_usage"):
                self._event({"id": rid, "choices": [], "usage": _usage(ids, tokens)})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def _event(self, doc: dict[str, Any]) -> None:
            self.wfile.write(b"data: " + json.dumps(doc).encode() + b"\n\n")
            self.wfile.flush()

    return Handler


def _usage(ids: list[int], tokens: list[int]) -> dict[str, int]:
    return {
        "prompt_tokens": len(ids),
        "completion_tokens": len(tokens),
        "total_tokens": len(ids) + len(tokens),
    }


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # The throughput scenario opens every connection at once: the default listen backlog
    # of 5 drops connections (the client sees resets).
    request_queue_size = 4096


def make_server(model: HfModel, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    return Server((host, port), make_handler(model))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args(argv)
    model = HfModel(args.model, args.served_model_name)
    server = make_server(model, args.host, args.port)
    print(f"hf backend (transformers, not vLLM) serving {model.name} on {args.host}:{args.port}")
    server.serve_forever()


if __name__ == "__main__":
    main()
