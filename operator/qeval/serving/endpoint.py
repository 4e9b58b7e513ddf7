"""A model behind an existing OpenAI-compatible API (``spec.baseline.endpoint``,
``spec.candidates[].endpoint``): its API key, what it says it serves, and whether it can
score loglikelihood tasks, checked before any work by ``qeval run``'s preflight and by the
evaluate stage itself (in a cluster, before lm-eval runs).

The key is read from the environment variable ``secret_env(apiKeySecret)`` (the operator
sets it from the Secret; under ``qeval run`` the person running it exports it), handed to
lm-eval as ``OPENAI_API_KEY`` (what its local-completions client sends as a bearer token)
only while the evaluation runs, and cut from every log record meanwhile: lm-eval logs a
failed request's ``repr``, headers included.

Reasons a stage fails with (``StageError``):

* ``NoApiKey``: apiKeySecret is set, its variable is not;
* ``EndpointFailed``: the endpoint cannot be reached, or answers with an HTTP error;
* ``ModelNotServed``: ``GET <baseUrl>/models`` does not list the endpoint's model;
* ``NoTokenizer``: loglikelihood tasks, and no endpoint.tokenizer to split their prompts;
* ``NoPromptLogprobs``: loglikelihood tasks, and the endpoint returns no prompt
  log-probabilities (or is asked through chat completions, which return none).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from qeval.api.common import secret_env
from qeval.api.evalrun import Endpoint
from qeval.stages.envelope import StageError

ENDPOINT_FAILED = "EndpointFailed"
MODEL_NOT_SERVED = "ModelNotServed"
NO_API_KEY = "NoApiKey"
NO_TOKENIZER = "NoTokenizer"
NO_PROMPT_LOGPROBS = "NoPromptLogprobs"

TIMEOUT_SECONDS = 30.0
# The probe is lm-eval's own loglikelihood request (``LocalCompletionsAPI._create_payload``)
# on a prompt of several tokens in any tokenizer.
PROBE_PROMPT = "The capital of France is Paris"
# What GET /models reports that names the served weights (vLLM: the path or id it loaded
# as root, the context length). ``created`` is the time of the answer and ``permission``
# holds fresh ids on vLLM: neither names anything.
CARD_FIELDS = ("id", "object", "owned_by", "root", "parent", "max_model_len")
OPENAI_KEY_ENV = "OPENAI_API_KEY"  # what lm-eval's local-completions client reads


@dataclass(frozen=True)
class Connection:
    """An endpoint that answered: its key (never logged) and its model card, if it has
    a /models route (None where it has none)."""

    endpoint: Endpoint
    key: str = ""
    card: Mapping[str, Any] | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def url(self, route: str) -> str:
        return f"{self.endpoint.base_url.rstrip('/')}/{route}"

    def identity(self) -> dict[str, Any]:
        """What names the endpoint's model in a result cache key."""
        card = {k: self.card[k] for k in CARD_FIELDS if k in self.card} if self.card else None
        return {
            "baseUrl": self.endpoint.base_url.rstrip("/"),
            "model": self.endpoint.model,
            "card": card,
        }

    def max_model_len(self) -> int | None:
        value = (self.card or {}).get("max_model_len")
        return value if type(value) is int and value > 0 else None


def api_key(endpoint: Endpoint, env: Mapping[str, str] | None = None) -> str:
    """The endpoint's API key ('' without apiKeySecret), from its environment variable."""
    ref = endpoint.api_key_secret
    if ref is None:
        return ""
    name = secret_env(ref)
    key = (os.environ if env is None else env).get(name, "")
    if not key:
        raise StageError(
            NO_API_KEY,
            f"the API key of {endpoint.base_url} (Secret {ref.name}, key {ref.key}) is not in "
            f"the environment variable {name}: in a cluster, check that the Secret exists in "
            f"the run's namespace; under qeval run, export {name}",
        )
    return key


def _error(e: Exception) -> str:
    import httpx

    if isinstance(e, httpx.HTTPStatusError):
        body = e.response.text.strip().replace("\n", " ")[:300]
        return f"HTTP {e.response.status_code}{': ' + body if body else ''}"
    return f"{type(e).__name__}: {e}"


def connect(endpoint: Endpoint, timeout: float = TIMEOUT_SECONDS) -> Connection:
    """The key, and what ``GET <baseUrl>/models`` says of the endpoint's model (an endpoint
    without that route, 404 or 405, is taken at its word). Raises StageError."""
    import httpx

    conn = Connection(endpoint, api_key(endpoint))
    url = conn.url("models")
    try:
        answer = httpx.get(url, headers=conn.headers(), timeout=timeout)
        if answer.status_code in (404, 405):
            return conn
        answer.raise_for_status()
        models = answer.json()
    except (httpx.HTTPError, ValueError) as e:
        raise StageError(ENDPOINT_FAILED, f"GET {url}: {_error(e)}") from None
    cards = models.get("data") if isinstance(models, dict) else None
    cards = [c for c in cards if isinstance(c, dict)] if isinstance(cards, list) else []
    for card in cards:
        if card.get("id") == endpoint.model:
            return Connection(endpoint, conn.key, card)
    served = [c.get("id") for c in cards][:10]
    raise StageError(
        MODEL_NOT_SERVED,
        f"{endpoint.base_url} does not serve {endpoint.model!r} (GET /models lists {served}); "
        "fix the endpoint's model",
    )


def prompt_logprobs_problem(answer: Any) -> str | None:
    """Why a completions answer to the probe (echo, logprobs 1) has no prompt
    log-probabilities as lm-eval reads them (``token_logprobs`` and ``top_logprobs`` of the
    prompt's tokens, then the generated one), or None."""
    try:
        logprobs = answer["choices"][0]["logprobs"]
        values, tops = logprobs["token_logprobs"], logprobs["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return "its answer has no choices[0].logprobs.token_logprobs and top_logprobs"
    if not isinstance(values, list) or not isinstance(tops, list) or len(values) < 3:
        return "it returned log-probabilities of the generated token only, not of the prompt"
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values[1:])
    if not numbers or not all(isinstance(t, dict) and t for t in tops[1:]):
        return "its prompt log-probabilities are not numbers with their top tokens"
    return None


def check_prompt_logprobs(conn: Connection, timeout: float = TIMEOUT_SECONDS) -> None:
    """Send lm-eval's loglikelihood request once (echo, logprobs 1, max_tokens 1); raise
    StageError unless the prompt's log-probabilities come back."""
    import httpx

    url = conn.url("completions")
    body = {
        "model": conn.endpoint.model,
        "prompt": PROBE_PROMPT,
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "echo": True,
    }
    try:
        answer = httpx.post(url, json=body, headers=conn.headers(), timeout=timeout)
        answer.raise_for_status()
        problem = prompt_logprobs_problem(answer.json())
    except (httpx.HTTPError, ValueError) as e:
        problem = f"POST {url} with echo and logprobs answered {_error(e)}"
    if problem:
        raise StageError(
            NO_PROMPT_LOGPROBS,
            f"loglikelihood tasks need the endpoint's prompt log-probabilities (lm-eval "
            f"sends echo: true, logprobs: 1) and {conn.endpoint.base_url}: {problem}; drop "
            "those tasks, or serve the model where prompt logprobs are returned (vLLM does)",
        )


def check_scoring(
    conn: Connection,
    scored: list[str],
    chat: bool,
    timeout: float = TIMEOUT_SECONDS,
    probe: bool = True,
) -> None:
    """Whether the endpoint can run the loglikelihood tasks ``scored`` (of the run's tasks,
    those that score log-probabilities): through completions, with a tokenizer, where it
    returns prompt log-probabilities (``probe=False``: not asked). Raises StageError."""
    if not scored:
        return
    what = f"{', '.join(scored[:4])}{' ...' if len(scored) > 4 else ''}"
    if chat:
        raise StageError(
            NO_PROMPT_LOGPROBS,
            f"{what} score log-likelihoods, which chat completions cannot return: with "
            "spec.prompt.chatTemplate an endpoint is asked through /chat/completions; drop "
            "the tasks or the chat template",
        )
    if conn.endpoint.tokenizer is None:
        raise StageError(
            NO_TOKENIZER,
            f"{what} score log-likelihoods: lm-eval splits each prompt into context and "
            "continuation tokens with the model's tokenizer; set endpoint.tokenizer (the "
            "served model's Hugging Face id or path), or drop the tasks",
        )
    if probe:
        check_prompt_logprobs(conn, timeout)


class _Redacting(logging.LogRecord):
    secret = ""

    def getMessage(self) -> str:  # noqa: N802 (logging's name)
        return super().getMessage().replace(self.secret, "[redacted]")


@contextmanager
def keyed(conn: Connection) -> Iterator[None]:
    """lm-eval's environment for this endpoint during the block: OPENAI_API_KEY its key
    (empty without one: a key of the person's own never goes to this endpoint), and the key
    cut from every log record."""
    saved_key = os.environ.get(OPENAI_KEY_ENV)
    saved_factory = logging.getLogRecordFactory()
    os.environ[OPENAI_KEY_ENV] = conn.key
    if conn.key:
        record = type("Redacting", (_Redacting,), {"secret": conn.key})
        logging.setLogRecordFactory(record)
    try:
        yield
    finally:
        logging.setLogRecordFactory(saved_factory)
        if saved_key is None:
            os.environ.pop(OPENAI_KEY_ENV, None)
        else:
            os.environ[OPENAI_KEY_ENV] = saved_key
