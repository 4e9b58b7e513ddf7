"""The hf backend's OpenAI-compatible server: a model served through transformers.

This is not vLLM. It exists so that the serving benchmark, the similarity stage and
lm-eval's ``local-completions`` client take the same path on a machine without a GPU
(where vLLM cannot run) as they do against vLLM, and its figures are labelled
``backend: hf``. It answers ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``
and (greedy, one answer, through the tokenizer's chat template) ``POST
/v1/chat/completions`` the way vLLM's server does for what those clients send:

* ``prompt``: a string, a list of strings, a list of token ids or a list of lists of
  token ids; a list is a batch, answered with one choice per prompt (``index`` set);
* greedy generation only (``temperature`` 0; ``seed`` is accepted and changes nothing)
  up to ``max_tokens``, ending at the end-of-sequence token (unless ``ignore_eos``) or
  at the first of the ``stop`` strings, which is cut from the text;
* ``echo`` and ``logprobs: N`` (0 to 20): ``choices[i].logprobs`` with ``tokens``,
  ``token_logprobs`` (None for the first prompt token, which nothing predicts),
  ``top_logprobs`` (per token, ``{token: logprob}`` of that token and the N most likely
  ones) and ``text_offset``; with ``echo`` the prompt's tokens come first, and
  ``max_tokens`` may be 0 (the prompt alone). lm-eval's loglikelihood requests are
  ``echo``, ``logprobs: 1``, ``max_tokens: 1``;
* ``stream`` (one prompt; server-sent events, one chunk per token, text that may be the
  start of a stop string held back) with ``stream_options.include_usage``;
* ``model`` must be the served name (``--served-model-name``), or the answer is 404;
* with ``--api-key`` (as vLLM's), every ``/v1`` route needs ``Authorization: Bearer
  <key>``, or the answer is 401 (``/health`` needs none).

The prompt's logprobs come from the same forward pass that starts generation, under a
lock around the model: requests are served one at a time (transformers does no
continuous batching), so concurrent scenarios measure queueing, as they would on any
server without batching.

The tests also use it as the test double of a vLLM server (``tests/doubles/vllm`` execs
``python -m qeval.serving.hf_server --model PATH --port N``).
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_LOGPROBS = 20  # vLLM's default --max-logprobs
MIN_LOGPROB = -9999.0  # vLLM clamps -inf to this (JSON has no infinity)
DETOKENIZE_WINDOW = 6  # tokens of context when a token is turned into text, as vLLM does


@dataclass(frozen=True)
class Step:
    """One token of a sequence: its logprob under the model given every token before it
    (None for the first prompt token, or when not asked for) and the most likely tokens
    there, best first (token id, logprob)."""

    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


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
        for step in self.steps(ids, max_tokens, ignore_eos):
            yield step.token

    def steps(
        self,
        ids: list[int],
        max_tokens: int,
        ignore_eos: bool,
        logprobs: int | None = None,
        echo: bool = False,
    ) -> Generator[Step, None, None]:
        """With ``echo``, first a Step per prompt token, then the greedy tokens (at most
        ``max_tokens``; the end-of-sequence token ends them unless ``ignore_eos``). With
        ``logprobs`` (N), each Step has its logprob and the N most likely tokens; the
        prompt's all come from the one forward pass that starts the generation."""
        torch = self.torch
        eos = self.tokenizer.eos_token_id
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), use_cache=True)
            if echo:
                yield from self._prompt_steps(ids, out.logits[0], logprobs)
            for i in range(max_tokens):
                logits = out.logits[0, -1]
                token = int(logits.argmax())  # greedy on the logits, logprobs or not
                if logprobs is None:
                    yield Step(token)
                else:
                    row = logits.float().log_softmax(-1)
                    yield Step(token, float(row[token]), _top(torch, row, logprobs))
                if (token == eos and not ignore_eos) or i == max_tokens - 1:
                    return
                out = self.model(
                    input_ids=torch.tensor([[token]]),
                    past_key_values=out.past_key_values,
                    use_cache=True,
                )

    def _prompt_steps(self, ids: list[int], logits: Any, logprobs: int | None) -> Iterator[Step]:
        """Prompt token j's logprob is row j-1 of the log-softmax of the logits."""
        torch = self.torch
        if logprobs is None:
            yield from (Step(t) for t in ids)
            return
        yield Step(ids[0])
        if len(ids) < 2:
            return
        rows = logits[:-1].float().log_softmax(-1)
        chosen = rows.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1).tolist()
        values: list[list[float]] = [[] for _ in chosen]
        indices: list[list[int]] = [[] for _ in chosen]
        if logprobs:
            best = rows.topk(logprobs, dim=-1)
            values, indices = best.values.tolist(), best.indices.tolist()
        for j in range(1, len(ids)):
            top = tuple(zip(indices[j - 1], values[j - 1], strict=True))
            yield Step(ids[j], chosen[j - 1], top)

    def piece(self, before: list[int], token: int) -> str:
        """The text ``token`` adds after the tokens ``before`` (a few of them as context,
        as vLLM's incremental detokenizer has: a lone token can decode differently)."""
        context = before[-DETOKENIZE_WINDOW:]
        prefix = str(self.tokenizer.decode(context))
        text = str(self.tokenizer.decode([*context, token]))
        if text.startswith(prefix):
            return text[len(prefix) :]
        return str(self.tokenizer.decode([token]))

    def text(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))


def _top(torch: Any, row: Any, n: int) -> tuple[tuple[int, float], ...]:
    if n == 0:
        return ()
    values, indices = torch.topk(row, n)
    return tuple(zip(indices.tolist(), values.tolist(), strict=True))


class BadRequest(ValueError):
    pass


@dataclass
class Request:
    """A completions request, checked: one token-id list per prompt and the settings."""

    prompts: list[list[int]]
    texts: list[str | None]  # each prompt as the client sent it, if as text
    max_tokens: int
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None
    echo: bool = False
    stream: bool = False


def _prompts(model: HfModel, prompt: Any) -> tuple[list[list[int]], list[str | None]]:
    """``prompt`` as vLLM takes it: str, [str, ...], [int, ...] or [[int, ...], ...]."""
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif isinstance(prompt, list) and prompt and all(_is_id(t) for t in prompt):
        items = [prompt]
    elif isinstance(prompt, list) and prompt:
        items = prompt
    else:
        raise BadRequest("prompt must be a string, a list of strings or of token ids")
    ids: list[list[int]] = []
    texts: list[str | None] = []
    for item in items:
        if isinstance(item, str):
            ids.append(model.prompt_ids(item))
            texts.append(item)
        elif isinstance(item, list) and all(_is_id(t) for t in item):
            ids.append([int(t) for t in item])
            texts.append(None)
        else:
            raise BadRequest("prompt must be a string, a list of strings or of token ids")
        if not ids[-1]:
            raise BadRequest("a prompt is empty")
    return ids, texts


def _is_id(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool)


def _request(model: HfModel, body: dict[str, Any]) -> Request:
    prompts, texts = _prompts(model, body.get("prompt"))
    if float(body.get("temperature", 0) or 0) != 0:
        raise BadRequest("this server generates greedily only: set temperature 0")
    if int(body.get("n", 1) or 1) != 1:
        raise BadRequest("this server returns one completion per prompt: set n 1")
    echo = bool(body.get("echo", False))
    max_tokens = int(body["max_tokens"]) if body.get("max_tokens") is not None else 16
    if max_tokens < (0 if echo else 1):
        raise BadRequest(f"max_tokens must be at least {0 if echo else 1}, got {max_tokens}")
    logprobs = body.get("logprobs")
    if logprobs is not None:
        logprobs = int(logprobs)
        if not 0 <= logprobs <= MAX_LOGPROBS:
            raise BadRequest(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {logprobs}")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else list(stop)
    if not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("stop must be a string or a list of non-empty strings")
    stream = bool(body.get("stream", False))
    if stream and (len(prompts) != 1 or echo or logprobs is not None):
        raise BadRequest("this server streams one prompt, without echo or logprobs")
    for ids in prompts:
        if model.max_length and len(ids) + max_tokens > model.max_length:
            raise BadRequest(
                f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                f"context of {model.max_length} tokens"
            )
    return Request(
        prompts=prompts,
        texts=texts,
        max_tokens=max_tokens,
        ignore_eos=bool(body.get("ignore_eos", False)),
        stop=stop,
        logprobs=logprobs,
        echo=echo,
        stream=stream,
    )


def chat_body(model: HfModel, body: dict[str, Any]) -> dict[str, Any]:
    """A chat completions request as the completions request it amounts to: the messages
    through the tokenizer's chat template (as vLLM's server applies it), the answer's
    length from ``max_completion_tokens`` or ``max_tokens``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
    ):
        raise BadRequest("messages must be a list of {role, content} objects")
    if not model.tokenizer.chat_template:
        raise BadRequest("the model's tokenizer has no chat template")
    prompt = model.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    keys = ("model", "temperature", "n", "stop", "seed")
    return {k: body[k] for k in keys if k in body} | {"prompt": prompt, "max_tokens": tokens}


def _cut(text: str, stop: list[str]) -> tuple[str, str | None]:
    """``text`` up to the first stop string in it (excluded), and that string."""
    hits = [(i, s) for s in stop if (i := text.find(s)) >= 0]
    if not hits:
        return text, None
    i, s = min(hits)
    return text[:i], s


@dataclass
class Choice:
    """One prompt's completion: the generated tokens, their text (cut at a stop string)
    and, with echo or logprobs, every Step to report."""

    prompt: list[int]
    tokens: list[int]
    text: str
    finish_reason: str
    stop_reason: str | None
    steps: list[Step]


def complete(model: HfModel, req: Request, ids: list[int]) -> Choice:
    """Greedy completion of one prompt (call with ``model.lock`` held). As vLLM does, a
    stop string ends the generation and is cut from the text, but the tokens generated
    up to it (and their logprobs) are reported."""
    eos = model.tokenizer.eos_token_id
    steps = model.steps(ids, req.max_tokens, req.ignore_eos, req.logprobs, req.echo)
    prompt_steps = [next(steps) for _ in ids] if req.echo else []
    generated: list[Step] = []
    finish, stop_reason = "length", None
    for step in steps:
        generated.append(step)
        if step.token == eos and not req.ignore_eos:
            finish = "stop"
            break
        if req.stop:
            stop_reason = _cut(model.text([s.token for s in generated]), req.stop)[1]
            if stop_reason is not None:
                finish = "stop"
                break
    steps.close()
    tokens = [s.token for s in generated]
    text = _cut(model.text(tokens), req.stop)[0]
    return Choice(ids, tokens, text, finish, stop_reason, prompt_steps + generated)


def _logprobs(model: HfModel, before: list[int], steps: list[Step], n: int) -> dict[str, Any]:
    """vLLM's ``logprobs`` object of a completion choice for ``steps``, which follow the
    tokens ``before`` (the prompt, unless it is echoed: then its Steps come first)."""
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []
    offset = 0
    context = list(before)
    for step in steps:
        token = model.piece(context, step.token)
        tokens.append(token)
        text_offset.append(offset)
        offset += len(token)
        if step.logprob is None:
            token_logprobs.append(None)
            top_logprobs.append(None)
        else:
            token_logprobs.append(max(step.logprob, MIN_LOGPROB))
            top = {token: max(step.logprob, MIN_LOGPROB)}  # the token itself first, as vLLM
            for tid, lp in step.top[:n]:
                top.setdefault(model.piece(context, tid), max(lp, MIN_LOGPROB))
            top_logprobs.append(top)
        context.append(step.token)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }


def make_handler(model: HfModel, api_key: str | None = None) -> type[BaseHTTPRequestHandler]:
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

        def _refused(self) -> bool:
            """Whether the request lacks the server's key (answered 401, as vLLM does)."""
            if api_key is None or not self.path.startswith("/v1"):
                return False
            if self.headers.get("Authorization") == f"Bearer {api_key}":
                return False
            self.close_connection = True  # its body, if any, is left unread
            self._json(401, {"error": "Unauthorized"})
            return True

        def do_GET(self) -> None:
            if self._refused():
                return
            if self.path == "/health":
                self._json(200, {"status": "ok"})
            elif self.path == "/v1/models":
                # As vLLM's model card: the context it takes, which lm-eval's client needs.
                card = {
                    "id": model.name,
                    "object": "model",
                    "max_model_len": model.max_length or None,
                }
                self._json(200, {"object": "list", "data": [card]})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            if self._refused():
                return
            chat = self.path == "/v1/chat/completions"
            if self.path != "/v1/completions" and not chat:
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            try:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise BadRequest("the body must be a JSON object")
                if chat:
                    body = chat_body(model, body)
                req = _request(model, body)
            except (ValueError, TypeError, KeyError) as e:
                self._json(400, {"error": {"message": str(e), "type": "BadRequest"}})
                return
            if body.get("model") not in (None, model.name):  # as vLLM answers
                message = f"The model `{body['model']}` does not exist."
                self._json(404, {"error": {"message": message, "type": "NotFoundError"}})
                return
            rid = f"cmpl-{uuid.uuid4().hex[:16]}"
            with model.lock:
                if req.stream:
                    self._stream(rid, req, body)
                elif chat:
                    (choice,) = [complete(model, req, ids) for ids in req.prompts]
                    self._json(200, self._chat(rid, choice))
                else:
                    choices = [complete(model, req, ids) for ids in req.prompts]
                    self._json(200, self._completion(rid, req, choices))

        def _chat(self, rid: str, c: Choice) -> dict[str, Any]:
            return {
                "id": rid.replace("cmpl-", "chatcmpl-"),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model.name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": c.text},
                        "finish_reason": c.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": len(c.prompt),
                    "completion_tokens": len(c.tokens),
                    "total_tokens": len(c.prompt) + len(c.tokens),
                },
            }

        def _completion(self, rid: str, req: Request, choices: list[Choice]) -> dict[str, Any]:
            out = []
            for i, c in enumerate(choices):
                text = c.text
                if req.echo:
                    prompt = req.texts[i]
                    text = (prompt if prompt is not None else model.text(c.prompt)) + text
                logprobs = None
                if req.logprobs is not None:
                    before = [] if req.echo else c.prompt
                    logprobs = _logprobs(model, before, c.steps, req.logprobs)
                out.append(
                    {
                        "index": i,
                        "text": text,
                        "logprobs": logprobs,
                        "finish_reason": c.finish_reason,
                        "stop_reason": c.stop_reason,
                    }
                )
            prompt_tokens = sum(len(c.prompt) for c in choices)
            completion_tokens = sum(len(c.tokens) for c in choices)
            return {
                "id": rid,
                "object": "text_completion",
                "created": int(time.time()),
                "model": model.name,
                "choices": out,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }

        def _stream(self, rid: str, req: Request, body: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            (ids,) = req.prompts
            # Text that may be the start of a stop string waits until it is known not to be.
            hold = max((len(s) for s in req.stop), default=1) - 1
            tokens: list[int] = []
            sent, finished = "", False
            for token in model.generate(ids, req.max_tokens, req.ignore_eos):
                tokens.append(token)
                text, stop = _cut(model.text(tokens), req.stop)
                finished = stop is not None
                ready = text if finished else text[: max(len(sent), len(text) - hold)]
                delta, sent = ready[len(sent) :], ready
                choice = {"index": 0, "text": delta, "finish_reason": None}
                self._event({"id": rid, "object": "text_completion", "choices": [choice]})
                if finished:
                    break
            text = _cut(model.text(tokens), req.stop)[0]
            if text != sent:
                choice = {"index": 0, "text": text[len(sent) :], "finish_reason": None}
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


def make_server(
    model: HfModel, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None
) -> ThreadingHTTPServer:
    return Server((host, port), make_handler(model, api_key))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--max-model-len", type=int, default=None, help="context taken; default: the model's"
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="a key every /v1 request must send as a bearer token (as vLLM's --api-key)",
    )
    args = p.parse_args(argv)
    model = HfModel(args.model, args.served_model_name)
    if args.max_model_len is not None:
        model.max_length = args.max_model_len
    server = make_server(model, args.host, args.port, args.api_key)
    print(f"hf backend (transformers, not vLLM) serving {model.name} on {args.host}:{args.port}")
    server.serve_forever()


if __name__ == "__main__":
    main()
