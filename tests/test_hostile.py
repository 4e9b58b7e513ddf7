"""Hostile and invalid objects applied for real: the spec corpus (tests/test_spec_corpus.py,
the one source of its cases) through the real ``kubectl apply -f -`` as the cluster's admin,
with the operator running under the chart's RBAC.

Every case is refused, either by the API server (schema or CEL: kubectl fails naming the
field) or by the operator (the object exists and its ``Accepted`` condition is False, naming
the field and the fix); immutable fields cannot be changed afterwards; and neither the API
server's objects nor its audit log show a Job, Deployment or Pod made in the namespace for
any of them. The hostile strings of the corpus (``$(touch MARK)``, backticks, ``;``, ``|``,
``&&``, newlines, the kubelet's own ``$(VAR)`` and ``$$``) are never read by a shell: where
a field takes them by design they reach the container as data (an environment value the
kubelet does not expand, an argv item of vLLM), never a ``sh -c``, and the marker file the
strings would create never exists.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from qeval.cli import main
from qeval.k8s import manifests as m
from qeval.k8s.settings import OperatorSettings
from qeval.serving.launch import vllm_arguments
from tests.cluster.kubelet import resolve_env, service_env
from tests.kube.play import wait_for
from tests.kube.running import Operator
from tests.test_operator import (  # noqa: F401  (fixtures, used by name)
    Kube,
    api,
    condition_of,
    identities,
    kube,
    operator,
    operator_env,
)
from tests.test_spec_corpus import (
    CASES,
    KUBELET,
    MARK,
    SHELL,
    SHELL_SHORT,
    VLLM,
    Case,
    real_server_verdicts,
    write,
)

# What the API server cannot tell but the operator can, from the object alone: a recipe that
# is no YAML mapping; and what only the cluster's other objects tell (a missing QuantizedModel).
OPERATOR_JUDGES = {"recipe-not-yaml", "recipe-a-list", "recipe-a-string"}
MISSING_MODEL = "missing-quantized-model"
APPLIED = [
    c
    for c in CASES
    if not c.ok
    and c.text is None
    and not c.files
    and (c.api is True or c.id in OPERATOR_JUDGES or c.id == MISSING_MODEL)
]
SHELL_CASES = [c for c in CASES if c.id.startswith("shell-")]
# vLLM's extraArgs as well: a spec `qeval run` refuses on a machine without vLLM, so not in
# the corpus, but one the operator runs.
SERVER_CASE = Case(
    "shell-strings-verbatim-server",
    True,
    er={
        **VLLM,
        "spec.modelArgs": {"dtype": SHELL + KUBELET},
        "spec.serving": {"extraArgs": ["--served-model-name-x", SHELL + KUBELET]},
    },
)
BUILT = [c for c in SHELL_CASES if c.ok] + [SERVER_CASE]
# Immutable fields changed on objects the API server stored (their CEL transition rules run
# where the field is set before and after: setting or unsetting one is not refused).
IMMUTABLE = [
    ("QuantizedModel", "spec.model", {"model": {"uri": "demo://tiny-llama", "revision": "v2"}}),
    ("QuantizedModel", "spec.recipe", {"recipe": "QuantizationModifier: {}\n"}),
    ("EvalRun", "spec.baseline", {"baseline": {"model": {"uri": "org/other"}}}),
    ("EvalRun", "spec.tasks", {"tasks": [{"name": "qeval_demo_facts", "limit": 20}]}),
    ("EvalRun", "spec.candidates", {"candidates": [{"quantizedModel": "other"}]}),
]


def offending(case: Case, folder: Path) -> str:
    """The case's documents that carry its change: the EvalRun, the QuantizedModel, or both
    (an untouched default object would be valid, and would run)."""
    qm, er = yaml.safe_load_all(write(case, folder).read_text())  # as write() orders them
    docs = ([qm] if case.qm else []) + ([er] if case.er or not case.qm else [])
    return yaml.safe_dump_all(docs, sort_keys=False)


def test_the_applied_corpus_covers_every_category():
    ids = {c.id for c in APPLIED}
    assert len(APPLIED) >= 50, len(APPLIED)
    for needed in (
        "unknown-task-field",  # a typo
        "batch-string",  # a wrong type
        "backend-tgi",  # a wrong enum
        "gpus-65",  # out of range
        "no-baseline",  # a missing field
        "candidate-both",  # a cross-field rule
        "name-upper",  # not a DNS name
        "uri-0",  # ../ in a URI
        "task-path-up",  # ../ in a path
        "shell-uri",  # shell characters
        "shell-uri-newline",  # a newline
        "model-arg-200k",  # a very long string
        "tasks-65",  # a long list
        "recipe-not-yaml",  # a recipe that is not YAML
        "recipe-no-modifier",  # a recipe that is not llm-compressor's
        MISSING_MODEL,
    ):
        assert needed in ids, needed


def _refusal(status: dict[str, Any]) -> dict[str, Any] | None:
    accepted = condition_of(status, "Accepted")
    return accepted if accepted and accepted["status"] == "False" else None


def test_hostile_objects_are_refused_for_real_and_nothing_runs(
    kube: Kube,  # noqa: F811  (the fixtures imported above)
    operator: Operator,  # noqa: F811
    tmp_path: Path,
) -> None:
    texts = {c.id: offending(c, tmp_path / f"case-{n}") for n, c in enumerate(APPLIED)}
    verdicts = real_server_verdicts(kube.cluster, kube.ns, texts, dry_run=False)
    by_id = {c.id: c for c in APPLIED}

    created: dict[str, list[tuple[str, str]]] = {}  # case -> (plural, name) the server stored
    for case_id, answers in verdicts.items():
        case = by_id[case_id]
        assert answers, case_id  # every case applied something
        refused = [v for v in answers if not v.accepted]
        if refused:  # the API server's refusal names the field
            paths = set().union(*(v.paths for v in refused))
            assert case.field in paths, (case_id, case.field, [v.message for v in refused])
        else:
            plurals = {"EvalRun": "evalruns", "QuantizedModel": "quantizedmodels"}
            created[case_id] = [(plurals[v.kind], v.name) for v in answers]
    # Exactly those the API server cannot judge got through.
    assert set(created) == OPERATOR_JUDGES | {MISSING_MODEL}, sorted(created)

    def judged() -> dict[str, dict[str, Any]] | None:
        out = {}
        for case_id, objects in created.items():
            for plural, name in objects:
                status = kube.status(plural, name)
                if case_id == MISSING_MODEL:  # not accepted, and it waits (not final)
                    if status.get("phase") != "WaitingForModels":
                        return None
                    out[case_id] = condition_of(status, "Accepted") or {}
                elif (refusal := _refusal(status)) is None:
                    return None
                else:
                    out[case_id] = refusal
        return out

    conditions = wait_for(judged, "the operator's verdict on every stored object", timeout=60)
    for case_id, c in conditions.items():
        if case_id == MISSING_MODEL:
            assert (c["status"], c["reason"]) == ("False", "QuantizedModelNotFound"), c
            assert by_id[case_id].field in c["message"] and "QuantizedModel nope" in c["message"]
            continue
        assert c["reason"] == "InvalidSpec", (case_id, c)
        assert by_id[case_id].field in c["message"], (case_id, c["message"])

    # Immutable fields of the stored objects cannot be changed.
    stored = {kind: name for objects in created.values() for plural, name in objects
              for kind in [("EvalRun" if plural == "evalruns" else "QuantizedModel")]}  # fmt: skip
    for kind, field, change in IMMUTABLE:
        plural = "evalruns" if kind == "EvalRun" else "quantizedmodels"
        body = kube.get(plural, stored[kind])
        doc = {
            "apiVersion": body["apiVersion"],
            "kind": kind,
            "metadata": {"name": body["metadata"]["name"]},
            "spec": {**body["spec"], **change},
        }
        done = kube.cluster.kubectl(
            "apply", "-n", kube.ns, "-f", "-", input=yaml.safe_dump(doc), check=False
        )
        assert done.returncode != 0, (kind, field, done.stdout)
        assert f"{field} is immutable" in done.stderr, done.stderr

    # Nothing ran: no Job, Deployment or Pod exists, and none was ever asked for.
    for gvr in ("batch/v1/jobs", "apps/v1/deployments", "v1/pods"):
        assert kube.cluster.list(gvr, kube.ns) == [], gvr
    asked = [
        (e["verb"], e["objectRef"]["resource"], e.get("user", {}).get("username"))
        for e in kube.cluster.audit_events()
        if e.get("objectRef", {}).get("namespace") == kube.ns
        and e.get("objectRef", {}).get("resource") in ("jobs", "deployments", "pods")
        and e["verb"] in ("create", "update", "patch")
    ]
    assert asked == [], asked
    # The audit log did record this namespace's refused objects: it is the one being read.
    applied = [
        e
        for e in kube.cluster.audit_events()
        if e.get("objectRef", {}).get("namespace") == kube.ns
        and e.get("objectRef", {}).get("resource") in ("evalruns", "quantizedmodels")
        and e["verb"] == "create"
    ]
    refusals = sum(e["responseStatus"]["code"] == 422 for e in applied)
    assert refusals >= 40, len(applied)
    assert not Path(MARK).exists()
    summary = {
        "cases": len(APPLIED),
        "refusedByApiServer": len(APPLIED) - len(created),
        "judgedByOperator": sorted(created),
        "immutableChangesRefused": len(IMMUTABLE),
        "auditCreates422": refusals,
        "jobsDeploymentsPods": 0,
    }
    print(json.dumps(summary))  # the figures of benchmarks/results/reliability.md


# --- no shell reads a string -----------------------------------------------------------------


@pytest.mark.parametrize("case", SHELL_CASES, ids=[c.id for c in SHELL_CASES])
def test_qeval_validate_and_run_never_hand_a_string_to_a_shell(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write(case, tmp_path / "spec")
    assert main(["validate", str(spec)]) == (0 if case.ok else 2)
    if case.ok:
        from qeval.local.executor import load, prepare

        runs, models = load(spec)
        assert all(prepare(run, models, tmp_path / "work")[1] for run in runs)
    else:
        assert main(["run", str(spec), "--workdir", str(tmp_path / "work")]) == 2
        assert case.field in capsys.readouterr().out
    assert not Path(MARK).exists()


def _strings(value: Any) -> list[str]:
    """Every string in a JSON document, keys and values."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [t for v in value for t in _strings(v)]
    return []


def _containers(case: Case, folder: Path) -> list[tuple[Any, dict[str, Any], dict[str, Any]]]:
    """(stage, pod, container) of every Job and server the operator would make for ``case``."""
    from qeval.local.executor import load
    from qeval.plan import build_plan, quantize_stage

    runs, models = load(write(case, folder))
    settings = OperatorSettings()
    out = []
    for owner_name, stages in [
        *[(qm.name, [quantize_stage(qm, m.cluster_layout(settings, "ns", qm.name))])
          for qm in models.values()],
        *[(run.name, build_plan(run, models, m.cluster_layout(settings, "ns", run.name)))
          for run in runs],
    ]:  # fmt: skip
        kind = "QuantizedModel" if owner_name in models else "EvalRun"
        owner = m.Owner(kind, owner_name, "ns", "uid")
        layout = m.cluster_layout(settings, "ns", owner_name)
        for stage in stages:
            if stage.serves:
                pod = m.build_server(stage, owner, settings)[0]["spec"]["template"]
            else:
                pod = m.build_job(stage, owner, layout, settings)["spec"]["template"]
            (container,) = pod["spec"]["containers"]
            out.append((stage, pod, container))
    return out


@pytest.mark.parametrize("case", BUILT, ids=[c.id for c in BUILT])
def test_hostile_strings_reach_the_containers_verbatim_as_data(case: Case, tmp_path: Path) -> None:
    hostile = SHELL + KUBELET
    planned = _containers(case, tmp_path / "spec")
    carried = 0
    for stage, pod, container in planned:
        command = container["command"]
        assert isinstance(command, list) and all(isinstance(a, str) for a in command)
        assert command[:2] == ["qeval", stage.kind], command  # qeval's own argv, no sh -c
        assert "args" not in container
        assert not any(hostile in a or MARK in a for a in command), command
        # The env the kubelet builds ($(VAR) expanded, $$ unescaped against what precedes
        # it, the service variables too): the stage input arrives as the spec wrote it.
        services = service_env("10.0.0.1", 443)
        env = resolve_env(pod, container, lambda kind, name: {"token": "hf_secret"}, {}, services)
        assert json.loads(env[m.INPUT_ENV]) == stage.input
        if any(MARK in text for text in _strings(stage.input)):
            carried += 1
            if stage.serves:  # its extraArgs: items of vLLM's argv
                serving = stage.input["serving"]
                from qeval.api.evalrun import Serving

                argv = vllm_arguments("/m", "c", "127.0.0.1", 8000, Serving(**serving))
                assert argv[-2:] == ["--served-model-name-x", hostile], argv
    assert carried >= 1, [s.name for s, _, _ in planned]
    assert not Path(MARK).exists()


def test_a_shell_given_the_strings_would_have_made_the_marker(tmp_path: Path) -> None:
    """The control: the same strings handed to ``sh -c`` make the marker (at a path of this
    test's own), so that the marker's absence above shows no shell read them."""
    control = tmp_path / "control"
    for text in (SHELL, SHELL_SHORT, "main" + SHELL_SHORT):
        done = subprocess.run(
            ["sh", "-c", f"echo {text}".replace(MARK, str(control))],
            capture_output=True, timeout=10, check=False,
        )  # fmt: skip
        assert control.exists(), (text, done)
        control.unlink()
    assert not Path(MARK).exists()
