"""Where an error is in a spec, and what an unknown field should have been.

A pydantic error's location runs through the models (``spec.tasks[0].limit``) but also names
the members of a union it tried (``spec.batchSize.int``): ``locate`` walks the models along
it, drops those tags and says which models can hold the last segment. ``unknown_field``
answers a field the model at that place does not have: a spelling of a field it has, a name
from lm-eval's or TrustyAI's LMEvalJob vocabulary that qeval spells (or does) otherwise, the
same field elsewhere in the object, or a close spelling of one of the fields there.
"""

from __future__ import annotations

import re
import types
from difflib import get_close_matches
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

Loc = tuple[int | str, ...]

# Names people bring from lm-eval's CLI and Python API or TrustyAI's LMEvalJob (normalised:
# lower case, without - and _) as fields of an EvalRun's spec, and the hint that answers them.
# Only there: deeper down a close spelling is the better guess (a scenario's outputs is its
# outputTokens).
EVALRUN_ALIASES: dict[str, str] = {
    "logsamples": "lm-eval's log_samples is always on in qeval (every model's per-sample "
    "log is kept beside its results and in the result cache); remove it",
    "genargs": "did you mean spec.prompt.genKwargs (lm-eval's gen_kwargs)?",
    "genkwargs": "did you mean spec.prompt.genKwargs (lm-eval's gen_kwargs)?",
    "generationkwargs": "did you mean spec.prompt.genKwargs (lm-eval's gen_kwargs)?",
    "outputs": "qeval keeps every result itself, in the run's storage (in a cluster the "
    "operator's storage claim, whose folder status.resultsLocation names; under qeval run "
    "--workdir, ./qeval-runs); remove it",
    "outputpath": "qeval keeps every result itself, in the run's storage (in a cluster the "
    "operator's storage claim, whose folder status.resultsLocation names; under qeval run "
    "--workdir, ./qeval-runs); remove it",
    "tasklist": "did you mean spec.tasks (lm-eval task names, each with numFewshot, limit, "
    "metric) or spec.suites?",
    "tasknames": "did you mean spec.tasks (a list of {name: ...})?",
    "applychattemplate": "did you mean spec.prompt.chatTemplate (lm-eval's apply_chat_template)?",
    "includepath": "did you mean spec.taskPaths (lm-eval's include_path)?",
    "confirmrununsafecode": "did you mean spec.allowCodeExecution?",
    "usecache": "did you mean spec.cache?",
    "metadata": "did you mean spec.taskMetadata (lm-eval's --metadata, e.g. RULER's "
    "max_seq_lengths)?",
    "device": "qeval picks the device: spec.scheduling.gpus GPUs (0: the CPU); remove it",
    "pod": "did you mean spec.scheduling (resources, nodeSelector, tolerations, affinity)?",
    "maxbatchsize": "set it as spec.modelArgs.max_batch_size (the bound of batchSize: auto)",
    "hftoken": "did you mean spec.hfTokenSecret (a Secret's key, never the token itself)?",
    "model": "did you mean spec.baseline.model (or a candidate's model)?",
}
ALIASES: dict[str, dict[str, str]] = {"EvalRun": EVALRUN_ALIASES}


def _normal(name: str) -> str:
    return re.sub(r"[-_]", "", name).lower()


def _leaves(annotation: Any) -> list[Any]:
    """The annotations a value of ``annotation`` can be, through Annotated and unions."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _leaves(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [leaf for arg in get_args(annotation) for leaf in _leaves(arg)]
    return [annotation]


def _model(leaf: Any) -> type[BaseModel] | None:
    return leaf if isinstance(leaf, type) and issubclass(leaf, BaseModel) else None


def _field(model: type[BaseModel], name: str) -> Any | None:
    for key, info in model.model_fields.items():
        if name in (key, info.alias):
            return info.annotation
    return None


def _step(current: list[Any], part: int | str) -> list[Any] | None:
    """The annotations below ``part`` of a value of one of ``current``; None: no such part
    (a union member's tag, which the walk skips)."""
    found: list[Any] = []
    for leaf in current:
        origin, args = get_origin(leaf), get_args(leaf)
        if isinstance(part, int) and origin in (list, tuple):
            found += _leaves(args[0])
        elif isinstance(part, str) and origin is dict:
            found += _leaves(args[1]) if args else [Any]
        elif isinstance(part, str) and (model := _model(leaf)) is not None:
            annotation = _field(model, part)
            found += _leaves(annotation) if annotation is not None else []
        elif leaf is Any:
            found.append(Any)
    return found or None


def locate(root: type[BaseModel], loc: Loc) -> tuple[Loc, list[type[BaseModel]]]:
    """``loc`` without the union tags pydantic puts in it, and the models that the value at
    that place can be."""
    current: list[Any] = [root]
    kept: list[int | str] = []
    for part in loc:
        below = _step(current, part)
        if below is None:
            continue  # a tag such as 'int' or 'constrained-str'
        current = below
        kept.append(part)
    models = [m for leaf in current if (m := _model(leaf)) is not None]
    return tuple(kept), models


def field_paths(root: type[BaseModel]) -> dict[str, list[str]]:
    """Every field of ``root`` and the models below it, by its normalised name: the paths
    where it is (``spec.tasks[].limit``)."""
    out: dict[str, list[str]] = {}

    def walk(model: type[BaseModel], path: str, seen: tuple[type[BaseModel], ...]) -> None:
        for key, info in model.model_fields.items():
            name = info.alias or key
            here = f"{path}.{name}" if path else name
            out.setdefault(_normal(name), []).append(here)
            for leaf in _leaves(info.annotation):
                suffix = ""
                while get_origin(leaf) in (list, dict, tuple):
                    suffix += "[]" if get_origin(leaf) in (list, tuple) else ".*"
                    leaf = _leaves(get_args(leaf)[-1 if get_origin(leaf) is dict else 0])[0]
                inner = _model(leaf)
                if inner is not None and inner not in seen:
                    walk(inner, here + suffix, (*seen, inner))

    walk(root, "", (root,))
    return out


def unknown_field(root: type[BaseModel], kind: str, loc: Loc) -> str:
    """The hint for an unknown field at ``loc`` (its last segment) of a ``root`` object."""
    name = str(loc[-1])
    _, parents = locate(root, loc[:-1])
    here = sorted({info.alias or key for m in parents for key, info in m.model_fields.items()})
    same = [f for f in here if _normal(f) == _normal(name)]
    if same:
        return f"did you mean {same[0]!r}?"
    if loc[:-1] == ("spec",) and (hint := ALIASES.get(kind, {}).get(_normal(name))):
        return hint
    # The same field in another place of the same part (spec, not status).
    top = str(loc[0])
    elsewhere = [p for p in field_paths(root).get(_normal(name), []) if re.match(rf"{top}[.\[]", p)]
    if 0 < len(elsewhere) <= 3:
        return f"did you mean {' or '.join(elsewhere)}?"
    close = get_close_matches(name, here, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "remove it"
