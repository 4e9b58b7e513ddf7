"""A stage given GPUs that finds none fails at once, saying why, instead of running on the CPU.

torch 2.13 and vLLM 0.33 are CUDA 13 builds: on a node whose NVIDIA driver is older than
580 CUDA reports no device, and llm-compressor then logs "No accelerator available!
Compressing model on CPU instead" and quantizes an 8B model on the CPU for hours while the
pod holds its GPUs. Every stage and server pod that requests GPUs gets ``GPUS_ENV`` set to
the number it was given; ``require_gpus`` (called by the stage envelope before a stage
runs, and by ``qeval serve`` before vLLM starts) compares it with what CUDA sees.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from qeval.reasons import INVALID_INPUT
from qeval.stages.envelope import StageError

# The variable the manifests set, on every pod that requests GPUs, to the number requested.
GPUS_ENV = "QEVAL_GPUS"
# The oldest NVIDIA driver branch that runs CUDA 13 builds (torch 2.13+cu130, vLLM 0.33).
MIN_DRIVER = 580


def gpus_given(environ: Mapping[str, str] = os.environ) -> int:
    """How many GPUs the pod was given (0 when ``GPUS_ENV`` is unset or empty)."""
    raw = environ.get(GPUS_ENV, "").strip()
    if not raw:
        return 0
    try:
        count = int(raw)
    except ValueError:
        count = -1
    if count < 0:
        raise StageError(
            INVALID_INPUT,
            f"{GPUS_ENV}={raw!r}: must be the whole number of GPUs the pod was given "
            f"(0 or more); unset it for a stage without GPUs",
        )
    return count


def gpu_problem(given: int, visible: int, cuda: str | None, why: str | None) -> str | None:
    """Why a pod given ``given`` GPUs cannot use them when CUDA sees ``visible`` (torch
    built for CUDA ``cuda``, None for a CPU-only build; ``why``: torch's reason, if any),
    or None when it can."""
    if given <= 0 or visible >= given:
        return None
    build = f"torch built for CUDA {cuda}" if cuda else "a CPU-only build of torch"
    message = (
        f"this stage was given {given} GPU{'s' if given != 1 else ''} ({GPUS_ENV}={given}) "
        f"but CUDA sees {visible} ({build})"
    )
    if why:
        message += f": {why}"
    return (
        message + f". CUDA 13 builds (torch 2.13, vLLM 0.33) need NVIDIA driver >= {MIN_DRIVER}: "
        "check the node's driver (nvidia-smi) and the NVIDIA device plugin, or schedule "
        "the stage on nodes that have them"
    )


def _cuda_unavailable_reason(torch: Any) -> str | None:
    """torch's own explanation of why CUDA cannot start (no driver, driver too old, a
    CPU-only build), or None."""
    try:
        torch.cuda.init()
    except (RuntimeError, AssertionError) as e:
        return " ".join(str(e).split()) or type(e).__name__
    return None


def missing_gpus(environ: Mapping[str, str] = os.environ) -> str | None:
    """What is wrong with the GPUs this pod was given, or None (nothing given, or all
    visible). Imports torch only when GPUs were given. For ``qeval serve``, which prints
    the message and exits before starting vLLM."""
    given = gpus_given(environ)
    if given == 0:
        return None
    import torch

    visible = torch.cuda.device_count()
    why = _cuda_unavailable_reason(torch) if visible < given else None
    return gpu_problem(given, visible, torch.version.cuda, why)


def require_gpus(environ: Mapping[str, str] = os.environ) -> None:
    """Raise StageError(NoGPU) when the pod was given GPUs that CUDA does not see."""
    if (problem := missing_gpus(environ)) is not None:
        raise StageError("NoGPU", problem)
