"""What a checkpoint holds, as one readable list (torchtitan-style stateful composition).

Each piece that must survive a restart (model, optimizer, data loader, RNGs, progress) exposes its
own state; ``compose_checkpoint`` / ``restore_full_state`` only compose them under build-nanogpt's
checkpoint key names (docs/checkpoints.md), and ``TrainingState`` registers the pieces once so the checkpointer can save and
restore them without the training loop listing them. Adding a new piece of state touches this file,
never the loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from shared.checkpoint_format import FORMAT_VERSION
from worker.checkpointing.rng import (
    RngRestoreReport,
    capture_rng_state,
    restore_rng_state,
)
from worker.model import GPT
from worker.runtime import startup_clock


class Stateful(Protocol):
    def load_state_dict(self, state: Any) -> Any: ...


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
        "train_loader_state": train_loader.state_dict(),
        **capture_rng_state(device_type),
        "format_version": FORMAT_VERSION,
        "train_config": train_config,
    }


def restore_full_state(
    checkpoint: dict[str, Any],
    model: GPT,
    optimizer: torch.optim.Optimizer,
    train_loader: Stateful,
    device_type: str,
) -> tuple[TrainProgress, RngRestoreReport]:
    """Mode 1 of docs/checkpoints.md (--resume / --auto_resume): every piece of state.

    ``train_loader`` is anything with ``load_state_dict`` (the checkpoint probe passes a stand-in
    that only validates the state). Raises ValueError/KeyError/TypeError/RuntimeError when the
    checkpoint does not fit, and ``worker.data.shards.DataError`` when its data position does not exist.
    """
    startup_clock.mark(startup_clock.CHECKPOINT_LOADED)  # the file is in memory: restore begins
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    startup_clock.mark(startup_clock.LOADER_SEEK_START)
    train_loader.load_state_dict(checkpoint["train_loader_state"])
    startup_clock.mark(startup_clock.LOADER_POSITIONED)
    report = restore_rng_state(checkpoint, device_type)
    startup_clock.mark(startup_clock.RESTORED)
    val_loss = checkpoint.get("val_loss")
    progress = TrainProgress(step=int(checkpoint["step"]), val_loss=None if val_loss is None else float(val_loss))
    return progress, report


@dataclass
class TrainingState:
    """The stateful parts of one run, registered once with the checkpointer."""

    model: GPT  # the raw module (not the DDP / compiled wrapper): its state_dict names are the format's
    optimizer: torch.optim.Optimizer
    loader: Any
    progress: TrainProgress
    device_type: str
    train_config: dict[str, Any]  # the resolved settings that change the math, saved as ``train_config``

    def state_dict(self) -> dict[str, Any]:
        return compose_checkpoint(self.model, self.optimizer, self.progress, self.loader, self.device_type,
                                  self.train_config)

    def load_state_dict(self, checkpoint: dict[str, Any]) -> RngRestoreReport:
        """Restore every part; ``progress`` is updated in place so holders of it see the new step."""
        progress, report = restore_full_state(checkpoint, self.model, self.optimizer, self.loader, self.device_type)
        self.progress.step, self.progress.val_loss = progress.step, progress.val_loss
        return report
