"""The plan: an EvalRun (and the QuantizedModels it names) -> an ordered DAG of stages.

Pure functions, no I/O. Both executors run the same plan: the local one as processes,
the operator as Jobs. Where files go is the executor's choice, passed in as a Layout.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from graphlib import TopologicalSorter
from pathlib import PurePosixPath
from typing import Any, Protocol

from qeval.api.common import ApiModel, ModelSource, Scheduling, model_kind, volume_path
from qeval.api.env import EnvFromSource, EnvVar
from qeval.api.evalrun import Backend, Endpoint, EvalRun, Judged, Prompt, Serving
from qeval.api.quantizedmodel import DEFAULT_DATASET, Calibration, QuantizedModel
from qeval.recipes import build_recipe, needs_calibration, scheme_label
from qeval.stages.aggregate import AggregateInput, ModelResults
from qeval.stages.benchmark import BenchmarkInput
from qeval.stages.demo_model import DemoModelInput
from qeval.stages.evaluate import EvaluateInput
from qeval.stages.judge import JudgedModel, JudgeInput, SimilarityAnswers
from qeval.stages.quantize import QuantizeInput
from qeval.stages.serve import PORT, ServeInput
from qeval.stages.similarity import SimilarityInput, SimilarityModel

DEMO_STAGE = "demo-model"
AGGREGATE_STAGE = "aggregate"
SIMILARITY_STAGE = "similarity"
EVALUATE_KIND = "evaluate"  # lm-eval on one model: its scores
JUDGE_KIND = "judge"  # a judge model rates every candidate's answers against the baseline's
SERVE_KIND = "serve"  # a long-running stage: a model's server, up while its consumers run


class PlanError(ValueError):
    """The objects cannot be planned (e.g. a QuantizedModel that does not exist)."""


class Endpoints(Protocol):
    """Where a run's model servers listen, and the URL their clients reach them at."""

    @property
    def bind(self) -> str: ...  # the address a server listens on

    def port(self, stage: str) -> int: ...

    def url(self, stage: str) -> str: ...


@dataclass(frozen=True)
class PodEndpoints:
    """Every server in a pod of its own on the same port, reached at a host name per serve
    stage: by default the stage's name (the operator's are its Services' names)."""

    bind: str = "0.0.0.0"

    def host(self, stage: str) -> str:
        return stage

    def port(self, stage: str) -> int:
        return PORT

    def url(self, stage: str) -> str:
        return f"http://{self.host(stage)}:{self.port(stage)}"


@dataclass(frozen=True)
class Layout:
    """Where stage documents, quantized models and the result cache live, as the stage
    processes see them (no cache_root: no result cache), and where model servers answer.
    What differs between the executors is here, never an edit of the plan they run."""

    run_root: PurePosixPath
    models_root: PurePosixPath
    cache_root: PurePosixPath | None = None
    endpoints: Endpoints = field(default_factory=PodEndpoints)
    # Evaluations another run made that this run takes (the operator's reuse, by stage): the
    # aggregate reads their result documents where that run wrote them.
    elsewhere: Mapping[str, str] = field(default_factory=dict)

    def stage_dir(self, stage: str) -> PurePosixPath:
        return self.run_root / "stages" / stage

    def result_path(self, stage: str) -> PurePosixPath:
        return self.stage_dir(stage) / "result.json"

    def read_path(self, stage: str) -> PurePosixPath:
        """Where the aggregate reads the stage's result: its own, or another run's it took."""
        if stage in self.elsewhere:
            return PurePosixPath(self.elsewhere[stage])
        return self.result_path(stage)

    def report_dir(self) -> PurePosixPath:
        return self.run_root / "report"

    def cache_dir(self) -> str | None:
        return str(self.cache_root) if self.cache_root is not None else None


@dataclass(frozen=True)
class Stage:
    """One unit of work: a ``qeval <kind>`` command on one input document."""

    name: str
    kind: str
    input: dict[str, Any]
    needs: tuple[str, ...] = ()
    scheduling: Scheduling | None = None  # None: a light CPU-only stage
    always: bool = False  # runs even when a dependency failed (to report what did not)
    produces: str | None = None  # the QuantizedModel this stage makes, if any
    # Exists only for the stages that need it (as a server does; the demo model): not
    # started when every one of them ended without it (each reused, or skipped).
    for_users: bool = False
    # More environment of the stage's process (spec.env, spec.envFrom: evaluate stages), not
    # in its input: no Secret's value is ever in a document, nor in a cache key.
    env: tuple[EnvVar, ...] = ()
    env_from: tuple[EnvFromSource, ...] = ()

    @property
    def serves(self) -> bool:
        """A server: ready rather than finished, done when the stages that need it are."""
        return self.kind == SERVE_KIND

    def argv(self, input_path: str, output_path: str) -> list[str]:
        """The command, as an argument list (never a shell string with spec values in it).
        A server writes no result document."""
        if self.serves:
            return ["qeval", self.kind, "--input", input_path]
        return ["qeval", self.kind, "--input", input_path, "--output", output_path]


def _doc(model: ApiModel) -> dict[str, Any]:
    return model.dump()


def quantized_model_dir(qm: QuantizedModel, layout: Layout) -> PurePosixPath:
    """Where a QuantizedModel's checkpoint is written (and read back by evaluations)."""
    if qm.spec.output is None:
        return layout.models_root / qm.name
    uri = qm.spec.output.uri
    if uri.startswith("pvc://"):
        return volume_path(uri)
    if model_kind(uri) != "local":
        raise PlanError(
            f"QuantizedModel {qm.name}: spec.output.uri {uri!r}: write the model to "
            "a path or a volume (pvc://<claim>/<path>)"
        )
    return PurePosixPath(uri)


def quantize_stage(qm: QuantizedModel, layout: Layout, reuse_cached: bool = True) -> Stage:
    spec = qm.spec
    calibration: Calibration | None = None
    if needs_calibration(spec):
        calibration = spec.calibration
        if calibration.dataset is None and calibration.path is None:
            default = "demo" if model_kind(spec.model.uri) == "demo" else DEFAULT_DATASET
            calibration = calibration.model_copy(update={"dataset": default})
    inp = QuantizeInput(
        name=qm.name,
        model=spec.model,
        scheme=scheme_label(spec),
        recipe=build_recipe(spec),
        calibration=calibration,
        output_dir=str(quantized_model_dir(qm, layout)),
        cache_dir=layout.cache_dir(),
        reuse_cached=reuse_cached,
    )
    needs = (DEMO_STAGE,) if model_kind(spec.model.uri) == "demo" else ()
    return Stage(
        f"quantize-{qm.name}", "quantize", _doc(inp), needs, spec.scheduling, produces=qm.name
    )


# name, scheme, model (None: an endpoint), needs
Target = tuple[str, str | None, ModelSource | None, tuple[str, ...]]


def build_plan(run: EvalRun, models: Mapping[str, QuantizedModel], layout: Layout) -> list[Stage]:
    """Every stage of ``run`` in an order that respects dependencies."""
    spec = run.spec
    missing = sorted(
        {c.quantized_model for c in spec.candidates if c.quantized_model} - set(models)
    )
    if missing:
        raise PlanError(
            f"EvalRun {run.name}: spec.candidates name QuantizedModel(s) {missing} that do not "
            "exist; create them (same file or folder, or kubectl apply) or fix the names"
        )

    quantizations: list[Stage] = []
    uses_demo = False
    targets: list[Target] = [(spec.baseline.name, None, spec.baseline.model, ())]
    # Models behind an existing OpenAI-compatible API: evaluated there, by a light client
    # stage; no server, no quantization, no size, no GPU.
    endpoints: dict[str, Endpoint] = {}
    if spec.baseline.endpoint is not None:
        endpoints[spec.baseline.name] = spec.baseline.endpoint
    for c in spec.candidates:
        if c.endpoint is not None:
            endpoints[c.label] = c.endpoint
            targets.append((c.label, c.scheme, None, ()))
        elif c.quantized_model:
            qm = models[c.quantized_model]
            q = quantize_stage(qm, layout, spec.cache)
            quantizations.append(q)
            uses_demo |= DEMO_STAGE in q.needs
            made = ModelSource(uri=str(quantized_model_dir(qm, layout)))
            targets.append((c.label, c.scheme or scheme_label(qm.spec), made, (q.name,)))
        else:
            assert c.model is not None
            targets.append((c.label, c.scheme, c.model, ()))

    tasks = spec.all_tasks()  # suites expanded: both executors run the same tasks
    servers = spec.backend == Backend.VLLM_SERVER
    serving = spec.serving or Serving()
    refs = []
    stages: list[Stage] = []
    for i, (name, scheme, source, needs) in enumerate(targets):
        if i == 1:  # the baseline's stages come first: its scores are the first result
            stages += quantizations  # a person sees, without waiting for every quantization
        stage = f"evaluate-{name}"
        endpoint = endpoints.get(name)
        files = endpoint.tokenizer if endpoint is not None else source  # what it loads
        if files is not None and model_kind(files.uri) == "demo":
            needs, uses_demo = (*needs, DEMO_STAGE), True
        served = servers and endpoint is None
        if served:  # every stage of this model talks to its server instead
            assert source is not None
            stages.append(serve_stage(run, name, source, needs, layout))
            needs = (stages[-1].name,)
        targets[i] = (name, scheme, source, needs)
        inp = EvaluateInput(
            model_name=name,
            model=source,
            endpoint=endpoint,
            tasks=tasks,
            task_paths=spec.task_paths,
            backend=spec.backend,
            batch_size=spec.batch_size,
            seed=spec.seed,
            model_args=spec.model_args,
            prompt=spec.prompt if spec.prompt != Prompt() else None,
            task_metadata=spec.task_metadata or None,
            base_url=layout.endpoints.url(needs[0]) if served else None,
            serving=serving if served else None,
            allow_code_execution=spec.allow_code_execution,
            trust_remote_code=spec.trust_remote_code,
            cache_dir=layout.cache_dir(),
            reuse_cached=spec.cache,
            output_dir=str(layout.stage_dir(stage)),
        )
        # A client (the server has the GPU), or the model's own GPU work.
        scheduling = None if servers or endpoint is not None else spec.scheduling
        stages.append(
            Stage(
                stage,
                EVALUATE_KIND,
                _doc(inp),
                needs,
                scheduling,
                env=tuple(spec.env),
                env_from=tuple(spec.env_from),
            )
        )
        refs.append(ModelResults(name=name, scheme=scheme, evaluate=str(layout.read_path(stage))))

    if endpoints and (spec.performance is not None or spec.similarity is not None):
        raise PlanError(  # the API refuses it already (SPEC_RULES): never half a plan
            f"EvalRun {run.name}: spec.performance and spec.similarity need every model served "
            f"by qeval; {sorted(endpoints)} are endpoints"
        )
    similarity = None
    if spec.similarity is not None:
        stages.append(similarity_stage(run, targets, layout))
        similarity = str(layout.result_path(SIMILARITY_STAGE))
    judged = []
    for j in spec.judged:
        judge = judge_stages(run, j, targets, endpoints, layout)
        uses_demo |= any(DEMO_STAGE in st.needs for st in judge)
        stages += judge
        judged.append(judge[-1].name)
    if spec.performance is not None:
        for ref, (name, _, weights, needs) in zip(refs, targets, strict=True):
            assert weights is not None  # no endpoints (above)
            if servers:  # alone on its server: after the evaluation, similarity and judging
                others = [*([SIMILARITY_STAGE] if similarity else []), *judged]
                needs = (*needs, f"evaluate-{name}", *others)
            stages.append(benchmark_stage(run, name, weights, needs, layout))
            ref.benchmark = str(layout.result_path(stages[-1].name))

    aggregate = AggregateInput(
        baseline=refs[0],
        candidates=refs[1:],
        results_location=str(layout.run_root),
        run_name=run.name,
        suites=list(spec.suites),
        recovery_threshold=spec.recovery_threshold,
        report_dir=str(layout.report_dir()),
        similarity=similarity,
        judged=[str(layout.read_path(j)) for j in judged],
    )
    result_kinds = (EVALUATE_KIND, "benchmark", "similarity", JUDGE_KIND)
    results = tuple(s.name for s in stages if s.kind in result_kinds)
    stages.append(Stage(AGGREGATE_STAGE, "aggregate", _doc(aggregate), results, always=True))
    if uses_demo:  # on the run's nodes, asking what its stages ask (one build at a time),
        # but no GPU: the demo model trains on the CPU (given GPUs it would fail NoGPU on a
        # node whose driver is too old, for a build that never uses them)
        scheduling = spec.scheduling.model_copy(update={"gpus": 0})
        demo = Stage(
            DEMO_STAGE, "demo-model", _doc(DemoModelInput()), (), scheduling, for_users=True
        )
        stages.insert(0, demo)
    return ordered(stages)


def serve_stage(
    run: EvalRun,
    name: str,
    source: ModelSource,
    needs: tuple[str, ...],
    layout: Layout,
    stage: str | None = None,
    serving: Serving | None = None,
    scheduling: Scheduling | None = None,
) -> Stage:
    """One model's vLLM server (backend vllm-server), on the GPUs of spec.scheduling (a
    judge's: on its own, where it has them)."""
    stage = stage or f"serve-{name}"
    inp = ServeInput(
        model_name=name,
        model=source,
        serving=serving or run.spec.serving or Serving(),
        host=layout.endpoints.bind,
        port=layout.endpoints.port(stage),
    )
    return Stage(stage, SERVE_KIND, _doc(inp), needs, scheduling or run.spec.scheduling)


JUDGE_MODEL = "judge"  # the name a judge's server serves it under


def judge_stages(
    run: EvalRun,
    judged: Judged,
    targets: list[Target],
    endpoints: Mapping[str, Endpoint],
    layout: Layout,
) -> list[Stage]:
    """A judged evaluation: its judge's server where qeval serves one (backend
    vllm-server), then the stage that has every model answer and the judge rate them."""
    spec = run.spec
    out: list[Stage] = []
    judge = judged.judge
    judge_url = None
    needs = tuple(dict.fromkeys(n for *_, ns in targets for n in ns))
    if judge.model is not None:
        demo = (DEMO_STAGE,) if model_kind(judge.model.uri) == "demo" else ()
        if spec.backend == Backend.VLLM_SERVER:
            # Started once the evaluations ended (however they ended), not with the run: a
            # judge's GPUs (a 70B judge takes four) do not wait idle through them.
            evaluations = tuple(f"evaluate-{name}" for name, *_ in targets)
            server = serve_stage(
                run,
                JUDGE_MODEL,
                judge.model,
                (*demo, *evaluations),
                layout,
                stage=f"judge-server-{judged.name}",
                serving=judge.serving,
                scheduling=spec.scheduling.model_copy(update={"gpus": judge.gpus})
                if judge.gpus is not None
                else None,
            )
            out.append(replace(server, always=True))
            judge_url = layout.endpoints.url(server.name)
            needs = (*needs, server.name)
        else:
            needs = (*needs, *demo)
    models = [
        JudgedModel(
            name=name,
            model=source,
            endpoint=endpoints.get(name),
            base_url=layout.endpoints.url(url) if (url := _server(name, ns)) else None,
        )
        for name, _, source, ns in targets
    ]
    if any(m.model and not m.base_url and model_kind(m.model.uri) == "demo" for m in models):
        needs = (*needs, DEMO_STAGE)
    similarity = None
    reusable = (
        spec.similarity is not None
        and not judged.chat_template
        and (judged.max_new_tokens == spec.similarity.max_new_tokens)
    )
    if reusable:  # the same prompts, generated the same way: taken where they match
        similarity = SimilarityAnswers(
            generations=str(layout.stage_dir(SIMILARITY_STAGE) / "generations.jsonl")
        )
        needs = (*needs, SIMILARITY_STAGE)
    stage = f"judge-{judged.name}"
    inp = JudgeInput(
        judged=judged,
        baseline=models[0],
        candidates=models[1:],
        backend=spec.backend,
        serving=spec.serving,
        judge_url=judge_url,
        similarity=similarity,
        seed=spec.seed,
        cache_dir=layout.cache_dir(),
        reuse_cached=spec.cache,
        output_dir=str(layout.stage_dir(stage)),
    )
    # A client where every model and the judge answer over HTTP; else the GPUs it starts
    # servers on in its own pod.
    answered = all(m.base_url or m.endpoint for m in models)
    clients = answered and (judge.endpoint is not None or judge_url is not None)
    scheduling = None if clients else spec.scheduling
    out.append(Stage(stage, JUDGE_KIND, _doc(inp), tuple(dict.fromkeys(needs)), scheduling))
    return out


def _server(name: str, needs: tuple[str, ...]) -> str | None:
    """The serve stage among ``needs`` for model ``name``, if it has one."""
    return f"serve-{name}" if f"serve-{name}" in needs else None


def benchmark_stage(
    run: EvalRun, name: str, source: ModelSource, needs: tuple[str, ...], layout: Layout
) -> Stage:
    """One model's serving benchmark under the run's scenarios."""
    spec = run.spec
    assert spec.performance is not None
    stage = f"benchmark-{name}"
    server = _server(name, needs)
    inp = BenchmarkInput(
        model_name=name,
        model=source,
        backend=spec.backend,
        base_url=layout.endpoints.url(server) if server else None,
        performance=spec.performance,
        serving=spec.serving,
        seed=spec.seed,
        output_dir=str(layout.stage_dir(stage)),
    )
    return Stage(stage, "benchmark", _doc(inp), needs, None if server else spec.scheduling)


def similarity_stage(run: EvalRun, targets: list[Target], layout: Layout) -> Stage:
    """Every model's greedy text on the same prompts, candidates scored against the baseline."""
    spec = run.spec
    assert spec.similarity is not None
    models = [
        SimilarityModel(
            name=name,
            model=source,
            base_url=layout.endpoints.url(server) if (server := _server(name, needs)) else None,
        )
        for name, _, source, needs in targets
    ]
    inp = SimilarityInput(
        baseline=models[0],
        candidates=models[1:],
        backend=spec.backend,
        similarity=spec.similarity,
        serving=spec.serving,
        output_dir=str(layout.stage_dir(SIMILARITY_STAGE)),
    )
    needs = tuple(dict.fromkeys(n for *_, ns in targets for n in ns))
    clients = all(m.base_url for m in models)
    return Stage(
        SIMILARITY_STAGE, "similarity", _doc(inp), needs, None if clients else spec.scheduling
    )


def ordered(stages: list[Stage]) -> list[Stage]:
    """Stages in dependency order, each as early as its needs allow and, among those whose
    needs are met, in their given order (stable)."""
    by_name = {s.name: s for s in stages}
    if len(by_name) != len(stages):
        raise PlanError("two stages have the same name; candidate names must be distinct")
    unknown = sorted({n for s in stages for n in s.needs} - set(by_name))
    if unknown:
        raise PlanError(f"stages need {unknown}, which are not in the plan")
    sorter = TopologicalSorter({s.name: s.needs for s in stages})
    sorter.prepare()  # raises CycleError on a cycle
    position = {s.name: i for i, s in enumerate(stages)}
    ready: list[tuple[int, str]] = []
    out: list[Stage] = []
    while sorter.is_active():
        for name in sorter.get_ready():
            heapq.heappush(ready, (position[name], name))
        _, name = heapq.heappop(ready)
        out.append(by_name[name])
        sorter.done(name)
    return out
