"""Write the lm-eval results fixtures of one lm-eval version (tests/data/lmeval-<version>/).

    pip install --no-deps --target /tmp/lmeval-0.4.4 lm-eval==0.4.4
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH=/tmp/lmeval-0.4.4 \
        .venv/bin/python tests/data/make_lmeval_fixtures.py 0.4.4 tests/data/lmeval-0.4.4

lm-eval itself (the version found first on sys.path, checked against VERSION) runs
a stand-in model on small offline tasks written here: a multiple-choice task with acc
and acc_norm, a generation task with two filters (as gsm8k's strict-match and
flexible-extract), a group with an aggregate of two aliased subtasks and a group
without one (lm-eval before 0.4.4 has no aggregate_metric_list: it aggregates every
group). Two runs: ``groups`` (limit 4) and ``groups-limit1`` (one document per task:
every stderr is "N/A"). The stand-in model, registered here, gives each choice a
log-likelihood drawn from a hash of its text and answers the generation task in the
strict format for even numbers only; lm-eval's own ``dummy`` model cannot be used, as
its generate_until fails on lm-eval 0.4.2 to 0.4.4 ("cannot unpack non-iterable
Instance object").

What is kept of each results document: the keys qeval reads (results, groups,
group_subtasks, n-shot, n-samples, higher_is_better, versions, lm_eval_version) and
of each task config only task, output_type, metric_list and filter_list's names. Of
the per-sample logs, each line's doc_id, filter and metric values.

Two stand-ins for the newer dependencies of the project's environment, neither a
change to lm-eval: lm-eval 0.4.2 loads Hugging Face ``evaluate``'s exact_match script
from the hub at import time, so a local ``exact_match/exact_match.py`` (plain exact
match, as that script computes it) is put in the working directory, which ``evaluate``
looks in first; lm-eval 0.4.5 to 0.4.8 name ``transformers.AutoModelForVision2Seq``,
which transformers 5 renamed AutoModelForImageTextToText, so the old name is set to it.
``--raw DIR`` keeps everything lm-eval wrote, untrimmed, for reading its layout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MC_TASKS = {  # task -> its alias (None: none)
    "qeval_mc": None,
    "qeval_mc_a": "MC subset A",
    "qeval_mc_b": "MC subset B",
    "qeval_mc_c": "MC subset C",
}
GEN_TASK = "qeval_gen"
GROUP_AGG = "qeval_agg"  # qeval_mc_a + qeval_mc_b, acc and acc_norm aggregated by size
GROUP_NOAGG = "qeval_noagg"  # qeval_gen + qeval_mc_c, no aggregate (0.4.4 and later)
REQUESTED = ["qeval_mc", GROUP_AGG, GROUP_NOAGG]
RUNS = {"groups": 4, "groups-limit1": 1}  # fixture name -> --limit

KEEP = [
    "results",
    "groups",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
    "lm_eval_version",
]
CONFIG_KEEP = ["task", "output_type", "metric_list", "filter_list"]
SAMPLE_KEEP = ["doc_id", "filter", "metrics"]

STAND_IN_EXACT_MATCH = '''"""Stand-in for evaluate's exact_match script (no hub here)."""
import re
import string

import datasets
import evaluate
import numpy as np


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="exact match (stand-in)",
            citation="",
            inputs_description="",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, regexes_to_ignore=None, ignore_case=False,
                 ignore_punctuation=False, ignore_numbers=False):
        def clean(texts):
            texts = list(texts)
            for pattern in regexes_to_ignore or []:
                texts = [re.sub(pattern, "", t) for t in texts]
            if ignore_case:
                texts = [t.lower() for t in texts]
            drop = (string.punctuation if ignore_punctuation else "") + (
                string.digits if ignore_numbers else "")
            return np.array([t.translate(str.maketrans("", "", drop)) for t in texts])

        return {"exact_match": float(np.mean(clean(predictions) == clean(references)))}
'''

BOOT = """
import hashlib
import os
import re
import sys
from importlib.metadata import version

import transformers
import peft  # noqa: F401  (importing it replaces sys.modules["transformers"])

transformers = sys.modules["transformers"]
if not hasattr(transformers, "AutoModelForVision2Seq"):
    transformers.AutoModelForVision2Seq = transformers.AutoModelForImageTextToText

if version("lm_eval") != os.environ["QEVAL_LM_EVAL_VERSION"]:
    sys.exit(f"lm-eval {version('lm_eval')} is first on sys.path, not the version asked for")

from lm_eval.__main__ import cli_evaluate
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model


def _unit(*texts):
    digest = hashlib.sha256("|".join(texts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@register_model("qeval_stand_in")
class StandIn(LM):
    def __init__(self, **_):
        super().__init__()

    def loglikelihood(self, requests, disable_tqdm=False):
        return [(-_unit(*r.args), False) for r in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        return [-_unit(*r.args) for r in requests]

    def generate_until(self, requests, disable_tqdm=False):
        out = []
        for r in requests:
            n = int(re.search(r"What is ([0-9]+)", r.args[0]).group(1))
            out.append(f"#### {2 * n}" if n % 2 == 0 else f"so it is {2 * n}")
        return out


sys.argv = ["lm_eval", *sys.argv[1:]]
cli_evaluate()
"""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3])


def _yaml(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"  # JSON is YAML; lm-eval reads it as such


def write_tasks(folder: Path, version: str) -> None:
    """The task and group configs and their JSONL data, in ``folder``."""
    mc_docs = [
        {"question": f"Item {i}: which word names a colour?", "choices": c, "label": i % 3}
        for i, c in enumerate(
            [["red", "stone", "table"], ["chair", "green", "river"], ["ox", "bell", "blue"]] * 3
        )
    ]
    gen_docs = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(8)]
    for name, docs in (("mc", mc_docs), ("gen", gen_docs)):
        with (folder / f"{name}.jsonl").open("w") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs)
    for task, alias in MC_TASKS.items():
        config: dict[str, Any] = {
            "task": task,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(folder / "mc.jsonl")}},
            "output_type": "multiple_choice",
            "test_split": "test",
            "num_fewshot": 0,
            "doc_to_text": "{{question}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "label",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
            "metadata": {"version": 1.0},
        }
        if alias:
            config["task_alias"] = alias
        (folder / f"{task}.yaml").write_text(_yaml(config))
    gen = {
        "task": GEN_TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(folder / "gen.jsonl")}},
        "output_type": "generate_until",
        "test_split": "test",
        "num_fewshot": 0,
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": 8},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "filter_list": [
            {
                "name": "strict-match",
                "filter": [
                    {"function": "regex", "regex_pattern": r"#### (\-?[0-9\.\,]+)"},
                    {"function": "take_first"},
                ],
            },
            {
                "name": "flexible-extract",
                "filter": [
                    {
                        "function": "regex",
                        "group_select": -1,
                        "regex_pattern": r"(-?[$0-9.,]{2,})|(-?[0-9]+)",
                    },
                    {"function": "take_first"},
                ],
            },
        ],
        "metadata": {"version": 2.0},
    }
    (folder / f"{GEN_TASK}.yaml").write_text(_yaml(gen))
    agg: dict[str, Any] = {
        "group": GROUP_AGG,
        "group_alias": "Aggregated group",
        "task": ["qeval_mc_a", "qeval_mc_b"],
    }
    noagg: dict[str, Any] = {"group": GROUP_NOAGG, "task": [GEN_TASK, "qeval_mc_c"]}
    if _version_tuple(version) >= (0, 4, 4):  # the group refactor: aggregates are opt-in
        agg["aggregate_metric_list"] = [
            {"metric": "acc", "aggregation": "mean", "weight_by_size": True},
            {"metric": "acc_norm", "aggregation": "mean", "weight_by_size": True},
        ]
        agg["metadata"] = noagg["metadata"] = {"version": 1.0}
    (folder / f"{GROUP_AGG}.yaml").write_text(_yaml(agg))
    (folder / f"{GROUP_NOAGG}.yaml").write_text(_yaml(noagg))


def trim_results(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: doc[k] for k in KEEP if k in doc}
    out["configs"] = {
        task: {k: _trim_config_value(k, v) for k, v in config.items() if k in CONFIG_KEEP}
        for task, config in doc.get("configs", {}).items()
    }
    if "lm_eval_version" not in doc and "lm_eval_version" in doc.get("config", {}):
        out["config"] = {"lm_eval_version": doc["config"]["lm_eval_version"]}
    return out


def _trim_config_value(key: str, value: Any) -> Any:
    if key == "filter_list" and isinstance(value, list):
        return [{"name": f.get("name")} for f in value if isinstance(f, dict)]
    return value


def trim_sample(sample: dict[str, Any]) -> dict[str, Any]:
    metrics = sample.get("metrics") or []
    keep = [k for k in SAMPLE_KEEP if k in sample] + [k for k in metrics if k in sample]
    if not metrics:  # lm-eval 0.4.2 logs no list of metrics: keep the numbers it logs
        keep += [k for k in ("acc", "acc_norm", "exact_match") if k in sample]
    return {k: sample[k] for k in keep}


def _read_samples(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    if text.lstrip().startswith("["):  # lm-eval 0.4.2: one JSON array per file
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _sample_task(path: Path, tasks: list[str]) -> str:
    """The task a samples file is of: the longest task name in its file name."""
    found = [t for t in tasks if f"_{t}_" in f"_{path.stem}_" or path.stem.endswith(f"_{t}")]
    return max(found, key=len)


def run(version: str, out: Path, limit_name: str, limit: int, work: Path, raw: Path | None) -> None:
    tasks_dir = work / "tasks"
    output = work / f"out-{limit_name}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["QEVAL_LM_EVAL_VERSION"] = version
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = [
        "--model",
        "qeval_stand_in",
        "--tasks",
        ",".join(REQUESTED),
        "--include_path",
        str(tasks_dir),
        "--limit",
        str(limit),
        "--output_path",
        str(output),
        "--log_samples",
    ]
    subprocess.run([sys.executable, "-c", BOOT, *args], cwd=work, env=env, check=True)
    (results_path,) = [p for p in output.rglob("*.json") if p.name.startswith("results")]
    doc = json.loads(results_path.read_text())
    if raw is not None:  # everything lm-eval wrote, untrimmed, to read the layout
        shutil.copytree(output, raw / limit_name, dirs_exist_ok=True)
    (out / f"{limit_name}.json").write_text(json.dumps(trim_results(doc), indent=1) + "\n")
    samples_dir = out / f"{limit_name}.samples"
    shutil.rmtree(samples_dir, ignore_errors=True)
    samples_dir.mkdir()
    tasks = [*MC_TASKS, GEN_TASK]
    for path in sorted(output.rglob("*.jsonl")):
        task = _sample_task(path, tasks)
        with (samples_dir / f"{task}.jsonl").open("w") as f:
            f.writelines(json.dumps(trim_sample(s)) + "\n" for s in _read_samples(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", help="the lm-eval version on PYTHONPATH, e.g. 0.4.4")
    parser.add_argument("out", type=Path, help="where the fixtures go")
    parser.add_argument("--raw", type=Path, help="also copy lm-eval's untrimmed output here")
    ns = parser.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lmeval-fixtures-") as tmp:
        work = Path(tmp)
        (work / "tasks").mkdir()
        write_tasks(work / "tasks", ns.version)
        (work / "exact_match").mkdir()
        (work / "exact_match" / "exact_match.py").write_text(STAND_IN_EXACT_MATCH)
        for name, limit in RUNS.items():
            run(ns.version, ns.out, name, limit, work, ns.raw)


if __name__ == "__main__":
    main()
