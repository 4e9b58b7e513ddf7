"""The mutation score of the core modules: what ``make mutation`` (mutmut) found.

Reads mutmut's per-module records (``build/mutation/mutants/src/**/*.meta``: the exit code of
the tests on each mutant) after ``make mutation`` and writes, per module and in total, how
many single-line changes the fast tests killed, how many survived, and how many no test
reached, to ``benchmarks/results/mutation.json`` and ``mutation.md``. A survivor is a change
to behaviour that every relevant test passes: the list of them is ``mutmut results``.

Usage: ``make mutation`` (it runs this at the end), or
``python benchmarks/mutation_score.py [--mutants build/mutation/mutants]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def outcome(code: int | None) -> str:
    """mutmut's own reading of a test run's exit code on a mutant."""
    from mutmut.stats import status_by_exit_code

    return str(status_by_exit_code[code])


def count(mutants: Path) -> dict[str, dict[str, int]]:
    out = {}
    for meta in sorted(mutants.glob("src/**/*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        module = str(meta.relative_to(mutants / "src")).removesuffix(".meta")
        out[module] = dict(Counter(outcome(c) for c in codes.values()), total=len(codes))
    return out


def score(c: dict[str, int]) -> float:
    """Killed (a timeout or a type-check catch counts as killed) over the mutants a test
    reaches."""
    reached = c["total"] - c.get("no tests", 0) - c.get("not checked", 0) - c.get("skipped", 0)
    caught = c.get("killed", 0) + c.get("timeout", 0) + c.get("caught by type check", 0)
    return caught / reached if reached else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=ROOT / "build" / "mutation" / "mutants")
    args = parser.parse_args()
    modules = count(args.mutants)
    if not modules:
        raise SystemExit(f"{args.mutants}: no mutmut records; run `make mutation` first")
    total: Counter[str] = Counter()
    for c in modules.values():
        total.update(c)
    commit = subprocess.run(  # of the tree mutmut ran in
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=args.mutants
    ).stdout.strip()
    doc: dict[str, Any] = {
        "commit": commit,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "modules": {m: {**c, "score": round(score(c), 4)} for m, c in modules.items()},
        "total": {**total, "score": round(score(dict(total)), 4)},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mutation.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# Mutation score (mutmut, `make mutation`)",
        "",
        f"Commit {commit}. Every single-line change mutmut makes to the modules below, run "
        "against the fast tests that cover it (`[tool.mutmut]` in pyproject.toml). Score: "
        "killed / mutants a test reaches. A survivor is a behaviour change no test notices: "
        "`cd build/mutation && mutmut results` lists them, `mutmut show NAME` shows one.",
        "",
        "| module | mutants | killed | survived | no tests | timeout | score |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, c in [*modules.items(), ("total", dict(total))]:
        lines.append(
            f"| {m} | {c['total']} | {c.get('killed', 0)} | {c.get('survived', 0)} | "
            f"{c.get('no tests', 0)} | {c.get('timeout', 0)} | {score(c):.1%} |"
        )
    (RESULTS / "mutation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[6:]))


if __name__ == "__main__":
    main()
