"""``qeval``: run a study locally, run one stage, validate specs, generate CRDs."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _console() -> Console:
    # Off a terminal (CI, logs) rich would wrap the results table at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=200, highlight=False)


def cmd_run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from qeval.api.documents import SpecError
    from qeval.local.executor import run_file

    console = _console()
    try:
        outcomes = run_file(args.path, args.workdir, console, use_cache=not args.no_cache)
    except SpecError as e:  # user input: escaped (a path may hold "[...]"), no traceback
        console.print(f"[red]invalid spec[/red]\n{escape(str(e))}", highlight=False, soft_wrap=True)
        return EXIT_INVALID
    return EXIT_OK if all(o.status.phase == "Succeeded" for o in outcomes) else EXIT_FAILED


def cmd_report(args: argparse.Namespace) -> int:
    from qeval.report import load_run, write_report

    try:
        run = load_run(args.run_dir)
    except (OSError, ValueError) as e:
        print(f"cannot read the run: {e}", file=sys.stderr)
        return EXIT_INVALID
    for path in write_report(run, args.out or args.run_dir / "report"):
        print(path)
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Each file or folder as ``qeval run`` reads it, with the same checks as its preflight
    (less those that depend on this machine: installed backends, cluster volumes)."""
    from qeval.api.documents import SpecError
    from qeval.local.executor import load_objects
    from qeval.local.preflight import problems

    code = EXIT_OK
    for path in args.paths:
        try:
            runs, models, objects = load_objects(path)
            found = [p for run in runs for p in problems(run, models, local=False)]
            if found:
                raise SpecError("\n".join(found))
        except SpecError as e:
            print(e, file=sys.stderr)
            code = EXIT_INVALID
            continue
        for obj in objects:
            print(f"{path}: {obj.kind} {obj.name}: valid")  # type: ignore[attr-defined]
    return code


def _stage_input(arg: Path, output: Path) -> Path:
    """``--input env:NAME`` (how a stage Job passes it): the document, saved beside the result."""
    if not str(arg).startswith("env:"):
        return arg
    path = output.parent / "input.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(os.environ.get(str(arg).removeprefix("env:"), ""))
    return path


def cmd_stage(args: argparse.Namespace) -> int:
    from qeval.stages import KINDS
    from qeval.stages.envelope import EXIT_RECORDED_FAILURE, StageStatus, execute, outcome_line

    input_model, run = KINDS[args.command].load()
    input_path = _stage_input(args.input, args.output)
    doc = execute(args.command, input_model, run, input_path, args.output)
    print(outcome_line(doc))
    if os.environ.get("QEVAL_RESULT_CONFIGMAP"):  # a stage Job: hand the result to the operator
        from qeval.k8s.publish import publish

        print(f"published ConfigMap {publish(doc)}")
    return EXIT_OK if doc.status == StageStatus.SUCCEEDED else EXIT_RECORDED_FAILURE


def cmd_serve(args: argparse.Namespace) -> int:
    """Become the model's server (``vllm serve``); returns only if it cannot start."""
    from qeval.stages.serve import ServeInput, run

    text = (
        os.environ.get(str(args.input).removeprefix("env:"), "")
        if str(args.input).startswith("env:")
        else args.input.read_text()
    )
    try:
        doc = json.loads(text)
        doc.pop("stage", None)  # the executors' label of the input
        inp = ServeInput.read(doc)
    except (ValueError, AttributeError) as e:
        print(f"serve: invalid input {args.input}: {e}", file=sys.stderr)
        return EXIT_INVALID
    run(inp)


def cmd_operator(args: argparse.Namespace) -> int:
    import logging

    from qeval.k8s.handlers import run

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    run()
    return EXIT_OK


def cmd_demo_model(args: argparse.Namespace) -> int:
    if args.input and args.output:
        return cmd_stage(args)
    from qeval.demo.model import demo_model_path

    print(demo_model_path())
    return EXIT_OK


def cmd_crds(args: argparse.Namespace) -> int:
    from qeval.api.crd import stale_crds, write_crds

    if args.check:
        stale = stale_crds(args.out)
        for path in stale:
            print(f"{path} differs from the models; run `make crds`", file=sys.stderr)
        return EXIT_FAILED if stale else EXIT_OK
    for path in write_crds(args.out):
        print(path)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qeval", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an EvalRun (and its QuantizedModels) on this machine")
    run.add_argument("path", type=Path, help="a YAML file or a folder of them")
    run.add_argument(
        "--workdir",
        type=Path,
        default=Path("qeval-runs"),
        help="where runs and quantized models go (default ./qeval-runs)",
    )
    run.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute every result instead of reusing cached ones (and refresh the cache)",
    )
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser("report", help="write a run's report (Markdown, HTML, PNG figures)")
    rep.add_argument("run_dir", type=Path, help="a run folder, e.g. qeval-runs/runs/demo")
    rep.add_argument("--out", type=Path, help="where to write it (default RUN_DIR/report)")
    rep.set_defaults(func=cmd_report)

    val = sub.add_parser("validate", help="check QuantizedModel/EvalRun YAML against the API")
    val.add_argument("paths", type=Path, nargs="+")
    val.set_defaults(func=cmd_validate)

    for kind, text in (
        ("quantize", "quantize a model with llm-compressor"),
        ("evaluate", "evaluate a model with lm-eval"),
        ("benchmark", "measure latency and throughput behind an OpenAI-compatible server"),
        ("similarity", "score candidates' greedy text against the baseline's"),
        ("judge", "have a judge model rate candidates' answers against the baseline's"),
        ("aggregate", "compute recovery from evaluate results"),
    ):
        stage = sub.add_parser(kind, help=f"stage: {text}")
        stage.add_argument("--input", type=Path, required=True, help="the stage input document")
        stage.add_argument("--output", type=Path, required=True, help="the result document")
        stage.set_defaults(func=cmd_stage)

    serve = sub.add_parser(
        "serve", help="stage: serve a model with vLLM until stopped (backend vllm-server)"
    )
    serve.add_argument("--input", type=Path, required=True, help="the serve input document")
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo-model", help="build (or find cached) the demo model; print path")
    demo.add_argument("--input", type=Path)
    demo.add_argument("--output", type=Path)
    demo.set_defaults(func=cmd_demo_model)

    op = sub.add_parser(
        "operator", help="run the Kubernetes operator (settings: QEVAL_* environment variables)"
    )
    op.add_argument("--verbose", action="store_true")
    op.set_defaults(func=cmd_operator)

    crds = sub.add_parser("crds", help="generate the CRDs from the API models")
    crds.add_argument("--out", type=Path, default=Path("crds"))
    crds.add_argument("--check", action="store_true", help="fail if the files are stale")
    crds.set_defaults(func=cmd_crds)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))
