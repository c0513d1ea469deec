"""Disk space: the free-space threshold, its level, and which checkpoints pruning may delete.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.vocabulary import (
    DiskLevel,
)

# --------------------------------------------------------------------------------------------
# Disk
# --------------------------------------------------------------------------------------------

MIN_FREE_DISK_FLOOR = 64 * 1024**2
MIN_FREE_DISK_MULTIPLE = 2


def default_min_free_disk(newest_checkpoint_bytes: int | None) -> int:
    """Room for two more checkpoints of the newest's size (one being written, one spare)."""
    return max(MIN_FREE_DISK_FLOOR, MIN_FREE_DISK_MULTIPLE * int(newest_checkpoint_bytes or 0))


def disk_level(free_bytes: int, threshold_bytes: int, newest_checkpoint_bytes: int | None) -> DiskLevel:
    if newest_checkpoint_bytes and free_bytes < newest_checkpoint_bytes:
        return DiskLevel.CRITICAL
    if free_bytes < threshold_bytes:
        return DiskLevel.LOW
    return DiskLevel.OK


_SIZE_UNITS = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """``"500M"``, ``"2G"``, ``"1.5GiB"``, ``"1048576"`` -> bytes. Raises ValueError."""
    cleaned = str(text).strip().upper().replace("IB", "").rstrip("B")
    multiplier = 1
    if cleaned and cleaned[-1] in _SIZE_UNITS:
        multiplier = _SIZE_UNITS[cleaned[-1]]
        cleaned = cleaned[:-1]
    value = float(cleaned)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"bad size {text!r}")
    return int(value * multiplier)


@dataclass(frozen=True)
class CheckpointOnDisk:
    step: int
    size_bytes: int
    name: str


def choose_checkpoints_to_prune(
    valid_checkpoints: Iterable[CheckpointOnDisk],
    free_bytes: int,
    threshold_bytes: int,
    newest_valid_step: int | None,
) -> list[CheckpointOnDisk]:
    """Oldest valid checkpoints to delete until free space reaches the threshold.

    The newest valid checkpoint, and anything newer than it (not yet validated, maybe being
    written), is never a candidate: it is the one we resume from.
    """
    candidates = sorted(
        (c for c in valid_checkpoints if newest_valid_step is not None and c.step < newest_valid_step),
        key=lambda c: c.step,
    )
    chosen: list[CheckpointOnDisk] = []
    freed = 0
    for ckpt in candidates:
        if free_bytes + freed >= threshold_bytes:
            break
        chosen.append(ckpt)
        freed += ckpt.size_bytes
    return chosen


@dataclass
class DiskWatch:
    """Remembers the last disk level so events are written at threshold crossings, not every poll."""

    level: DiskLevel = DiskLevel.OK
    history: list[DiskLevel] = field(default_factory=list)

    def update(self, new_level: DiskLevel) -> bool:
        """True when the level changed (worth an event)."""
        changed = new_level != self.level
        self.level = new_level
        if changed:
            self.history.append(new_level)
        return changed


