"""The CRDs are generated from the models: committed files must match, every example must
validate against the generated schema, and every field must carry a description."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from qeval.api.crd import CRDS, build_crd, stale_crds
from tests.conftest import EXAMPLES, ROOT


def schema_of(kind: str) -> dict:
    for info in CRDS:
        if info.model.__name__ == kind:
            return build_crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    raise KeyError(kind)


def test_committed_crds_match_the_models():
    assert stale_crds(ROOT / "crds") == [], "run `make crds` and commit the result"


def test_stale_crd_is_detected(tmp_path: Path):
    from qeval.api.crd import write_crds

    (path, _) = write_crds(tmp_path)
    path.write_text(path.read_text().replace("W4A16", "W5A16"))
    assert stale_crds(tmp_path) == [path]


def example_objects():
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield pytest.param(
                    doc, id=f"{path.relative_to(EXAMPLES)}:{doc['metadata']['name']}"
                )


@pytest.mark.parametrize("doc", list(example_objects()))
def test_examples_validate_against_the_generated_schema(doc):
    # OpenAPI v3 schemas use draft-4 semantics (exclusiveMinimum is a boolean).
    jsonschema.Draft4Validator(schema_of(doc["kind"])).validate(doc)


def test_schema_refuses_what_the_models_refuse():
    doc = next(d.values[0] for d in example_objects() if d.values[0]["kind"] == "QuantizedModel")
    bad = {**doc, "spec": {**doc["spec"], "scheme": "W5A16"}}
    with pytest.raises(jsonschema.ValidationError, match="W5A16"):
        jsonschema.Draft4Validator(schema_of("QuantizedModel")).validate(bad)


def _walk(node: dict, path: str):
    for name, child in node.get("properties", {}).items():
        yield f"{path}.{name}", child
        yield from _walk(child, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", ["QuantizedModel", "EvalRun"])
def test_structural_schema(kind):
    schema = schema_of(kind)
    text = yaml.safe_dump(schema)
    for banned in ("$ref", "anyOf", "allOf", "title:", "$defs"):
        assert banned not in text
    for path, node in _walk(schema["properties"]["spec"], "spec"):
        assert node.get("description"), f"{kind} {path} has no description (kubectl explain)"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{kind} {path}"


def test_printer_columns_and_names():
    qm, er = (build_crd(info)["spec"] for info in CRDS)
    assert qm["names"]["shortNames"] == ["qm", "qmodel"] and "qeval" in qm["names"]["categories"]
    columns = {c["name"]: c["jsonPath"] for c in er["versions"][0]["additionalPrinterColumns"]}
    assert columns["Progress"] == ".status.progress"
    assert columns["Recovery"] == ".status.meanRecovery"
    assert er["versions"][0]["subresources"] == {"status": {}}
