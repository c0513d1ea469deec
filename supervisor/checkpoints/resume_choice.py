"""Before every launch: which checkpoint the run resumes from, and what the journal says of it.

Node 0's supervisor validates newest first (over local and, with ``--checkpoint-uri``, remote
checkpoints: ``RemoteCheckpoints.select``), quarantines what is proven bad, re-points
``latest_checkpoint.pt`` and records its verdict; node R >= 1 leaves all of it to node 0. A
checkpoint in a newer format than this install reads is not damage: the run ends at once
(``UnsupportedCheckpoint``), nothing renamed. A worker's exit 4 is a verdict on the file it was
given: it is quarantined like a failed validation.
"""
from __future__ import annotations

from pathlib import Path

from shared.exit_codes import WorkerExit
from shared.run_dir import CheckpointFile, RunDir
from shared.vocabulary import EventKind
from supervisor import messages
from supervisor.checkpoints.checkpoint_selection import (
    CheckpointVerdict,
    Selection,
    quarantine,
)
from supervisor.checkpoints.disk_guard import DiskGuard
from supervisor.checkpoints.remote_checkpoints import RemoteCheckpoints
from supervisor.journal import Journal
from supervisor.run_config import RunConfig


class UnsupportedCheckpoint(Exception):
    """The newest checkpoint's format is newer than this install reads: the run ends at once."""


class ResumeChoice:
    def __init__(self, config: RunConfig, run_dir: RunDir, journal: Journal, disk: DiskGuard,
                 remote: RemoteCheckpoints) -> None:
        self.config = config
        self.run_dir = run_dir
        self.journal = journal
        self.disk = disk
        self.remote = remote

    def choose(self) -> int | None:
        """Validate newest-first, quarantine, re-point the link. Returns the step to resume from."""
        if not self.config.is_node_zero:
            return self._node_0_decides()
        selection = self.remote.select()
        unsupported = selection.unsupported
        if unsupported is not None:  # not damage: never renamed, never skipped for an older file or scratch
            self.journal.save_state(newest_checkpoint=unsupported.path.name, newest_checkpoint_valid=None,
                                    newest_checkpoint_reason=unsupported.reason)
            raise UnsupportedCheckpoint(unsupported.reason or f"{unsupported.path.name}: unsupported format_version")
        self._journal_set_aside(selection)
        chosen = selection.chosen
        if chosen is not None:
            return self._resume_from(chosen)
        remaining = self.run_dir.newest_checkpoint()
        if remaining is not None:  # never start from scratch while checkpoints exist (one could not be renamed)
            return self._resume_unverified(remaining)
        self._start_from_scratch(selection)
        return None

    def _journal_set_aside(self, selection: Selection) -> None:
        for verdict, new_path in selection.quarantined:
            self.journal.event(EventKind.QUARANTINED, messages.quarantined(verdict.path.name, verdict.reason, new_path.name),
                               checkpoint=verdict.path.name, reason=verdict.reason, renamed_to=new_path.name)
        for skipped in selection.skipped_inconclusive:
            self.journal.event(EventKind.WARNING, messages.kept_unjudged(skipped.path.name, skipped.reason),
                               checkpoint=skipped.path.name)

    def _resume_unverified(self, remaining: CheckpointFile) -> int:
        self.run_dir.point_latest_link(remaining.path)
        self.journal.event(EventKind.WARNING, messages.resuming_unverified_none_passed(remaining.path.name),
                           checkpoint=remaining.path.name)
        self.disk.newest_valid_step = None
        self.journal.save_state(newest_checkpoint=remaining.path.name, newest_checkpoint_valid=None,
                                newest_checkpoint_reason="resumed unverified")
        return remaining.step

    def _start_from_scratch(self, selection: Selection) -> None:
        if selection.checked:
            self.journal.event(EventKind.CHECKPOINT_VALID, messages.NONE_VALID, checkpoint=None)
        last = selection.checked[-1] if selection.checked else None
        self.disk.newest_valid_step = None
        self.journal.save_state(newest_checkpoint=last.path.name if last else None,
                                newest_checkpoint_valid=False if last else None,
                                newest_checkpoint_reason=last.reason if last else None)

    def _resume_from(self, chosen: CheckpointVerdict) -> int | None:
        if chosen.inconclusive:
            self.journal.event(EventKind.WARNING, messages.could_not_judge_resuming(chosen.path.name, chosen.reason),
                               checkpoint=chosen.path.name)
        line = messages.resuming_from(chosen.path.name, chosen.seconds, chosen.reason, chosen.inconclusive)
        self.journal.event(EventKind.CHECKPOINT_VALID, line, checkpoint=chosen.path.name, step=chosen.step,
                           seconds=chosen.seconds, inconclusive=chosen.inconclusive)
        self.disk.newest_valid_step = None if chosen.inconclusive else chosen.step
        self.journal.save_state(newest_checkpoint=chosen.path.name,
                                newest_checkpoint_valid=None if chosen.inconclusive else True,
                                newest_checkpoint_reason=chosen.reason if chosen.inconclusive else None)
        return chosen.step

    def _node_0_decides(self) -> int | None:
        """Node R >= 1 never validates, quarantines or re-points the link: node 0's supervisor does,
        before each of its launches, and node 0's writer tells every rank (the absolute path, by
        broadcast) which file to resume from. So a shared directory has one judge, and a node-local
        directory (no checkpoints at all) needs none. The step returned only measures progress."""
        newest = self.run_dir.newest_checkpoint()
        return newest.step if newest is not None else None

    def quarantine_rejected(self, bad_checkpoint: str | None, cause: str | None) -> None:
        """Worker exit 4 is a verdict on the file it was given (``bad_checkpoint``, else the one the
        journal last named; ``cause``: the worker's own line): set it aside, as a failed validation."""
        if not self.config.is_node_zero:
            return  # node 0's supervisor judges the run's checkpoints (its writer read the file)
        state = self.journal.state
        name = bad_checkpoint or (state.newest_checkpoint if state is not None else None)
        path = self.run_dir.root / Path(name).name if name else None
        if path is None or not path.is_file():
            self.journal.event(EventKind.WARNING, messages.rejected_but_unnamed(cause, name))
            return
        reason = cause or f"the worker could not use it (exit {int(WorkerExit.CHECKPOINT_ERROR)})"
        try:
            new_path = quarantine(path, reason)
        except OSError as exc:
            self.journal.event(EventKind.WARNING, messages.could_not_quarantine(path.name, str(exc.strerror or exc)))
            return
        self.journal.event(EventKind.QUARANTINED, messages.quarantined(path.name, reason, new_path.name, by_worker=True),
                           checkpoint=path.name, reason=reason,
                           renamed_to=new_path.name, source="worker")
