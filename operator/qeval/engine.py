"""The DAG engine: which stage may run, which is skipped, when a server is done, and the
progress count, decided once for both executors.

Pure: the input is what an executor observed of each stage (the result documents of the
stages that ended, the stages it has underway, the states of stages someone else runs),
the output is every stage's state and the documents the rules themselves decide (a stage
skipped because a stage it needs did not succeed; a server whose users are all done).
``qeval.local.executor`` and ``qeval.k8s.reconcile`` only observe and act on the answer:
the first runs the Ready stages one after another as processes, the second creates their
Jobs and servers. So both run a plan the same way and say the same things about it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from qeval.plan import Stage
from qeval.reasons import DEPENDENCY_FAILED
from qeval.stages.envelope import StageResult, StageStatus


class StageState(StrEnum):
    WAITING = "Waiting"  # for what it needs
    READY = "Ready"  # to be started now
    RUNNING = "Running"  # underway (its process, its Job, its server starting)
    SERVING = "Serving"  # a server that is ready: the stages that need it can start
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


TERMINAL = frozenset({StageState.SUCCEEDED, StageState.FAILED, StageState.SKIPPED})
SATISFIED = frozenset({StageState.SUCCEEDED, StageState.SERVING})  # what a need must be
BROKEN = frozenset({StageState.FAILED, StageState.SKIPPED})  # a need that makes a stage skip


@dataclass(frozen=True)
class Decided:
    """Every stage's state, in plan order, and the documents of the stages that ended
    (those observed and those the rules decided now)."""

    states: dict[str, StageState]
    docs: dict[str, StageResult]
    new: tuple[str, ...]  # stages whose document the rules decided now (to record)


def skipped(stage: Stage, broken: Iterable[str], now: str | None = None) -> StageResult:
    """The document of a stage not run because ``broken`` (stages it needs) did not succeed."""
    return StageResult(
        stage=stage.name,
        kind=stage.kind,
        status=StageStatus.SKIPPED,
        reason=DEPENDENCY_FAILED,
        message=f"not run: {', '.join(broken)} did not succeed",
        finished_at=now,
    )


def users(stages: Iterable[Stage], name: str) -> list[str]:
    """The stages that need ``name``, in plan order."""
    return [s.name for s in stages if name in s.needs]


def decide(
    stages: list[Stage],
    ended: Mapping[str, StageResult],
    underway: Mapping[str, StageState] | None = None,
    *,
    external: Mapping[str, StageState] | None = None,
    now: str | None = None,
    started: Mapping[str, str] | None = None,
) -> Decided:
    """Every stage's state from what was observed.

    ``ended``: the result documents of stages that ended. ``underway``: stages started and
    not ended (Running, or Serving for a ready server). ``external``: the states of stages
    run by someone else (a QuantizedModel's own Job). ``started``: when a server started,
    for its document. A stage runs when every stage it needs succeeded (or serves); an
    ``always`` stage when every one ended; a stage is skipped when one it needs failed or
    was skipped. A stage that is only ``for_users`` (a server, the demo model) has succeeded
    once every stage that needs it ended: a server's document says whom it served, or (for
    either) that none of them needed it started.
    """
    underway, external, started = underway or {}, external or {}, started or {}
    states: dict[str, StageState] = {}
    docs: dict[str, StageResult] = {}
    new: list[str] = []
    for stage in stages:
        if stage.name in external:
            states[stage.name] = external[stage.name]
        elif (doc := ended.get(stage.name)) is not None:
            states[stage.name], docs[stage.name] = StageState(str(doc.status)), doc
        elif stage.name in underway:
            states[stage.name] = underway[stage.name]
        elif (broken := [n for n in stage.needs if states[n] in BROKEN]) and not stage.always:
            states[stage.name], docs[stage.name] = StageState.SKIPPED, skipped(stage, broken, now)
            new.append(stage.name)
        elif all(states[n] in (TERMINAL if stage.always else SATISFIED) for n in stage.needs):
            states[stage.name] = StageState.READY
        else:
            states[stage.name] = StageState.WAITING
    for stage in stages:  # a stage that is only for its users is done when they are
        served = users(stages, stage.name)
        if not (stage.serves or stage.for_users) or states[stage.name] in TERMINAL or not served:
            continue
        if not stage.serves and stage.name in underway:
            continue  # a Job or process underway finishes
        if all(states[u] in TERMINAL for u in served):
            was_up = stage.name in underway
            states[stage.name] = StageState.SUCCEEDED
            docs[stage.name] = StageResult(
                stage=stage.name,
                kind=stage.kind,
                status=StageStatus.SUCCEEDED,
                message=f"served {', '.join(served)}"
                if was_up
                else f"not started: {', '.join(served)} had nothing to run on it",
                started_at=started.get(stage.name),
                finished_at=now,
            )
            new.append(stage.name)
    return Decided(states, docs, tuple(new))


def own(stages: Iterable[Stage]) -> list[Stage]:
    """The stages a run counts as its own: not those that make a QuantizedModel (those are
    the model's, with a status of their own, whichever executor runs them)."""
    return [s for s in stages if s.produces is None]


def progress(stages: Iterable[Stage], states: Mapping[str, StageState | str]) -> str:
    """``succeeded/total`` over the run's own stages: the same count in both executors."""
    mine = own(stages)
    done = sum(states.get(s.name) == StageState.SUCCEEDED for s in mine)
    return f"{done}/{len(mine)}"
