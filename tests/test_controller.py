"""The controller's writes, with the API played by a recorder: what a status patch holds."""

from __future__ import annotations

import asyncio
from typing import Any

from qeval.k8s import manifests as m
from qeval.k8s.controller import Controller
from qeval.k8s.metrics import Metrics
from qeval.k8s.reconcile import Decision
from qeval.k8s.settings import OperatorSettings


class RecordingKube:
    """A stand-in for ``Kube`` that records status patches (nothing else is called here)."""

    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patches.append(status)


def test_a_status_patch_removes_the_keys_the_new_status_no_longer_has() -> None:
    """A merge patch keeps every key it does not name: an old ``failures`` or
    ``meanRecovery`` would stay on the object unless the patch sets it to null."""
    settings, kube = OperatorSettings(), RecordingKube()
    controller = Controller(settings, kube, Metrics())  # type: ignore[arg-type]
    body = {
        "kind": "EvalRun",
        "metadata": {"name": "r", "namespace": "default", "uid": "uid-1"},
        "status": {"phase": "Running", "meanRecovery": 0.9, "failures": [{"stage": "x"}]},
    }
    owner = m.Owner("EvalRun", "r", "default", "uid-1")
    decision = Decision(status={"phase": "Pending", "progress": "0/7"})
    layout = m.cluster_layout(settings, "default", "r")
    asyncio.run(controller._apply(body, owner, decision, layout, None))  # type: ignore[arg-type]
    assert kube.patches == [
        {"phase": "Pending", "progress": "0/7", "meanRecovery": None, "failures": None}
    ]
