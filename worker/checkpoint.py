"""CheckpointManager: the one component that writes, finds, loads and prunes checkpoints.

The training loop calls it at fixed points (start-up, after each optimizer step) and never sees a
file name. The rules it keeps (docs/checkpoints.md):

* ``step`` is the last *completed* step; the state is captured after that step's optimizer update.
* Atomic: write ``model_N.pt.tmp``, flush + fsync, rename, fsync the directory, then swing
  ``latest_checkpoint.pt`` (a new relative link renamed over the old one). A crash or ENOSPC at any
  instant leaves the previous checkpoint and link intact.
* A full disk is not fatal: the save is skipped (or its partial file removed), the failure is
  recorded, and training goes on; the previous checkpoint stays the resume point.
* Loading uses ``torch.load(weights_only=True)``: a checkpoint never runs code.
"""
from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from shared.atomic_io import fsync_path
from shared.checkpoint_format import REQUIRED_KEYS
from shared.run_dir import TMP_SUFFIX, RunDir, checkpoint_name

# Bytes we always want to leave free on top of the checkpoint itself (logs, heartbeats, metadata).
FREE_SPACE_MARGIN_BYTES = 16 * 1024 * 1024
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class CheckpointError(Exception):
    """A checkpoint cannot be used: the message is one line for the user."""


@dataclass
class SaveOutcome:
    saved: bool
    path: Path | None
    seconds: float
    size_bytes: int = 0
    error: str | None = None  # one line when not saved


class CheckpointManager:
    def __init__(
        self,
        run_dir: RunDir,
        *,
        interval: int,
        keep_last_n: int = -1,
        is_writer: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.run_dir = run_dir
        self.interval = interval
        self.keep_last_n = keep_last_n
        self.is_writer = is_writer
        self.log = log
        self.last_saved_step: int | None = None

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

    @staticmethod
    def load(path: Path) -> dict[str, Any]:
        """Load on CPU with ``weights_only=True``; any failure becomes one CheckpointError line."""
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        if not path.is_file():
            raise CheckpointError(f"checkpoint is not a regular file: {path}")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad files; all mean "unusable"
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"cannot load checkpoint {path}: {first_line[:300]}") from None
        if not isinstance(checkpoint, dict):
            raise CheckpointError(f"{path} is not a checkpoint (holds a {type(checkpoint).__name__})")
        return checkpoint

    @staticmethod
    def require_keys(checkpoint: dict[str, Any], path: Path, keys=REQUIRED_KEYS) -> None:
        missing = [k for k in keys if k not in checkpoint and k != "format_version"]
        if missing:
            raise CheckpointError(f"{path} is missing checkpoint keys: {', '.join(missing)}")

    # --- saving -------------------------------------------------------------------------------
    def is_due(self, step: int, last_step: bool) -> bool:
        periodic = self.interval > 0 and step > 0 and step % self.interval == 0
        return periodic or last_step

    def save(self, step: int, state: dict[str, Any]) -> SaveOutcome:
        """Write ``state`` as the checkpoint of ``step`` (writer rank only; others return)."""
        if not self.is_writer:
            return SaveOutcome(saved=False, path=None, seconds=0.0)
        started = time.perf_counter()
        final = self.run_dir.checkpoint(step)
        staging = final.with_name(final.name + TMP_SUFFIX)
        needed = self._estimate_bytes(state)
        free = shutil.disk_usage(self.run_dir.root).free
        if free < needed + FREE_SPACE_MARGIN_BYTES:
            return self._failed(
                started,
                f"skipped checkpoint of step {step}: needs ~{needed / 1e6:.1f} MB, "
                f"{free / 1e6:.1f} MB free on {self.run_dir.root}",
            )
        try:
            with _BackgroundFlusher(staging):
                torch.save(state, str(staging))  # a path: torch's own C++ writer, faster than a handle
            fsync_path(staging)
            size = staging.stat().st_size
            os.replace(staging, final)
            fsync_path(self.run_dir.root)
            self.run_dir.point_latest_link(final)
        except (OSError, RuntimeError) as exc:
            staging.unlink(missing_ok=True)
            # torch's C++ writer reports a short write without errno; a disk that now has less
            # room than the checkpoint needs is the tell.
            if _is_disk_full(exc) or shutil.disk_usage(self.run_dir.root).free < needed:
                return self._failed(started, f"checkpoint of step {step} failed: disk full")
            raise
        self.last_saved_step = step
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
        return _tensor_bytes(state)

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

    def __enter__(self) -> "_BackgroundFlusher":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
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


def _is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain: torch's zip writer re-raises a write failure as a
    RuntimeError ("unexpected pos ...") whose cause or context holds the real OSError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if "No space left" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


