"""CheckpointManager: the one component that writes, finds, loads and prunes checkpoints.

The training loop calls it at fixed points (start-up, after each optimizer step) and never sees a
file name. The rules it keeps (docs/checkpoints.md):

* ``step`` is the last *completed* step; the state is captured after that step's optimizer update.
* Atomic: write ``model_N.pt.tmp``, flush + fsync, rename, fsync the directory, then swing
  ``latest_checkpoint.pt`` (a new relative link renamed over the old one). A crash or ENOSPC at any
  instant leaves the previous checkpoint and link intact.
* A full disk is not fatal: the save is skipped (or its partial file removed), the failure is
  recorded, and training goes on; the previous checkpoint stays the resume point. Except at the
  end: the last step's (or a stop request's) checkpoint is retried for ``final_save_retry_s``
  (space may be freed), and a run whose final state is not on disk never ends as a success.
* Before a file is used (resume or ``--pretrained_checkpoint``) every zip member's CRC-32 is
  checked: ``torch.load`` checks none, and a byte may have flipped after the supervisor looked.
  Its ``format_version`` is checked before anything else in it is used: a newer format is exit 10
  (this install cannot read it; the file is not damaged), never a silent load.
* A ``--pretrained_checkpoint`` that cannot be used is exit 11, not 4: it is an input of the
  command, not one of the run's checkpoints, so nothing is quarantined and no relaunch can help.
* Loading is ``shared.checkpoint_loading.load_checkpoint`` (``weights_only=True`` plus stand-ins for
  the build-nanogpt guide's own format): a checkpoint never runs code.

The training loop registers its stateful parts once (``TrainingState``) and then only calls
``restore(...)`` at start-up and ``save_if_due(step, last_step, force)`` after each step, in the
manner of torchtitan's checkpointer.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.atomic_io import DISK_FULL_ERRNOS, fsync_path
from shared.checkpoint_crc import check_zip_crc
from shared.checkpoint_format import (
    REQUIRED_KEYS,
    newer_format_version,
    unsupported_format_message,
)
from shared.checkpoint_loading import CheckpointLoadError, load_checkpoint
from shared.exit_codes import WorkerExit
from shared.hf_files import HFFileError, is_hf_source
from shared.run_dir import TMP_SUFFIX, RunDir
from shared.vocabulary import Phase
from worker.checkpointing.async_save import (
    BackgroundWrite,
    BackgroundWriter,
    HostSnapshot,
)
from worker.checkpointing.checkpoint_write import save_checkpoint_file
from worker.checkpointing.hf_import import load_hf_pretrained
from worker.checkpointing.run_identity_check import RunIdentityCheck
from worker.checkpointing.train_state import TrainingState, TrainProgress
from worker.data.shards import DataError
from worker.errors import WorkerError, library_reason
from worker.runtime.distributed import Distributed
from worker.runtime.telemetry import HeartbeatWriter, RunLogger

# Bytes we always want to leave free on top of the checkpoint itself (logs, heartbeats, metadata).
FREE_SPACE_MARGIN_BYTES = 16 * 1024 * 1024


class CheckpointError(WorkerError):
    """The checkpoint file at ``path`` cannot be used (exit 4: the supervisor quarantines it)."""

    def __init__(self, message: str, path: Path | str) -> None:
        super().__init__(message, WorkerExit.CHECKPOINT_ERROR, bad_checkpoint=Path(path).name)
        self.path = Path(path)


class PretrainedError(WorkerError):
    """The ``--pretrained_checkpoint`` source cannot be used (exit 11: permanent, never renamed)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, WorkerExit.PRETRAINED_ERROR)


@dataclass(frozen=True)
class RestoreRequest:
    """Where start-up state comes from: the run's own checkpoint first, else pretrained weights."""

    checkpoint_path: Path | None = None  # --resume: this file, all state
    auto_resume: bool = False  # --auto_resume: the newest checkpoint in the run dir, if any
    pretrained: Path | None = None  # --pretrained_checkpoint: model weights only, if nothing resumed


@dataclass
class SaveOutcome:
    saved: bool
    path: Path | None
    seconds: float
    size_bytes: int = 0
    error: str | None = None  # one line when not saved
    pending: bool = False  # an asynchronous save that has only started: the write reports later


class CheckpointManager:
    def __init__(
        self,
        run_dir: RunDir,
        *,
        interval: int,
        keep_last_n: int = -1,
        is_writer: bool = True,
        log: Callable[[str], None] = print,
        final_save_retry_s: float = 0.0,
        state: TrainingState | None = None,
        heartbeat: HeartbeatWriter | None = None,
        distributed: Distributed | None = None,
        run_log: RunLogger | None = None,
        async_save: bool = False,
    ) -> None:
        self.run_dir = run_dir
        self.interval = interval
        self.keep_last_n = keep_last_n
        self.is_writer = is_writer
        self.log = log
        self.final_save_retry_s = final_save_retry_s
        # The registered parts (None in unit tests that only exercise file handling).
        self.state = state
        self.heartbeat = heartbeat
        self.distributed = distributed or Distributed(False, 0, 0, 1, "cpu")
        self.run_log = run_log  # log.txt records each failed save as "{step} checkpoint_failed ..."
        self.last_checkpoint_name: str | None = None  # newest file this run saved or resumed from
        self.resumed_from: Path | None = None
        self.final_save_error: str | None = None  # why the last final save failed, on every rank
        # --async_checkpoint (worker/checkpointing/async_save.py): periodic saves are snapshotted to host memory
        # and written by a thread; the final (or a stop's) save stays synchronous.
        self.async_save = async_save
        self._snapshot: HostSnapshot | None = None
        self._writer: BackgroundWriter | None = None
        if async_save and is_writer:
            self._snapshot = HostSnapshot(pin_memory=state is not None and state.device_type == "cuda")
            self._writer = BackgroundWriter(on_exit=self._finished_at_exit)
            if state is not None:  # the snapshot is copied during the next forward/backward, which only
                # read the weights; the optimizer step, the one thing that changes them, waits for it
                state.optimizer.register_step_pre_hook(self._before_optimizer_step)

    # --- start-up ---------------------------------------------------------------------------
    def remove_stale_staging_files(self) -> list[Path]:
        """``.tmp`` files are never read; any left at start-up are from a crashed save."""
        removed = []
        for path in self.run_dir.root.glob(f"model_*.pt{TMP_SUFFIX}"):
            try:
                path.unlink()
                removed.append(path)
            except FileNotFoundError:
                pass
        return removed

    def find_latest(self) -> Path | None:
        """``latest_checkpoint.pt`` if it resolves to a file, else the highest-step model_N.pt."""
        linked = self.run_dir.resolve_latest_link()
        if linked is not None:
            return linked
        checkpoints = self.run_dir.list_checkpoints()
        return checkpoints[-1].path if checkpoints else None

    def restore(self, request: RestoreRequest, architecture: dict[str, Any],
                identity: RunIdentityCheck | None = None) -> TrainProgress:
        """Find the file (rank 0), broadcast its path, then on every rank: CRC check, load, check
        keys, run identity and architecture, restore the registered parts. Returns the (restored)
        progress. With ``--auto_resume`` and ``--pretrained_checkpoint`` (what a supervisor relaunch
        of a fine-tune passes) the run's own checkpoint wins; the pretrained weights only start it.

        Raises CheckpointError (exit 4) for a file that cannot be used, a WorkerError exit 6 for
        another run's checkpoint (``identity``), and DataError when its data position does not
        exist in this data directory; every rank raises the same error. A failing collective
        (NCCL/gloo) is not mapped: it is a crash, not a verdict on the file.
        """
        assert self.state is not None, "restore() needs the registered TrainingState"
        if self.is_writer:
            self.remove_stale_staging_files()
        if request.checkpoint_path is not None or request.auto_resume:
            chosen = request.checkpoint_path if request.checkpoint_path is not None else (
                self.find_latest() if self.is_writer else None)
            # Absolute: on another node a relative path would name that node's own directory.
            box = self.distributed.broadcast_from_master(None if chosen is None else os.path.abspath(chosen))
            if box is not None:
                path = Path(box)
                self._require_visible_everywhere(path)
                self._agree(lambda: self._load_full(path, architecture, identity))
                self.resumed_from, self.last_checkpoint_name = path, path.name
                step = self.state.progress.step
                self.log(f"resumed from {path} (step {step}); continuing at step {step + 1}")
                return self.state.progress
            start = "from the pretrained weights" if request.pretrained is not None else "fresh"
            self.log(f"--auto_resume: no checkpoint in {self.run_dir.root}/, starting {start}")
            if identity is not None:
                self._agree(identity.check_unstarted_run)
        if request.pretrained is not None:
            self._agree(lambda: self._load_pretrained(request.pretrained, architecture, identity))
        return self.state.progress

    def _require_visible_everywhere(self, path: Path) -> None:
        """Every rank must read the leader's file. A node that cannot see it (its own disk, not
        shared storage) must stop the run with that reason: starting it over would lose the run,
        and calling the file damaged would quarantine a good checkpoint."""
        if not self.distributed.broadcast_from_master(path.is_file()):
            return  # the leader cannot read it either: the load says why, on every rank (exit 4)
        missing = None if path.is_file() else f"rank {self.distributed.rank} on {socket.gethostname()}"
        where = self.distributed.first_given(missing)
        if where is not None:
            raise WorkerError(
                f"the run's checkpoint {path} (chosen by the rank that writes the run's files) is not readable "
                f"on {where}: a multi-node run needs a --log_dir that every node can read (shared storage)",
                WorkerExit.USAGE)

    def _agree(self, restore: Callable[[], None]) -> None:
        """Run ``restore`` on every rank; if it fails anywhere, fail everywhere with that error."""
        mine: WorkerError | None = None
        try:
            restore()
        except WorkerError as exc:
            mine = exc
        failed = self.distributed.first_given(None if mine is None else _encode_error(mine))
        if mine is not None:
            raise mine
        if failed is not None:
            raise _decode_error(failed)

    def _load_pretrained(self, path: Path, architecture: dict[str, Any], identity: RunIdentityCheck | None) -> None:
        """Model weights from ``--pretrained_checkpoint``. Whatever makes the source unusable is a
        ``PretrainedError`` (exit 11): the supervisor must neither rename it nor retry it."""
        try:
            if is_hf_source(path):  # a Hugging Face directory or safetensors file (docs/interop.md)
                try:
                    checkpoint = load_hf_pretrained(path, architecture, self.log)
                except HFFileError as exc:
                    raise PretrainedError(f"cannot load pretrained weights {path}: {exc}") from None
            else:
                checkpoint = self.load(path)
            check_architecture(checkpoint, architecture, path)
        except CheckpointError as exc:
            raise PretrainedError(f"cannot load pretrained weights: {exc}") from None
        if identity is not None:
            identity.note_pretrained(path, checkpoint)
        try:
            self.state.model.load_state_dict(checkpoint["model"])
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise PretrainedError(f"pretrained checkpoint {path} does not fit this model: "
                                  f"{library_reason(exc)}") from None
        self.log(f"loaded pretrained weights from {path}; optimizer, step and data start fresh")

    def _load_full(self, path: Path, architecture: dict[str, Any], identity: RunIdentityCheck | None) -> None:
        checkpoint = self.load(path)
        self.require_keys(checkpoint, path)
        if identity is not None:  # another run's state is refused before any of it is used
            identity.check_checkpoint(checkpoint, path)
        check_architecture(checkpoint, architecture, path)
        try:
            report = self.state.load_state_dict(checkpoint)
        except DataError as exc:  # the saved data position does not exist in this --data_dir
            raise WorkerError(f"checkpoint {path} does not fit the data: {exc}", WorkerExit.DATA_ERROR) from None
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this run: {library_reason(exc)}", path) from None
        for note in report.notes:
            self.log(f"note: {note}")

    @staticmethod
    def load(path: Path) -> dict[str, Any]:
        """Check every CRC-32, then load on CPU with ``weights_only=True``; any failure becomes
        one CheckpointError line naming the file."""
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}", path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint is not a regular file: {path}", path)
        intact, detail = check_zip_crc(path)
        if not intact:
            raise CheckpointError(f"checkpoint {path} is damaged: {detail}", path)
        try:  # weights_only + stand-ins: our format and the build-nanogpt guide's, never code from the file
            checkpoint = load_checkpoint(path, mmap=True)  # pages come from the file as they are read
        except CheckpointLoadError as exc:
            raise CheckpointError(f"cannot load checkpoint {path}: {exc}", path) from None
        if not isinstance(checkpoint, dict):
            raise CheckpointError(f"{path} is not a checkpoint (holds a {type(checkpoint).__name__})", path)
        newer = newer_format_version(checkpoint)
        if newer is not None:  # before any of it is used: not damage, and no relaunch of this install helps
            raise WorkerError(unsupported_format_message(str(path), newer), WorkerExit.UNSUPPORTED_FORMAT)
        return checkpoint

    @staticmethod
    def require_keys(checkpoint: dict[str, Any], path: Path, keys=REQUIRED_KEYS) -> None:
        missing = [k for k in keys if k not in checkpoint and k != "format_version"]
        if missing:
            raise CheckpointError(f"{path} is missing checkpoint keys: {', '.join(missing)}", path)

    # --- saving -------------------------------------------------------------------------------
    def is_due(self, step: int, last_step: bool) -> bool:
        periodic = self.interval > 0 and step > 0 and step % self.interval == 0
        return periodic or last_step

    def save_if_due(self, step: int, last_step: bool, force: bool = False) -> bool:
        """Save the registered state after ``step`` if the schedule (or ``force``: a stop) asks.

        Owns the whole save: heartbeat phase, composing the state (writer rank), the write, the
        barrier that keeps the ranks together. Returns whether the state of ``step`` is on disk
        when it has to be (the last step, or ``force``), True otherwise; a failed periodic save is
        a warning. A failed final save is retried for ``final_save_retry_s`` seconds first.
        Every rank returns the same answer.

        With ``async_save`` a periodic save only snapshots the state and starts its write in the
        background; the writer rank notices the write's end at a later call (every step) and says
        so in its heartbeat. The final save first waits for a write in flight, then saves
        synchronously: the run never ends before its last state is on disk.
        """
        final = last_step or force
        self._collect_background_write(block=False)  # writer rank only, no collective: every step
        if not (self.is_due(step, last_step) or force):  # the same answer on every rank
            return True
        assert self.state is not None, "save_if_due() needs the registered TrainingState"
        self._beat(phase=Phase.CHECKPOINT)
        if self.async_save and not final:
            outcome = self._start_background_save(step)
        else:
            self._collect_background_write(block=True)  # at most one write at a time, in step order
            outcome = self._save_state(step)
            if final and self.is_writer and not outcome.saved:
                outcome = self._retry_final_save(step, outcome)
        # Every rank's heartbeat names the run's newest checkpoint: another node's supervisor reads
        # only its own ranks' heartbeats (the broadcast is the barrier after the save). With an
        # asynchronous save this is the newest *completed* file, one save point late on the ranks
        # that do not write; the final save's broadcast brings every rank up to date.
        self.last_checkpoint_name = self.distributed.broadcast_from_master(self.last_checkpoint_name)
        in_flight = self._writer.in_flight if self._writer is not None else None
        changes: dict[str, Any] = {"save_in_flight": None if in_flight is None else in_flight.name}
        if not outcome.pending:  # a started write keeps the previous save's figures until it ends
            changes.update(message=outcome.error, save_seconds=round(outcome.seconds, 3) if outcome.saved else None)
        self._beat(phase=Phase.TRAIN, last_checkpoint=self.last_checkpoint_name, **changes)
        if not final:
            return True
        error = None if outcome.saved else (outcome.error or "not written")
        self.final_save_error = self.distributed.broadcast_from_master(error)
        return self.final_save_error is None

    def _start_background_save(self, step: int) -> SaveOutcome:
        """Snapshot the state of ``step`` to host memory and start writing it (writer rank).

        The returned outcome is not saved yet (``saved=False``, no error): the heartbeat keeps its
        previous ``save_seconds`` until the write ends. A previous write still in flight is waited
        for first (at most one save in flight; the host buffers are reused).
        """
        if not self.is_writer:
            return SaveOutcome(saved=False, path=None, seconds=0.0, pending=True)
        assert self._writer is not None and self._snapshot is not None
        started = time.perf_counter()
        self._collect_background_write(block=True)
        # Every piece is captured now, at this step (loader position, RNGs, lr and step counts);
        # only the tensor bytes are copied later, before the next optimizer step can change them.
        snapshot, fill = self._snapshot.prepare(self.state.state_dict())
        stall = time.perf_counter() - started
        write = BackgroundWrite(step=step, name=self.run_dir.checkpoint(step).name, stall_seconds=stall)
        self._writer.submit(write, fill, lambda: self.save(step, snapshot))
        return SaveOutcome(saved=False, path=None, seconds=stall, pending=True)

    def _before_optimizer_step(self, *_: Any) -> None:
        """The optimizer is about to change the weights and moments: the snapshot's copy of them
        must be complete (it usually is: it ran during the forward and backward passes)."""
        if self._writer is not None:
            self._writer.wait_for_copy()

    def _collect_background_write(self, block: bool) -> None:
        """Report a finished background write like a synchronous save: the log line (or the
        warning already printed and a ``checkpoint_failed`` line in log.txt), the heartbeat's
        ``last_checkpoint`` and ``save_seconds`` once the file is renamed into place."""
        if self._writer is None:
            return
        write = self._writer.collect(block=block)
        if write is None:
            return
        if write.error is not None:
            raise write.error  # not an IO failure (those are outcomes): the same crash a sync save has
        outcome = write.outcome
        self._report(write.step, outcome, background=write)
        self._beat(last_checkpoint=self.last_checkpoint_name, save_in_flight=None,
                   save_seconds=round(outcome.seconds, 3) if outcome.saved else None,
                   message=outcome.error)

    def _finished_at_exit(self, write: BackgroundWrite) -> None:
        """Process exit waited for a write in flight (a crash, an exception out of the loop)."""
        if write.error is None and write.outcome is not None:
            self._report(write.step, write.outcome, background=write)
            self._beat(last_checkpoint=self.last_checkpoint_name, save_in_flight=None)

    def _report(self, step: int, outcome: SaveOutcome, background: BackgroundWrite | None = None) -> None:
        if outcome.saved:
            self.last_checkpoint_name = outcome.path.name
            how = (f", written in the background; training paused {background.stall_seconds:.2f}s"
                   if background is not None else "")
            self.log(f"saved {outcome.path} ({outcome.size_bytes / 1e6:.1f} MB, {outcome.seconds:.2f}s{how})")
        elif self.run_log is not None:
            self.run_log.log_line(f"{step} checkpoint_failed {outcome.error}")

    def _save_state(self, step: int) -> SaveOutcome:
        if not self.is_writer:
            return SaveOutcome(saved=False, path=None, seconds=0.0)
        state = self.state.state_dict()
        outcome = self.save(step, state)
        self._report(step, outcome)
        return outcome

    def _retry_final_save(self, step: int, outcome: SaveOutcome) -> SaveOutcome:
        """The final state must reach the disk: try again every few seconds (space may be freed)."""
        window = self.final_save_retry_s
        if window <= 0:
            return outcome
        pause = min(5.0, max(0.5, window / 10))
        deadline = time.monotonic() + window
        self.log(f"the final checkpoint (step {step}) was not written; retrying every {pause:.1f}s "
                 f"for up to {window:.0f}s (free some space on {self.run_dir.root})")
        while not outcome.saved and time.monotonic() < deadline:
            self._beat(phase=Phase.CHECKPOINT, message=f"retrying the final checkpoint of step {step}: {outcome.error}")
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            outcome = self._save_state(step)
        return outcome

    def _beat(self, **changes: Any) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat(**changes)

    def save(self, step: int, state: dict[str, Any]) -> SaveOutcome:
        """Write ``state`` as the checkpoint of ``step`` (writer rank only; others return)."""
        if not self.is_writer:
            return SaveOutcome(saved=False, path=None, seconds=0.0)
        started = time.perf_counter()
        final = self.run_dir.checkpoint(step)
        staging = final.with_name(final.name + TMP_SUFFIX)
        needed = self._estimate_bytes(state)
        try:
            free = shutil.disk_usage(self.run_dir.root).free
        except OSError as exc:
            return self._failed(started, f"skipped checkpoint of step {step}: cannot reach {self.run_dir.root} "
                                         f"({exc.strerror or exc})")
        if free < needed + FREE_SPACE_MARGIN_BYTES:
            return self._failed(
                started,
                f"skipped checkpoint of step {step}: needs ~{needed / 1e6:.1f} MB + "
                f"{FREE_SPACE_MARGIN_BYTES / 1e6:.1f} MB margin, {free / 1e6:.1f} MB free on {self.run_dir.root}",
            )
        try:
            with _BackgroundFlusher(staging):
                save_checkpoint_file(state, staging)  # torch.save; zip CRC-32s computed in parallel
            fsync_path(staging)
            size = staging.stat().st_size
            os.replace(staging, final)
            fsync_path(self.run_dir.root)
            self.run_dir.point_latest_link(final)
        except (OSError, RuntimeError) as exc:
            # torch's C++ writer reports a short write as a RuntimeError without errno; a disk that
            # now has less room than the checkpoint needs is the tell. Any other IO failure (a
            # read-only or deleted run dir) is a failed save too: the previous checkpoint stays.
            try:
                staging.unlink(missing_ok=True)
                disk_full = _is_disk_full(exc) or shutil.disk_usage(self.run_dir.root).free < needed
            except OSError:
                disk_full = _is_disk_full(exc)
            reason = "disk full" if disk_full else library_reason(exc)
            if not disk_full and not _is_io_error(exc):
                raise
            return self._failed(started, f"checkpoint of step {step} failed: {reason}")
        self._prune(keep=final)
        return SaveOutcome(saved=True, path=final, seconds=time.perf_counter() - started, size_bytes=size)

    def _failed(self, started: float, message: str) -> SaveOutcome:
        self.log(f"WARNING: {message}; previous checkpoint kept, training continues")
        return SaveOutcome(saved=False, path=None, seconds=time.perf_counter() - started, error=message)

    def _estimate_bytes(self, state: dict[str, Any]) -> int:
        """The previous checkpoint's size if there is one (most exact), else the tensor bytes."""
        previous = self.run_dir.newest_checkpoint()
        if previous is not None:
            return previous.size
        return tensor_storage_bytes(state)

    def _prune(self, keep: Path) -> None:
        """Keep the newest ``keep_last_n`` checkpoints; never remove the file just written."""
        if self.keep_last_n is None or self.keep_last_n < 1:
            return
        others = [c.path for c in self.run_dir.list_checkpoints() if c.path != keep]
        surplus = len(others) - (self.keep_last_n - 1)
        for path in others[: max(0, surplus)]:  # oldest first
            try:
                path.unlink()
                self.log(f"pruned old checkpoint {path.name} (keep_last_n_checkpoints={self.keep_last_n})")
            except FileNotFoundError:
                pass


def check_architecture(checkpoint: dict[str, Any], architecture: dict[str, Any], path: Path) -> None:
    """The file's model config must have this run's parameter shapes (dropout may differ)."""
    saved = checkpoint.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} has no model config", path)
    diffs = [f"{k} {saved.get(k)} != {v}" for k, v in architecture.items() if saved.get(k) != v]
    if diffs:
        # A sound file of another model is not a bad checkpoint (exit 4 would quarantine it): the
        # command line names another run, which no relaunch fixes.
        raise WorkerError(f"{path} was trained with a different model ({'; '.join(diffs)}); "
                          "pass the matching --model", WorkerExit.RUN_MISMATCH)


def _encode_error(error: WorkerError) -> str:
    return f"{int(error.code)}|{error.bad_checkpoint or ''}|{error}"


def _decode_error(text: str) -> WorkerError:
    code, bad, message = text.split("|", 2)
    return WorkerError(message, WorkerExit(int(code)), bad_checkpoint=bad or None)


class _BackgroundFlusher:
    """Push a file's dirty pages to disk while it is still being written.

    One fsync of a 1.5 GB file at the end of torch.save costs about as much again as writing it;
    a thread calling fdatasync every 50 ms overlaps the flush with serialization and CRC work
    (``bench/bench_worker.py`` measures it). The final fsync then only has the tail left.
    """

    def __init__(self, path: Path, period_s: float = 0.05) -> None:
        self.path = path
        self.period_s = period_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-flusher", daemon=True)

    def __enter__(self) -> _BackgroundFlusher:  # noqa: PYI034 - a private class, never subclassed
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        fd = None
        try:
            while not self._done.wait(self.period_s):
                if fd is None:
                    try:
                        fd = os.open(self.path, os.O_RDONLY)
                    except FileNotFoundError:
                        continue  # torch.save has not created it yet
                os.fdatasync(fd)
        except OSError:
            pass  # flushing early is an optimisation; the final fsync reports real errors
        finally:
            if fd is not None:
                os.close(fd)


def _exception_chain(exc: BaseException):
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_io_error(exc: BaseException) -> bool:
    """An OSError anywhere in the chain, or torch's zip writer failing to open/write its file."""
    return any(isinstance(e, OSError) or (isinstance(e, RuntimeError) and _TORCH_WRITE_FAILURE.search(str(e)))
               for e in _exception_chain(exc))


_TORCH_WRITE_FAILURE = re.compile(r"PytorchStreamWriter|cannot be opened|unexpected pos|file write failed")


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain: torch's zip writer re-raises a write failure as a
    RuntimeError ("unexpected pos ...") whose cause or context holds the real OSError."""
    return any((isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS) or "No space left" in str(e)
               for e in _exception_chain(exc))


def tensor_storage_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj``, each storage counted once: the tied ``wte``/``lm_head``
    weight is one storage (torch.save writes it once), and views share their base's storage."""
    storages: dict[tuple[int, int], int] = {}
    for tensor in iter_tensors(obj):
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
    return sum(storages.values())


def iter_tensors(obj: Any):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from iter_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from iter_tensors(value)
