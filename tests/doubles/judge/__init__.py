"""A test double standing in for an OpenAI-compatible judge endpoint: a stand-in for a
judge model, not a model. It reads the messages qeval's default judge templates produce
(``qeval.results.judged``: the pairwise ``<|The Start of Assistant A's Answer|>`` form and
the single ``[The Start of Assistant's Answer]`` form), takes out the reference answer and
the answer(s), and judges by the reference alone: an answer is correct when every word of
the reference is among its words (case-insensitive, punctuation stripped; without a
reference, when it is not empty). Pairwise: both correct or both wrong ``[[A=B]]``, only
A ``[[A>B]]`` (``[[A>>B]]`` when B is empty), only B likewise; single: correct
``Rating: [[9]]``, wrong ``Rating: [[2]]``. Usage counts words, as vLLM counts tokens.

``GET /v1/models`` lists its model; ``POST /v1/chat/completions`` judges. Faults, each
deterministic: ``garble`` (question texts, a predicate on the question, or the share of
questions picked by a hash of the text) answers those without any verdict, on every ask;
``malformed_first`` answers the first ask of each distinct judge message with a broken
verdict (``[[A>>C]]``, or two that disagree) and the right one when asked again;
``always_malformed`` never gives a parseable verdict; ``position_bias`` prefers assistant A
where the truth is a tie; ``fail_status`` (e.g. 503) answers every request with that status
(a judge that is down); ``key`` needs ``Authorization: Bearer <key>`` (401 otherwise). It
records the requests it was sent (path, headers, body) in ``.requests``.

Used as a context manager: ``with JudgeDouble() as url: ...`` serves on 127.0.0.1 at a free
port; ``url`` is the base URL as OpenAI's clients take it (``.../v1``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Collection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_SECTION = re.compile(
    r"(?:<\||\[)The Start of (.+?)(?:\|>|\])\n(.*?)\n(?:<\||\[)The End of \1(?:\|>|\])", re.S
)
_QUESTION = re.compile(r"(?:<\|User Prompt\|>|\[Question\])\n(.*?)\n\n(?:<\||\[)The Start", re.S)
Garble = Collection[str] | Callable[[str], bool] | float | None


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def correct(reference: str, answer: str) -> bool:
    """The double's whole notion of quality."""
    if not words(reference):
        return bool(answer.strip())
    return set(words(reference)) <= set(words(answer))


def share(text: str) -> float:
    """A number in [0, 1) fixed by the text (which questions a fractional garble picks)."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32


class JudgeDouble:
    def __init__(
        self,
        model: str = "judge",
        key: str | None = None,
        garble: Garble = None,
        malformed_first: bool = False,
        always_malformed: bool = False,
        position_bias: bool = False,
        fail_status: int | None = None,
    ):
        self.model, self.key, self.garble = model, key, garble
        self.malformed_first, self.always_malformed = malformed_first, always_malformed
        self.position_bias, self.fail_status = position_bias, fail_status
        self.requests: list[dict[str, Any]] = []
        self._asked: set[str] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def garbled(self, question: str) -> bool:
        g = self.garble
        if g is None:
            return False
        if callable(g):
            return bool(g(question))
        if isinstance(g, int | float):
            return share(question) < g
        return question in g

    def first_ask(self, user: str) -> bool:
        with self._lock:
            first = user not in self._asked
            self._asked.add(user)
            return first

    def judge(self, user: str) -> str | None:
        """The judgement of one user message; None when it is not a judge prompt."""
        sections = dict(_SECTION.findall(user))
        question = m.group(1) if (m := _QUESTION.search(user)) else ""
        reference = sections.get("Reference Answer", "")
        if "Assistant A's Answer" in sections and "Assistant B's Answer" in sections:
            a, b = sections["Assistant A's Answer"], sections["Assistant B's Answer"]
            ok_a, ok_b = correct(reference, a), correct(reference, b)
            if ok_a == ok_b:
                v = "A>B" if self.position_bias else "A=B"
            elif ok_a:
                v = "A>>B" if not b.strip() else "A>B"
            else:
                v = "B>>A" if not a.strip() else "B>A"
            right = f"A is {'right' if ok_a else 'wrong'}, B is {'right' if ok_b else 'wrong'}."
            broken = ("My verdict: [[A>>C]]", "At first [[A>B]], on reflection [[B>A]]")
            verdict = f"My final verdict is: [[{v}]]"
        elif "Assistant's Answer" in sections:
            ok = correct(reference, sections["Assistant's Answer"])
            right = f"The answer is {'right' if ok else 'wrong'}."
            broken = ("Rating: [[11]]", "Rating: [[3]], or rather Rating: [[8]]")
            verdict = f"Rating: [[{9 if ok else 2}]]"
        else:
            return None
        if self.garbled(question):
            return "Both answers have their merits; I would rather not decide."
        if self.always_malformed or (self.malformed_first and self.first_ask(user)):
            return f"{right} {broken[int(share(user) * 2)]}"
        return f"{right} {verdict}"

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

            def _error(self, code: int, message: str) -> None:
                self._answer(code, {"error": {"message": message, "code": code}})

            def _allowed(self, body: Any = None) -> bool:
                double.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                if double.fail_status is not None:
                    self._error(double.fail_status, "the judge is down")
                elif double.key is not None and (
                    self.headers.get("Authorization") != f"Bearer {double.key}"
                ):
                    self._error(401, "invalid API key")
                else:
                    return True
                return False

            def do_GET(self) -> None:
                if not self._allowed():
                    return
                if self.path == "/v1/models":
                    card = {"id": double.model, "object": "model", "created": 1}
                    self._answer(200, {"object": "list", "data": [card]})
                else:
                    self._error(404, f"no route {self.path}")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self._allowed(body):
                    return
                if self.path != "/v1/chat/completions":
                    return self._error(404, f"no route {self.path}")
                if body.get("model") != double.model:
                    return self._error(404, f"the model {body.get('model')} does not exist")
                messages = body.get("messages") or []
                user = next((m["content"] for m in messages if m.get("role") == "user"), "")
                text = double.judge(user)
                if text is None:
                    return self._error(400, "not a judge prompt qeval's templates make")
                usage = {
                    "prompt_tokens": sum(len(words(m.get("content", ""))) for m in messages),
                    "completion_tokens": len(words(text)),
                }
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                self._answer(
                    200,
                    {
                        "id": f"chatcmpl-{len(double.requests)}",
                        "object": "chat.completion",
                        "model": double.model,
                        "choices": [choice],
                        "usage": usage,
                    },
                )

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        serve = self._server.serve_forever  # a short poll: shutdown returns promptly
        threading.Thread(target=serve, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
