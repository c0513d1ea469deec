"""The supervisor's record of a run: every write of ``events.jsonl`` and ``supervisor.json``, and
every line shown on the console, goes through one ``Journal``.

One object means one place to make those writes survive a full disk or a closed terminal, and
one place where a console that fails (``gpt2sup run | tee`` stopped by Ctrl-C) is noted once
instead of changing how the run ends.
"""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shared.run_dir import RunDir
from shared.supervisor_state import (
    SupervisorState,
    append_event,
    write_supervisor_state,
)
from shared.vocabulary import EventKind


class Reporter(Protocol):
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
    ``save_state(**changes)`` updates supervisor.json."""

    def __init__(self, run_dir: RunDir, reporter: Reporter) -> None:
        self.run_dir = run_dir
        self.reporter = reporter
        self.state: CycleState | None = None
        self.attempt = 0
        self._console_failed = False

    def event(self, kind: EventKind, line: str, /, **details: Any) -> None:
        append_event(self.run_dir.events, str(kind), attempt=self.attempt or None, message=line, **details)
        self._console(lambda: self.reporter.event(line))

    def save_state(self, **changes: Any) -> None:
        if self.state is None:
            raise RuntimeError("Journal.save_state before Journal.begin")
        for key, value in changes.items():
            setattr(self.state, key, value)
        self.state.attempt = self.attempt
        write_supervisor_state(self.run_dir.supervisor_state, self.state)

    def begin(self, state: CycleState) -> None:
        self.state = state
        self.save_state()

    def show_progress(self) -> None:
        """Redraw the console view from the run directory's one read model."""
        from supervisor.snapshot import collect_snapshot

        snapshot = collect_snapshot(Path(self.run_dir.root))
        self._console(lambda: self.reporter.update(snapshot))

    def close(self) -> None:
        self._console(self.reporter.close)

    def _console(self, write: Any) -> None:
        """A console that fails is noted once in events.jsonl; supervising goes on without it."""
        if self._console_failed:
            return
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - any console failure (BrokenPipe, rich) is survivable
            self._console_failed = True
            append_event(self.run_dir.events, str(EventKind.WARNING), attempt=self.attempt or None,
                         message=f"console output failed ({type(exc).__name__}: {exc}); "
                                 "events and supervisor.json carry on")
            with contextlib.suppress(OSError):  # stderr may be the same broken pipe; the event above stays
                sys.stderr.write(f"gpt2sup run: console output failed: {exc}\n")
