"""Read lm-eval's results JSON (``results.<task>["<metric>,<filter>"]``), never its table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qeval.api.evalrun_status import Score

_SKIP = {"alias", "name", "sample_len", "samples"}


def _number(value: Any) -> float | None:
    """lm-eval writes a missing stderr as the string "N/A"."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def top_level_tasks(results: Mapping[str, Any]) -> list[str]:
    """Tasks and groups that were asked for, i.e. not merely members of a group."""
    members = {t for subs in results.get("group_subtasks", {}).values() for t in subs}
    return [t for t in results.get("results", {}) if t not in members]


class LayoutError(ValueError):
    """A results document qeval cannot read correctly (refused, never read as nothing)."""


def check_layout(results: Mapping[str, Any]) -> None:
    """Refuse results documents of lm-eval versions whose layout qeval would misread.

    lm-eval 0.3 keys metrics without a filter (``acc`` instead of ``acc,none``): read as
    0.4 they have no scores at all. lm-eval 0.4.0 and 0.4.1 list groups and their members
    side by side in ``results`` without ``group_subtasks``: every member would count as a
    task of its own (each MMLU subject beside MMLU).
    """
    entries = results.get("results")
    if not isinstance(entries, Mapping):
        raise LayoutError("no 'results' mapping: not an lm-eval results document")
    for task, metrics in entries.items():
        if not isinstance(metrics, Mapping):
            raise LayoutError(f"results.{task} is not a mapping of metrics")
        bare = [
            k
            for k, v in metrics.items()
            if "," not in k and k not in _SKIP and _number(v) is not None
        ]
        if bare:
            raise LayoutError(
                f"results.{task} has metrics without a filter ({sorted(bare)[:3]}): an lm-eval "
                "0.3 document; qeval reads lm-eval 0.4.2 or later"
            )
    if results.get("groups") and "group_subtasks" not in results:
        raise LayoutError(
            "groups without group_subtasks: an lm-eval 0.4.0/0.4.1 document, whose group "
            "members cannot be told from tasks; qeval reads lm-eval 0.4.2 or later"
        )


def _metric_keys(entries: Mapping[str, Any]) -> list[str]:
    """``metric,filter`` keys with a number, in the document's order."""
    out = []
    for key, value in entries.items():
        if "," not in key:
            continue
        metric = key.split(",")[0]
        if metric in _SKIP or "_stderr" in metric or _number(value) is None:
            continue
        out.append(key)
    return out


def default_metric(results: Mapping[str, Any], task: str) -> str | None:
    """The ``metric,filter`` a task is judged on by default: the first metric of its
    metric_list under its first filter, as its config lists them (the order lm-eval's own
    table uses), whatever order the keys of the document come in; for a group (whose
    config the document lacks), the default of its first subtask that the group reports
    too; else the first key. None when it reports no number.

    A group's keys say nothing: lm-eval 0.4.2 to 0.4.8 write them in the order of a
    Python set, which differs from run to run (acc_norm before acc in one, after in the
    next), and the result cache sorts them."""
    keys = _metric_keys(results.get("results", {}).get(task, {}))
    if not keys:
        return None
    if task not in results.get("configs", {}):
        for sub in results.get("group_subtasks", {}).get(task, []):
            if (default := default_metric(results, sub)) in keys:
                return default
    config = results.get("configs", {}).get(task, {})
    metrics = [m.get("metric") for m in config.get("metric_list", []) if isinstance(m, dict)]
    filters = [f.get("name") for f in config.get("filter_list", []) if isinstance(f, dict)]
    for metric in metrics:
        for filt in filters or ["none"]:
            if f"{metric},{filt}" in keys:
                return f"{metric},{filt}"
    ordered = sorted(keys, key=lambda k: (k.split(",")[0] not in metrics, keys.index(k)))
    return ordered[0]


def judged_tasks(results: Mapping[str, Any], task: str) -> list[str]:
    """The tasks a requested task is judged by: itself when it reports a score; a group
    without one (no aggregate_metric_list) by its subtasks, each on its own."""
    if _metric_keys(results.get("results", {}).get(task, {})):
        return [task]
    out: list[str] = []
    for sub in results.get("group_subtasks", {}).get(task, []):
        out += judged_tasks(results, sub)
    return out


def primary_metrics(
    results: Mapping[str, Any], requested: Mapping[str, str | None]
) -> dict[str, str]:
    """For each requested task (name -> the metric asked for, or None), the judged tasks
    and the ``metric,filter`` each is judged on. A requested task without any is left out
    (the caller decides what that means); a metric asked for but not reported raises."""
    check_layout(results)
    out: dict[str, str] = {}
    for task, wanted in requested.items():
        for judged in judged_tasks(results, task):
            keys = _metric_keys(results["results"][judged])
            if wanted:
                metric, _, filt = wanted.partition(",")
                found = [
                    k
                    for k in keys
                    if k.split(",", 1)[0] == metric and (not filt or k.split(",", 1)[1] == filt)
                ]
                if not found:
                    raise ValueError(f"task {judged} reports no metric {wanted!r}; it has {keys}")
                default = default_metric(results, judged)
                out[judged] = default if default in found else found[0]
            elif (default := default_metric(results, judged)) is not None:
                out[judged] = default
    return out


def parse_scores(
    results: Mapping[str, Any], model: str, primary: Mapping[str, str] | None = None
) -> list[Score]:
    """Every ``(task, metric, filter)`` value in an lm-eval results document, as Scores.

    ``primary`` maps each judged task to its ``metric,filter`` (see ``primary_metrics``);
    without it, every top-level task is judged on its default metric. The document's
    layout is checked first (``check_layout``). A task's scores come in one order (its
    judged metric first, then by name), whatever order its keys have in the document: a
    result read back from the cache (keys sorted) lists them as the fresh one did.
    """
    check_layout(results)
    if primary is None:
        primary = primary_metrics(results, dict.fromkeys(top_level_tasks(results)))
    scores: list[Score] = []
    for task, entries in results.get("results", {}).items():
        shots = results.get("n-shot", {}).get(task)
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        better = results.get("higher_is_better", {}).get(task, {})
        for key in sorted(_metric_keys(entries), key=lambda k: (primary.get(task) != k, k)):
            metric, filt = key.split(",", 1)
            scores.append(
                Score(
                    model=model,
                    task=task,
                    metric=metric,
                    filter=filt,
                    value=_number(entries[key]),
                    stderr=_number(entries.get(f"{metric}_stderr,{filt}")),
                    samples=n,
                    num_fewshot=shots if isinstance(shots, int) else None,
                    higher_is_better=bool(better.get(metric, True)),
                    primary=primary.get(task) == key,
                )
            )
    return scores


def harness_version(results: Mapping[str, Any]) -> str | None:
    """The lm-eval version recorded in a results document."""
    version = results.get("lm_eval_version") or results.get("config", {}).get("lm_eval_version")
    return str(version) if version else None
