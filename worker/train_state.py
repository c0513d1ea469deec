"""What a checkpoint holds, as one readable list (torchtitan-style stateful composition).

Each piece that must survive a restart (model, optimizer, data loader, RNGs, progress) exposes its
own state; these two functions only compose them under build-nanogpt's key names
(docs/checkpoints.md). Adding a new piece of state touches this file, never the training loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from shared.checkpoint_format import FORMAT_VERSION
from worker.model import GPT
from worker.rng import RngRestoreReport, capture_rng_state, restore_rng_state


@dataclass
class TrainProgress:
    step: int = -1  # last completed optimizer step
    val_loss: float | None = None


def compose_checkpoint(
    model: GPT,
    optimizer: torch.optim.Optimizer,
    progress: TrainProgress,
    train_loader: Any,
    device_type: str,
    train_config: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": model.config.to_dict(),
        "step": progress.step,
        "val_loss": progress.val_loss,
        "train_loader_state": train_loader.get_state(),
        **capture_rng_state(device_type),
        "format_version": FORMAT_VERSION,
        "train_config": train_config,
    }


def restore_full_state(
    checkpoint: dict[str, Any],
    model: GPT,
    optimizer: torch.optim.Optimizer,
    train_loader: Any,
    device_type: str,
) -> tuple[TrainProgress, RngRestoreReport]:
    """Mode 1 of docs/checkpoints.md (--resume / --auto_resume): every piece of state."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    train_loader.set_state(checkpoint["train_loader_state"])
    report = restore_rng_state(checkpoint, device_type)
    val_loss = checkpoint.get("val_loss")
    progress = TrainProgress(step=int(checkpoint["step"]), val_loss=None if val_loss is None else float(val_loss))
    return progress, report
