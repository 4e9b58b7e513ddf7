"""A test double standing in for an OpenAI-compatible endpoint that returns no prompt
log-probabilities (as OpenAI's own completions API for its newer models, or a gateway that
drops ``echo``): ``GET /v1/models`` lists one model; ``POST /v1/completions`` answers
every prompt with the same text, and with ``logprobs`` the generated token's only, however
``echo`` is set. With ``key`` every request needs ``Authorization: Bearer <key>`` (401
otherwise). It records the requests it was sent (path, headers, body).

Used as a context manager: ``with NoPromptLogprobs("m", key="k") as url: ...`` serves on
127.0.0.1 at a free port; ``url`` is the base URL as OpenAI's clients take it (``.../v1``).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class NoPromptLogprobs:
    def __init__(self, model: str, key: str | None = None, text: str = " Paris"):
        self.model, self.key, self.text = model, key, text
        self.requests: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> str:
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, code: int, doc: dict[str, Any]) -> None:
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _allowed(self, body: Any = None) -> bool:
                double.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                if double.key is None or self.headers.get("Authorization") == (
                    f"Bearer {double.key}"
                ):
                    return True
                self._answer(401, {"error": {"message": "invalid API key"}})
                return False

            def do_GET(self) -> None:
                if not self._allowed():
                    return
                if self.path == "/v1/models":
                    card = {"id": double.model, "object": "model", "created": 1}
                    self._answer(200, {"object": "list", "data": [card]})
                else:
                    self._answer(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self._allowed(body):
                    return
                if self.path != "/v1/completions":
                    self._answer(404, {"error": {"message": f"no route {self.path}"}})
                    return
                prompts = body.get("prompt")
                prompts = prompts if isinstance(prompts, list) else [prompts]
                logprobs = None
                if body.get("logprobs") is not None:  # the generated token's, never the prompt's
                    logprobs = {
                        "tokens": [double.text],
                        "token_logprobs": [-0.5],
                        "top_logprobs": [{double.text: -0.5}],
                        "text_offset": [0],
                    }
                choices = [
                    {"index": i, "text": double.text, "logprobs": logprobs, "finish_reason": "stop"}
                    for i in range(len(prompts))
                ]
                self._answer(200, {"object": "text_completion", "choices": choices})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
