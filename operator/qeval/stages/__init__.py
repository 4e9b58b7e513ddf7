"""Stages: the worker code that runs inside the pods (and locally, as processes).

Each stage is ``qeval <kind> --input IN.json --output OUT.json``: it reads one input
document and writes one result document (``envelope.StageResult``). Heavy libraries
(torch, llm-compressor, lm-eval) are imported only inside ``run``; a module names them in
``WARM`` so that ``qeval run``'s warm workers (``qeval.local.worker``) import them once. A
stage module may also have ``reuse(input) -> result | None``: its result when there is
nothing to do (found in the result cache), cheap enough for an executor to call in its own
process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from pydantic import BaseModel

from qeval.stages.envelope import Document


@dataclass(frozen=True)
class StageKind:
    name: str
    module: str
    input_class: str

    def load(self) -> tuple[type[Document], Callable[[Any], BaseModel]]:
        mod = import_module(f"qeval.stages.{self.module}")
        return getattr(mod, self.input_class), mod.run

    def warm(self) -> tuple[str, ...]:
        """The modules the stage imports (``WARM``): a warm worker imports them up front."""
        return tuple(getattr(import_module(f"qeval.stages.{self.module}"), "WARM", ()))

    def load_reuse(self) -> Callable[[Any], BaseModel | None] | None:
        """The stage's ``reuse`` function, if it has one."""
        return getattr(import_module(f"qeval.stages.{self.module}"), "reuse", None)


KINDS = {
    k.name: k
    for k in (
        StageKind("demo-model", "demo_model", "DemoModelInput"),
        StageKind("quantize", "quantize", "QuantizeInput"),
        StageKind("evaluate", "evaluate", "EvaluateInput"),
        StageKind("benchmark", "benchmark", "BenchmarkInput"),
        StageKind("similarity", "similarity", "SimilarityInput"),
        StageKind("judge", "judge", "JudgeInput"),
        StageKind("aggregate", "aggregate", "AggregateInput"),
    )
}
