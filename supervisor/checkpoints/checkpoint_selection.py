"""Before every restart: pick the checkpoint to resume from, and make the run directory say so.

The worker resumes from ``latest_checkpoint.pt``. If the newest file is damaged (a crash during a
copy, a full disk, bit rot) a blind resume either crashes again or, worse, trains on garbage. So:
validate newest-first and re-point the link at the newest file that passed. Doubt never destroys a
good checkpoint: only positive evidence about a file (``Verdict.INVALID``) renames it to
``<name>.corrupt`` (evidence, never deleted, the reason recorded beside it); a file that could not
be judged (probe timeout, probe could not start) stays where it is. When no file passed but some
could not be judged, the newest of those is chosen, flagged inconclusive, for the caller to
announce loudly: the run never restarts from step 0 while a checkpoint that may be good exists.
A file in a format newer than this install reads (``Verdict.UNSUPPORTED``) stops the selection at
once, untouched: resuming from an older file or from scratch would throw away what the newer
install trained, and the caller ends the run with its own exit code.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.run_dir import QUARANTINE_SUFFIX, CheckpointFile, RunDir
from shared.vocabulary import Verdict
from supervisor.checkpoints.checkpoint_validation import (
    ProbeSession,
    ValidationResult,
    list_siblings,
    validate_checkpoint,
)
from supervisor.policy import CheckpointOnDisk, choose_checkpoints_to_prune

QUARANTINE_RECORD_SUFFIX = ".reason.json"  # beside ``model_N.pt.corrupt``: why and when


@dataclass
class CheckpointVerdict:
    """One checkpoint's validation result, in the fields the supervisor needs."""

    path: Path
    ok: bool
    reason: str | None
    step: int | None
    size_bytes: int | None
    seconds: float | None = None
    inconclusive: bool = False  # could not be judged: not the file's fault, never quarantined
    unsupported_format_version: int | None = None  # newer than this install reads: never quarantined

    @property
    def verdict(self) -> Verdict:
        if self.ok:
            return Verdict.VALID
        if self.unsupported_format_version is not None:
            return Verdict.UNSUPPORTED
        return Verdict.INCONCLUSIVE if self.inconclusive else Verdict.INVALID

    @classmethod
    def of(cls, result: ValidationResult, path: Path, step: int, seconds: float) -> CheckpointVerdict:
        return cls(path=path, ok=result.ok, reason=result.reason,
                   step=result.step if result.step is not None else step,
                   size_bytes=result.size_bytes, seconds=seconds, inconclusive=result.inconclusive,
                   unsupported_format_version=result.unsupported_format_version)


# --- quarantine ------------------------------------------------------------------------------------

def quarantine_record_path(quarantined: Path) -> Path:
    return quarantined.with_name(quarantined.name + QUARANTINE_RECORD_SUFFIX)


def quarantine(path: Path, reason: str) -> Path:
    """Rename ``path`` to ``path.corrupt`` (``.corrupt.N`` if taken) and record why; returns the new path.

    The record (``<new name>.reason.json``: reason, UTC time, original name) is written first, so
    a file is never set aside without its reason when the disk allows writing it; when it does not
    (a full disk), the rename still happens and the caller's journal event keeps the reason.
    Raises OSError only when the rename itself fails.
    """
    from supervisor.timestamps import utc_timestamp

    path = Path(path)
    target = path.with_name(path.name + QUARANTINE_SUFFIX)
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}{QUARANTINE_SUFFIX}.{n}")
        n += 1
    record = {"reason": reason, "quarantined_at": utc_timestamp(), "original_name": path.name}
    record_path = quarantine_record_path(target)
    try:
        record_path.write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
    except OSError:
        record_path.unlink(missing_ok=True)  # no half-written record; the journal has the reason
    os.rename(path, target)
    return target


def read_quarantine_record(path: Path) -> dict[str, Any] | None:
    """The record ``quarantine`` left beside ``path`` (a ``.corrupt`` file), if there is one."""
    try:
        record = json.loads(quarantine_record_path(Path(path)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# --- selection -------------------------------------------------------------------------------------

@dataclass
class Selection:
    # None: no checkpoint on disk (or every one failed with positive evidence): start fresh
    chosen: CheckpointVerdict | None
    quarantined: list[tuple[CheckpointVerdict, Path]] = field(default_factory=list)  # (verdict, new path)
    checked: list[CheckpointVerdict] = field(default_factory=list)  # newest first
    # Newer files that could not be judged and were passed over for an older valid one (kept).
    skipped_inconclusive: list[CheckpointVerdict] = field(default_factory=list)
    # The newest file in a format this install does not read: selection stopped there, nothing
    # chosen, the link left alone; the run cannot go on with this install.
    unsupported: CheckpointVerdict | None = None


def select_checkpoint_for_restart(
    run_dir: Path,
    *,
    deep: bool = False,
    probe_timeout: float | None = None,
    session: ProbeSession | None = None,
    known: Callable[[Path], ValidationResult | None] | None = None,
) -> Selection:
    """Validate newest-first, quarantine what is proven bad, re-point the link (module docstring).

    ``probe_timeout`` is seconds per file, or None for ``auto``. One probe child serves every file:
    ``session`` (a warm one the caller keeps and closes), else one started here. ``known`` returns
    the result of an earlier validation of exactly these bytes (same path, size, mtime, inode), or
    None: such a file is not read again (``supervisor.checkpoints.background_validation``).
    A validator error on a file (a bug, an unreadable directory) makes that file inconclusive.
    """
    run = RunDir.at(run_dir)
    checkpoints = run.list_checkpoints()
    cache: dict[Path, Any] = {}
    selection = Selection(chosen=None)
    inconclusive: list[CheckpointVerdict] = []
    own = session is None
    with contextlib.ExitStack() as stack:
        if session is None:
            session = stack.enter_context(ProbeSession(probe_timeout))
        if checkpoints and known is None:
            session.start()  # the child imports torch while the newest file's CRC is read
        for checkpoint in reversed(checkpoints):
            verdict = _judge_checkpoint(checkpoint, deep=deep, session=session, own=own, known=known, cache=cache)
            selection.checked.append(verdict)
            if verdict.verdict is Verdict.VALID:
                selection.chosen = verdict
                break
            if verdict.verdict is Verdict.UNSUPPORTED:
                selection.unsupported = verdict
                return selection  # untouched: no quarantine, no fallback, the link as it was
            if verdict.verdict is Verdict.INCONCLUSIVE:
                inconclusive.append(verdict)
                continue
            selection.quarantined.append((verdict, _quarantine_or_note(checkpoint.path, verdict)))
    if selection.chosen is not None:
        selection.skipped_inconclusive = inconclusive
    elif inconclusive:
        selection.chosen = inconclusive[0]  # the newest file that may be good: resume UNVERIFIED
    _repoint_latest_link(run, selection.chosen.path if selection.chosen is not None else None)
    return selection


def _judge_checkpoint(checkpoint: CheckpointFile, *, deep: bool, session: ProbeSession, own: bool,
                      known: Callable[[Path], ValidationResult | None] | None,
                      cache: dict[Path, Any]) -> CheckpointVerdict:
    """The verdict on one file: ``known``'s earlier result, else a validation through ``session``
    (started here when the caller lent it). A validator error makes the file inconclusive."""
    started = time.monotonic()
    try:
        result = known(checkpoint.path) if known is not None else None
        if result is None:
            if not own:
                session.start()
            result = validate_checkpoint(checkpoint.path, deep=deep, session=session,
                                         siblings=list_siblings(checkpoint.path, cache))
    except Exception as exc:  # noqa: BLE001  a validator bug is no evidence against the file
        return CheckpointVerdict(checkpoint.path, False, f"validator error: {type(exc).__name__}: {exc}",
                                 checkpoint.step, checkpoint.size, inconclusive=True)
    return CheckpointVerdict.of(result, checkpoint.path, checkpoint.step, time.monotonic() - started)


def _quarantine_or_note(path: Path, verdict: CheckpointVerdict) -> Path:
    """Quarantine a proven-bad file; where that fails, say so in the verdict and keep the path."""
    try:
        return quarantine(path, verdict.reason or "failed validation")
    except OSError as exc:
        verdict.reason = f"{verdict.reason}; could not quarantine: {exc.strerror or exc}"
        return path


def _repoint_latest_link(run: RunDir, target: Path | None) -> None:
    """Point ``latest`` at ``target`` (remove it for None), touching the link only when it differs."""
    try:
        current = os.readlink(run.latest_link) if run.latest_link.is_symlink() else None
    except OSError:
        current = None
    if current != (target.name if target is not None else None) or (target is None and run.latest_link.exists()):
        run.point_latest_link(target)


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
