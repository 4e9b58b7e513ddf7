"""Deterministic synthetic data for the qeval demo model.

Made-up "knowledge" that no pretrained model has (so nothing is downloaded): every
made-up person has a home city and a job, e.g. ``"dilmim reshirek lives in koruna"`` and
``"dilmim reshirek works as a miner"``. The model memorises all of them; two lm-eval tasks
ask for them back:

* ``qeval_demo_facts`` - the job of every person, as a 4-way multiple choice
  (log-likelihood, metric ``acc``);
* ``qeval_demo_recall`` - the city of every person, generated freely (``generate_until``,
  metric ``exact_match``): the model must rank the right city first among all tokens,
  which makes this task the more sensitive of the two to weight perturbations;
* ``qeval_demo_perplexity`` - word and byte perplexity (``loglikelihood_rolling``, as
  lm-eval's ``wikitext``) of held-out text: sentences of the same form about people the
  model never saw. Lower is better.

Memorised associations are exactly what low-bit weight quantization destroys first.

Everything here is a pure function of its arguments (stdlib only, no torch):
the same call gives the same data on every machine and Python version.
"""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path

#: Bump whenever anything below changes what the model is trained on (it is part of the
#: model's recipe and hash).
DATA_VERSION = "demo-data-v2"
#: Bump whenever the task files change (the model stays the same).
TASKS_VERSION = "demo-tasks-v3"

FACTS_TASK = "qeval_demo_facts"
RECALL_TASK = "qeval_demo_recall"
PERPLEXITY_TASK = "qeval_demo_perplexity"
HELD_OUT_DOCS = 400
GROUP = "qeval_demo"

_SEED = 20240917
N_PEOPLE = 1000
N_CHOICES = 4

# Relations: (name, template joining person and value, possible values).
CITIES = (
    "brelon",
    "quastor",
    "vemmick",
    "ostrava",
    "talmir",
    "zinbury",
    "koruna",
    "pellow",
    "drassin",
    "umbero",
    "felgrad",
    "norwick",
    "yastel",
    "hobarin",
    "cinder",
    "mallow",
    "gorvath",
    "lisken",
    "tundra",
    "ravelle",
    "saxholm",
    "wendry",
    "bexley",
    "plimoth",
)
JOBS = (
    "baker",
    "pilot",
    "farmer",
    "tailor",
    "doctor",
    "sailor",
    "painter",
    "miner",
    "weaver",
    "singer",
    "hunter",
    "banker",
    "potter",
    "cook",
    "judge",
    "nurse",
)
RELATIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("city", "lives in", CITIES),
    ("job", "works as a", JOBS),
)

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "th")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "r", "l", "s", "k", "m")


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _names(seed: int, n: int, taken: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """``n`` unique made-up two-word names ("vokar tesmin"), none of them in ``taken``."""
    rng = random.Random(seed)
    values = {v for _, _, vals in RELATIONS for v in vals}
    seen: set[str] = set(taken)
    out: list[str] = []
    while len(out) < n:
        first = _syllable(rng) + _syllable(rng)
        last = _syllable(rng) + _syllable(rng) + rng.choice(("", "", "in", "ar", "ek"))
        name = f"{first} {last}"
        if name in seen or first in values or last in values:
            continue
        seen.add(name)
        out.append(name)
    return tuple(out)


@cache
def people() -> tuple[str, ...]:
    """The N_PEOPLE made-up people the model learns about."""
    return _names(_SEED, N_PEOPLE)


@cache
def held_out_people() -> tuple[str, ...]:
    """People the model never sees in training: the perplexity task's text is about them."""
    return _names(_SEED + 2, HELD_OUT_DOCS, frozenset(people()))


@cache
def facts() -> tuple[dict, ...]:
    """Every fact: {"person", "relation", "prompt", "answer", "choices", "label"}.

    ``prompt + " " + answer`` is the training text; ``choices`` are the answer and
    three distractors of the same relation, in a deterministic shuffled order.
    """
    rng = random.Random(_SEED + 1)
    out: list[dict] = []
    for person in people():
        for rel, template, values in RELATIONS:
            answer = rng.choice(values)
            distractors = rng.sample([v for v in values if v != answer], N_CHOICES - 1)
            choices = [answer, *distractors]
            rng.shuffle(choices)
            out.append(
                {
                    "person": person,
                    "relation": rel,
                    "prompt": f"{person} {template}",
                    "answer": answer,
                    "choices": choices,
                    "label": choices.index(answer),
                }
            )
    return tuple(out)


def training_examples(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, completion) pairs: all facts in shuffled epochs (each fact equally often).

    The completion (the part the loss is computed on) is the answer with its leading
    space and a final newline: ``("dilmim reshirek lives in", " koruna\\n")``.
    No BOS token is involved anywhere.
    """
    rng = random.Random(f"{DATA_VERSION}:train:{seed}")
    all_facts = facts()
    out: list[tuple[str, str]] = []
    order: list[int] = []
    while len(out) < n:
        if not order:
            order = list(range(len(all_facts)))
            rng.shuffle(order)
        f = all_facts[order.pop()]
        out.append((f["prompt"], f" {f['answer']}\n"))
    return out


def calibration_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` full texts from the training distribution (for GPTQ/SmoothQuant calibration)."""
    return [p + c for p, c in training_examples(n, seed=10_000 + seed)]


def tokenizer_corpus() -> list[str]:
    """Texts the BPE tokenizer is trained on: every fact and every answer value."""
    texts = [f["prompt"] + " " + f["answer"] + "\n" for f in facts()]
    for _, _, values in RELATIONS:
        texts.extend(f" {v}\n" for v in values)
    return texts


# --------------------------------------------------------------------------- tasks


def facts_docs() -> list[dict]:
    """Multiple-choice items: the job of every person."""
    items = [f for f in facts() if f["relation"] == "job"]
    return [
        {
            "id": i,
            "question": f["prompt"],
            "choices": list(f["choices"]),
            "label": f["label"],
            "answer": f["answer"],
        }
        for i, f in enumerate(items)
    ]


def recall_docs() -> list[dict]:
    """Free-generation items: the city of every person."""
    items = [f for f in facts() if f["relation"] == "city"]
    return [{"id": i, "question": f["prompt"], "answer": f["answer"]} for i, f in enumerate(items)]


def judged_docs(per_task: int = 24) -> list[dict]:
    """The demo judged set: the first recall and facts questions, alternating, each with
    its reference answer (a judge test double rates answers against it)."""
    recall, facts_ = recall_docs()[:per_task], facts_docs()[:per_task]
    rows = []
    for r, f in zip(recall, facts_, strict=True):
        rows.append(
            {
                "id": f"recall-{r['id']}",
                "prompt": r["question"],
                "reference": r["answer"],
                "category": "recall",
            }
        )
        rows.append(
            {
                "id": f"facts-{f['id']}",
                "prompt": f["question"],
                "reference": f["answer"],
                "category": "facts",
            }
        )
    return rows


def perplexity_docs() -> list[dict]:
    """Held-out text: one sentence of the training sentences' form per document, about a
    person the model never saw (their city, or their job, in turn)."""
    rng = random.Random(_SEED + 3)
    docs = []
    for i, name in enumerate(held_out_people()):
        _, template, values = RELATIONS[i % len(RELATIONS)]
        docs.append({"id": i, "text": f"{name} {template} {rng.choice(values)}\n"})
    return docs


_UTILS_PY = '''"""Loads the qeval demo task data from the JSONL files next to this file.

Generated by qeval.demo.data.write_tasks - do not edit. Relative ``data_files`` are
resolved against this directory, so the tasks work from any current directory.
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(data_files=None, **kwargs):
    import datasets

    splits = {}
    for split, name in (data_files or {}).items():
        path = Path(name)
        if not path.is_absolute():
            path = HERE / path
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)
'''

_FACTS_YAML = f"""# Generated by qeval.demo.data.write_tasks ({TASKS_VERSION}) - do not edit.
task: {FACTS_TASK}
tag:
  - {GROUP}
dataset_path: json
dataset_kwargs:
  data_files:
    test: facts.jsonl
custom_dataset: !function utils.load
output_type: multiple_choice
test_split: test
num_fewshot: 0
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_RECALL_YAML = f"""# Generated by qeval.demo.data.write_tasks ({TASKS_VERSION}) - do not edit.
task: {RECALL_TASK}
tag:
  - {GROUP}
dataset_path: json
dataset_kwargs:
  data_files:
    test: recall.jsonl
custom_dataset: !function utils.load
output_type: generate_until
test_split: test
num_fewshot: 0
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until:
    - "\\n"
  max_gen_toks: 8
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: false
    ignore_punctuation: false
    regexes_to_ignore:
      - "^ +"
metadata:
  version: 1.0
"""


# Rolling loglikelihood of each whole document, as lm-eval's wikitext (no tag: a plain
# mean with the two accuracy tasks would mean nothing). Judged on bits per byte, the
# log-loss: its recovery reads as an accuracy's does (a word perplexity's ratio is the
# exponential of the loss difference times the words per byte, far harsher).
_PERPLEXITY_YAML = f"""# Generated by qeval.demo.data.write_tasks ({TASKS_VERSION}) - do not edit.
task: {PERPLEXITY_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: heldout.jsonl
custom_dataset: !function utils.load
output_type: loglikelihood_rolling
test_split: test
num_fewshot: 0
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
  - metric: word_perplexity
  - metric: byte_perplexity
metadata:
  version: 1.0
"""


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in rows)


def task_files() -> dict[str, str]:
    """File name -> exact content of every file of the demo lm-eval tasks."""
    return {
        "utils.py": _UTILS_PY,
        f"{FACTS_TASK}.yaml": _FACTS_YAML,
        f"{RECALL_TASK}.yaml": _RECALL_YAML,
        f"{PERPLEXITY_TASK}.yaml": _PERPLEXITY_YAML,
        "facts.jsonl": _jsonl(facts_docs()),
        "recall.jsonl": _jsonl(recall_docs()),
        "heldout.jsonl": _jsonl(perplexity_docs()),
        "judged.jsonl": _jsonl(judged_docs()),
    }


def write_tasks(dir: Path) -> list[Path]:
    """Write the lm-eval task files (YAML + JSONL + loader) into ``dir``; returns the paths."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in task_files().items():
        path = dir / name
        path.write_bytes(content.encode("utf-8"))
        written.append(path)
    return written
