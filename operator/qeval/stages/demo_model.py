"""The demo-model stage: build (or find cached) the small model qeval trains for itself."""

from __future__ import annotations

from pydantic import Field

from qeval.api.common import DEMO_MODELS, ApiModel
from qeval.stages.envelope import Document

# What the stage imports: a warm worker imports it once (``qeval.local.worker``).
WARM = ("torch", "transformers")


class DemoModelInput(Document):
    model: str = Field(default=DEMO_MODELS[0], description="Which demo model (demo://<name>).")


class DemoModelResult(ApiModel):
    path: str
    recipe_hash: str


def reuse(inp: DemoModelInput) -> DemoModelResult | None:
    """The demo model, if it is already built (it is cached by its recipe's hash)."""
    from qeval.demo.model import demo_model_path, recipe_hash

    try:
        return DemoModelResult(path=str(demo_model_path(build=False)), recipe_hash=recipe_hash())
    except FileNotFoundError:
        return None


def run(inp: DemoModelInput) -> DemoModelResult:
    from qeval.demo.model import demo_model_path, recipe_hash

    return DemoModelResult(path=str(demo_model_path()), recipe_hash=recipe_hash())
