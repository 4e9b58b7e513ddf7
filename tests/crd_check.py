"""The generated CRD schema applied the way the API server applies it on create: defaults
filled in, the OpenAPI v3 schema (jsonschema, draft 4 semantics), metadata.name as a DNS
subdomain, then every x-kubernetes-validations rule evaluated by cel-python on its node.
Transition rules (oldSelf) do not apply on create and are skipped.

A stand-in for kube-apiserver's validation, named as one: tests/cluster runs the real
server; this one is fast enough for a corpus of hundreds of specs.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import celpy
import jsonschema

from qeval.api.crd import CRDS, build_crd

_CEL = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def schema_of(kind: str) -> dict[str, Any]:
    for info in CRDS:
        if info.model.__name__ == kind:
            return build_crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    raise KeyError(kind)


def _defaults(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                _defaults(prop, value[name])
        if isinstance(schema.get("additionalProperties"), dict):
            for v in value.values():
                _defaults(schema["additionalProperties"], v)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _defaults(schema["items"], item)


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _unknown(schema: dict[str, Any], value: Any, path: str) -> list[tuple[str, str]]:
    """Fields the schema does not declare: kubectl's strict field validation refuses them."""
    errors = []
    if isinstance(value, dict) and "properties" in schema:
        open_ = (
            schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema
        )
        for name, v in value.items():
            where = f"{path}.{name}" if path else name
            if name in schema["properties"]:
                errors += _unknown(schema["properties"][name], v, where)
            elif not open_:
                errors.append((where, "unknown field"))
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _unknown(schema["items"], item, f"{path}[{i}]")
    return errors


def _rules(schema: dict[str, Any], value: Any, path: str) -> list[tuple[str, str]]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        program = _PROGRAMS.get(rule["rule"])
        if program is None:
            program = _PROGRAMS[rule["rule"]] = _CEL.program(_CEL.compile(rule["rule"]))
        try:
            result = program.evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError:  # the API server reports an evaluation error too
            result = False
        if isinstance(result, celpy.CELEvalError) or not bool(result):
            errors.append((path, rule.get("message", rule["rule"])))
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name in value:
                errors += _rules(prop, value[name], f"{path}.{name}" if path else name)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for k, v in value.items():
                errors += _rules(extra, v, f"{path}.{k}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += _rules(schema["items"], item, f"{path}[{i}]")
    return errors


def api_server_errors(doc: Any) -> list[tuple[str, str]]:
    """(field path, message) for each reason the API server would refuse ``doc``."""
    if not isinstance(doc, dict) or doc.get("kind") not in ("EvalRun", "QuantizedModel"):
        return [("kind", "no such kind")]
    schema = schema_of(doc["kind"])
    doc = copy.deepcopy(doc)
    _defaults(schema, doc)
    errors = [
        (_path(e.absolute_path), e.message)
        for e in jsonschema.Draft4Validator(schema).iter_errors(doc)
    ]
    errors += _unknown(schema, doc, "")
    if doc.get("apiVersion") != "qeval.dev/v1alpha1":
        errors.append(("apiVersion", "the server serves qeval.dev/v1alpha1"))
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or len(name) > 253 or not _NAME.match(name):
        errors.append(("metadata.name", "a DNS subdomain"))
    return errors or _rules(schema, doc, "")
