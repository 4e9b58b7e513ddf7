"""The operator-side code (API, plan, status, local executor, CLI) imports without torch,
llm-compressor or lm-eval: those belong to the stage extras only."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "llmcompressor", "lm_eval", "datasets")


def test_core_imports_without_heavy_libraries():
    code = (
        "import sys\n"
        "import qeval.api, qeval.api.crd, qeval.plan, qeval.status, qeval.cli\n"
        "import qeval.local.executor, qeval.stages, qeval.recipes\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
