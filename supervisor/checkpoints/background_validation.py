"""Checkpoint validation off the restart's critical path: a warm probe and verdicts made in advance.

Before a restart the supervisor must know which checkpoint is sound (``checkpoint_selection``).
Done only then, that costs an interpreter start with ``import torch`` in the load-probe child plus
a read of the file, while the run is down. ``WarmValidator`` moves both out of the way:

- one ``ProbeSession`` child lives as long as the supervisor (started with it, torch imported
  once, in its own session, with a per-file timeout and a memory cap; replaced when it dies);
- while training runs, each new checkpoint the workers name in their heartbeats is validated in a
  background thread shortly after it appears: never a ``.tmp`` staging file, never the file a
  heartbeat says is still being written (``save_in_flight``), never one whose size or mtime is
  still changing;
- at most ~1% of a core: after a validation of t seconds the next waits 99 t (checkpoints written
  more often than that are judged at the restart, by the warm child);
- verdicts are cached by (path, size, mtime_ns, inode). At a restart ``select_checkpoint_for_restart``
  runs exactly as before, newest first, quarantining what is proven bad, but a file whose stat
  still matches a cached verdict is not read again. A file rewritten or flipped in place changes
  its mtime and is validated afresh. Only VALID and INVALID verdicts are kept: a file that could
  not be judged (timeout, the child died, over the memory cap) is judged again at the restart.

So the answer at a restart means what it meant before; it only arrives sooner.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.run_dir import RunDir
from shared.vocabulary import Verdict
from supervisor.checkpoints.checkpoint_selection import (
    Selection,
    select_checkpoint_for_restart,
)
from supervisor.checkpoints.checkpoint_validation import (
    ProbeSession,
    ValidationResult,
    default_probe_memory_cap,
    list_siblings,
    validate_checkpoint,
)

STABLE_FOR_S = 0.5  # a file's size and mtime must hold still this long before it is read
IDLE_CHECK_S = 5.0  # how often an idle validator makes sure its child is alive
# Background validation reads the file (the CRC runs in the supervisor) while training runs: after
# a validation of t seconds the next waits DUTY_MULTIPLE * t, so it costs at most ~1% of a core
# however often checkpoints are written. A file left unjudged is judged at the restart (warm child).
DUTY_MULTIPLE = 99.0


@dataclass(frozen=True)
class FileKey:
    """Which bytes a verdict is about: the same name with other contents is another file."""

    path: str
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileKey | None:
        try:
            resolved = Path(path).resolve()
            st = os.stat(resolved)
        except OSError:
            return None
        return cls(str(resolved), st.st_size, st.st_mtime_ns, st.st_ino)


class WarmValidator:
    """The supervisor's one probe child and its verdict cache (module docstring). Thread-safe."""

    def __init__(self, run_dir: Path, probe_timeout: float | None = None, *, memory_cap_bytes: int | None = None,
                 command: list[str] | None = None) -> None:
        self.run = RunDir.at(run_dir)
        self.session = ProbeSession(probe_timeout, command=command,
                                    memory_cap_bytes=memory_cap_bytes or default_probe_memory_cap(None))
        self._cap_given = memory_cap_bytes is not None
        self.cache: dict[FileKey, ValidationResult] = {}
        self.background_validations = 0
        self._lock = threading.Lock()  # one file at a time through the session
        self._wanted: str | None = None
        self._in_flight: set[str] = set()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._next_allowed = 0.0  # monotonic time before which no background validation starts

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the child (it imports torch now, while the supervisor does other things) and the thread."""
        with self._lock:
            self.session.keep_warm()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpt2sup-validator", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
        with self._lock:
            self.session.close()

    def use_probe(self, command: list[str]) -> None:
        """Judge with this probe child from now on. A plain ``gpt2sup run`` learns that the run is
        a script's (generic probe) only from the directory's record, after the child was started:
        the child is replaced and no verdict of the other probe is kept."""
        with self._lock:
            if self.session.command == list(command):
                return
            self.session.close()
            self.session.command = list(command)
            self.cache.clear()
            self.session.keep_warm()

    # -- what the watcher tells us ------------------------------------------------------------
    def offer(self, newest: str | None, in_flight: set[str] | frozenset[str] = frozenset()) -> None:
        """The newest checkpoint the workers name, and the files still being written (cheap; the
        thread does the work)."""
        self._in_flight = {Path(name).name for name in in_flight if name}
        if newest and newest != self._wanted:
            self._wanted = Path(newest).name
            self._wake.set()

    # -- the restart ---------------------------------------------------------------------------
    def known(self, path: Path) -> ValidationResult | None:
        """A cached verdict on exactly the bytes now at ``path`` (a stat, no read), or None."""
        key = FileKey.of(path)
        return self.cache.get(key) if key is not None else None

    def select(self, run_dir: Path, *, probe_timeout: float | None = None, **kwargs: Any) -> Selection:
        """``select_checkpoint_for_restart`` with the warm child and the cache (same verdicts)."""
        with self._lock:
            self._fit_cap()
            selection = select_checkpoint_for_restart(run_dir, session=self.session, known=self.known, **kwargs)
            self.session.keep_warm()  # the next restart's child starts importing now
        return selection

    # -- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(IDLE_CHECK_S)
            self._wake.clear()
            if self._closed:
                return
            try:
                self._validate_wanted()
                with self._lock:
                    if not self.session.warm:
                        self.session.keep_warm()  # died while idle (killed, OOM): replace it
            except Exception:  # noqa: BLE001 - the thread must outlive any one file; the restart re-checks
                time.sleep(1.0)

    def _validate_wanted(self) -> None:
        name = self._wanted
        if not name or self.run.naming().step_of(name) is None or name in self._in_flight:
            return  # a .tmp, a link, or a file the worker is still writing
        path = self.run.root / name
        first = FileKey.of(path)
        if first is None or first in self.cache or time.monotonic() < self._next_allowed:
            return  # gone, judged, or too soon after the last one (retried within IDLE_CHECK_S)
        time.sleep(STABLE_FOR_S)
        if FileKey.of(path) != first or name in self._in_flight:
            self._wake.set()  # still changing: look again
            return
        with self._lock:
            if self._closed:
                return
            self._fit_cap(first.size)
            started = time.monotonic()
            result = validate_checkpoint(path, session=self.session, siblings=list_siblings(path, {}))
            self._next_allowed = time.monotonic() + DUTY_MULTIPLE * (time.monotonic() - started)
            self.background_validations += 1
            if result.verdict is not Verdict.INCONCLUSIVE and FileKey.of(path) == first:
                self.cache[first] = result

    def _fit_cap(self, size: int | None = None) -> None:
        if self._cap_given:
            return
        if size is None:
            newest = self.run.newest_checkpoint()
            size = newest.size if newest is not None else None
        self.session.memory_cap_bytes = default_probe_memory_cap(size)
