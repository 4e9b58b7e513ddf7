"""Reading QuantizedModel and EvalRun objects from YAML, with errors a person can act on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from qeval.api.common import Resource, clip, shorten
from qeval.api.evalrun import EvalRun
from qeval.api.hints import Loc, locate, unknown_field
from qeval.api.quantizedmodel import QuantizedModel
from qeval.api.yamldocs import YamlError, load_all

KINDS: dict[str, type[Resource]] = {"QuantizedModel": QuantizedModel, "EvalRun": EvalRun}


class SpecError(ValueError):
    """An invalid spec: the message names the file, the object, the field and the fix."""


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(err: Any, kind: str, loc: Loc) -> str:
    # Errors raised inside model validators carry "Value error, " before our message.
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    if err["type"] == "missing":
        return f"required; add it (kubectl explain {kind.lower()}.{_where(loc)})"
    if err["type"] == "extra_forbidden":  # hints from the fields valid at that place
        return f"unknown field; {unknown_field(KINDS[kind], kind, loc)}"
    if err["type"] != "value_error" and not isinstance(got, dict | list):
        return f"{shorten(msg, 600)} (got {clip(got)})"
    return shorten(msg, 600)


def _joined(messages: list[str]) -> str:
    """One line for the errors of one field (a union's members): ``Input should be a valid
    integer or a valid string (got True)``."""
    got = messages[0].rsplit(" (got ", 1)
    if len(got) == 2 and all(m.endswith(f" (got {got[1]}") for m in messages):
        messages = [m.removesuffix(f" (got {got[1]}") for m in messages]
        return _joined(messages) + f" (got {got[1]}"
    lead = "Input should be "
    if len(messages) > 1 and all(m.startswith(lead) for m in messages):
        return lead + " or ".join(m.removeprefix(lead) for m in messages)
    return "; ".join(messages)


def explain(error: ValidationError, source: str, kind: str) -> str:
    """Turn a pydantic error into one line per problem: ``source: field.path: message``
    (the errors of one field's union members on one line)."""
    problems: dict[Loc, list[str]] = {}
    for err in error.errors():
        raw = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        if err["type"] == "extra_forbidden" and raw:  # the last segment is the unknown field
            loc = (*locate(KINDS[kind], raw[:-1])[0], raw[-1])
        else:
            loc = locate(KINDS[kind], raw)[0]
        message = _message(err, kind, loc)
        if message not in problems.setdefault(loc, []):
            problems[loc].append(message)
    return "\n".join(
        f"{source}: {_where(loc) or '(object)'}: {_joined(messages)}"
        for loc, messages in problems.items()
    )


def parse(doc: Any, source: str) -> Resource:
    """Validate one YAML document as a qeval resource, with the API server's strict types:
    the document goes through JSON (as kubectl sends it) and nothing is coerced ("5" is
    no integer, "no" no boolean, "0.99" no number)."""
    if not isinstance(doc, dict):
        raise SpecError(f"{source}: expected a mapping with apiVersion, kind, metadata and spec")
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise SpecError(
            f"{source}: kind {clip(kind)} is not a qeval kind; use one of {sorted(KINDS)}"
        )
    meta = doc.get("metadata")
    name = meta.get("name", "?") if isinstance(meta, dict) else "?"
    try:
        # YAML dates become strings on the way to JSON, as they do for kubectl.
        text = json.dumps(doc, default=str)
        return KINDS[kind].model_validate_json(text, strict=True)
    except ValidationError as e:
        raise SpecError(explain(e, f"{source}: {kind} {shorten(str(name), 80)}", kind)) from None
    except ValueError as e:  # e.g. a key JSON cannot hold
        raise SpecError(f"{source}: {kind} {shorten(str(name), 80)}: {e}") from None


def load_documents(path: Path) -> list[Resource]:
    """Every qeval object in a YAML file (multi-document) or in the YAML files of a folder."""
    files = sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    if not files:
        raise SpecError(f"{path}: no YAML files")
    out: list[Resource] = []
    seen: dict[tuple[str, str], str] = {}
    for file in files:
        try:
            docs = load_all(file.read_text())
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(f"{file}: cannot read: {getattr(e, 'strerror', None) or e}") from None
        except YamlError as e:
            raise SpecError(f"{file}: {e}") from None
        for line, doc in docs:
            obj = parse(doc, f"{file}:{line}")
            where = seen.setdefault((obj.kind, obj.name), f"{file}:{line}")  # type: ignore[attr-defined]
            if where != f"{file}:{line}":
                raise SpecError(
                    f"{file}:{line}: {obj.kind} {obj.name}: a second object of this kind "  # type: ignore[attr-defined]
                    f"and name (the first is at {where}); rename or remove one"
                )
            out.append(obj)
    return out
