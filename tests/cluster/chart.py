"""The Helm chart's objects in the real control plane: rendered by the real helm, applied by
the real kubectl, so the tests run the operator and the stage pods under the chart's RBAC."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.controlplane import ControlPlane
from tests.kube import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "qeval-operator"
# What a namespace needs for the operator to serve it and for its stage pods to run there.
RBAC_TEMPLATES = (
    "serviceaccount.yaml",
    "stage-serviceaccount.yaml",
    "clusterrole.yaml",
    "clusterrolebinding.yaml",
    "role.yaml",
    "rolebinding.yaml",
    "stage-role.yaml",
    "stage-rolebinding.yaml",
    "storage-pvc.yaml",
)
# The admission policy that binds each result ConfigMap to the stage pod that may write it
# (cluster-scoped; its binding selects the release's stage namespaces).
POLICY_TEMPLATES = ("stage-admissionpolicy.yaml", "stage-admissionpolicybinding.yaml")


def render(release: str, namespace: str, *sets: str, only: tuple[str, ...] = ()) -> list[Any]:
    """``helm template`` of the chart: its objects as data (``only``: these templates)."""
    argv = [str(binaries.helm()), "template", release, str(CHART), "-n", namespace]
    for value in sets:
        argv += ["--set", value]
    for template in only:
        argv += ["--show-only", f"templates/{template}"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"helm template failed:\n{done.stderr}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@dataclass(frozen=True)
class Identities:
    """Kubeconfigs of the chart's two ServiceAccounts in one watched namespace."""

    release: str
    namespace: str
    operator: Path  # the operator's ServiceAccount (its Role and the discovery ClusterRole)
    stage: Path  # qeval-stage: what stage pods publish their results with
    operator_user: str  # as the audit log names them
    stage_user: str


def install_identities(
    cp: ControlPlane, namespace: str, *, stage_policy: bool = False
) -> Identities:
    """The chart's RBAC, ServiceAccounts and storage claim for an operator that watches
    ``namespace`` and runs there (release ``qeval-<namespace>``), with a volume for the claim;
    returns kubeconfigs carrying the ServiceAccounts' TokenRequest tokens (bound to no pod).

    ``stage_policy``: also the stage admission policy, which refuses writes with such
    tokens: stage pods then publish only with tokens bound to their pods."""
    release = f"qeval-{namespace}"
    sets = (f"watchNamespaces={{{namespace}}}", "storage.create=true")
    templates = RBAC_TEMPLATES + (POLICY_TEMPLATES if stage_policy else ())
    objects = render(release, namespace, *sets, only=templates)
    cp.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))
    for claim in (o for o in objects if o["kind"] == "PersistentVolumeClaim"):
        cp.provide_volume(namespace, claim["metadata"]["name"])
    (operator_sa,) = (
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "ServiceAccount" and o["metadata"]["name"] != "qeval-stage"
    )
    return Identities(
        release=release,
        namespace=namespace,
        operator=cp.service_account_kubeconfig(namespace, operator_sa),
        stage=cp.service_account_kubeconfig(namespace, "qeval-stage"),
        operator_user=f"system:serviceaccount:{namespace}:{operator_sa}",
        stage_user=f"system:serviceaccount:{namespace}:qeval-stage",
    )
