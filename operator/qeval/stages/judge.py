"""The judge stage: every model answers the same prompts, a judge model rates the
candidates' answers against the baseline's, and each candidate gets its outcome.

Everything goes through OpenAI-compatible chat completions (plain completions for a set
with ``chatTemplate: false``): a model's answers come from its server where the plan serves
it (backend vllm-server), from an endpoint, or from a server started here for it and
stopped afterwards (hf: transformers; vllm: ``vllm serve``), one model at a time; the
judge's verdicts likewise, from its own server, its endpoint, or one started here. Where
the run's similarity stage generated the same prompts with the same settings, its
generations are the answers (not generated twice).

Each pairwise comparison is asked in both orders when ``swapPositions`` (the candidate as
assistant A, then as B) and ``repeats`` times; an unparseable judgement is asked again up to
``judge.retries`` times and, still unparseable, counted (``qeval.results.judged``). Every
judgement goes to ``judgements.jsonl`` and every answer to ``answers.jsonl``. With a result
cache, one candidate's judgements are reused under a key of the baseline, the candidate,
the judge, the prompts, the template and the settings.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field

from qeval.api.common import ApiModel, ModelSource, volume_path
from qeval.api.evalrun import Backend, Endpoint, Judged, JudgedKind, Serving
from qeval.api.evalrun_status import JudgedResult
from qeval.results import judged as jr
from qeval.stages.envelope import Document, StageError

# What the stage imports: a warm worker imports it once (``qeval.local.worker``).
WARM = ("httpx", "qeval.results.judged", "qeval.serving.client")

# The hub's copies of the published prompt sets (``spec.judged[].prompts``).
HUB_PROMPT_SETS = {
    "mt-bench": "HuggingFaceH4/mt_bench_prompts",
    "arena-hard-v0.1": "lmarena-ai/arena-hard-auto-v0.1",
}
TEXT_KEYS = ("turns", "prompt", "question", "text")
ID_KEYS = ("id", "question_id", "prompt_id", "uid")
JUDGE_UNAVAILABLE = "JudgeUnavailable"
JUDGE_REFUSED = "JudgeRefused"
ANSWERS_FAILED = "AnswersFailed"


class JudgedModel(ApiModel):
    """A model whose answers are judged: served by the plan (base_url), an endpoint, or
    a model to start a server for here."""

    name: str
    model: ModelSource | None = None
    endpoint: Endpoint | None = None
    base_url: str | None = Field(
        default=None, description="Its server, where the plan serves it (vllm-server)."
    )


class SimilarityAnswers(ApiModel):
    """The similarity stage's generations, taken as answers: plain completions of the same
    length, which the plan passes only where the settings match."""

    generations: str = Field(description="Its generations.jsonl.")


class JudgeInput(Document):
    judged: Judged
    baseline: JudgedModel
    candidates: list[JudgedModel]
    backend: Backend = Backend.HF
    serving: Serving | None = Field(default=None, description="The models' server settings.")
    judge_url: str | None = Field(
        default=None, description="The judge's server, where the plan serves it (vllm-server)."
    )
    similarity: SimilarityAnswers | None = None
    seed: int = 1234
    cache_dir: str | None = Field(default=None, description="The result cache; None: none.")
    reuse_cached: bool = True
    output_dir: str


class JudgeResult(ApiModel):
    judged: JudgedResult


# --- prompts ---------------------------------------------------------------------------


def _texts(value: Any) -> tuple[str, ...] | None:
    """A turn list as text: a string, a list of strings, or of {content} (Arena-Hard)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value:
        out = [v.get("content") if isinstance(v, dict) else v for v in value]
        texts = [t for t in out if isinstance(t, str)]
        if len(texts) == len(out):
            return tuple(texts)
    return None


def prompt_of(row: Any, n: int, turns: int) -> jr.JudgedPrompt:
    """One prompt from a JSONL line or a hub row (``n``: its position, the id it gets
    without one); ValueError saying what is missing."""
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    texts = next((t for k in TEXT_KEYS if (t := _texts(row.get(k))) is not None), None)
    if texts is None:
        raise ValueError(f"needs {' or '.join(TEXT_KEYS)}: a string or a list of them")
    reference = row.get("reference")
    refs = () if reference in (None, "", []) else _texts(reference)
    if refs is None:
        raise ValueError("reference must be a string or a list of them (one per turn)")
    ident = next((row[k] for k in ID_KEYS if row.get(k) not in (None, "")), n)
    category = row.get("category")
    return jr.JudgedPrompt(
        str(ident), texts[:turns], refs[:turns], category if isinstance(category, str) else None
    )


def _hub_rows(name: str) -> list[Any]:
    try:
        from datasets import load_dataset

        return list(load_dataset(HUB_PROMPT_SETS[name], split="train"))
    except Exception as e:  # offline, gated, renamed: say which and what to do instead
        raise StageError(
            "PromptsNotFound",
            f"cannot load the prompt set {name} ({HUB_PROMPT_SETS[name]}) from the hub: "
            f"{type(e).__name__}: {str(e)[:300]}; without the hub, put it on a volume as "
            "JSONL and give spec.judged[].promptsPath",
        ) from e


def load_prompts(judged: Judged) -> list[jr.JudgedPrompt]:
    """The set's prompts (after ``limit``), each cut to ``turns`` turns."""
    if judged.prompts_path:
        path = judged.prompts_path
        where = Path(str(volume_path(path)) if path.startswith("pvc://") else path)
    elif judged.prompt_set == "demo":
        where = Path(str(resources.files("qeval") / "tasks" / "demo" / "judged.jsonl"))
    else:
        where = None
    rows: list[tuple[str, Any]] = []
    if where is None:
        rows = [
            (f"{judged.prompt_set}[{i}]", r)
            for i, r in enumerate(_hub_rows(str(judged.prompt_set)))
        ]
    else:
        try:
            lines = where.read_text().splitlines()
        except OSError as e:
            raise StageError("PromptsNotFound", f"cannot read prompts {where}: {e}") from e
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    rows.append((f"{where}:{n}", json.loads(line)))
                except ValueError as e:
                    raise StageError("InvalidPrompts", f"{where}:{n}: not JSON ({e})") from e
    prompts = []
    for i, (place, row) in enumerate(rows):
        try:
            prompts.append(prompt_of(row, i, judged.turns))
        except ValueError as e:
            raise StageError("InvalidPrompts", f"{place}: {e}") from e
        if judged.limit is not None and len(prompts) == judged.limit:
            break
    if not prompts:
        raise StageError("InvalidPrompts", f"no prompts in {where or judged.prompt_set}")
    if twice := [i for i, n in Counter(p.id for p in prompts).items() if n > 1]:
        raise StageError(
            "InvalidPrompts",
            f"prompts of {where or judged.prompt_set} share the id {twice[0]!r}; give each "
            "prompt its own id (or none: its position is its id)",
        )
    return prompts


# --- talking to models -----------------------------------------------------------------


@dataclass
class Cost:
    """What the requests to a model took: how many, their tokens, their wall time."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Api:
    """Where a model answers: its base URL with /v1, the name requests carry, headers."""

    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)

    async def chat(
        self,
        client: Any,
        messages: Sequence[dict[str, str]],
        max_tokens: int,
        temperature: float,
        cost: Cost,
    ) -> Any:
        """One chat completion (transient failures retried), counted in ``cost``."""
        from qeval.serving.client import ClientSettings, chat

        c = await chat(
            client,
            self.url,
            self.model,
            messages,
            max_tokens,
            ClientSettings(),
            temperature,
            self.headers,
        )
        cost.requests += 1
        cost.prompt_tokens += c.prompt_tokens
        cost.completion_tokens += c.completion_tokens
        return c


def _v1(base_url: str) -> str:
    return base_url.rstrip("/").removesuffix("/v1") + "/v1"


@contextmanager
def reached(
    name: str,
    source: ModelSource | None,
    endpoint: Endpoint | None,
    base_url: str | None,
    backend: Backend | str,
    serving: Serving | None,
    log: Path,
) -> Iterator[Api]:
    """A model to send chat requests to: its endpoint, its server, or one started here."""
    from qeval.serving.client import wait_healthy

    if endpoint is not None:
        from qeval.serving.endpoint import api_key

        key = api_key(endpoint)
        yield Api(
            endpoint.base_url.rstrip("/"),
            endpoint.model,
            {"Authorization": f"Bearer {key}"} if key else {},
        )
    elif base_url is not None:
        try:
            asyncio.run(wait_healthy(base_url, 60))
        except TimeoutError as e:
            raise StageError("ServerUnavailable", f"{name}: {e}") from e
        yield Api(_v1(base_url), name)
    else:
        from qeval.serving.launch import served
        from qeval.stages.models import resolve

        assert source is not None
        timeout = float(serving.ready_timeout_seconds) if serving else 900.0
        with served(Backend(backend), str(resolve(source)), name, log, timeout, serving) as server:
            yield Api(_v1(server.base_url), server.model)


Answers = dict[str, tuple[str, ...]]  # prompt id -> the model's answer to each turn


async def _answer(
    api: Api, judged: Judged, prompts: Sequence[jr.JudgedPrompt], cost: Cost
) -> Answers:
    from qeval.serving.client import ClientSettings, RequestFailed, complete, new_client

    settings = ClientSettings()
    gate = asyncio.Semaphore(8)
    async with new_client(settings, 8) as client:

        async def one(p: jr.JudgedPrompt) -> tuple[str, tuple[str, ...]]:
            async with gate:
                if not judged.chat_template:  # a base model: the prompt as plain text
                    r = await complete(
                        client,
                        api.url,
                        api.model,
                        p.turns[0],
                        judged.max_new_tokens,
                        settings,
                        stream=False,
                        ignore_eos=False,
                    )
                    if not r.ok:
                        raise StageError(ANSWERS_FAILED, f"{api.model}: prompt {p.id}: {r.error}")
                    cost.requests += 1
                    cost.completion_tokens += r.output_tokens
                    return p.id, (r.text,)
                messages: list[dict[str, str]] = []
                out = []
                for turn in p.turns:
                    messages.append({"role": "user", "content": turn})
                    try:
                        c = await api.chat(client, messages, judged.max_new_tokens, 0.0, cost)
                    except RequestFailed as e:
                        raise StageError(
                            ANSWERS_FAILED, f"{api.model}: prompt {p.id}: {e}"
                        ) from None
                    messages.append({"role": "assistant", "content": c.text})
                    out.append(c.text)
                return p.id, tuple(out)

        return dict(await asyncio.gather(*(one(p) for p in prompts)))


def answers_of(api: Api, judged: Judged, prompts: Sequence[jr.JudgedPrompt], cost: Cost) -> Answers:
    t0 = time.perf_counter()
    out = asyncio.run(_answer(api, judged, prompts, cost))
    cost.seconds += time.perf_counter() - t0
    return out


def similarity_answers(path: str, baseline: str) -> dict[str, dict[str, str]]:
    """model -> prompt text -> its generation, from the similarity stage's file."""
    out: dict[str, dict[str, str]] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        row = json.loads(line)
        out.setdefault(row["model"], {})[row["prompt"]] = row["candidate"]
        out.setdefault(baseline, {})[row["prompt"]] = row["baseline"]
    return out


# --- judging ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    """One judgement to ask: about candidate ``model`` on ``prompt``, in ``order``."""

    model: str
    prompt: jr.JudgedPrompt
    order: str
    repeat: int
    answers: tuple[tuple[str, ...], ...]  # A then B (pairwise), or the one answer (single)


def asks(
    judged: Judged, prompts: Sequence[jr.JudgedPrompt], candidate: str, mine: Answers, base: Answers
) -> list[Ask]:
    """Every judgement one candidate's comparison needs."""
    out = []
    for p in prompts:
        for r in range(judged.repeats):
            if judged.kind == JudgedKind.PAIRWISE:
                out.append(Ask(candidate, p, jr.CANDIDATE_FIRST, r, (mine[p.id], base[p.id])))
                if judged.swapped:
                    out.append(Ask(candidate, p, jr.BASELINE_FIRST, r, (base[p.id], mine[p.id])))
            else:  # the baseline's own ratings are asked once (``baseline_asks``)
                out.append(Ask(candidate, p, jr.CANDIDATE, r, (mine[p.id],)))
    return out


def baseline_asks(judged: Judged, prompts: Sequence[jr.JudgedPrompt], base: Answers) -> list[Ask]:
    """Single-answer grading: the baseline's ratings, shared by every candidate."""
    if judged.kind != JudgedKind.SINGLE:
        return []
    return [
        Ask("", p, jr.BASELINE, r, (base[p.id],)) for p in prompts for r in range(judged.repeats)
    ]


async def _judge(api: Api, judged: Judged, todo: Sequence[Ask], cost: Cost) -> list[dict[str, Any]]:
    from qeval.serving.client import ClientSettings, RequestFailed, new_client

    settings = ClientSettings()
    j = judged.judge
    gate = asyncio.Semaphore(j.concurrency)
    async with new_client(settings, j.concurrency) as client:

        async def one(a: Ask) -> dict[str, Any]:
            messages = jr.judge_messages(judged, a.prompt, a.answers)
            text, verdict, attempts = "", None, 0
            async with gate:
                while verdict is None and attempts <= j.retries:
                    attempts += 1
                    try:
                        c = await api.chat(client, messages, j.max_new_tokens, j.temperature, cost)
                    except RequestFailed as e:
                        raise judge_failed(judged, f"prompt {a.prompt.id}", e) from None
                    text = c.text
                    verdict = jr.parse(judged.kind, text)
            return {
                "model": a.model,
                "prompt": a.prompt.id,
                "order": a.order,
                "repeat": a.repeat,
                "verdict": verdict,
                "attempts": attempts,
                "judgement": text[-2000:],
            }

        return list(await asyncio.gather(*(one(a) for a in todo)))


def judge_failed(judged: Judged, what: str, e: Exception) -> StageError:
    """The stage's failure when the judge does not answer: unavailable (down, overloaded:
    what retries did not cure) or refusing (a request it will never take)."""
    retryable = getattr(e, "retryable", True)
    reason, verb = (
        (JUDGE_UNAVAILABLE, "did not answer") if retryable else (JUDGE_REFUSED, "refused")
    )
    return StageError(reason, f"the judge {judged.judge.label()} {verb} ({what}): {e}")


def judgements_of(
    api: Api, judged: Judged, todo: Sequence[Ask], cost: Cost
) -> list[dict[str, Any]]:
    t0 = time.perf_counter()
    out = asyncio.run(_judge(api, judged, todo, cost))
    cost.seconds += time.perf_counter() - t0
    return out


def as_judgement(row: dict[str, Any]) -> jr.Judgement:
    return jr.Judgement(
        row["model"],
        row["prompt"],
        row["order"],
        int(row["repeat"]),
        row["verdict"],
        int(row["attempts"]),
    )


# --- the result cache ------------------------------------------------------------------


def _identity(source: ModelSource | None, endpoint: Endpoint | None, memo: Path) -> str | None:
    """What names a model's weights in a cache key; None where nothing does (an endpoint
    without cache: true)."""
    from qeval.results.cache import weights_identity
    from qeval.stages.models import resolve

    if endpoint is not None:
        if not endpoint.cache:
            return None
        from qeval.serving.endpoint import connect

        return json.dumps(connect(endpoint).identity(), sort_keys=True)
    assert source is not None
    return weights_identity(source.uri, source.revision, resolve(source), memo)


def cache_fields(
    inp: JudgeInput, prompts: Sequence[jr.JudgedPrompt], baseline: str, candidate: str, judge: str
) -> dict[str, Any]:
    """What one candidate's judgements depend on."""
    from qeval import __version__

    settings = inp.judged.dump()
    settings.pop("name", None)
    settings["judge"].pop("concurrency", None)
    for k in ("model", "endpoint", "scheduling"):
        settings["judge"].pop(k, None)
    return {
        "kind": "judge",
        "baseline": baseline,
        "candidate": candidate,
        "judge": judge,
        "prompts": [[p.id, list(p.turns), list(p.reference)] for p in prompts],
        "template": jr.template_digest(inp.judged),
        "settings": settings,
        "backend": str(inp.backend),
        "serving": inp.serving.dump() if inp.serving else None,
        "seed": inp.seed,
        "qeval": __version__,
    }


# --- the stage -------------------------------------------------------------------------


@dataclass
class Cached:
    """What the result cache holds of a judged set: each candidate's key (where its models
    and judge can be named), and the rows of those found."""

    keys: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    found: set[str] = field(default_factory=set)


def look_up(inp: JudgeInput, prompts: Sequence[jr.JudgedPrompt], cache: Any) -> Cached:
    """Each candidate's cache key, and its judgements where the cache has them."""
    from qeval.results.cache import key_of

    out = Cached()
    memo = cache.digests
    base_id = _identity(inp.baseline.model, inp.baseline.endpoint, memo)
    judge = inp.judged.judge
    try:
        judge_id = _identity(judge.model, judge.endpoint, memo)
    except StageError as e:
        raise judge_failed(inp.judged, "GET /models, for its cache key", e) from None
    for c in inp.candidates:
        cand_id = _identity(c.model, c.endpoint, memo)
        if base_id and judge_id and cand_id:
            fields = cache_fields(inp, prompts, base_id, cand_id, judge_id)
            out.keys[c.name] = (key_of(fields), fields)
    for name, (key, _) in out.keys.items():
        entry = cache.get_judgements(key) if inp.reuse_cached else None
        if entry is not None:
            out.rows += [r | {"model": name} for r in entry["judgements"]]
            out.found.add(name)
    return out


def answer(
    inp: JudgeInput, prompts: Sequence[jr.JudgedPrompt], models: Sequence[JudgedModel], cost: Cost
) -> tuple[dict[str, Answers], int]:
    """Every model's answers (name -> prompt id -> turns), one model at a time: the
    similarity stage's where it generated the prompt the same way, else the model's
    server's; and how many came from the similarity stage."""
    known = (
        similarity_answers(inp.similarity.generations, inp.baseline.name) if inp.similarity else {}
    )
    out: dict[str, Answers] = {}
    reused = 0
    for m in models:
        mine = known.get(m.name, {})
        have: Answers = {p.id: (mine[p.turns[0]],) for p in prompts if p.turns[0] in mine}
        reused += len(have)
        missing = [p for p in prompts if p.id not in have]
        if missing:
            log = Path(inp.output_dir) / f"server-{m.name}.log"
            with reached(
                m.name, m.model, m.endpoint, m.base_url, inp.backend, inp.serving, log
            ) as api:
                have |= answers_of(api, inp.judged, missing, cost)
        out[m.name] = have
    return out, reused


def judge_all(
    inp: JudgeInput,
    prompts: Sequence[jr.JudgedPrompt],
    todo: Sequence[JudgedModel],
    answers: dict[str, Answers],
    cost: Cost,
) -> list[dict[str, Any]]:
    """Every judgement the candidates in ``todo`` need, each candidate's rows its own
    record (with single grading, the baseline's ratings copied into each)."""
    judged, judge = inp.judged, inp.judged.judge
    base = answers[inp.baseline.name]
    todo_asks = baseline_asks(judged, prompts, base)
    todo_asks += [a for c in todo for a in asks(judged, prompts, c.name, answers[c.name], base)]
    log = Path(inp.output_dir) / "server-judge.log"
    serving = judge.serving or inp.serving
    with reached(
        "judge", judge.model, judge.endpoint, inp.judge_url, inp.backend, serving, log
    ) as api:
        asked = judgements_of(api, judged, todo_asks, cost)
    shared = [r for r in asked if r["model"] == ""]
    return [r for r in asked if r["model"] != ""] + [
        r | {"model": c.name} for c in todo for r in shared
    ]


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(inp: JudgeInput) -> JudgeResult:
    from qeval.results.cache import ResultCache

    judged, out_dir = inp.judged, Path(inp.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(judged)
    cache = ResultCache(Path(inp.cache_dir)) if inp.cache_dir else None
    cached = look_up(inp, prompts, cache) if cache is not None else Cached()
    todo = [c for c in inp.candidates if c.name not in cached.found]

    answering, judging, reused, fresh = Cost(), Cost(), 0, []
    if todo:
        answers, reused = answer(inp, prompts, [inp.baseline, *todo], answering)
        write_jsonl(
            out_dir / "answers.jsonl",
            [
                {"model": m, "prompt": p.id, "turns": list(p.turns), "answers": list(a[p.id])}
                for m, a in answers.items()
                for p in prompts
            ],
        )
        fresh = judge_all(inp, prompts, todo, answers, judging)
        for c in todo:
            if cache is not None and c.name in cached.keys:
                key, fields = cached.keys[c.name]
                mine = [r for r in fresh if r["model"] == c.name]
                cache.put_judgements(key, fields, {"judgements": mine})

    rows = cached.rows + fresh
    path = out_dir / "judgements.jsonl"
    write_jsonl(path, rows)
    judgements = [as_judgement(r) for r in rows]
    scores = [
        jr.outcome(c.name, judged.kind, judgements, len(prompts), inp.seed).model_copy(
            update={"cached": c.name in cached.found}
        )
        for c in inp.candidates
    ]
    result = JudgedResult(
        name=judged.name,
        kind=str(judged.kind),
        judge=judged.judge.label(),
        prompts=len(prompts),
        prompt_set=judged.prompts_path or str(judged.prompt_set),
        template=jr.template_digest(judged),
        swapped=judged.swapped,
        judge_requests=judging.requests,
        judge_prompt_tokens=judging.prompt_tokens,
        judge_completion_tokens=judging.completion_tokens,
        judge_seconds=round(judging.seconds, 3),
        answer_tokens=answering.completion_tokens,
        answer_seconds=round(answering.seconds, 3),
        reused_answers=reused,
        scores=scores,
        judgements_path=str(path),
    )
    return JudgeResult(judged=result)
