"""The qeval demo: a tiny Llama trained here on synthetic data, plus offline lm-eval tasks
on which quantization costs can be measured without any download."""

from .data import (
    FACTS_TASK,
    GROUP,
    RECALL_TASK,
    calibration_texts,
    write_tasks,
)
from .model import RECIPE, demo_model_path, recipe_hash, train

__all__ = [
    "RECALL_TASK",
    "FACTS_TASK",
    "GROUP",
    "RECIPE",
    "calibration_texts",
    "demo_model_path",
    "recipe_hash",
    "train",
    "write_tasks",
]
