"""The supervisor's record of a run: every write of ``events.jsonl`` and ``supervisor.json``, and
every line shown on the console, goes through one ``Journal``.

One object means one place to make those writes survive a full disk or a closed terminal, and
one place where a console that fails (``gpt2sup run | tee`` stopped by Ctrl-C) is noted once
instead of changing how the run ends.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shared.run_dir import RunDir
from shared.supervisor_state import SupervisorState
from shared.vocabulary import EventKind
from supervisor.journal_writer import JournalWriter


class Console(Protocol):
    """The console: a progress view refreshed each interval, and one line per event."""

    def update(self, snapshot: Any) -> None: ...

    def event(self, line: str) -> None: ...

    def close(self) -> None: ...


@dataclass
class CycleState(SupervisorState):
    """``supervisor.json`` plus the hang timeout in force per phase (shown by ``gpt2sup status``)."""

    phase_timeouts: dict[str, float] = field(default_factory=dict)


class Journal:
    """``event(kind, line, **details)`` appends to events.jsonl and tells the console;
    ``save_state(**changes)`` updates supervisor.json. Both go through a ``JournalWriter``: when
    the run directory cannot be written they wait in memory (one console line says so) and go out
    in order once it can; supervising never stops for it."""

    def __init__(self, run_dir: RunDir, reporter: Console, node: int | None = None) -> None:
        self.run_dir = run_dir
        self.reporter = reporter
        self.node = node  # multi-node: every event names its node (one events.jsonl may serve them all)
        self.state: CycleState | None = None
        self.attempt = 0
        self._console_failed = False
        # Every record names this session (its start, wall clock) and its age on this supervisor's
        # monotonic clock: a session's length is then measured, not read off a wall clock that may
        # step in between (goodput, run_history.sessions_of).
        self._session_start = time.time()
        self._session_mono = time.monotonic()
        self.writer = JournalWriter(run_dir.events, run_dir.supervisor_state,
                                    warn=lambda line: self._console(lambda: self.reporter.event(line)))
        # The checkpoint store's uploader thread (supervisor.checkpoints.remote_sync) writes events too: one
        # writer at a time, or two flushes could write one record twice and drop another.
        self._lock = threading.RLock()

    def event(self, kind: EventKind, line: str, /, **details: Any) -> None:
        with self._lock:
            self._append(kind, line, **details)
            self._console(lambda: self.reporter.event(line))

    def flush(self) -> bool:
        """Retry what waits in memory (cheap when nothing does); True when all is on disk."""
        with self._lock:
            return self.writer.flush()

    def _append(self, kind: EventKind, line: str, /, **details: Any) -> None:
        record: dict[str, Any] = {"time": time.time(), "event": str(kind), "attempt": self.attempt or None,
                                  "message": line, "session_start": self._session_start,
                                  "elapsed_s": round(time.monotonic() - self._session_mono, 3)}
        if self.node is not None:
            record["node"] = self.node
        record.update(details)
        self.writer.append_event(record)

    def save_state(self, **changes: Any) -> None:
        if self.state is None:
            raise RuntimeError("Journal.save_state before Journal.begin")
        with self._lock:
            for key, value in changes.items():
                setattr(self.state, key, value)
            self.state.attempt = self.attempt
            self.writer.write_state(self.state)

    def begin(self, state: CycleState) -> None:
        self.state = state
        self.save_state()

    def show_progress(self) -> None:
        """Redraw the console view from the run directory's one read model."""
        from supervisor.views.snapshot import collect_snapshot

        snapshot = collect_snapshot(Path(self.run_dir.root))
        with self._lock:
            self._console(lambda: self.reporter.update(snapshot))

    def close(self) -> None:
        if not self.writer.flush():
            self._console(lambda: self.reporter.event(
                f"{self.writer.pending_events} event(s) could not be written to {self.run_dir.events} "
                f"({self.writer.error}); supervisor.json may be stale"))
        self._console(self.reporter.close)

    def _console(self, write: Any) -> None:
        """A console that fails is noted once in events.jsonl; supervising goes on without it."""
        if self._console_failed:
            return
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - any console failure (BrokenPipe, rich) is survivable
            self._console_failed = True
            self._append(EventKind.WARNING, f"console output failed ({type(exc).__name__}: {exc}); "
                         "events and supervisor.json carry on")
            with contextlib.suppress(OSError):  # stderr may be the same broken pipe; the event above stays
                sys.stderr.write(f"gpt2sup run: console output failed: {exc}\n")
