"""Capture and restore every random-number generator the training loop touches.

Stored in weights_only-safe types only (tensors, ints, floats, strings, lists), so checkpoints load
with ``torch.load(weights_only=True)``: numpy's key array becomes an int64 tensor and Python's
state tuple becomes a list. Restoring accepts the older shapes too (numpy arrays, tuples, CUDA
states saved as lists of per-device tensors) because checkpoints outlive code versions.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class RngRestoreReport:
    """What could not be restored exactly (printed once, never fatal)."""

    notes: list[str]


def capture_rng_state(device_type: str) -> dict[str, Any]:
    """The four RNG entries of the checkpoint dict (docs/checkpoints.md)."""
    np_state = np.random.get_state()
    return {
        "rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state() if device_type == "cuda" else None,
        "numpy_rng_state": [
            str(np_state[0]),
            torch.from_numpy(np.asarray(np_state[1], dtype=np.int64).copy()),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python_rng_state": _python_state_to_list(random.getstate()),
    }


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss_next = state
    return [int(version), [int(v) for v in internal], gauss_next]


def _as_byte_tensor(value: Any) -> torch.Tensor:
    """torch/cuda RNG states have been saved as ByteTensor, numpy uint8 arrays and lists."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.uint8)
    return torch.tensor(np.asarray(value, dtype=np.uint8), dtype=torch.uint8)


def restore_rng_state(checkpoint: dict[str, Any], device_type: str) -> RngRestoreReport:
    notes: list[str] = []
    if checkpoint.get("rng_state") is not None:
        torch.set_rng_state(_as_byte_tensor(checkpoint["rng_state"]))
    else:
        notes.append("checkpoint has no torch RNG state; torch RNG not restored")

    cuda_state = checkpoint.get("cuda_rng_state")
    if cuda_state is not None:
        if device_type == "cuda" and torch.cuda.is_available():
            if isinstance(cuda_state, (list, tuple)):  # get_rng_state_all() format
                index = torch.cuda.current_device()
                cuda_state = cuda_state[index] if index < len(cuda_state) else cuda_state[0]
            torch.cuda.set_rng_state(_as_byte_tensor(cuda_state))
        else:
            notes.append("checkpoint was made on CUDA; resuming on CPU, CUDA RNG state ignored")

    np_state = checkpoint.get("numpy_rng_state")
    if np_state is not None:
        name, keys, pos, has_gauss, cached = np_state
        if isinstance(keys, torch.Tensor):
            keys = keys.numpy()
        np.random.set_state(
            (str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))
        )
    py_state = checkpoint.get("python_rng_state")
    if py_state is not None:
        version, internal, gauss_next = py_state
        random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    return RngRestoreReport(notes)
