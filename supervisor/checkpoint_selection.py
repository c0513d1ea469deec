"""Before every restart: pick the checkpoint to resume from, and make the run directory say so.

The worker resumes from ``latest_checkpoint.pt``. If the newest file is damaged (a crash during a
copy, a full disk, bit rot) a blind resume either crashes again or, worse, trains on garbage. So:
validate newest-first, rename failures to ``<name>.corrupt`` (evidence, never deleted), and swing
the link to the newest file that passed. No valid file at all means a fresh start: allowed, but
announced loudly by the caller.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from shared.run_dir import QUARANTINE_SUFFIX, RunDir
from supervisor.policy import CheckpointOnDisk, choose_checkpoints_to_prune


@dataclass
class Verdict:
    """One checkpoint's validation result, in the fields the supervisor needs."""

    path: Path
    ok: bool
    reason: str | None
    step: int | None
    size_bytes: int | None
    seconds: float | None = None
    inconclusive: bool = False  # could not be judged (e.g. torch failed to import): not the file's fault


Validator = Callable[..., Any]


def _to_verdict(result: Any, path: Path, step: int, elapsed: float) -> Verdict:
    return Verdict(
        path=path,
        ok=bool(getattr(result, "ok", False)),
        reason=getattr(result, "reason", None),
        step=getattr(result, "step", None) if getattr(result, "step", None) is not None else step,
        size_bytes=getattr(result, "size_bytes", None),
        seconds=elapsed,
        inconclusive=bool(getattr(result, "inconclusive", False)),
    )


def quarantine(path: Path) -> Path:
    """Rename ``path`` to ``path.corrupt`` (``.corrupt.N`` if taken); returns the new path."""
    target = path.with_name(path.name + QUARANTINE_SUFFIX)
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}{QUARANTINE_SUFFIX}.{n}")
        n += 1
    os.rename(path, target)
    return target


@dataclass
class Selection:
    chosen: Verdict | None  # None: no valid checkpoint, the worker starts fresh
    quarantined: list[tuple[Verdict, Path]] = field(default_factory=list)  # (verdict, new path)
    checked: list[Verdict] = field(default_factory=list)
    link_changed: bool = False


def select_checkpoint_for_restart(
    run_dir: Path,
    *,
    validator: Validator | None = None,
    deep: bool = False,
    probe_timeout: float = 60.0,
) -> Selection:
    """Validate newest-first, quarantine failures, re-point the link at the first valid one."""
    run = RunDir.at(run_dir)
    if validator is None:
        from shared.checkpoint_validation import validate_checkpoint as validator
    validate = validator
    checkpoints = [(c.step, c.path) for c in run.list_checkpoints()]
    sizes = {c.path.name: c.size for c in run.list_checkpoints()}
    selection = Selection(chosen=None)
    for step, path in reversed(checkpoints):
        siblings = [size for name, size in sizes.items() if name != path.name]
        started = time.monotonic()
        try:
            result = validate(path, deep=deep, probe_timeout=probe_timeout, sibling_sizes=siblings)
        except Exception as exc:  # a validator bug must not be mistaken for a good file
            verdict = Verdict(path, False, f"validator error: {exc}", step, sizes.get(path.name))
        else:
            verdict = _to_verdict(result, path, step, time.monotonic() - started)
        selection.checked.append(verdict)
        if verdict.ok or verdict.inconclusive:
            # Inconclusive: the probe itself could not run. Quarantining a possibly good file for
            # that would destroy progress; the worker's own load will tell if it is really bad.
            selection.chosen = verdict
            break
        try:
            new_path = quarantine(path)
        except OSError as exc:
            verdict.reason = f"{verdict.reason}; could not quarantine: {exc.strerror}"
            new_path = path
        selection.quarantined.append((verdict, new_path))
    target = selection.chosen.path if selection.chosen else None
    link = run.latest_link
    try:
        current = os.readlink(link) if link.is_symlink() else None
    except OSError:
        current = None
    wanted = target.name if target is not None else None
    if current != wanted or (wanted is None and link.exists()):
        run.point_latest_link(target)
        selection.link_changed = True
    return selection


def newest_checkpoint(run_dir: Path) -> tuple[int, Path, int] | None:
    """(step, path, size) of the newest complete checkpoint file, unvalidated."""
    newest = RunDir.at(run_dir).newest_checkpoint()
    return (newest.step, newest.path, newest.size) if newest is not None else None


@dataclass
class PruneResult:
    deleted: list[CheckpointOnDisk]
    free_before: int
    free_after: int


def prune_oldest_checkpoints(run_dir: Path, threshold_bytes: int, newest_valid_step: int | None) -> PruneResult:
    """Delete the oldest checkpoints until ``threshold_bytes`` are free (``--prune-on-low-disk``).

    Only files older than the newest *validated* checkpoint are candidates, so the file we would
    resume from (and anything newer, perhaps still being judged) is never touched. Quarantined
    ``.corrupt`` files are never deleted automatically.
    """
    run = RunDir.at(run_dir)
    free_before = shutil.disk_usage(run.root).free
    on_disk: list[CheckpointOnDisk] = []
    for ckpt in run.list_checkpoints():
        on_disk.append(CheckpointOnDisk(ckpt.step, ckpt.size, ckpt.path.name))
    chosen = choose_checkpoints_to_prune(on_disk, free_before, threshold_bytes, newest_valid_step)
    deleted: list[CheckpointOnDisk] = []
    link_target = run.resolve_latest_link()
    for ckpt in chosen:
        path = run.root / ckpt.name
        if link_target is not None and path.resolve() == link_target:
            continue  # belt and braces: never the file the worker would resume from
        try:
            path.unlink()
            deleted.append(ckpt)
        except OSError:
            continue
    return PruneResult(deleted, free_before, shutil.disk_usage(run.root).free)
