"""The Helm chart, rendered by the real helm and checked as data.

``helm lint --strict``; every rendered object against the Kubernetes 1.29-1.35 schemas
(``kubernetes-validate --strict``); one rendering test per template (disabled renders
nothing, enabled has the expected fields and labels); values.schema.json refusing bad
values; the rendered chart applied with the real kubectl to a real API server; and the
real helm installing, upgrading and uninstalling it there.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from qeval.k8s import manifests as m
from qeval.k8s.settings import OperatorSettings
from tests.cluster.controlplane import ControlPlane
from tests.conftest import ROOT
from tests.kube.binaries import helm
from tests.kube.play import wait_for
from tests.test_manifests import quantize_job, server

CHART = ROOT / "charts" / "qeval-operator"
RELEASE, NAMESPACE = "qeval-operator", "qeval-system"
FULLNAME = "qeval-operator"  # the release name contains the chart name: no doubling
KUBERNETES = [f"1.{minor}.0" for minor in range(29, 36)]
MONITORING = "monitoring.coreos.com/v1"

# Everything switched on, namespaced: the non-default values every check also runs on.
EVERYTHING = (
    "watchNamespaces={team-a,team-b}",
    "replicas=2",
    "peering.enabled=true",
    "storage.create=true",
    "metrics.serviceMonitor.enabled=true",
    "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
    "metrics.prometheusRule.enabled=true",
    "json:metrics.prometheusRule.recoveryThreshold=0.97",  # --set would make it a string
    "dashboards.enabled=true",
    "image.digest=sha256:" + "a" * 64,
    "imagePullSecrets={regcred}",
    "operator.verbose=true",
)
CLUSTERWIDE_EVERYTHING = (
    "peering.enabled=true",
    "replicas=3",
    "storage.create=true",
    "stages.namespaces={ml,ml-staging}",
    "metrics.serviceMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "dashboards.enabled=true",
    "stages.admissionPolicy.enabled=true",  # admissionregistration.k8s.io/v1: 1.30 and later
)
VALUE_SETS = {"default": (), "namespaced": EVERYTHING, "clusterwide": CLUSTERWIDE_EVERYTHING}
Obj = dict[str, Any]


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm()), *args], capture_output=True, text=True, timeout=60, check=False
    )


def value_args(sets: Iterable[str]) -> list[str]:
    """``--set key=value`` each; ``json:key=value`` as ``--set-json`` (numbers stay numbers)."""
    args = []
    for s in sets:
        args += ["--set-json", s.removeprefix("json:")] if s.startswith("json:") else ["--set", s]
    return args


@cache
def rendered(*sets: str) -> str:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, *value_args(sets)]
    done = run_helm(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def render(*sets: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(rendered(*sets)) if d]


def of_kind(objs: Iterable[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: Iterable[Obj], kind: str) -> Obj:
    (found,) = of_kind(objs, kind)
    return found


def template(name: str, *sets: str) -> list[Obj]:
    """Objects rendered by one template (helm's ``# Source:`` comment names it)."""
    text = rendered(*sets)
    docs = text.split("\n---\n")
    source = f"# Source: qeval-operator/templates/{name}\n"
    return [d for doc in docs if source in doc + "\n" and (d := yaml.safe_load(doc))]


def selector_labels() -> dict[str, str]:
    return {"app.kubernetes.io/name": "qeval-operator", "app.kubernetes.io/instance": RELEASE}


def assert_common_labels(obj: Obj) -> None:
    labels = obj["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "qeval", obj["kind"]
    assert labels["app.kubernetes.io/managed-by"] == "Helm"
    assert labels["helm.sh/chart"] == "qeval-operator-0.1.0"
    assert selector_labels().items() <= labels.items()


# --- helm lint, CRDs, Kubernetes schemas ----------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_helm_lint_strict(values: str) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    done = run_helm(*args, *value_args(VALUE_SETS[values]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_the_charts_crds_are_the_generated_ones() -> None:
    generated = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    in_chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert generated, "crds/ is empty"
    stale = sorted(
        n for n in generated.keys() | in_chart.keys() if generated.get(n) != in_chart.get(n)
    )
    assert not stale, f"charts/qeval-operator/crds/ differs from crds/ ({stale}): run `make chart`"


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_rendered_objects_are_valid_kubernetes(values: str, version: str) -> None:
    objs = render(*VALUE_SETS[values])
    checked = 0
    for obj in objs:
        api = obj["apiVersion"]
        if api == MONITORING or api.startswith("kopf.dev/"):
            continue  # custom resources: checked structurally below
        if obj["kind"].startswith("ValidatingAdmissionPolicy") and version == "1.29.0":
            continue  # admissionregistration.k8s.io/v1 policies: 1.30 and later (values.yaml)
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 5


def test_the_crds_themselves_are_valid_kubernetes() -> None:
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for version in (KUBERNETES[0], KUBERNETES[-1]):
            kubernetes_validate.validate(yaml.safe_load(path.read_text()), version, strict=True)


def test_every_object_carries_the_charts_labels_and_a_namespace_where_it_needs_one() -> None:
    for values in VALUE_SETS.values():
        for obj in render(*values):
            assert_common_labels(obj)
            cluster_scoped = obj["kind"] in {
                "ClusterRole",
                "ClusterRoleBinding",
                "ClusterKopfPeering",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding",
            }
            assert ("namespace" in obj["metadata"]) != cluster_scoped, obj["kind"]


# --- values.schema.json ------------------------------------------------------------------------


HELM_OWN_KEYS = {"global"}  # helm passes it to every chart; a chart never sets it


def schema_drift(schema: dict[str, Any], values: Any, at: str = "") -> list[str]:
    """Where values.yaml and values.schema.json disagree on which keys exist: a key with a
    default and no schema (helm refuses it), or a schema'd key with no default (nowhere to
    read what it is or does)."""
    props = schema.get("properties")
    if props is None or not isinstance(values, dict):
        return []
    out = [f"{at}{k}: in the schema, not in values.yaml" for k in props.keys() - values.keys()]
    out += [f"{at}{k}: in values.yaml, not in the schema" for k in values.keys() - props.keys()]
    for key in props.keys() & values.keys():
        out += schema_drift(props[key], values[key], f"{at}{key}.")
    return out


def test_values_and_their_schema_name_the_same_keys() -> None:
    """values.yaml (the defaults, with their comments) and values.schema.json (types and
    bounds) are two files: every key is in both, so neither can drift from the other."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in HELM_OWN_KEYS:
        schema["properties"].pop(key)
    assert schema_drift(schema, values) == []
    # The check itself sees a drift either way.
    assert schema_drift(schema, values | {"extra": 1}) == [
        "extra: in values.yaml, not in the schema"
    ]
    trimmed = values | {"image": {k: v for k, v in values["image"].items() if k != "digest"}}
    assert schema_drift(schema, trimmed) == ["image.digest: in the schema, not in values.yaml"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("replicas=2", "/peering/enabled"),  # several replicas need peering
        ("operator.postingLevel=info", "/operator/postingLevel"),
        (
            "json:metrics.prometheusRule.recoveryThreshold=95",
            "/metrics/prometheusRule/recoveryThreshold",
        ),
        ("watchNamespaces={Team_A}", "/watchNamespaces/0"),
        ("image.digest=latest", "/image/digest"),
        ("stages.imagePullPolicy=Sometimes", "/stages/imagePullPolicy"),
        ("metrics.serviceMonitor.interval=30", "/metrics/serviceMonitor/interval"),
        ("metrics.serviceMonitor.servers=yes", "/metrics/serviceMonitor/servers"),
        ("storage.accessModes={ReadWriteAll}", "/storage/accessModes/0"),
        ("operator.jobActiveDeadlineSeconds=30", "/operator/jobActiveDeadlineSeconds"),
        ("json:operator.imagePullTimeoutSeconds=0", "/operator/imagePullTimeoutSeconds"),
        ("stages.clientImage.digest=latest", "/stages/clientImage/digest"),
        ("operater.verbose=true", "additional properties 'operater'"),
        ("operator.resyncSecond=5", "additional properties 'resyncSecond'"),
    ],
)
def test_bad_values_fail_before_anything_is_rendered(value: str, message: str) -> None:
    done = run_helm("template", RELEASE, str(CHART), *value_args([value]))
    assert done.returncode != 0, f"{value} was accepted"
    assert message in done.stderr, done.stderr


# --- the Deployment ----------------------------------------------------------------------------


def operator_container(*sets: str) -> Obj:
    deployment = one(template("deployment.yaml", *sets), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: Obj) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_deployment_runs_the_operator_hardened_with_probe_and_resources() -> None:
    (deployment,) = template("deployment.yaml")
    assert deployment["kind"] == "Deployment"
    assert_common_labels(deployment)
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # standalone: never two at once
    pod = spec["template"]["spec"]
    assert selector_labels().items() <= spec["selector"]["matchLabels"].items()
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/qeval/operator:0.1.0"  # the appVersion
    # What runs is written out (a kubelet stand-in runs no image entrypoint; nor need a reader).
    assert container["command"] == ["qeval", "operator"] and "args" not in container
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe == {"path": "/healthz", "port": "health"}
    assert ports == {"metrics": 8000, "health": 8080}
    assert env_of(container)["QEVAL_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8080/healthz"
    # The read-only root filesystem leaves /tmp writable through an emptyDir.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["emptyDir"]


def test_deployment_sets_every_operator_setting_and_the_operator_reads_them_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected = {f"QEVAL_{name.upper()}" for name in OperatorSettings.model_fields}
    default_env = env_of(operator_container())
    assert set(default_env) == expected - {"QEVAL_PEERING"}  # unset: standalone
    env = env_of(operator_container(*EVERYTHING))
    assert set(env) == expected
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = OperatorSettings()
    assert settings.namespaces == ["team-a", "team-b"]
    assert settings.peering == "qeval"
    assert settings.image_pull_secrets == ["regcred"]
    assert settings.quantizer_image == "ghcr.io/qeval/quantizer:0.1.0"
    assert settings.evaluator_image == "ghcr.io/qeval/evaluator:0.1.0"
    assert settings.client_image == "ghcr.io/qeval/client:0.1.0"
    assert settings.job_active_deadline_seconds == 48 * 3600
    assert settings.image_pull_timeout_seconds == 600
    assert settings.stage_service_account == "qeval-stage"
    assert settings.storage_claim == "qeval-data"
    assert settings.metrics_port == 8000
    # The chart's defaults are the operator's own defaults.
    for key in list(env):
        monkeypatch.delenv(key)
    for key, value in default_env.items():
        monkeypatch.setenv(key, value)
    assert OperatorSettings() == OperatorSettings.model_validate({}), "defaults differ"


def test_deployment_follows_image_digest_peering_and_verbose_values() -> None:
    deployment = one(template("deployment.yaml", *EVERYTHING), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "strategy" not in deployment["spec"]  # peering: rolling updates are safe
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/qeval/operator@sha256:" + "a" * 64
    assert container["args"] == ["--verbose"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    custom = operator_container(
        "stages.evaluatorImage.tag=0.2.0-rc1",
        "stages.quantizerImage.repository=registry.local/q",
        "operator.resyncSeconds=5",
        "livenessProbe.port=9090",
        "metrics.port=9000",
    )
    env = env_of(custom)
    assert env["QEVAL_EVALUATOR_IMAGE"] == "ghcr.io/qeval/evaluator:0.2.0-rc1"
    assert env["QEVAL_QUANTIZER_IMAGE"] == "registry.local/q:0.1.0"
    assert env["QEVAL_RESYNC_SECONDS"] == "5"
    assert env["QEVAL_LIVENESS_ENDPOINT"] == "http://0.0.0.0:9090/healthz"
    assert {p["containerPort"] for p in custom["ports"]} == {9000, 9090}


# --- RBAC ----------------------------------------------------------------------------------------

# What the operator calls on the API (qeval.k8s.kube, handlers and kopf 1.45): exactly these,
# as the audit log of tests/test_monitoring.py's stack shows (no get: nothing is read by name).
OPERATOR_RULES = {
    ("qeval.dev", "quantizedmodels"): {"list", "watch"},
    ("qeval.dev", "evalruns"): {"list", "watch"},
    ("qeval.dev", "quantizedmodels/status"): {"patch"},
    ("qeval.dev", "evalruns/status"): {"patch"},
    ("qeval.dev", "quantizedmodels/finalizers"): {"update"},
    ("qeval.dev", "evalruns/finalizers"): {"update"},
    ("batch", "jobs"): {"list", "watch", "create"},
    ("", "configmaps"): {"list", "watch", "create"},
    ("apps", "deployments"): {"list", "watch", "create", "delete"},
    ("", "services"): {"create", "delete"},
    ("", "pods"): {"list"},
    ("", "events"): {"create"},
}
CRDS = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
PEERING = {"get", "list", "watch", "patch"}


def grants(role: Obj) -> dict[tuple[str, str], set[str]]:
    """(group, resource) -> verbs; never a wildcard, never a resource listed twice."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "*" not in rule["apiGroups"] and "resourceNames" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert (group, resource) not in out, f"{resource} listed twice"
                out[(group, resource)] = set(rule["verbs"])
    return out


def test_clusterwide_rbac_is_one_clusterrole_with_exactly_what_the_operator_calls() -> None:
    objs = render()
    role = one(template("clusterrole.yaml"), "ClusterRole")
    assert grants(role) == OPERATOR_RULES | CRDS
    binding = one(template("clusterrolebinding.yaml"), "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = one(template("serviceaccount.yaml"), "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert not template("role.yaml") and not template("rolebinding.yaml")
    assert not of_kind(objs, "Role") or all(
        r["metadata"]["name"] == "qeval-stage" for r in of_kind(objs, "Role")
    )


def test_namespaced_rbac_is_a_role_per_watched_namespace() -> None:
    roles = template("role.yaml", *EVERYTHING)
    bindings = template("rolebinding.yaml", *EVERYTHING)
    assert [r["metadata"]["namespace"] for r in roles] == ["team-a", "team-b"]
    assert [b["metadata"]["namespace"] for b in bindings] == ["team-a", "team-b"]
    for role in roles:
        assert role["kind"] == "Role"
        assert grants(role) == OPERATOR_RULES | {("kopf.dev", "kopfpeerings"): PEERING}
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0] == {
            "kind": "ServiceAccount",
            "name": FULLNAME,
            "namespace": NAMESPACE,
        }
    # Cluster-wide, only what kopf reads to notice namespaces and CRDs.
    discovery = one(template("clusterrole.yaml", *EVERYTHING), "ClusterRole")
    assert grants(discovery) == CRDS | {("", "namespaces"): {"list", "watch"}}
    none = ("watchNamespaces={team-a}", "rbac.clusterDiscovery=false")
    assert not template("clusterrole.yaml", *none)
    assert not template("clusterrolebinding.yaml", *none)


def test_the_operator_runs_vllm_servers_and_the_stage_account_cannot() -> None:
    """backend vllm-server: the operator creates a Deployment and a Service per model, deletes
    them when the stages using them are done, and writes the server's result ConfigMap
    (create only); the server pods run as the stage account, which gets none of it."""
    writes = {
        ("apps", "deployments"): {"create", "delete"},
        ("", "services"): {"create", "delete"},
        ("", "configmaps"): {"create"},
    }
    for sets in ((), EVERYTHING, CLUSTERWIDE_EVERYTHING):
        operator_roles = template("role.yaml", *sets) or template("clusterrole.yaml", *sets)
        for role in operator_roles:
            granted = grants(role)
            for key, verbs in writes.items():
                assert verbs <= granted[key], (role["kind"], key)
            assert {"list", "watch"} <= granted[("apps", "deployments")]  # kopf watches them
            # Nothing changed in place: no patch or update of servers or results.
            assert not {"patch", "update"} & granted[("apps", "deployments")]
            assert not {"patch", "update"} & granted[("", "configmaps")]
            assert not {"patch", "update", "list", "watch"} & granted[("", "services")]
        for role in template("stage-role.yaml", *sets):
            granted = grants(role)
            assert ("apps", "deployments") not in granted and ("", "services") not in granted
            assert not {"delete", "list", "watch"} & granted[("", "configmaps")]
    # Cluster-wide with namespaces named: the small discovery ClusterRole writes nothing.
    discovery = grants(one(template("clusterrole.yaml", *EVERYTHING), "ClusterRole"))
    assert all(verbs <= {"list", "watch"} for verbs in discovery.values())


def test_clusterwide_peering_adds_clusterkopfpeerings() -> None:
    role = one(template("clusterrole.yaml", "peering.enabled=true"), "ClusterRole")
    assert grants(role)[("kopf.dev", "clusterkopfpeerings")] == PEERING
    assert ("kopf.dev", "kopfpeerings") not in grants(role)


def test_no_rbac_when_disabled() -> None:
    objs = render("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops")
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    assert not template("serviceaccount.yaml", "serviceAccount.create=false")
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ops"


def test_stage_pods_get_their_own_account_that_may_only_write_configmaps() -> None:
    for sets, namespaces in (
        ((), [NAMESPACE]),
        (EVERYTHING, ["team-a", "team-b"]),
        (CLUSTERWIDE_EVERYTHING, ["ml", "ml-staging"]),
    ):
        accounts = template("stage-serviceaccount.yaml", *sets)
        roles = template("stage-role.yaml", *sets)
        bindings = template("stage-rolebinding.yaml", *sets)
        for objs in (accounts, roles, bindings):
            assert [o["metadata"]["namespace"] for o in objs] == namespaces
            assert {o["metadata"]["name"] for o in objs} == {"qeval-stage"}
            for o in objs:
                assert o["metadata"]["labels"]["app.kubernetes.io/component"] == "stage"
        for role in roles:
            # qeval.k8s.publish: create the result ConfigMap (immutable: a retried pod's
            # create is AlreadyExists); nothing read, replaced or deleted.
            assert grants(role) == {("", "configmaps"): {"create"}}
        for binding, namespace in zip(bindings, namespaces, strict=True):
            assert binding["roleRef"]["name"] == "qeval-stage"
            assert binding["subjects"] == [
                {"kind": "ServiceAccount", "name": "qeval-stage", "namespace": namespace}
            ]
        env = env_of(operator_container(*sets))
        assert env["QEVAL_STAGE_SERVICE_ACCOUNT"] == "qeval-stage"
    off = "stages.serviceAccount.create=false"
    for name in ("stage-serviceaccount.yaml", "stage-role.yaml", "stage-rolebinding.yaml"):
        assert not template(name, off)


def test_the_stage_admission_policy_admits_a_pods_own_result_configmap_only() -> None:
    """The policy's CEL as data (cel-python, with the strings extension's ``substring`` the
    API server has); tests/test_security.py tries it on the real API server."""
    import celpy
    from celpy import celtypes

    off = "stages.admissionPolicy.enabled=false"
    assert not template("stage-admissionpolicy.yaml", off)
    assert not template("stage-admissionpolicybinding.yaml", off)
    assert one(template("stage-admissionpolicy.yaml"), "ValidatingAdmissionPolicy")  # default on
    policy = one(
        template("stage-admissionpolicy.yaml", *CLUSTERWIDE_EVERYTHING), "ValidatingAdmissionPolicy"
    )
    binding = one(
        template("stage-admissionpolicybinding.yaml", *CLUSTERWIDE_EVERYTHING),
        "ValidatingAdmissionPolicyBinding",
    )
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    namespaces = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]
    assert namespaces["values"] == ["ml", "ml-staging"]
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["configmaps"]
    assert set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE"}
    assert policy["spec"]["failurePolicy"] == "Fail"

    env = celpy.Environment()
    strings = {"substring": lambda s, a, b: celtypes.StringType(str(s)[int(a) : int(b)])}

    def evaluate(expression: str, **activation: Any) -> Any:
        program = env.program(env.compile(expression), functions=strings)
        return program.evaluate(activation)

    def admitted(user: str, operation: str, name: str, pod: str | None, body: Any = None) -> bool:
        info: dict[str, Any] = {"username": user}
        if pod is not None:
            info["extra"] = {"authentication.kubernetes.io/pod-name": [pod]}
        request = celpy.json_to_cel({"userInfo": info, "operation": operation, "name": name})
        (match,) = policy["spec"]["matchConditions"]
        if not evaluate(match["expression"], request=request):
            return True  # not a stage pod: the policy does not apply
        obj = celpy.json_to_cel(body)
        variables: dict[str, Any] = {}
        for v in policy["spec"]["variables"]:
            variables[v["name"]] = evaluate(
                v["expression"], request=request, object=obj, variables=celpy.json_to_cel(variables)
            )
        cel_vars = celpy.json_to_cel({k: str(v) for k, v in variables.items()})
        return all(
            bool(evaluate(v["expression"], request=request, object=obj, variables=cel_vars))
            for v in policy["spec"]["validations"]
        )

    stage = "system:serviceaccount:ml:qeval-stage"
    result = m.build_result_configmap(
        "demo-eval-1a2b3c4d", "ml", {}, {m.MANAGED_BY: m.MANAGER}, None
    )
    job = "demo-eval-1a2b3c4d"
    pod = f"{job}-x7k2q"  # the Job controller's name for its pod
    assert admitted(stage, "CREATE", job, pod, result)
    assert not admitted(stage, "CREATE", "demo-other-1a2b3c4d", pod, result)  # not its Job's
    assert not admitted(stage, "CREATE", "demo-eval", pod, result)  # a prefix of the pod's name
    assert not admitted(stage, "CREATE", job, None, result)  # a token bound to no pod
    assert not admitted(stage, "UPDATE", job, pod, result)
    assert not admitted(stage, "DELETE", job, pod, None)
    unlabelled = result | {"metadata": {"name": job, "labels": {"app": "web"}}}
    assert not admitted(stage, "CREATE", job, pod, unlabelled)
    assert not admitted(stage, "CREATE", job, pod, result | {"immutable": False})
    # Names of 63 characters: the pods are named from their first 58.
    long = "a" * 54 + "-1a2b3c4d"
    assert len(long) == 63
    assert admitted(stage, "CREATE", long, long[:58] + "x7k2q", result)
    assert not admitted(stage, "CREATE", "b" + long[1:], long[:58] + "x7k2q", result)
    # The limit of what such a pod's name says: a name agreeing on those 58 (54 characters
    # of owner and stage, 3 of the hash) is admitted too.
    assert admitted(stage, "CREATE", long[:58] + "99999", long[:58] + "x7k2q", result)
    assert not admitted(stage, "CREATE", long + "b", long[:58] + "x7k2q", result)
    # Anyone else's writes are not the policy's business.
    assert admitted("system:serviceaccount:ml:default", "CREATE", "x", None, {"metadata": {}})


# --- metrics: Service, ServiceMonitor, PrometheusRule, dashboards ----------------------------


def test_metrics_service_selects_the_operator_pod_on_the_metrics_port() -> None:
    service = one(template("service.yaml"), "Service")
    assert service["metadata"]["name"] == f"{FULLNAME}-metrics"
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics"
    pod_labels = one(render(), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert not template("service.yaml", "metrics.service.enabled=false")


def test_servicemonitor_is_off_by_default_and_scrapes_the_metrics_service() -> None:
    assert not template("servicemonitor.yaml")
    monitor = one(template("servicemonitor.yaml", *EVERYTHING), "ServiceMonitor")
    assert monitor["apiVersion"] == MONITORING
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = one(template("service.yaml", *EVERYTHING), "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    # ... and no other Service of the chart.
    matched = [
        o["metadata"]["name"]
        for o in of_kind(render(*EVERYTHING), "Service")
        if selector.items() <= o["metadata"]["labels"].items()
    ]
    assert matched == [service["metadata"]["name"]]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s"
    assert endpoint["honorLabels"] is True  # keeps the resources' own namespace label


def test_server_servicemonitor_follows_the_flags_and_scrapes_vllm_servers_where_they_run() -> None:
    assert not template("servicemonitor-servers.yaml")  # no ServiceMonitor at all by default
    off = ("metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.servers=false")
    assert not template("servicemonitor-servers.yaml", *off)
    assert template("servicemonitor.yaml", *off)  # the operator's own stays
    # A server's Service as the operator builds it (qeval.k8s.manifests.build_server).
    _, service = server()
    (port,) = service["spec"]["ports"]
    for sets, namespaces in (
        (EVERYTHING, {"matchNames": ["team-a", "team-b"]}),
        (CLUSTERWIDE_EVERYTHING, {"any": True}),
    ):
        monitor = one(template("servicemonitor-servers.yaml", *sets), "ServiceMonitor")
        assert monitor["apiVersion"] == MONITORING
        assert monitor["metadata"]["name"] == f"{FULLNAME}-servers"
        assert monitor["metadata"]["namespace"] == NAMESPACE
        assert monitor["metadata"]["labels"]["app.kubernetes.io/component"] == "serving"
        # The labels the Prometheus' serviceMonitorSelector matches, as on the operator's.
        operator_monitor = one(template("servicemonitor.yaml", *sets), "ServiceMonitor")
        mine, its = monitor["metadata"]["labels"], operator_monitor["metadata"]["labels"]
        assert mine.get("release") == its.get("release")
        assert monitor["spec"]["namespaceSelector"] == namespaces
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector == {m.MANAGED_BY: m.MANAGER, m.LABEL_STAGE_KIND: "serve"}
        assert selector.items() <= service["metadata"]["labels"].items()
        # ... and no Service of the chart (the operator's metrics Service has its own monitor).
        charts = of_kind(render(*sets), "Service")
        assert not [s for s in charts if selector.items() <= s["metadata"]["labels"].items()]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == port["name"] == "http" and endpoint["path"] == "/metrics"
        assert endpoint["honorLabels"] is True
        assert endpoint["interval"] == "30s" and endpoint["scrapeTimeout"] == "10s"
        # The server's EvalRun and stage (its Service's labels, as Prometheus' Kubernetes
        # discovery names them) become `run` (as on qeval_benchmark_*) and `stage`.
        meta = {
            "__meta_kubernetes_service_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v
            for k, v in service["metadata"]["labels"].items()
        }
        relabeled = {}
        for rule in endpoint["relabelings"]:
            assert rule["action"] == "replace" and len(rule["sourceLabels"]) == 1, rule
            relabeled[rule["targetLabel"]] = meta[rule["sourceLabels"][0]]
        assert relabeled == {"run": "llama-3.1-8b-serving", "stage": "serve-bf16"}
    labelled = one(template("servicemonitor-servers.yaml", *EVERYTHING), "ServiceMonitor")
    assert labelled["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def alerts(*sets: str) -> dict[str, Obj]:
    rule = one(template("prometheusrule.yaml", *sets), "PrometheusRule")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def test_prometheusrule_is_off_by_default_and_alerts_on_failures_recovery_and_the_operator() -> (
    None
):
    assert not template("prometheusrule.yaml")
    rule = one(template("prometheusrule.yaml", *EVERYTHING), "PrometheusRule")
    assert rule["apiVersion"] == MONITORING
    found = alerts(*EVERYTHING)
    assert set(found) == {
        "QevalEvalRunFailed",
        "QevalQuantizedModelFailed",
        "QevalRecoveryBelowThreshold",
        "QevalTaskRecoveryBelowThreshold",
        "QevalOperatorDown",
    }
    assert found["QevalRecoveryBelowThreshold"]["expr"] == "qeval_mean_recovery_ratio < 0.97"
    assert "97%" in found["QevalRecoveryBelowThreshold"]["annotations"]["summary"]
    # A task fires on its primary metric's whole interval (not a secondary filter's).
    assert (
        found["QevalTaskRecoveryBelowThreshold"]["expr"]
        == 'qeval_recovery_ratio_ci_high{primary="true"} < 0.9'
    )
    down = found["QevalOperatorDown"]
    assert (
        f'job="{FULLNAME}-metrics"' in down["expr"] and f'namespace="{NAMESPACE}"' in down["expr"]
    )
    assert down["for"] == "5m" and down["labels"]["severity"] == "critical"
    for alert in found.values():
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    custom = alerts(
        "metrics.prometheusRule.enabled=true",
        "metrics.prometheusRule.operatorDownFor=10m",
        "metrics.prometheusRule.additionalAlertLabels.team=ml",
    )
    assert custom["QevalOperatorDown"]["for"] == "10m"
    assert all(a["labels"]["team"] == "ml" for a in custom.values())


def test_dashboards_are_configmaps_for_the_grafana_sidecar() -> None:
    assert not template("dashboards-configmap.yaml")
    maps = template("dashboards-configmap.yaml", *EVERYTHING)
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert len(maps) == len(files) == 2
    for cm, path in zip(sorted(maps, key=lambda c: c["metadata"]["name"]), files, strict=True):
        assert cm["kind"] == "ConfigMap"
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["namespace"] == NAMESPACE
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())
    moved = template(
        "dashboards-configmap.yaml",
        "dashboards.enabled=true",
        "dashboards.namespace=monitoring",
        "dashboards.annotations.grafana_folder=qeval",
    )
    assert {cm["metadata"]["namespace"] for cm in moved} == {"monitoring"}
    assert all(cm["metadata"]["annotations"] == {"grafana_folder": "qeval"} for cm in moved)


@pytest.mark.parametrize(
    "path", sorted((CHART / "dashboards").glob("*.json")), ids=lambda p: p.stem
)
def test_dashboards_use_the_datasource_variable_never_a_fixed_uid(path: Path) -> None:
    board = json.loads(path.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))

    def sources(node: Any) -> Iterable[Any]:
        if isinstance(node, dict):
            if "datasource" in node:
                yield node["datasource"]
            for value in node.values():
                yield from sources(value)
        elif isinstance(node, list):
            for value in node:
                yield from sources(value)

    for source in sources({k: v for k, v in board.items() if k != "annotations"}):
        if source.get("type") == "datasource":
            continue
        assert source == {"type": "prometheus", "uid": "${datasource}"}, source
    for panel in panels:
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])


def test_the_recovery_dashboard_shows_primary_metrics_by_default() -> None:
    """Each result selector follows $primary (default true: the metric the verdict judges),
    except the baseline's side of a difference, which follows the candidate's by filter."""
    board = json.loads((CHART / "dashboards" / "qeval-recovery.json").read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    primary = variables["primary"]
    assert primary["type"] == "custom" and primary["query"] == "true,false"
    assert primary["current"]["value"] == "true" and primary["includeAll"]
    assert 'primary=~"$primary"' in variables["task"]["query"]["query"]
    selectors = [
        (found[1], found[2])
        for panel in board["panels"]
        for target in panel.get("targets", [])
        for found in re.finditer(r"(qeval_(?:score|recovery_ratio)\w*)\{([^}]*)\}", target["expr"])
    ]
    assert len(selectors) == 10
    for name, labels in selectors:
        assert 'primary=~"$primary"' in labels or 'scheme="baseline"' in labels, (name, labels)
    # Scores where lower is better (perplexities) have a panel of their own, never a percent
    # axis beside the accuracies.
    units = {
        (p["fieldConfig"]["defaults"].get("unit"), 'better="lower"' in t["expr"])
        for p in board["panels"]
        for t in p.get("targets", [])
        if re.search(r"qeval_score\w*\{", t["expr"])
    }
    assert units == {("percentunit", False), ("none", True), (None, False)}, units
    for name, labels in selectors:
        if name.startswith("qeval_score"):
            assert 'better="higher"' in labels or 'better="lower"' in labels, (name, labels)
    (change,) = [
        t["expr"]
        for p in board["panels"]
        if p["title"] == "Score change vs baseline"
        for t in p["targets"]
    ]
    assert "on (namespace, run, task, metric, filter) group_left" in change


# --- storage and peering --------------------------------------------------------------------------


def test_storage_claim_is_made_in_each_stage_namespace_readwriteonce_by_default() -> None:
    # ReadWriteOnce: what every StorageClass gives, block storage (EBS, PD, Azure Disk) too.
    (claim,) = template("storage-pvc.yaml")
    assert claim["metadata"]["namespace"] == NAMESPACE  # cluster-wide: the release's
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"]  # the cluster's default class
    claims = template("storage-pvc.yaml", *EVERYTHING)
    assert [c["metadata"]["namespace"] for c in claims] == ["team-a", "team-b"]
    for claim in claims:
        assert claim["metadata"]["name"] == "qeval-data"
        assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert env_of(operator_container(*EVERYTHING))["QEVAL_STORAGE_CLAIM"] == "qeval-data"
    custom = (
        "storage.claimName=models",
        "storage.storageClassName=efs-sc",
        "storage.accessModes={ReadWriteMany}",
        "storage.size=2Ti",
        "storage.keep=false",
    )
    (claim,) = template("storage-pvc.yaml", *custom)
    assert claim["metadata"]["name"] == "models" and "annotations" not in claim["metadata"]
    assert claim["spec"]["storageClassName"] == "efs-sc"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Ti"
    assert env_of(operator_container(*custom))["QEVAL_STORAGE_CLAIM"] == "models"
    assert not template("storage-pvc.yaml", "storage.create=false")


def test_an_existing_claim_is_mounted_and_none_is_created() -> None:
    brought = ("storage.existingClaim=shared-models", "watchNamespaces={ml}")
    assert not template("storage-pvc.yaml", *brought)  # though `create` is on
    assert env_of(operator_container(*brought))["QEVAL_STORAGE_CLAIM"] == "shared-models"
    # What the operator then mounts in every stage pod (the chart's env, read back).
    settings = OperatorSettings.model_validate(
        {"storage_claim": env_of(operator_container(*brought))["QEVAL_STORAGE_CLAIM"]}
    )
    volumes = quantize_job(settings)["spec"]["template"]["spec"]["volumes"]
    claims = {
        v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    }
    assert "shared-models" in claims and "qeval-data" not in claims


@pytest.mark.parametrize(
    ("value", "message"),
    [
        # Stage pods write to it, and several run side by side.
        ("storage.accessModes={ReadOnlyMany}", "/storage/accessModes/0"),
        ("storage.accessModes={ReadWriteOncePod}", "/storage/accessModes/0"),
        ("storage.existingClaim=Models_1", "/storage/existingClaim"),
        ("storage.storageClassName=Fast SSD", "/storage/storageClassName"),
        ("storage.size=200GB", "/storage/size"),
    ],
)
def test_bad_storage_values_are_refused_naming_the_value(value: str, message: str) -> None:
    done = run_helm("template", RELEASE, str(CHART), *value_args([value]))
    assert done.returncode != 0, f"{value} was accepted"
    assert message in done.stderr, done.stderr


def test_peering_objects_follow_the_watch_scope() -> None:
    assert not template("peering.yaml")
    (cluster,) = template("peering.yaml", "peering.enabled=true")
    assert (cluster["apiVersion"], cluster["kind"]) == ("kopf.dev/v1", "ClusterKopfPeering")
    namespaced = template("peering.yaml", *EVERYTHING)
    assert [(p["kind"], p["metadata"]["namespace"]) for p in namespaced] == [
        ("KopfPeering", "team-a"),
        ("KopfPeering", "team-b"),
    ]
    assert env_of(operator_container(*EVERYTHING))["QEVAL_PEERING"] == "qeval"


def test_every_template_has_a_rendering_test_here() -> None:
    """One template per object, each exercised above (a new template needs its test)."""
    text = Path(__file__).read_text()
    for path in sorted((CHART / "templates").glob("*.yaml")):
        assert f'"{path.name}"' in text, f"{path.name} has no rendering test"


# --- the chart in a real API server ---------------------------------------------------------

# The Prometheus Operator's and kopf's CRDs (for the chart's optional objects) are not
# shipped by any registry here: these stand-ins give the API server their names and scope
# and accept any content (a stand-in: the real CRDs' schemas are not checked).
FOREIGN_CRDS = [
    ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors", "Namespaced"),
    ("monitoring.coreos.com", "PrometheusRule", "prometheusrules", "Namespaced"),
    ("kopf.dev", "KopfPeering", "kopfpeerings", "Namespaced"),
    ("kopf.dev", "ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
]


def foreign_crds() -> str:
    docs = []
    for group, kind, plural, scope in FOREIGN_CRDS:
        docs.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.{group}"},
                "spec": {
                    "group": group,
                    "scope": scope,
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    ],
                },
            }
        )
    return yaml.safe_dump_all(docs)


def gvr(obj: Obj) -> str:
    """``apps/v1/deployments`` for a Deployment (plural: lowercased kind + s, or the CRD's)."""
    plurals = {kind: plural for _, kind, plural, _ in FOREIGN_CRDS}
    plurals |= {"ValidatingAdmissionPolicy": "validatingadmissionpolicies"}
    kind = obj["kind"]
    return f"{obj['apiVersion']}/{plurals.get(kind, kind.lower() + 's')}"


def namespaces_of(objs: Iterable[Obj]) -> list[Obj]:
    names = {NAMESPACE} | {o["metadata"].get("namespace") for o in objs} - {None, "default"}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in sorted(names)
    ]


@pytest.fixture
def fresh_control_plane() -> Iterator[ControlPlane]:
    """A control plane of its own: the chart's cluster-scoped objects and fixed names
    (qeval-stage, the claim) would meet those of other tests in the shared one."""
    with ControlPlane() as cp:
        cp.kubectl("apply", "-f", "-", input=foreign_crds())
        yield cp


def block_volume(name: str) -> Obj:
    """A PersistentVolume such as a block-storage class provisions: ReadWriteOnce only."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "200Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": f"/tmp/{name}"},
        },
    }


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_helm_template_applies_to_a_real_api_server(
    fresh_control_plane: ControlPlane, values: str
) -> None:
    """``helm template | kubectl apply -f -``: what `helm install` sends, accepted by a real
    1.35 API server (schemas, admission, RBAC escalation checks) and kubectl 1.35, and
    idempotent (a second apply changes nothing)."""
    cp = fresh_control_plane
    cp.kubectl("apply", "-f", str(CHART / "crds"))
    manifests = rendered(*VALUE_SETS[values])
    objs = render(*VALUE_SETS[values])
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(namespaces_of(objs)))
    first = cp.kubectl("apply", "-f", "-", input=manifests)
    assert first.stdout.count(" created") == len(objs), first.stdout
    for obj in objs:
        meta = obj["metadata"]
        stored = cp.get(gvr(obj), meta.get("namespace"), meta["name"])
        assert stored is not None, f"{obj['kind']} {meta['name']} was not stored"
        assert stored["metadata"]["labels"] == meta["labels"]
    again = cp.kubectl("apply", "-f", "-", input=manifests)
    assert again.stdout.count(" unchanged") == len(objs), again.stdout
    # The CRDs the chart ships are served: the examples apply.
    cp.kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "examples" / "evalrun.yaml"))
    listed = cp.kubectl("get", "-n", NAMESPACE, "evalruns", "-o", "name")
    assert listed.stdout.strip() == "evalrun.qeval.dev/demo"


def test_helm_install_upgrade_and_uninstall_on_a_real_api_server(
    fresh_control_plane: ControlPlane,
) -> None:
    """The real helm against the real API server: releases stored (as Secrets, protobuf),
    the chart's kubeVersion check against the server's stamped version, an upgrade that
    changes a setting in place, and an uninstall that keeps the CRDs and the storage claim
    (as Helm does with crds/ and resource-policy keep) and removes the rest."""
    cp = fresh_control_plane
    install = (
        "--namespace", NAMESPACE, "--create-namespace",
        "--set", "watchNamespaces={ml}",
    )  # fmt: skip
    cp.kubectl("create", "namespace", "ml")
    # The only volume there is gives ReadWriteOnce alone, as block storage does (EBS, GCE PD,
    # Azure Disk): the default claim binds to it (a ReadWriteMany claim would stay Pending).
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(block_volume("block-0")))
    done = cp.helm("install", RELEASE, str(CHART), *install)
    assert "STATUS: deployed" in done.stdout
    releases = cp.list("v1/secrets", NAMESPACE, {"owner": "helm", "name": RELEASE})
    assert [r["metadata"]["labels"]["version"] for r in releases] == ["1"]
    deployment = cp.get("apps/v1/deployments", NAMESPACE, FULLNAME)
    assert deployment is not None
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["QEVAL_NAMESPACES"] == "ml"
    claim = wait_for(
        lambda: (
            (c := cp.get("v1/persistentvolumeclaims", "ml", "qeval-data"))
            and c.get("status", {}).get("phase") == "Bound"
            and c
        ),
        "the chart's claim bound by the real PV binder",
        timeout=30,
    )
    assert claim["spec"]["volumeName"] == "block-0"
    assert claim["status"]["accessModes"] == ["ReadWriteOnce"]
    assert cp.get("rbac.authorization.k8s.io/v1/roles", "ml", FULLNAME) is not None

    cp.helm("upgrade", RELEASE, str(CHART), *install, "--set", "operator.resyncSeconds=30")
    history = json.loads(cp.helm("history", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]
    deployment = cp.get("apps/v1/deployments", NAMESPACE, FULLNAME)
    assert deployment is not None
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["QEVAL_RESYNC_SECONDS"] == "30"

    done = cp.helm("uninstall", RELEASE, "-n", NAMESPACE)
    assert "uninstalled" in done.stdout
    assert cp.get("apps/v1/deployments", NAMESPACE, FULLNAME) is None
    assert cp.get("rbac.authorization.k8s.io/v1/roles", "ml", FULLNAME) is None
    assert not cp.list("v1/secrets", NAMESPACE, {"owner": "helm", "name": RELEASE})
    crds = "apiextensions.k8s.io/v1/customresourcedefinitions"
    assert cp.get(crds, None, "evalruns.qeval.dev") is not None
    assert cp.get(crds, None, "quantizedmodels.qeval.dev") is not None
    assert cp.get("v1/persistentvolumeclaims", "ml", "qeval-data") is not None


def test_notes_tell_where_the_operator_runs_and_what_to_apply() -> None:
    done = run_helm(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
        "--set", "watchNamespaces={ml}", "--set", "storage.create=true",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "serving the namespaces ml" in notes
    assert f"rollout status deploy/{FULLNAME}" in notes
    assert "kubectl -n ml apply -f examples/evalrun.yaml" in notes
    assert "(created in: ml, ReadWriteOnce)" in notes
    assert "storage.accessModes={ReadWriteMany}" in notes  # the way out of RWO, spelt out
