"""Shared fixtures. Nothing here reaches a network: model hubs are switched off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def root() -> Path:
    return ROOT


# --- the emulated Kubernetes API server -------------------------------------------------------

from collections.abc import Iterator  # noqa: E402  (kept with the fixture it serves)
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from tests.kube.emulator import Cluster


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """An emulated API server with the repo's CRDs applied (see tests/kube/emulator.py).

    It fails the test at teardown if the emulator itself raised (a bug, not an API error).
    """
    from tests.kube.emulator import Cluster

    with Cluster() as started:
        started.apply_crds(ROOT / "crds")
        yield started
        assert not started.errors, f"the emulated API server failed: {started.errors!r}"
