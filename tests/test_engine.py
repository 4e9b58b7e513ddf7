"""The DAG engine both executors run a plan by (``qeval.engine``): which stage may run, which
is skipped and why, when a server is done, and the progress count."""

from __future__ import annotations

from pathlib import PurePosixPath

from rich.console import Console

from qeval.engine import StageState, decide, progress
from qeval.k8s.reconcile import Observed, stage_states
from qeval.local.executor import run_stages
from qeval.plan import Layout, Stage
from qeval.stages.envelope import StageResult, StageStatus, failed

S, F, K = StageState.SUCCEEDED, StageState.FAILED, StageState.SKIPPED
T0 = "2026-12-03T12:00:00Z"


def ok(name: str) -> StageResult:
    return StageResult(stage=name, kind="x", status=StageStatus.SUCCEEDED)


CHAIN = [
    Stage("a", "x", {}),
    Stage("b", "x", {}, ("a",)),
    Stage("c", "x", {}, ("b",)),
    Stage("d", "x", {}),
    Stage("report", "aggregate", {}, ("c", "d"), always=True),
]


def test_a_failure_skips_what_needs_it_transitively_with_one_reason_and_message() -> None:
    d = decide(CHAIN, {"a": failed("a", "x", "Boom", "no")}, now=T0)
    assert [d.states[n] for n in "abcd"] == [F, K, K, StageState.READY]
    assert d.docs["b"].reason == d.docs["c"].reason == "DependencyFailed"
    assert d.docs["b"].message == "not run: a did not succeed"
    assert d.docs["c"].message == "not run: b did not succeed"  # skipped counts as broken
    assert d.docs["b"].finished_at == T0
    assert d.new == ("b", "c")  # decided now, for the executor to record
    both = [*CHAIN[:2], Stage("e", "x", {}, ("a", "b"))]
    assert decide(both, {"a": failed("a", "x", "Boom", "no")}).docs["e"].message == (
        "not run: a, b did not succeed"
    )
    # The aggregate always runs, once every stage it needs ended (whatever the outcome).
    assert d.states["report"] == StageState.WAITING  # d has not ended
    d = decide(CHAIN, {**d.docs, "d": ok("d")})
    assert d.states["report"] == StageState.READY and d.new == ()


def test_a_stage_waits_for_its_needs_and_a_ready_server_satisfies_them() -> None:
    plan = [
        Stage("quantize", "quantize", {}, produces="w4"),
        Stage("serve", "serve", {}, ("quantize",)),
        Stage("evaluate", "evaluate", {}, ("serve",)),
    ]
    d = decide(plan, {})
    assert [d.states[s.name] for s in plan] == [StageState.READY, "Waiting", "Waiting"]
    d = decide(plan, {"quantize": ok("quantize")}, {"serve": StageState.RUNNING})
    assert d.states["evaluate"] == StageState.WAITING  # the server is starting
    d = decide(plan, {"quantize": ok("quantize")}, {"serve": StageState.SERVING})
    assert d.states["evaluate"] == StageState.READY
    # External states (a QuantizedModel's own Job) stand for the stage's.
    d = decide(plan, {}, external={"quantize": F})
    assert d.states["serve"] == K and d.states["evaluate"] == K


def test_a_server_is_done_when_every_stage_that_needs_it_ended() -> None:
    plan = [
        Stage("first", "x", {}),  # a stage before it that is no server changes nothing
        Stage("serve", "serve", {}),
        Stage("e1", "evaluate", {}, ("serve",)),
        Stage("e2", "evaluate", {}, ("serve",)),
    ]
    up = {"serve": StageState.SERVING}
    d = decide(plan, {"e1": ok("e1")}, up, now=T0)
    assert d.states["serve"] == StageState.SERVING and d.new == ()
    ended = {"e1": ok("e1"), "e2": failed("e2", "x", "Boom", "no")}
    d = decide(plan, ended, up, now=T0, started={"serve": T0})
    assert d.states["serve"] == S and d.new == ("serve",)
    assert d.docs["serve"].message == "served e1, e2" and d.docs["serve"].started_at == T0
    # Never started: every stage that needed it ended without it (reused, or skipped).
    d = decide(plan, {"e1": ok("e1"), "e2": ok("e2")}, now=T0)
    assert d.states["serve"] == S
    assert d.docs["serve"].message == "not started: e1, e2 had nothing to run on it"


def test_the_demo_model_is_built_only_for_stages_that_still_need_it() -> None:
    plan = [
        Stage("demo-model", "demo-model", {}, for_users=True),
        Stage("evaluate", "evaluate", {}, ("demo-model",)),
    ]
    assert decide(plan, {}).states["demo-model"] == StageState.READY
    # Its user ended without it (a reused result): it is not built.
    d = decide(plan, {"evaluate": ok("evaluate")}, now=T0)
    assert d.states["demo-model"] == S and d.new == ("demo-model",)
    # Already building: a Job or process underway is left to finish.
    d = decide(plan, {"evaluate": ok("evaluate")}, {"demo-model": StageState.RUNNING})
    assert d.states["demo-model"] == StageState.RUNNING and d.new == ()
    # ... and what comes after it in the plan is still decided (a server whose users ended).
    served = [
        plan[0],
        Stage("serve", "serve", {}, ("demo-model",)),
        Stage("e", "x", {}, ("serve",)),
    ]
    underway = {"demo-model": StageState.RUNNING, "serve": StageState.SERVING}
    d = decide(served, {"e": ok("e")}, underway)
    assert d.states["demo-model"] == StageState.RUNNING and d.new == ("serve",)
    # A stage that is not only for its users runs whatever they did.
    plain = [Stage("demo-model", "demo-model", {}), plan[1]]
    assert decide(plain, {"evaluate": ok("evaluate")}).states["demo-model"] == StageState.READY


def test_progress_counts_the_runs_own_stages_in_both_executors() -> None:
    plan = [
        Stage("quantize-w4", "quantize", {}, produces="w4"),  # the QuantizedModel's
        Stage("evaluate-w4", "evaluate", {}, ("quantize-w4",)),
        Stage("aggregate", "aggregate", {}, ("evaluate-w4",), always=True),
    ]
    assert progress(plan, {"quantize-w4": S}) == "0/2"
    assert progress(plan, {"quantize-w4": S, "evaluate-w4": S}) == "1/2"
    assert progress(plan, {"quantize-w4": S, "evaluate-w4": S, "aggregate": S}) == "2/2"


def test_both_executors_skip_the_same_stages_saying_the_same(tmp_path) -> None:
    """The local executor (processes) and the operator's reconcile (observed Jobs) decide
    a failed plan alike: one engine, not two copies of its rules."""
    plan = [
        Stage("broken", "no-such-kind", {}),  # its process dies: no worker for the kind
        Stage("after", "no-such-kind", {}, ("broken",)),
        Stage("later", "no-such-kind", {}, ("after",)),
    ]
    layout = Layout(PurePosixPath(tmp_path), PurePosixPath(tmp_path / "models"))
    local = run_stages(plan, layout, Console(quiet=True))
    assert local["broken"].reason == "ProcessDied"
    _, operator = stage_states(plan, Observed(results={"broken": local["broken"]}), {}, T0)
    for name in ("after", "later"):
        mine, theirs = local[name], operator[name]
        assert (mine.status, mine.reason, mine.message) == (
            theirs.status,
            theirs.reason,
            theirs.message,
        )
        assert (
            StageResult.load(tmp_path / "stages" / name / "result.json").reason
            == "DependencyFailed"
        )
