"""The architecture document names real code: every ``qeval.…`` it mentions resolves."""

from __future__ import annotations

import importlib
import re

import pytest

from tests.conftest import ROOT

ARCHITECTURE = ROOT / "docs" / "architecture.md"
NAMES = sorted(set(re.findall(r"\bqeval(?:\.[A-Za-z_]\w*)+", ARCHITECTURE.read_text())))


def resolve(dotted: str) -> object:
    """The module, class, function or field ``dotted`` names (ValueError if none)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            fields = getattr(obj, "__dataclass_fields__", None) or {}
            if attr in fields:
                obj = fields[attr]
            elif hasattr(obj, attr):
                obj = getattr(obj, attr)
            else:
                raise ValueError(f"{dotted}: {'.'.join(parts[:cut])} has no {attr}")
        return obj
    raise ValueError(f"{dotted}: no such module")


def test_the_document_names_code() -> None:
    assert len(NAMES) > 25  # the regular expression finds them


@pytest.mark.parametrize("name", NAMES)
def test_every_name_in_the_architecture_document_exists(name: str) -> None:
    resolve(name)


def test_a_name_that_is_gone_is_noticed() -> None:
    with pytest.raises(ValueError, match="has no stage_states_v2"):
        resolve("qeval.engine.stage_states_v2")
    with pytest.raises(ValueError, match="no such module"):
        resolve("qeval_gone.thing")
