"""``DiskGuard``: watch free space in the run directory and, if allowed, make room.

The worker saves a checkpoint every N steps; when the disk cannot hold the next one, the run
loses progress. The guard warns at threshold crossings (``policy.disk_level``), and with
``--prune-on-low-disk`` deletes the oldest checkpoints (``policy.choose_checkpoints_to_prune``)
while always keeping the newest one that passed validation.
"""
from __future__ import annotations

import shutil
import time

from shared.run_dir import RunDir
from shared.vocabulary import DiskLevel, EventKind
from supervisor import policy
from supervisor.checkpoints.checkpoint_selection import prune_oldest_checkpoints
from supervisor.journal import Journal
from supervisor.run_config import RunConfig

DISK_EVERY_S = 5.0


class DiskGuard:
    def __init__(self, run_dir: RunDir, config: RunConfig, journal: Journal) -> None:
        self.run_dir = run_dir
        self.config = config
        self.journal = journal
        self.watch = policy.DiskWatch()
        self.newest_valid_step: int | None = None  # set by the cycle after each validation
        self.newest_size: int | None = None
        self._last_check = 0.0
        self._validated: dict[str, bool] = {}  # checkpoint name -> passed validation (for pruning)

    def threshold(self) -> int:
        if self.config.min_free_disk is not None:
            return self.config.min_free_disk
        return policy.default_min_free_disk(self.newest_size)

    def check(self, force: bool = False) -> DiskLevel:
        """Free space vs. the threshold; an event at each crossing (and on ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_check < min(DISK_EVERY_S, max(self.config.monitor_interval, 0.5) * 4):
            return self.watch.level
        self._last_check = now
        newest = self.run_dir.newest_checkpoint()
        self.newest_size = newest.size if newest else None
        threshold = self.threshold()
        free = self._free()
        if free is None:
            return self.watch.level
        level = policy.disk_level(free, threshold, self.newest_size)
        if level != DiskLevel.OK:
            if self.watch.update(level) or force:
                hint = "" if self.config.prune_on_low_disk else " (pass --prune-on-low-disk to delete old checkpoints)"
                self.journal.event(
                    EventKind.DISK_WARNING,
                    f"low disk ({level}): {free / 1e6:.1f} MB free, threshold {threshold / 1e6:.1f} MB{hint}",
                    level=level, free_bytes=free, threshold_bytes=threshold,
                )
            if not self.config.prune_on_low_disk:
                return level
            self.prune(threshold)
            free = self._free()
            if free is None:
                return level
            level = policy.disk_level(free, threshold, self.newest_size)
        if self.watch.update(level) and level == DiskLevel.OK:
            self.journal.event(EventKind.DISK_WARNING, f"disk space recovered: {free / 1e6:.1f} MB free",
                               level=level, free_bytes=free, threshold_bytes=threshold)
        return level

    def prune(self, threshold: int) -> None:
        """Delete oldest checkpoints, keeping the newest *validated* one (validate it if needed)."""
        if self.run_dir.node:
            return  # multi-node: the run's checkpoints are node 0's supervisor's to prune, never node R's
        newest_valid = self.newest_valid_step
        newest = self.run_dir.newest_checkpoint()
        newer = newest is not None and (newest_valid is None or newest.step > newest_valid)
        if newer and self._passes_validation(newest.path.name):
            newest_valid = newest.step
        if newest_valid is None:
            return
        result = prune_oldest_checkpoints(self.run_dir.root, threshold, newest_valid)
        if result.deleted:
            names = [c.name for c in result.deleted]
            self.journal.event(
                EventKind.PRUNED,
                f"low disk: deleted {len(names)} old checkpoint(s) {names}, kept newest valid step {newest_valid}",
                deleted=names, kept_step=newest_valid, free_before=result.free_before, free_after=result.free_after,
            )

    def _passes_validation(self, name: str) -> bool:
        if name not in self._validated:
            from supervisor.checkpoints.checkpoint_validation import (
                probe_command_for,
                validate_checkpoint,
            )

            result = validate_checkpoint(self.run_dir.root / name, probe_timeout=self.config.probe_timeout,
                                         generic=self.config.runs_script, command=probe_command_for(self.config))
            self._validated[name] = result.ok
        return self._validated[name]

    def _free(self) -> int | None:
        try:
            return shutil.disk_usage(self.run_dir.root).free
        except OSError as exc:
            self.journal.event(EventKind.WARNING, f"cannot read free disk space: {exc.strerror or exc}")
            return None
