"""Shared fixtures. Nothing here reaches a network: model hubs are switched off."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def root() -> Path:
    return ROOT


# --- the real control plane (tests/cluster) --------------------------------------------------

if TYPE_CHECKING:
    from tests.cluster.controlplane import ControlPlane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A real kube-apiserver, controller-manager and scheduler with etcd, for the whole
    session, with the repository's CRDs applied (by the real kubectl) and the nodes of a
    small GPU cluster registered: an 8-GPU H100 node tainted ``nvidia.com/gpu``, an untainted
    8-GPU A100 node and a CPU-only node (no kubelet runs them: tests play it, or start the
    kubelet stand-in)."""
    from tests.cluster.controlplane import ControlPlane
    from tests.cluster.kubelet import cpu_node, gpu_node

    with ControlPlane() as cp:
        cp.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        a100 = gpu_node("gpu-1", product="NVIDIA-A100-SXM4-80GB", compute_major=8, tainted=False)
        for node in (gpu_node("gpu-0"), a100, cpu_node("cpu-0")):
            cp.register_node(node)
        yield cp


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace of the control plane for one test (Pod Security: restricted)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:6]
    name = control_plane.create_namespace(f"{slug}-{digest}")
    yield name
    control_plane.request("DELETE", f"/api/v1/namespaces/{name}")
