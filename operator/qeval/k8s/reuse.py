"""Reusing an evaluation another run of the namespace already did (pure functions).

The operator cannot hash model weights (they are on the claim, not in the operator), so it
can only reuse what it can name without them: a Hugging Face model at an explicit
revision, the demo model of this qeval version, or a QuantizedModel's output named by its
quantization (recipe, calibration, base model). Everything else is left to the stages,
which look results up in the claim's result cache by the digest of the weights.

An evaluate Job carries the label ``qeval.dev/reuse-key``, which its result ConfigMap
inherits; a later run whose evaluate stage has the same key takes that result instead of
creating a Job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qeval import __version__
from qeval.api.common import model_kind
from qeval.k8s.manifests import digest
from qeval.plan import EVALUATE_KIND, JUDGE_KIND, Stage
from qeval.stages.envelope import StageResult

LABEL_REUSE_KEY = "qeval.dev/reuse-key"
KEY_LENGTH = 40  # hex digits: a valid label value
# Where a stage's input says where, or who, rather than what: not part of what it computes.
PLACE_FIELDS = frozenset(
    {"outputDir", "name", "modelName", "cacheDir", "reuseCached", "model", "baseUrl"}
)


@dataclass(frozen=True)
class Reused:
    """A succeeded evaluation of another run: its document and where its files are."""

    doc: StageResult
    path: str  # its result document on the claim (the aggregate reads it there)
    owner: str | None = None  # the uid of the run that did it


def vouched(
    key: str, hits: Iterable[Reused], jobs: Callable[[str], Mapping[str, str | None]]
) -> Reused | None:
    """The first of ``hits`` (results labelled with reuse key ``key``) that the operator
    vouches for: one whose stage's Job, which only the operator writes, carries that key
    (``jobs(owner)``: the reuse key of each stage Job of that run). A result's own labels
    are its writer's choice: a pod must not offer its result under another evaluation's key."""
    for hit in hits:
        if hit.owner is not None and jobs(hit.owner).get(hit.doc.stage) == key:
            return hit
    return None


ReuseLookup = Callable[[str], "Reused | None"]


def named_identity(source: Mapping[str, Any], quantized: Mapping[str, Stage]) -> str | None:
    """A name for a model's weights that does not need them, or None if there is none.

    ``quantized`` maps a QuantizedModel's output directory to its quantize stage.
    """
    uri, revision = str(source.get("uri", "")), source.get("revision")
    if uri in quantized:
        q = quantized[uri]
        base = named_identity(q.input.get("model", {}), {})
        what = {k: v for k, v in q.input.items() if k not in PLACE_FIELDS}
        return f"quantized:{digest([base, what])}" if base else None
    kind = model_kind(uri)
    if kind == "demo":
        return f"{uri}@qeval-{__version__}"  # the demo model's recipe is fixed per version
    if kind == "huggingface" and revision:
        return f"hf:{uri}@{revision}"
    return None  # a path or a moving branch: only a digest of the weights names it


def judge_identity(stage: Stage, quantized: Mapping[str, Stage]) -> list[Any] | None:
    """What a judge stage computes, without its places: each model's name (its results
    carry them) and identity, the judge's, the settings; None where a model or the judge
    cannot be named (an endpoint, a path)."""
    inp = stage.input
    judged = dict(inp["judged"])
    judge = dict(judged.pop("judge"))
    models = []
    for m in (inp["baseline"], *inp["candidates"]):
        identity = None if m.get("endpoint") else named_identity(m.get("model", {}), quantized)
        if identity is None:
            return None
        models.append([m["name"], identity])
    if judge.get("endpoint") or (judge_id := named_identity(judge.get("model", {}), {})) is None:
        return None
    judge.pop("model", None)
    judge.pop("concurrency", None)
    settings = {k: inp.get(k) for k in ("backend", "serving", "seed")}
    return [models, judge_id, judge, judged, settings]


def reuse_keys(stages: list[Stage], salt: str) -> dict[str, str]:
    """The reuse key of each evaluate and judge stage whose models can be named (``salt``:
    the evaluator image, which pins the harness and its libraries)."""
    quantized = {str(s.input["outputDir"]): s for s in stages if s.kind == "quantize"}
    keys = {}
    for s in stages:
        if s.kind == JUDGE_KIND:
            if (judged := judge_identity(s, quantized)) is not None:
                keys[s.name] = digest([judged, salt], KEY_LENGTH)
            continue
        if s.kind != EVALUATE_KIND or s.input.get("endpoint"):
            continue  # an endpoint is named by no spec: what answers there can change
        identity = named_identity(s.input.get("model", {}), quantized)
        if identity is None:
            continue
        what = {k: v for k, v in s.input.items() if k not in PLACE_FIELDS}
        keys[s.name] = digest([identity, what, salt], KEY_LENGTH)
    return keys


def reused_entries_of(stages: list[Stage], reused: Mapping[str, Reused]) -> list[str]:
    """``model/task`` for every task of an evaluation taken from another run (status.reused)."""
    out = []
    for s in stages:
        if s.name in reused and s.kind == JUDGE_KIND:
            out.append(f"judged/{s.input['judged']['name']}")
        elif s.name in reused:
            out += [f"{s.input['modelName']}/{t['name']}" for t in s.input.get("tasks", [])]
    return out
