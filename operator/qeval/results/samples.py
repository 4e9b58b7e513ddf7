"""lm-eval's per-sample logs (``--log_samples``): one value per item, for paired statistics.

The evaluate stage writes ``samples/<task>.jsonl`` (one line per document and filter:
``doc_id``, ``filter``, and one key per metric). A group (e.g. mmlu) has one file per
subtask; its items are keyed ``(subtask, doc_id)``. A metric lm-eval aggregates over the
corpus (the perplexities of ``loglikelihood_rolling`` tasks) logs a pair per document,
``[loglikelihood, words or bytes]``: ``item_pairs`` reads those.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import numpy as np

ItemKey = tuple[str, int]
T = TypeVar("T")


def leaf_tasks(results: Mapping[str, Any], task: str) -> list[str]:
    """``task`` itself, or every task under it when it is a group (``group_subtasks``)."""
    groups = results.get("group_subtasks", {})
    if not groups.get(task):
        return [task]
    out: list[str] = []
    for sub in groups[task]:
        out += leaf_tasks(results, sub)
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open() as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        a, b = _number(value[0]), _number(value[1])
        if a is not None and b is not None:
            return a, b
    return None


def _per_item(
    samples_dir: Path,
    tasks: list[str],
    metric: str,
    filter: str,
    read: Callable[[Any], T | None],
) -> dict[ItemKey, T] | None:
    """Each item's ``read(value)`` of ``metric`` under ``filter``, over the samples of
    ``tasks``; None when a file is missing or a value does not read."""
    out: dict[ItemKey, T] = {}
    for task in tasks:
        path = samples_dir / f"{task}.jsonl"
        if not path.is_file():
            return None
        for sample in _lines(path):
            if sample.get("filter", "none") != filter or metric not in sample:
                continue
            value = read(sample[metric])
            if value is None:
                return None
            out[(task, int(sample["doc_id"]))] = value
    return out or None


def item_values(
    samples_dir: Path, tasks: list[str], metric: str, filter: str = "none"
) -> dict[ItemKey, float] | None:
    """Each item's value of ``metric`` under ``filter``, over the samples of ``tasks``.

    None when a file is missing or a value is not one number per item (a corpus-level
    metric such as BLEU or a perplexity logs tuples): no per-item mean can be built from it.
    """
    return _per_item(samples_dir, tasks, metric, filter, _number)


def item_pairs(
    samples_dir: Path, tasks: list[str], metric: str, filter: str = "none"
) -> dict[ItemKey, tuple[float, float]] | None:
    """Each document's ``(loglikelihood, weight)`` of a corpus-level perplexity metric
    (``word_perplexity``, ``byte_perplexity``, ``bits_per_byte``); None otherwise."""
    return _per_item(samples_dir, tasks, metric, filter, _pair)


def paired_vectors(
    baseline: Mapping[ItemKey, Any], candidate: Mapping[ItemKey, Any]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The two models' values on the same items, in the same order (None unless the two
    evaluated exactly the same items); pairs give two-column arrays."""
    import numpy as np

    if baseline.keys() != candidate.keys():
        return None
    keys = sorted(baseline)
    return (
        np.array([baseline[k] for k in keys], dtype=float),
        np.array([candidate[k] for k in keys], dtype=float),
    )


def consistent(values: Mapping[ItemKey, float], reported: float, tolerance: float = 1e-6) -> bool:
    """The per-item values average to the reported score: the metric is a plain mean over
    items (as accuracy and exact match are), so paired statistics on it are valid."""
    return bool(values) and abs(sum(values.values()) / len(values) - reported) <= tolerance
