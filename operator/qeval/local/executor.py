"""The local executor behind ``qeval run``: the plan's stages, in order, in warm workers.

Everything lands under ``<workdir>/runs/<evalrun>/``: the plan, each stage's input,
result document and log, the run's status (``status.json``, ``objects.yaml``) and its
report (``report/``), the workers' own logs (``workers/``) and ``timeline.json``.
Quantized models go to ``<workdir>/models/<name>`` unless their spec
says otherwise; the result cache lives in ``<workdir>/cache``. A stage whose result is
in the cache is not started as a process: its ``reuse`` runs here and its result
document says so.

Model servers (backend ``vllm-server``) are started and stopped around the stages that
need them (``qeval.local.servers``).
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml
from rich.console import Console
from rich.markup import escape

from qeval.api.common import Resource, now
from qeval.api.documents import SpecError, load_documents
from qeval.api.evalrun import EvalRun
from qeval.api.evalrun_status import EvalRunStatus, Score
from qeval.api.quantizedmodel import QuantizedModel
from qeval.engine import SATISFIED, Decided, StageState, decide
from qeval.local.console import print_summary
from qeval.local.preflight import (
    env_notes,
    local_env,
    localize_evalrun,
    localize_quantized_model,
    preflight,
)
from qeval.local.process import tail, write_input
from qeval.local.servers import LocalEndpoints, Servers, sigterm_as_exit
from qeval.local.worker import Workers
from qeval.plan import (
    AGGREGATE_STAGE,
    EVALUATE_KIND,
    SERVE_KIND,
    Layout,
    PlanError,
    Stage,
    build_plan,
)
from qeval.reasons import PROCESS_DIED
from qeval.stages import KINDS
from qeval.stages.envelope import (
    StageResult,
    StageStatus,
    failed,
    library_versions,
    read_part,
)
from qeval.status import finish_evalrun, quantized_model_status, with_full_results

REUSED_MESSAGE = "reused a cached result: nothing to run"


@dataclass
class RunOutcome:
    run: EvalRun
    status: EvalRunStatus
    run_dir: Path


def load_objects(
    path: Path,
) -> tuple[list[EvalRun], dict[str, QuantizedModel], list[Resource]]:
    """The EvalRuns and QuantizedModels in a file or folder, with local paths made absolute
    (against the file's folder), and every object as read."""
    objects: list[Resource] = load_documents(path)
    base = path if path.is_dir() else path.parent
    runs = [localize_evalrun(o, base) for o in objects if isinstance(o, EvalRun)]
    models = {
        o.name: localize_quantized_model(o, base) for o in objects if isinstance(o, QuantizedModel)
    }
    return runs, models, objects


def load(path: Path) -> tuple[list[EvalRun], dict[str, QuantizedModel]]:
    """The EvalRuns and QuantizedModels in a file or folder, with local paths made absolute."""
    runs, models, _ = load_objects(path)
    if not runs:
        raise SpecError(
            f"{path}: no EvalRun found; qeval run needs one (with the "
            "QuantizedModels it names in the same file or folder)"
        )
    return runs, models


def reuse_stage(stage: Stage, layout: Layout) -> StageResult | None:
    """The stage's result document when its result can be reused (nothing to run), else
    None. Written like a stage's own, with a message saying it was reused."""
    kind = KINDS.get(stage.kind)
    reuse = kind.load_reuse() if kind is not None else None
    if kind is None or reuse is None:
        return None
    t0, started = time.monotonic(), now()
    input_model, _ = kind.load()
    result = reuse(input_model.model_validate(stage.input))
    if result is None:
        return None
    stage_dir = Path(layout.stage_dir(stage.name))
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "input.json").write_text(
        json.dumps({"stage": stage.name, **stage.input}, indent=2) + "\n"
    )
    (stage_dir / "log.txt").write_text("reused: nothing to run\n")
    doc = StageResult(
        stage=stage.name,
        kind=stage.kind,
        status=StageStatus.SUCCEEDED,
        message=REUSED_MESSAGE,
        started_at=started,
        finished_at=now(),
        wall_seconds=round(time.monotonic() - t0, 3),
        versions=library_versions(),
        result=result.model_dump(by_alias=True, exclude_none=True, mode="json"),
    )
    doc.write(Path(layout.result_path(stage.name)))
    return doc


def run_stage(
    stage: Stage, layout: Layout, console: Console, label: str, workers: Workers
) -> StageResult:
    """Run one stage in its kind's warm worker; return its result document (written here
    if the stage took its worker down)."""
    input_path = write_input(stage, layout)
    stage_dir, result_path = input_path.parent, Path(layout.result_path(stage.name))
    result_path.unlink(missing_ok=True)
    log_path = stage_dir / "log.txt"
    t0 = time.monotonic()
    with console.status(f"{label} {stage.name}") as spinner:
        died = workers.run(
            stage.kind,
            input_path,
            result_path,
            log_path,
            tick=lambda: spinner.update(
                f"{label} {stage.name}  {time.monotonic() - t0:5.0f} s  "
                f"[dim]{escape(tail(log_path, 1)[:80])}[/dim]"
            ),
        )
    if died is None and result_path.exists():
        return StageResult.load(result_path)
    code, log = (died.returncode, tail(log_path) or tail(died.worker_log)) if died else (0, "")
    doc = failed(
        stage.name,
        stage.kind,
        PROCESS_DIED,
        f"exit code {code} and no result document; log tail:\n{log}",
        wall_seconds=round(time.monotonic() - t0, 3),
    )
    doc.write(result_path)
    return doc


def scores_line(doc: StageResult) -> str:
    """An evaluation's primary scores, as the stage's line shows them."""
    result = doc.result or {}
    scores = [read_part(Score, s) for s in result.get("scores", [])]
    shown = [s for s in scores if s.primary] or scores
    return "  ".join(
        f"{s.task} {s.metric} {s.value:.4f}" + (f" ±{s.stderr:.4f}" if s.stderr else "")
        for s in shown
    )


def prepare(
    run: EvalRun, models: dict[str, QuantizedModel], workdir: Path
) -> tuple[Layout, list[Stage]]:
    """Preflight and plan: everything ``qeval run`` decides before it writes anything
    (raises SpecError naming every problem)."""
    preflight(run, models)
    layout = Layout(
        PurePosixPath((workdir / "runs" / run.name).resolve()),
        PurePosixPath((workdir / "models").resolve()),
        PurePosixPath((workdir / "cache").resolve()),
        endpoints=LocalEndpoints(),
    )
    try:
        return layout, build_plan(run, models, layout)
    except PlanError as e:
        raise SpecError(str(e)) from None


def execute_run(
    run: EvalRun,
    models: dict[str, QuantizedModel],
    workdir: Path,
    console: Console,
    use_cache: bool = True,
) -> RunOutcome:
    """Plan and execute one EvalRun; write and return its status and report.

    ``use_cache=False`` (``--no-cache``) recomputes every result, as ``spec.cache: false``
    does, and refreshes the cache with the new results.
    """
    if not use_cache:
        run = run.model_copy(update={"spec": run.spec.model_copy(update={"cache": False})})
    layout, stages = prepare(run, models, workdir)
    for note in env_notes(run):
        console.print(escape(note))
    run_dir = Path(layout.run_root)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "plan.json").write_text(
        json.dumps(
            [{"name": s.name, "kind": s.kind, "needs": list(s.needs)} for s in stages], indent=2
        )
    )

    started = now()
    docs = run_stages(stages, layout, console)

    agg = docs.get(AGGREGATE_STAGE)
    aggregate = (
        with_full_results(read_part(EvalRunStatus, agg.result))  # the table, from disk
        if agg and agg.status == StageStatus.SUCCEEDED and agg.result
        else None
    )
    in_order = [docs[s.name] for s in stages if s.name in docs]
    status = finish_evalrun(aggregate, in_order, stages, started, now())
    made = [
        models[s.produces].model_copy(update={"status": quantized_model_status(docs[s.name])})
        for s in stages
        if s.produces and docs[s.name].status != StageStatus.SKIPPED
    ]
    write_status(run.model_copy(update={"status": status}), made, run_dir)
    print_summary(console, run, status, run_dir)
    try:
        report = write_run_report(run, status, run_dir)
    except Exception as e:  # the results stand without their report: say so, go on
        console.print(f"[red]report not written[/red]: {type(e).__name__}: {e}")
    else:
        if report:
            console.print(f"report: {report}")
    return RunOutcome(run, status, run_dir)


def run_stages(stages: list[Stage], layout: Layout, console: Console) -> dict[str, StageResult]:
    """Every stage's result document. The engine (``qeval.engine``) says which stages may run
    and decides the skipped ones and the servers that are done; here each stage that may run
    runs (or is reused) in plan order, one at a time, in its kind's warm worker
    (``qeval.local.worker``), and a server is started right before the first stage that
    needs it runs, and stopped when the engine says so. ``timeline.json`` says which worker
    (pid) ran each stage and when the stage was queued and done (seconds from the start),
    beside its own wall time: the difference is the wait for its worker and the hand-over."""
    docs: dict[str, StageResult] = {}
    labels = {s.name: f"[{i}/{len(stages)}]" for i, s in enumerate(stages, 1)}
    servers = Servers(stages, layout)
    workers = Workers(Path(layout.run_root) / "workers", local_env(stages))
    timeline: list[dict[str, object]] = []
    t_run = time.monotonic()

    def record(stage: str, doc: StageResult, reused: bool = False) -> None:
        docs[stage] = doc
        label = labels[stage]
        took = f"{doc.wall_seconds:.1f} s" if doc.wall_seconds is not None else ""
        if reused:
            console.print(f"{label} {stage}: [cyan]reused[/cyan] (cached result)")
        elif doc.status == StageStatus.SKIPPED:
            console.print(f"{label} {stage}: skipped ({escape(doc.message or '')})")
        elif doc.status == StageStatus.SUCCEEDED:
            what = f": {doc.message}" if doc.kind == SERVE_KIND else f" in {took}"
            if doc.kind == EVALUATE_KIND:
                what += f": {scores_line(doc)}"
            console.print(f"{label} {stage}: [green]succeeded[/green]{escape(what)}")
        else:
            console.print(
                f"{label} {stage}: [red]{doc.status}[/red] ({escape(str(doc.reason))}) "
                f"{took}\n    {escape(doc.message or '')}\n    log: "
                f"{escape(str(layout.stage_dir(stage)))}/log.txt"
            )

    def next_stage(decided: Decided) -> Stage | None:
        """The first stage in plan order that may run, or would once its servers are up;
        one whose servers are all up already before any other (a server is up no longer
        than its stages need, and two at once only where a stage needs both)."""
        runnable = [
            stage
            for stage in stages
            if not stage.serves
            and (
                decided.states[stage.name] == StageState.READY
                or decided.states[stage.name] == StageState.WAITING
                and all(
                    decided.states[n] in SATISFIED
                    or (n in servers.stages and decided.states[n] == StageState.READY)
                    for n in stage.needs
                )
            )
        ]
        served = [
            s
            for s in runnable
            if any(n in servers.running for n in s.needs)
            and all(n in servers.running for n in s.needs if n in servers.stages)
        ]
        return next(iter(served or runnable), None)

    def serve(stage: Stage) -> bool:
        """Make sure every server ``stage`` needs is up; False if one is not (recorded)."""
        names = [n for n in stage.needs if n in servers.stages]
        for name in names:
            if name in servers.running:
                problem = servers.check(name)
            else:
                console.print(f"{labels[name]} {name}: starting (for {stage.name})")
                problem = servers.start(servers.stages[name], console, labels[name])
                if problem is None:
                    console.print(
                        f"{labels[name]} {name}: ready at {servers.running[name].url} in "
                        f"{time.monotonic() - servers.running[name].t0:.1f} s"
                    )
            if problem is not None:
                record(name, problem)
                return False
        for name in names:
            servers.running[name].served.append(stage.name)
        return True

    with ExitStack() as stack:
        if servers.stages:
            stack.enter_context(sigterm_as_exit())
        try:
            while True:
                underway = dict.fromkeys(servers.running, StageState.SERVING)
                decided = decide(stages, docs, underway, now=now())
                for name in decided.new:  # skipped, or a server whose users are done
                    if name in servers.running:
                        record(name, servers.stop(name))
                    else:
                        decided.docs[name].write(Path(layout.result_path(name)))
                        record(name, decided.docs[name])
                if decided.new:
                    continue
                if (stage := next_stage(decided)) is None:
                    break
                if (reused := reuse_stage(stage, layout)) is not None:
                    record(stage.name, reused, reused=True)
                elif serve(stage):  # else a server it needs did not come up: it is skipped
                    # the kinds still to run import their libraries meanwhile, on spare cores
                    workers.warm_up(
                        s.kind
                        for s in stages
                        if not s.serves and s.name not in docs and s.name not in servers.running
                    )
                    queued, pid = time.monotonic(), workers.pid(stage.kind)
                    doc = run_stage(stage, layout, console, labels[stage.name], workers)
                    timeline.append(
                        {
                            "stage": stage.name,
                            "kind": stage.kind,
                            "pid": pid,
                            "queuedSeconds": round(queued - t_run, 3),
                            "doneSeconds": round(time.monotonic() - t_run, 3),
                            "wallSeconds": doc.wall_seconds,
                        }
                    )
                    record(stage.name, doc)
        finally:
            workers.stop_all()
            servers.stop_all()
            (Path(layout.run_root) / "timeline.json").write_text(json.dumps(timeline, indent=2))
    return docs


def write_run_report(run: EvalRun, status: EvalRunStatus, run_dir: Path) -> Path | None:
    """The report with the final status (the aggregate stage wrote one without the final
    phase and the quantize failures); None when there are no results to report."""
    if not status.scores:
        return None
    from qeval.report import Run, write_report

    report = Run(
        name=run.name,
        baseline=run.spec.baseline.name,
        status=status,
        threshold=run.spec.recovery_threshold,
    )
    return write_report(report, run_dir / "report")[1]


def write_status(run: EvalRun, quantized: list[QuantizedModel], run_dir: Path) -> None:
    """status.json (the EvalRun status) and every object with its status, as YAML."""
    assert run.status is not None
    (run_dir / "status.json").write_text(json.dumps(run.status.dump(), indent=2) + "\n")
    objects = [run.dump(), *(qm.dump() for qm in quantized)]
    (run_dir / "objects.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))


def run_file(
    path: Path, workdir: Path, console: Console, use_cache: bool = True
) -> list[RunOutcome]:
    """``qeval run PATH``: every EvalRun in the file or folder, one after the other."""
    runs, models = load(path)
    return [execute_run(run, models, workdir, console, use_cache) for run in runs]
