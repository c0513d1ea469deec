"""The accelerator switches of a run: fast numerics, opt-in determinism, batch transfer.

build-nanogpt turns on TF32 matmuls and bf16 autocast on CUDA; both change no result that
matters and roughly double throughput. What they do not give is a *bitwise* repeatable step: some
CUDA kernels (atomics in scatter/index backward, cuBLAS split-K reductions picked by workspace
size) sum in a different order each time, so a resumed run drifts from an uninterrupted one in
the last bits after the first step. ``--deterministic`` asks torch for deterministic kernels
everywhere and raises on any op that has none (never a silent fallback), and pins cuBLAS's
workspace so its reduction order is fixed. On CPU every kernel this model uses is deterministic
already; the flag costs nothing there. Its price on a GPU is in docs/performance.md.

Batches go to the GPU from pinned (page-locked) host memory with ``non_blocking=True``: the copy
overlaps the previous step's work instead of stalling the stream.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import torch

# The cuBLAS setting torch's reproducibility notes require with deterministic algorithms: a fixed
# workspace (4096 KiB x 8) makes cuBLAS pick one reduction order. It must be in the environment
# before the first cuBLAS handle is created, i.e. before the first matmul on the device.
CUBLAS_WORKSPACE_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC_WORKSPACES = (":4096:8", ":16:8")


def configure_determinism(deterministic: bool) -> str | None:
    """Switch deterministic algorithms on (before any CUDA work); the line to print, or None.

    A user's own ``CUBLAS_WORKSPACE_CONFIG`` is kept when it is one of the two deterministic
    values; any other value is replaced, since it would make cuBLAS non-repeatable again.
    """
    if not deterministic:
        return None
    if os.environ.get(CUBLAS_WORKSPACE_ENV) not in CUBLAS_DETERMINISTIC_WORKSPACES:
        os.environ[CUBLAS_WORKSPACE_ENV] = CUBLAS_DETERMINISTIC_WORKSPACES[0]
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return (f"deterministic algorithms on ({CUBLAS_WORKSPACE_ENV}={os.environ[CUBLAS_WORKSPACE_ENV]}): "
            "bitwise-repeatable steps, slower on a GPU")


def configure_fast_math(device_type: str) -> None:
    """TF32 matmuls on CUDA (build-nanogpt's ``set_float32_matmul_precision('high')``)."""
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")


def autocast_for(device_type: str) -> Callable[[], Any]:
    """bf16 autocast on CUDA; nothing on CPU (fp32 there, as build-nanogpt's CPU path)."""
    if device_type == "cuda":
        return lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def to_device(batch: torch.Tensor, device: str) -> torch.Tensor:
    """``batch`` on ``device``; to a GPU from pinned memory without blocking the host."""
    if not device.startswith("cuda"):
        return batch.to(device)
    return batch.pin_memory().to(device, non_blocking=True)
