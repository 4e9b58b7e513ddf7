"""Stages: the worker code that runs inside the pods (and locally, as processes).

Each stage is ``qeval <kind> --input IN.json --output OUT.json``: it reads one input
document and writes one result document (``envelope.StageResult``). Heavy libraries
(torch, llm-compressor, lm-eval) are imported only inside ``run``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class StageKind:
    name: str
    module: str
    input_class: str

    def load(self) -> tuple[type[BaseModel], Callable[[Any], BaseModel]]:
        mod = import_module(f"qeval.stages.{self.module}")
        return getattr(mod, self.input_class), mod.run


KINDS = {
    k.name: k
    for k in (
        StageKind("demo-model", "demo_model", "DemoModelInput"),
        StageKind("quantize", "quantize", "QuantizeInput"),
        StageKind("evaluate", "evaluate", "EvaluateInput"),
        StageKind("aggregate", "aggregate", "AggregateInput"),
    )
}
