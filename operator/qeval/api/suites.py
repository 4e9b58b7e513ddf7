"""Task suites: the published studies' benchmark sets as named presets (data, one place).

A suite names lm-eval tasks with the shot counts and the metric the studies and the
Open LLM Leaderboards used, plus how the suite's single score is computed:

* ``openllm-v1`` (leaderboard v1, 2023-24): the plain average of six task scores.
* ``openllm-v1-llama``: the Red Hat / Neural Magic model cards' v1 setup for instruct
  models: Meta's generative ARC-Challenge (0-shot), GSM8K chain-of-thought (8-shot), MMLU
  (5-shot) and MMLU chain-of-thought (0-shot) from lm-eval's ``llama3`` folder, plus
  HellaSwag, Winogrande and TruthfulQA; plain average; run with the chat template and
  multi-turn few-shot (``spec.prompt``).
* ``openllm-v2`` (leaderboard v2, 2024-25): each task rescaled between its random-guess
  baseline and 1 (BBH and MuSR per subtask, then averaged), negative values clipped to 0,
  then averaged over the six tasks. The leaderboard shows the result times 100.
* ``openllm-v2-chat``: the same tasks and normalisation with the chat template and
  multi-turn few-shot, as the leaderboard ran instruct models.
* ``code``: HumanEval and HumanEval+ (pass@1). Their scoring runs model-written code, so
  an EvalRun may name them only with ``allowCodeExecution: true``.
* ``demo``: qeval's two offline tasks, for machines without a model hub.

``expand_tasks`` turns ``spec.suites`` plus ``spec.tasks`` into the concrete task list
both executors run; ``qeval.results.suites`` computes the suite scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from qeval.api.evalrun import Task


class SuiteName(StrEnum):
    OPENLLM_V1 = "openllm-v1"
    OPENLLM_V1_LLAMA = "openllm-v1-llama"
    OPENLLM_V2 = "openllm-v2"
    OPENLLM_V2_CHAT = "openllm-v2-chat"
    CODE = "code"
    DEMO = "demo"


@dataclass(frozen=True)
class SuiteTask:
    """One task of a suite and how it enters the suite's score.

    ``metric`` is ``name`` or ``name,filter`` (lm-eval's key). For the v2 normalisation,
    ``baseline`` is the random-guess score (1 / number of choices); ``subtasks`` maps each
    subtask to its own baseline when the task is normalised per subtask and then averaged;
    ``metrics`` lists several metrics whose mean is the task's score (IFEval).
    """

    name: str
    num_fewshot: int | None
    metric: str
    baseline: float = 0.0
    subtasks: Mapping[str, float] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    name: SuiteName
    title: str
    tasks: tuple[SuiteTask, ...]
    scoring: Literal["mean", "normalized-mean"] = "mean"
    runs_code: bool = False
    # The prompt settings the published runs used (spec.prompt, wire names): a run with the
    # suite must set them, since one prompt format holds for every task of a run.
    prompt: Mapping[str, bool] = field(default_factory=dict)


# The model cards' instruct-model settings (lm-eval --apply_chat_template --fewshot_as_multiturn).
CHAT_MULTITURN = MappingProxyType({"chatTemplate": True, "fewshotAsMultiturn": True})


def _choices(prefix: str, counts: Mapping[str, int]) -> Mapping[str, float]:
    """Random-guess baselines (1 / choices) of the subtasks ``prefix + name``."""
    return MappingProxyType({f"{prefix}{name}": 1 / n for name, n in counts.items()})


# Number of answer choices per subtask: the leaderboard's normalisation table (it matches
# the doc_to_choice lists of lm-eval's leaderboard/bbh_mc and musr tasks).
BBH_CHOICES = {
    "boolean_expressions": 2,
    "causal_judgement": 2,
    "date_understanding": 6,
    "disambiguation_qa": 3,
    "formal_fallacies": 2,
    "geometric_shapes": 11,
    "hyperbaton": 2,
    "logical_deduction_five_objects": 5,
    "logical_deduction_seven_objects": 7,
    "logical_deduction_three_objects": 3,
    "movie_recommendation": 6,
    "navigate": 2,
    "object_counting": 19,
    "penguins_in_a_table": 5,
    "reasoning_about_colored_objects": 18,
    "ruin_names": 6,
    "salient_translation_error_detection": 6,
    "snarks": 2,
    "sports_understanding": 2,
    "temporal_sequences": 4,
    "tracking_shuffled_objects_five_objects": 5,
    "tracking_shuffled_objects_seven_objects": 7,
    "tracking_shuffled_objects_three_objects": 3,
    "web_of_lies": 2,
}
MUSR_CHOICES = {"murder_mysteries": 2, "object_placements": 5, "team_allocation": 3}

# Leaderboard v2's tasks (both of its suites).
OPENLLM_V2_TASKS = (
    SuiteTask(
        "leaderboard_bbh",
        3,
        "acc_norm",
        subtasks=_choices("leaderboard_bbh_", BBH_CHOICES),
    ),
    SuiteTask("leaderboard_gpqa", 0, "acc_norm", baseline=0.25),
    SuiteTask(
        "leaderboard_ifeval",
        0,
        "prompt_level_strict_acc",
        metrics=("prompt_level_strict_acc", "inst_level_strict_acc"),
    ),
    SuiteTask("leaderboard_math_hard", 4, "exact_match"),
    SuiteTask("leaderboard_mmlu_pro", 5, "acc", baseline=0.1),
    SuiteTask(
        "leaderboard_musr",
        0,
        "acc_norm",
        subtasks=_choices("leaderboard_musr_", MUSR_CHOICES),
    ),
)

SUITES: Mapping[SuiteName, Suite] = MappingProxyType(
    {
        SuiteName.OPENLLM_V1: Suite(
            SuiteName.OPENLLM_V1,
            "Open LLM Leaderboard v1",
            (
                SuiteTask("arc_challenge", 25, "acc_norm"),
                SuiteTask("gsm8k", 5, "exact_match,strict-match"),
                SuiteTask("hellaswag", 10, "acc_norm"),
                SuiteTask("mmlu", 5, "acc"),
                SuiteTask("truthfulqa_mc2", 0, "acc"),
                SuiteTask("winogrande", 5, "acc"),
            ),
        ),
        SuiteName.OPENLLM_V1_LLAMA: Suite(
            SuiteName.OPENLLM_V1_LLAMA,
            "Open LLM Leaderboard v1, Meta's instruct-model tasks (the model cards' setup)",
            (
                SuiteTask("arc_challenge_llama", 0, "exact_match,strict_match"),
                SuiteTask("gsm8k_llama", 8, "exact_match,strict_match"),
                SuiteTask("hellaswag", 10, "acc_norm"),
                SuiteTask("mmlu_llama", 5, "exact_match,strict_match"),
                SuiteTask("mmlu_cot_llama", 0, "exact_match,strict_match"),
                SuiteTask("truthfulqa_mc2", 0, "acc"),
                SuiteTask("winogrande", 5, "acc"),
            ),
            prompt=CHAT_MULTITURN,
        ),
        SuiteName.OPENLLM_V2: Suite(
            SuiteName.OPENLLM_V2,
            "Open LLM Leaderboard v2",
            OPENLLM_V2_TASKS,
            scoring="normalized-mean",
        ),
        SuiteName.OPENLLM_V2_CHAT: Suite(
            SuiteName.OPENLLM_V2_CHAT,
            "Open LLM Leaderboard v2, as it ran instruct models (chat template)",
            OPENLLM_V2_TASKS,
            scoring="normalized-mean",
            prompt=CHAT_MULTITURN,
        ),
        SuiteName.CODE: Suite(
            SuiteName.CODE,
            "Code generation (HumanEval, HumanEval+)",
            (
                SuiteTask("humaneval", 0, "pass@1,create_test"),
                SuiteTask("humaneval_plus", 0, "pass@1,create_test"),
            ),
            runs_code=True,
        ),
        SuiteName.DEMO: Suite(
            SuiteName.DEMO,
            "qeval demo (offline)",
            (
                SuiteTask("qeval_demo_facts", None, "acc"),
                SuiteTask("qeval_demo_recall", None, "exact_match"),
            ),
        ),
    }
)

# Suites run with the chat template and multi-turn few-shot (the model cards' setup).
CHAT_SUITES = tuple(str(s.name) for s in SUITES.values() if s.prompt == CHAT_MULTITURN)

# lm-eval tasks whose scoring executes model-written code (lm-eval marks them unsafe_code).
CODE_TASK_PATTERN = r"^(humaneval|mbpp|instructhumaneval)"
CODE_SUITES = tuple(str(s.name) for s in SUITES.values() if s.runs_code)


def suite_tasks(name: str | SuiteName) -> list[Task]:
    """The concrete tasks of one suite, as EvalRun task entries."""
    from qeval.api.evalrun import Task

    return [
        Task(name=t.name, num_fewshot=t.num_fewshot, metric=t.metric)
        for t in SUITES[SuiteName(name)].tasks
    ]


def expand_tasks(suites: Iterable[str | SuiteName], tasks: Iterable[Task]) -> list[Task]:
    """Every task an EvalRun evaluates: the suites' tasks in order, then the listed tasks.

    A listed task with the name of a suite task replaces it in place (to set a ``limit``
    for a smoke run, say); a task in two suites is evaluated once.
    """
    out: dict[str, Task] = {}
    for suite in suites:
        for task in suite_tasks(suite):
            out.setdefault(task.name, task)
    for task in tasks:
        out[task.name] = task
    return list(out.values())
