"""The operator against API faults: figures for "## API faults" in
``benchmarks/results/reliability.md``.

Runs ``tests/test_faults.py`` whole (the 100-lifecycle test, marked ``pipeline``, with the
others: 10 lifecycles, the API server and etcd restarted mid-run, 410 Gone) with
``QEVAL_RECORD_RELIABILITY=1``, which makes each test write its subsection of that section
(the tests themselves only assert; a plain test run writes nothing).

Usage: ``.venv/bin/python benchmarks/api_faults.py`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    env = dict(os.environ, QEVAL_RECORD_RELIABILITY="1")
    pytest = [sys.executable, "-m", "pytest", "tests/test_faults.py", "-q", "-m", ""]
    return subprocess.run(pytest, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
