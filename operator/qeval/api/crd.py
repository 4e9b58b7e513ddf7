"""Generate the CustomResourceDefinitions from the pydantic models.

The models are the single source of truth: ``make crds`` writes ``crds/*.yaml`` with
this module and a test fails when the committed files differ from a fresh generation.
Kubernetes wants a *structural* schema (OpenAPI v3 without ``$ref``, ``anyOf`` of
types, ``additionalProperties: false`` or ``title``), so the JSON schema pydantic
produces is rewritten into that form here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qeval.api.common import GROUP, VERSION, Resource
from qeval.api.evalrun import EvalRun
from qeval.api.quantizedmodel import QuantizedModel

Schema = dict[str, Any]
_DROP = {"title", "$defs"}


RULES = "x-kubernetes-validations"


def _inline(target: Schema, node: Schema) -> Schema:
    """``target`` (a definition) under the field's own keys, which win (description,
    default), except the CEL rules: the model's and the field's both apply."""
    merged = {**target, **node}
    rules = [*target.get(RULES, []), *node.get(RULES, [])]
    if rules:
        merged[RULES] = rules
    return merged


def key_rules(names: Schema) -> list[dict[str, str]]:
    """CEL rules on a map's keys for a JSON-schema ``propertyNames`` (pattern, lengths)."""
    rules = []
    if "pattern" in names:
        pattern = names["pattern"].replace("\\", "\\\\").replace("'", "\\'")
        rules.append(
            {
                "rule": f"self.all(k, k.matches('{pattern}'))",
                "message": f"keys match {names['pattern']}",
            }
        )
    if "maxLength" in names:
        n = names["maxLength"]
        rules.append(
            {"rule": f"self.all(k, size(k) <= {n})", "message": f"keys are at most {n} characters"}
        )
    if names.get("minLength", 0) > 0:
        n = names["minLength"]
        rules.append(
            {"rule": f"self.all(k, size(k) >= {n})", "message": f"keys have {n} characters or more"}
        )
    unknown = set(names) - {"pattern", "maxLength", "minLength", "type"}
    if unknown:
        raise ValueError(f"no CEL form for propertyNames {sorted(unknown)}")
    return rules


def structural(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Rewrite one pydantic JSON-schema node (and everything below it) into a structural one."""
    node = dict(node)
    if "$ref" in node:  # inline the definition
        node = _inline(defs[node.pop("$ref").rsplit("/", 1)[-1]], node)
    if "allOf" in node and len(node["allOf"]) == 1:
        node = _inline(node.pop("allOf")[0], node)
        return structural(node, defs)
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        types = sorted(b.get("type", "") for b in branches)
        if types == ["integer", "string"]:
            node["x-kubernetes-int-or-string"] = True
            text = next(b for b in branches if b.get("type") == "string")
            if "maxLength" in text:  # the string branch's bound, which the anyOf loses
                node[RULES] = [
                    *node.get(RULES, []),
                    {
                        "rule": f"type(self) != string || size(self) <= {text['maxLength']}",
                        "message": f"at most {text['maxLength']} characters",
                    },
                ]
        elif len(branches) == 1:
            return structural(_inline(branches[0], node), defs)
        else:
            raise ValueError(f"no structural form for anyOf {branches}")
    if node.get("default", ...) is None:
        del node["default"]
    if "exclusiveMinimum" in node:  # JSON Schema 2020 number -> OpenAPI v3 boolean form
        node["minimum"], node["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node:
        node["maximum"], node["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "propertyNames" in node:  # not in a structural schema: the same rule in CEL
        node[RULES] = [*node.get(RULES, []), *key_rules(node.pop("propertyNames"))]
    if "patternProperties" in node:  # a map whose keys have a pattern: the same, in CEL
        ((pattern, values),) = node.pop("patternProperties").items()
        node[RULES] = [*node.get(RULES, []), *key_rules({"pattern": pattern})]
        node["additionalProperties"] = values
    extra = node.pop("additionalProperties", False)
    if extra is True:
        node["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, dict):
        node["additionalProperties"] = structural(extra, defs)
    if "properties" in node:
        node["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    if "items" in node:
        node["items"] = structural(node["items"], defs)
    return {k: v for k, v in node.items() if k not in _DROP}


def object_schema(model: type[Resource]) -> Schema:
    """The openAPIV3Schema of one resource: spec and status from the models."""
    props = model.model_json_schema(by_alias=True)["properties"]
    defs = model.model_json_schema(by_alias=True).get("$defs", {})
    spec, status = structural(props["spec"], defs), structural(props["status"], defs)
    return {
        "type": "object",
        "description": model.__doc__,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "qeval.dev/v1alpha1"},
            "kind": {"type": "string", "description": model.__name__},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


@dataclass(frozen=True)
class CrdInfo:
    model: type[Resource]
    plural: str
    short_names: list[str]
    columns: list[dict[str, str]] = field(default_factory=list)


def _column(name: str, path: str, type_: str = "string", description: str = "", **extra: Any):
    col = {"name": name, "type": type_, "jsonPath": path}
    if description:
        col["description"] = description
    return col | extra


AGE = _column("Age", ".metadata.creationTimestamp", "date")

CRDS = (
    CrdInfo(
        QuantizedModel,
        "quantizedmodels",
        ["qm", "qmodel"],
        [
            _column("Scheme", ".spec.scheme", description="Quantization preset"),
            _column("Phase", ".status.phase"),
            _column("Ready", '.status.conditions[?(@.type=="Ready")].status'),
            _column("Ratio", ".status.compressionRatio", "number", "Base size / quantized size"),
            _column("Size", ".status.sizeBytes", "integer", "Bytes on disk", priority=1),
            AGE,
        ],
    ),
    CrdInfo(
        EvalRun,
        "evalruns",
        ["er", "erun"],
        [
            _column("Phase", ".status.phase"),
            _column("Progress", ".status.progress", description="Stages done / total"),
            _column(
                "Recovery",
                ".status.meanRecovery",
                "number",
                "Lowest mean recovery among the candidates",
            ),
            _column("Succeeded", '.status.conditions[?(@.type=="Succeeded")].status', priority=1),
            AGE,
        ],
    ),
)


def build_crd(info: CrdInfo) -> dict[str, Any]:
    """The CustomResourceDefinition object of one resource."""
    kind = info.model.__name__
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": info.plural,
                "singular": kind.lower(),
                "shortNames": info.short_names,
                "categories": ["qeval"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": info.columns,
                    "schema": {"openAPIV3Schema": object_schema(info.model)},
                }
            ],
        },
    }


HEADER = "# Generated from the pydantic models in operator/qeval/api by `make crds`. Do not edit.\n"


def render(info: CrdInfo) -> str:
    return HEADER + yaml.safe_dump(build_crd(info), sort_keys=False, width=100)


def write_crds(out_dir: Path) -> list[Path]:
    """Write one YAML file per CRD into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for info in CRDS:
        path = out_dir / f"{GROUP}_{info.plural}.yaml"
        path.write_text(render(info))
        paths.append(path)
    return paths


def stale_crds(out_dir: Path) -> list[Path]:
    """The CRD files under ``out_dir`` that differ from a fresh generation (or are missing)."""
    return [
        out_dir / f"{GROUP}_{info.plural}.yaml"
        for info in CRDS
        if not (p := out_dir / f"{GROUP}_{info.plural}.yaml").exists()
        or p.read_text() != render(info)
    ]
