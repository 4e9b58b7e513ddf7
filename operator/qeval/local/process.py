"""What every process ``qeval run`` starts shares: its input file, environment and log."""

from __future__ import annotations

import json
import os
from pathlib import Path

from qeval.plan import Layout, Stage

LOG_TAIL_LINES = 20


def stage_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return env


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log (empty if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def write_input(stage: Stage, layout: Layout) -> Path:
    """The stage's input document in its folder (which this makes); its path."""
    stage_dir = Path(layout.stage_dir(stage.name))
    stage_dir.mkdir(parents=True, exist_ok=True)
    input_path = stage_dir / "input.json"
    input_path.write_text(json.dumps({"stage": stage.name, **stage.input}, indent=2) + "\n")
    return input_path
